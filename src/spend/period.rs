//! Budget periods and their windows, in UTC.
//!
//! - `1d`: the calendar day, reset at 00:00 UTC.
//! - `month`: the calendar month, reset on the 1st at 00:00 UTC.
//! - `Nd` (N > 1) or `Nh`: a rolling window of that length. It is kept as at
//!   most 30 slots of whole hours (`ceil(hours / 30)` each: a day for
//!   `30d`, an hour for `24h`), so spend leaves the window a slot at a time
//!   and a shared backend reads at most 30 counters per budget.
//!
//! A window is computed from a wall-clock time given by the caller (the
//! replicas' clocks agree to NTP's precision; day and month boundaries need
//! no more), so tests choose their own time.

use std::fmt;

use serde::{Deserialize, Serialize};

/// How long a budget lasts before it starts over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Period {
    /// The calendar day (UTC).
    Day,
    /// The calendar month (UTC).
    Month,
    /// A rolling window of whole hours.
    Rolling { hours: u32 },
}

/// The longest rolling window (the usage history's default retention).
const MAX_HOURS: u32 = 400 * 24;
/// Slots a rolling window is kept in, at most.
const SLOTS: u32 = 30;

impl Period {
    /// `1d`, `month`, `30d`, `24h`, `7d`…
    pub fn parse(s: &str) -> Result<Period, String> {
        let bad = || {
            format!("budget period {s:?}: use 1d (calendar day), month (calendar month), or a rolling Nd or Nh (e.g. 30d)")
        };
        match s.trim() {
            "1d" | "day" | "daily" => return Ok(Period::Day),
            "month" | "monthly" | "1mo" => return Ok(Period::Month),
            _ => {}
        }
        let s = s.trim();
        let (n, per) = if let Some(n) = s.strip_suffix('d') {
            (n, 24)
        } else if let Some(n) = s.strip_suffix('h') {
            (n, 1)
        } else {
            return Err(bad());
        };
        let hours = n
            .parse::<u32>()
            .ok()
            .and_then(|n| n.checked_mul(per))
            .filter(|h| (1..=MAX_HOURS).contains(h))
            .ok_or_else(bad)?;
        Ok(Period::Rolling { hours })
    }

    /// A short tag for storage keys (`d`, `m`, `r720`).
    pub fn tag(&self) -> String {
        match self {
            Period::Day => "d".into(),
            Period::Month => "m".into(),
            Period::Rolling { hours } => format!("r{hours}"),
        }
    }

    /// The window that holds `now` (Unix seconds).
    pub fn window(&self, now: u64) -> Window {
        match *self {
            Period::Day => Window {
                slot: now / DAY,
                slots: 1,
                step: DAY,
                ends: (now / DAY + 1) * DAY,
                now,
            },
            Period::Month => {
                let (y, m) = year_month(now);
                let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
                Window {
                    slot: (y as u64) * 12 + u64::from(m - 1),
                    slots: 1,
                    step: 0,
                    ends: month_start(ny, nm),
                    now,
                }
            }
            Period::Rolling { hours } => {
                let slot_hours = hours.div_ceil(SLOTS).max(1);
                let step = u64::from(slot_hours) * 3600;
                Window {
                    slot: now / step,
                    slots: hours.div_ceil(slot_hours),
                    step,
                    ends: (now / step + 1) * step,
                    now,
                }
            }
        }
    }

    /// Whether it starts over at a calendar boundary.
    pub fn is_calendar(&self) -> bool {
        !matches!(self, Period::Rolling { .. })
    }
}

impl fmt::Display for Period {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Period::Day => f.write_str("1d"),
            Period::Month => f.write_str("month"),
            Period::Rolling { hours } if hours % 24 == 0 => write!(f, "{}d", hours / 24),
            Period::Rolling { hours } => write!(f, "{hours}h"),
        }
    }
}

impl Serialize for Period {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Period {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Period::parse(&s).map_err(serde::de::Error::custom)
    }
}

const DAY: u64 = 86_400;

/// Where a time falls in a budget's period: the counters it reads and the
/// one it adds to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Window {
    /// The current slot (days, months or steps since the epoch): spend is
    /// added here.
    pub slot: u64,
    /// The window is the `slots` slots ending with `slot`.
    pub slots: u32,
    /// A slot's length in seconds (0 for a calendar month, whose length
    /// varies; it is one slot anyway).
    pub step: u64,
    /// When the current slot ends (Unix seconds).
    pub ends: u64,
    /// The time the window was computed for.
    pub now: u64,
}

impl Window {
    /// The first slot of the window.
    pub fn first(&self) -> u64 {
        self.slot.saturating_sub(u64::from(self.slots) - 1)
    }

