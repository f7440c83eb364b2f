//! Value types used in the configuration: human durations ("30s"), sizes
//! ("6MB") and secrets that never print.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A duration written the human way: `"500ms"`, `"30s"`, `"5m"`, `"1h 30m"`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Duration(pub std::time::Duration);

impl Duration {
    pub const fn secs(s: u64) -> Self {
        Duration(std::time::Duration::from_secs(s))
    }
    pub const fn millis(ms: u64) -> Self {
        Duration(std::time::Duration::from_millis(ms))
    }
    pub fn get(self) -> std::time::Duration {
        self.0
    }
    pub fn is_zero(self) -> bool {
        self.0.is_zero()
    }
}

impl fmt::Debug for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

impl FromStr for Duration {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        humantime::parse_duration(s.trim())
            .map(Duration)
            .map_err(|e| {
                format!("invalid duration {s:?} ({e}); write it like \"500ms\", \"30s\", \"5m\"")
            })
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A size in bytes: `"6MB"`, `"64KB"`, `"1GB"` or a plain integer. KB, MB and
/// GB are powers of 1024 (KiB, MiB and GiB are accepted too).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub const fn kib(n: u64) -> Self {
        ByteSize(n * 1024)
    }
    pub const fn mib(n: u64) -> Self {
        ByteSize(n * 1024 * 1024)
    }
    pub fn get(self) -> u64 {
        self.0
    }
    /// The size as `usize`, saturating on (theoretical) 32-bit overflow.
    pub fn as_usize(self) -> usize {
        usize::try_from(self.0).unwrap_or(usize::MAX)
    }
}

impl fmt::Debug for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(u64, &str); 3] = [(1 << 30, "GB"), (1 << 20, "MB"), (1 << 10, "KB")];
        for (unit, name) in UNITS {
            if self.0 >= unit && self.0 % unit == 0 {
                return write!(f, "{}{name}", self.0 / unit);
            }
        }
        write!(f, "{}B", self.0)
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

impl FromStr for ByteSize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let bad = || {
            format!(
                "invalid size {s:?}; write it like \"64KB\", \"6MB\", \"1GB\" or a number of bytes"
            )
        };
        let n: u64 = num.parse().map_err(|_| bad())?;
        let mult: u64 = match unit.trim().to_ascii_uppercase().as_str() {
            "" | "B" => 1,
            "K" | "KB" | "KIB" => 1 << 10,
            "M" | "MB" | "MIB" => 1 << 20,
            "G" | "GB" | "GIB" => 1 << 30,
            _ => return Err(bad()),
        };
        n.checked_mul(mult).map(ByteSize).ok_or_else(bad)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Str(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(n) => Ok(ByteSize(n)),
            Raw::Str(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A secret (API key, token). Its `Debug` and `Serialize` never show the
/// value; only [`Secret::expose`] does, at the one place that sends it.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() {
            "\"\""
        } else {
            "\"<redacted>\""
        })
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Secret)
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(if self.0.is_empty() { "" } else { "<redacted>" })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_and_print() {
        assert_eq!("6MB".parse::<ByteSize>(), Ok(ByteSize::mib(6)));
        assert_eq!("64 KB".parse::<ByteSize>(), Ok(ByteSize::kib(64)));
        assert_eq!("1GiB".parse::<ByteSize>(), Ok(ByteSize(1 << 30)));
        assert_eq!("512".parse::<ByteSize>(), Ok(ByteSize(512)));
        assert!("6XB".parse::<ByteSize>().is_err());
        assert!("".parse::<ByteSize>().is_err());
        assert!("99999999999999999999GB".parse::<ByteSize>().is_err());
        assert_eq!(ByteSize::mib(15).to_string(), "15MB");
        assert_eq!(ByteSize(1500).to_string(), "1500B");
    }

    #[test]
    fn durations_parse_and_print() {
        assert_eq!("30s".parse::<Duration>(), Ok(Duration::secs(30)));
        assert_eq!("250ms".parse::<Duration>(), Ok(Duration::millis(250)));
        assert!("thirty".parse::<Duration>().is_err());
        assert_eq!(Duration::secs(90).to_string(), "1m 30s");
    }

    #[test]
    fn secrets_never_print() {
        let s = Secret::new("sk-test-not-a-real-key");
        assert!(!format!("{s:?}").contains("sk-test"));
        assert!(!serde_json::to_string(&s).unwrap().contains("sk-test"));
        assert_eq!(s.expose(), "sk-test-not-a-real-key");
    }
}

/// One address or several: `listen = "127.0.0.1:8443"` or
/// `listen = ["127.0.0.1:8443", "[::1]:8443"]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Addresses(pub Vec<std::net::SocketAddr>);

impl Addresses {
    pub fn one(addr: std::net::SocketAddr) -> Self {
        Addresses(vec![addr])
    }

    pub fn iter(&self) -> impl Iterator<Item = &std::net::SocketAddr> {
        self.0.iter()
    }

    /// The first address (the one logs and `h3gate health` name).
    pub fn first(&self) -> Option<std::net::SocketAddr> {
        self.0.first().copied()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<std::net::SocketAddr> for Addresses {
    fn from(addr: std::net::SocketAddr) -> Self {
        Addresses::one(addr)
    }
}

impl<'de> Deserialize<'de> for Addresses {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum OneOrMany {
            One(String),
            Many(Vec<String>),
        }
        let list = match OneOrMany::deserialize(d)? {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        };
        list.iter()
            .map(|s| {
                s.trim().parse().map_err(|_| {
                    serde::de::Error::custom(format!(
                        "invalid socket address {s:?}; write it like \"127.0.0.1:8443\" or \"[::1]:8443\""
                    ))
                })
            })
            .collect::<Result<_, _>>()
            .map(Addresses)
    }
}

impl Serialize for Addresses {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0.as_slice() {
            [one] => s.collect_str(one),
            many => s.collect_seq(many.iter().map(|a| a.to_string())),
        }
    }
}
