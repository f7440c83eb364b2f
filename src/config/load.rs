//! From TOML text to a checked [`Config`]: environment expansion, decoding
//! section by section (so one bad section does not hide the others), unknown
//! keys. Every problem carries its TOML path.

use std::path::Path;

use serde::de::DeserializeOwned;
use toml::Value;

use super::problem::{ConfigError, Problem};
use super::Config;

/// The text of a configuration file.
pub(super) fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.display().to_string(),
        source,
    })
}

/// One section of a configuration file on its own, for commands that need
/// one setting (`h3gate keys` needs `[auth] keys_file`): `${VAR}` expanded
/// and keys checked in that section only, so the rest of the file — other
/// sections' variables, certificates — need not be in place yet. A missing
/// section is its defaults. Also returns the directory relative paths are
/// resolved against.
pub(crate) fn load_section<T: DeserializeOwned + Default>(
    path: &Path,
    section: &str,
) -> Result<(T, std::path::PathBuf), ConfigError> {
    let text = read(path)?;
    let base = path
        .parent()
        .unwrap_or_else(|| Path::new("."))
        .to_path_buf();
    let mut table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        ConfigError::Invalid(vec![Problem {
            path: String::new(),
            message: format!("not valid TOML: {}", e.to_string().trim()),
        }])
    })?;
    let Some(mut value) = table.remove(section) else {
        return Ok((T::default(), base));
    };
    let mut problems = Vec::new();
    expand_env(
        &mut value,
        section.to_string(),
        &|k| std::env::var(k).ok(),
        &mut problems,
    );
    let decoded = if problems.is_empty() {
        decode(value, section, &mut problems)
    } else {
        None
    };
    match decoded {
        Some(v) if problems.is_empty() => Ok((v, base)),
        _ => Err(ConfigError::Invalid(problems)),
    }
}