    /// When slot `s` of this window leaves it (Unix seconds).
    pub fn leaves(&self, s: u64) -> u64 {
        if self.slots <= 1 {
            return self.ends;
        }
        self.ends + (s + u64::from(self.slots) - 1 - self.slot) * self.step
    }

    /// Seconds from now until slot `s` leaves the window.
    pub fn until_leaves(&self, s: u64) -> u64 {
        self.leaves(s).saturating_sub(self.now)
    }
}

/// The UTC year and month (1–12) of a Unix time.
pub fn year_month(secs: u64) -> (i32, u8) {
    let d = time::OffsetDateTime::from_unix_timestamp(secs as i64)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    (d.year(), d.month() as u8)
}

/// Unix seconds at 00:00 UTC on the 1st of `month` in `year`.
pub fn month_start(year: i32, month: u8) -> u64 {
    let month = time::Month::try_from(month).unwrap_or(time::Month::January);
    time::Date::from_calendar_date(year, month, 1)
        .map(|d| d.midnight().assume_utc().unix_timestamp().max(0) as u64)
        .unwrap_or(0)
}

/// Unix seconds as RFC 3339 (`2026-12-01T00:00:00Z`).
pub fn rfc3339(secs: u64) -> String {
    time::OffsetDateTime::from_unix_timestamp(secs as i64)
        .ok()
        .and_then(|d| {
            d.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

/// RFC 3339 (`2026-12-01T10:00:00Z`) or a date (`2026-12-01`, midnight UTC)
/// as Unix seconds.
pub fn parse_time(s: &str) -> Option<u64> {
    use time::format_description::well_known::Rfc3339;
    if let Ok(t) = time::OffsetDateTime::parse(s, &Rfc3339) {
        return u64::try_from(t.unix_timestamp()).ok();
    }
    let fmt = time::macros::format_description!("[year]-[month]-[day]");
    let d = time::Date::parse(s, &fmt).ok()?;
    u64::try_from(d.midnight().assume_utc().unix_timestamp()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-12-01T00:00:00Z
    const DEC_1: u64 = 1_796_083_200;

    #[test]
    fn periods_parse_and_print() {
        assert_eq!(Period::parse("1d").unwrap(), Period::Day);
        assert_eq!(Period::parse("month").unwrap(), Period::Month);
        assert_eq!(
            Period::parse("30d").unwrap(),
            Period::Rolling { hours: 720 }
        );
        assert_eq!(Period::parse("24h").unwrap(), Period::Rolling { hours: 24 });
        for bad in ["", "0d", "1w", "d", "-3d", "401d", "1.5d"] {
            assert!(Period::parse(bad).is_err(), "{bad}");
        }
        for p in ["1d", "month", "30d", "7d", "36h"] {
            assert_eq!(Period::parse(p).unwrap().to_string(), p);
        }
    }

    #[test]
    fn calendar_windows_end_at_utc_boundaries() {
        assert_eq!(rfc3339(DEC_1), "2026-12-01T00:00:00Z");
        let day = Period::Day.window(DEC_1 + 3600);
        assert_eq!(day.ends, DEC_1 + 86_400);
        assert_eq!(day.first(), day.slot);
        let month = Period::Month.window(DEC_1 + 5 * 86_400);
        assert_eq!(rfc3339(month.ends), "2027-01-01T00:00:00Z");
        let next = Period::Month.window(month.ends);
        assert_eq!(next.slot, month.slot + 1);
        let feb = Period::Month.window(parse_time("2027-02-10").unwrap());
        assert_eq!(rfc3339(feb.ends), "2027-03-01T00:00:00Z");
        assert_eq!(month.until_leaves(month.slot), 26 * 86_400);
    }

    #[test]
    fn rolling_windows_are_thirty_slots_of_whole_hours() {
        let w = Period::Rolling { hours: 720 }.window(DEC_1 + 7200);
        assert_eq!((w.slots, w.step), (30, 86_400));
        assert_eq!(w.first(), w.slot - 29);
        // The oldest slot leaves first: at the end of the current one.
        assert_eq!(w.leaves(w.first()), DEC_1 + 86_400);
        assert_eq!(w.leaves(w.slot), DEC_1 + 30 * 86_400);
        let h = Period::Rolling { hours: 24 }.window(DEC_1);
        assert_eq!((h.slots, h.step), (24, 3600));
        let odd = Period::Rolling { hours: 101 }.window(DEC_1);
        assert_eq!((odd.slots, odd.step), (26, 4 * 3600));
    }

    #[test]
    fn times_parse() {
        assert_eq!(parse_time("2026-12-01"), Some(DEC_1));
        assert_eq!(parse_time("2026-12-01T01:00:00Z"), Some(DEC_1 + 3600));
        assert_eq!(parse_time("yesterday"), None);
    }
}