/// Decodes configuration text into a [`Config`] and the problems found on
/// the way (validation comes after, in `config.rs`); only text that is not
/// TOML at all is an error here.
pub(super) fn decode_text(
    text: &str,
    base_dir: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(Config, Vec<Problem>), ConfigError> {
    let mut problems = Vec::new();
    let mut table: toml::Table = match text.parse() {
        Ok(t) => t,
        Err(e) => {
            return Err(ConfigError::Invalid(vec![Problem {
                path: String::new(),
                message: format!("not valid TOML: {}", e.to_string().trim()),
            }]))
        }
    };
    for (key, value) in table.iter_mut() {
        expand_env(value, key.clone(), env, &mut problems);
    }

    let mut config = Config::default();
    macro_rules! section {
        ($name:ident) => {
            if let Some(v) = table.remove(stringify!($name)) {
                if let Some(decoded) = decode(v, stringify!($name), &mut problems) {
                    config.$name = decoded;
                }
            }
        };
    }
    section!(server);
    section!(tls);
    section!(quic);
    section!(http);
    section!(admin);
    section!(log);
    section!(retry);
    section!(admission);
    section!(auth);
    section!(rate_limit);
    section!(network);
    section!(abuse);
    section!(cors);
    section!(audit);
    section!(cluster);
    section!(spend);
    section!(tracing);
    config.providers = decode_array(table.remove("providers"), "providers", &mut problems);
    config.routes = decode_array(table.remove("routes"), "routes", &mut problems);
    config.prices = decode_array(table.remove("prices"), "prices", &mut problems);
    config.teams = decode_array(table.remove("teams"), "teams", &mut problems);
    for key in table.keys() {
        problems.push(Problem {
            path: key.clone(),
            message: "unknown section".into(),
        });
    }

    config.tls.cert = base_dir.join(&config.tls.cert);
    config.tls.key = base_dir.join(&config.tls.key);
    for pair in &mut config.tls.certificates {
        pair.cert = base_dir.join(&pair.cert);
        pair.key = base_dir.join(&pair.key);
    }
    for path in [
        config.auth.keys_file.as_mut(),
        config.abuse.state_file.as_mut(),
        config.audit.file.as_mut(),
        config.cluster.ca_file.as_mut(),
        config.spend.file.as_mut(),
    ]
    .into_iter()
    .flatten()
    {
        *path = base_dir.join(&*path);
    }

    Ok((config, problems))
}

/// Decodes one value, reporting unknown keys and every type error inside it:
/// after an error, the offending key is removed and decoding tried again.
fn decode<T: DeserializeOwned>(
    mut value: Value,
    path: &str,
    problems: &mut Vec<Problem>,
) -> Option<T> {
    const MAX_ATTEMPTS: usize = 32;
    for _ in 0..MAX_ATTEMPTS {
        let mut unknown = Vec::new();
        let mut note = |p: serde_ignored::Path<'_>| unknown.push(p.to_string());
        let de = serde_ignored::Deserializer::new(value.clone(), &mut note);
        let result = serde_path_to_error::deserialize::<_, T>(de);
        let err = match result {
            Ok(v) => {
                for u in unknown {
                    problems.push(Problem {
                        path: join(path, &u),
                        message: "unknown key".into(),
                    });
                }
                return Some(v);
            }
            Err(e) => e,
        };
        let inner = err.path().to_string();
        let message = err.into_inner().to_string();
        problems.push(Problem {
            path: join(path, if inner == "." { "" } else { &inner }),
            // toml appends "in `key`" lines; the path already says where.
            message: message.lines().next().unwrap_or("").trim().to_string(),
        });
        if inner == "." || !remove_path(&mut value, &inner) {
            break;
        }
    }
    None
}

/// Removes the value at a serde path like `timeouts.connect` or `targets[1]`.
fn remove_path(value: &mut Value, path: &str) -> bool {
    let mut segments: Vec<&str> = path.split('.').collect();
    let Some(last) = segments.pop() else {
        return false;
    };
    let mut cur = value;
    for seg in segments {
        let next = match cur {
            Value::Table(t) => t.get_mut(seg),
            _ => None,
        };
        match next {
            Some(v) => cur = v,
            None => return false,
        }
    }
    match cur {
        Value::Table(t) => t.remove(last).is_some(),
        _ => false,
    }
}

fn decode_array<T: DeserializeOwned>(
    value: Option<Value>,
    path: &str,
    problems: &mut Vec<Problem>,
) -> Vec<T> {
    match value {
        None => Vec::new(),
        Some(Value::Array(items)) => items
            .into_iter()
            .enumerate()
            .filter_map(|(i, v)| decode(v, &format!("{path}[{i}]"), problems))
            .collect(),
        Some(other) => {
            problems.push(Problem {
                path: path.into(),
                message: format!(
                    "expected an array of tables ([[{path}]]), found {}",
                    other.type_str()
                ),
            });
            Vec::new()
        }
    }
}

fn join(base: &str, rest: &str) -> String {
    match (base.is_empty(), rest.is_empty()) {
        (_, true) => base.to_string(),
        (true, false) => rest.to_string(),
        (false, false) if rest.starts_with('[') => format!("{base}{rest}"),
        (false, false) => format!("{base}.{rest}"),
    }
}

/// Replaces `${VAR}` and `${VAR:-default}` in every string value. `$$` is a literal `$`.
fn expand_env(
    value: &mut Value,
    path: String,
    env: &dyn Fn(&str) -> Option<String>,
    problems: &mut Vec<Problem>,
) {
    match value {
        Value::String(s) => match expand_str(s, env) {
            Ok(expanded) => *s = expanded,
            Err(message) => problems.push(Problem { path, message }),
        },
        Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                expand_env(item, format!("{path}[{i}]"), env, problems);
            }
        }
        Value::Table(t) => {
            for (k, v) in t.iter_mut() {
                expand_env(v, format!("{path}.{k}"), env, problems);
            }
        }
        _ => {}
    }
}

fn expand_str(s: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    if !s.contains('$') {
        return Ok(s.to_string());
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('{') {
            let end = body
                .find('}')
                .ok_or_else(|| format!("unterminated ${{...}} in {s:?}"))?;
            let expr = &body[..end];
            let (name, default) = match expr.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (expr, None),
            };
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!("invalid variable name {name:?} in ${{...}}"));
            }
            match (env(name).filter(|v| !v.is_empty()), default) {
                (Some(v), _) => out.push_str(&v),
                (None, Some(d)) => out.push_str(d),
                (None, None) => {
                    return Err(format!(
                        "environment variable {name} is not set (write ${{{name}:-default}} to give a default)"
                    ))
                }
            }
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(k: &str) -> Option<String> {
        match k {
            "KEY" => Some("value".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn expansion() {
        assert_eq!(expand_str("a ${KEY} b", &env).unwrap(), "a value b");
        assert_eq!(expand_str("${MISSING:-dflt}", &env).unwrap(), "dflt");
        assert_eq!(expand_str("${EMPTY:-dflt}", &env).unwrap(), "dflt");
        assert_eq!(expand_str("$$5 and $x", &env).unwrap(), "$5 and $x");
        assert!(expand_str("${MISSING}", &env)
            .unwrap_err()
            .contains("MISSING"));
        assert!(expand_str("${KEY", &env).is_err());
        assert!(expand_str("${bad-name}", &env).is_err());
    }

    #[test]
    fn join_paths() {
        assert_eq!(join("quic", "receive_window"), "quic.receive_window");
        assert_eq!(join("routes", "[0]"), "routes[0]");
        assert_eq!(join("routes[0]", "targets[1]"), "routes[0].targets[1]");
        assert_eq!(join("server", ""), "server");
    }
}
