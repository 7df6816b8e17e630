//! What the key table drives: the type check that reports every bad key at once (and
//! drops it, so that the rest of the file can still be validated), and the
//! `TOKENGATE_<SECTION>_<KEY>` environment overrides.
//!
//! The table itself ([`KEYS`], [`ARRAYS`]) is generated in [`super::raw`] from the same
//! list as the serde structs, so an override is parsed as the key's own type:
//! `TOKENGATE_OAUTH_CLIENT_ID=12345` stays a string and `TOKENGATE_SESSION_MAX_SESSIONS=10`
//! becomes a number.

use toml::{Table, Value};

pub use super::raw::{ARRAYS, KEYS};
use super::ConfigError;

/// The TOML type a key holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Str,
    Int,
    Bool,
    StrList,
    /// A non-negative number, integer or not (`sample_ratio = 0.25`, or `1`).
    Number,
}

fn kind_of(section: &str, key: &str) -> Option<Kind> {
    KEYS.iter().find(|(s, k, _)| *s == section && *k == key).map(|(_, _, kind)| *kind)
}

fn is_section(name: &str) -> bool {
    KEYS.iter().any(|(s, _, _)| *s == name)
}

fn matches_kind(value: &Value, kind: Kind) -> bool {
    match (kind, value) {
        (Kind::Str, Value::String(_)) => true,
        (Kind::Int, Value::Integer(i)) => *i >= 0,
        (Kind::Bool, Value::Boolean(_)) => true,
        (Kind::StrList, Value::Array(items)) => items.iter().all(Value::is_str),
        (Kind::Number, Value::Float(f)) => f.is_finite() && *f >= 0.0,
        (Kind::Number, Value::Integer(i)) => *i >= 0,
        _ => false,
    }
}

fn describe(kind: Kind) -> &'static str {
    match kind {
        Kind::Str => "a string",
        Kind::Int => "a non-negative integer",
        Kind::Bool => "true or false",
        Kind::StrList => "a list of strings",
        Kind::Number => "a non-negative number",
    }
}

/// Reports every unknown section, unknown key and wrongly typed value in the file, and
/// removes each from `table`, so that what is left deserializes and can be validated.
/// A `[[route]]` entry that is not a table is replaced by an empty one, so that the
/// indexes of the others (in later messages) stay those of the file.
pub fn check_table(table: &mut Table, errors: &mut Vec<ConfigError>) {
    table.retain(|name, value| {
        if let Some((_, keys)) = ARRAYS.iter().find(|(array, _)| *array == name) {
            return check_array(name, value, keys, errors);
        }
        if !is_section(name) || name.contains('.') {
            errors.push(ConfigError::new(name, "unknown section"));
            return false;
        }
        check_section(name, value, errors)
    });
}

/// Checks the keys of `[section]`, descending into known sub-tables such as `[server.tls]`.
/// Returns whether the section itself is kept (it is a table).
fn check_section(section: &str, value: &mut Value, errors: &mut Vec<ConfigError>) -> bool {
    let Some(keys) = value.as_table_mut() else {
        errors.push(ConfigError::new(section, "must be a table"));
        return false;
    };
    keys.retain(|key, value| {
        let path = format!("{section}.{key}");
        if is_section(&path) {
            return check_section(&path, value, errors);
        }
        match kind_of(section, key) {
            None => {
                errors.push(ConfigError::new(&path, "unknown key"));
                false
            }
            Some(kind) if !matches_kind(value, kind) => {
                errors.push(ConfigError::new(&path, format!("must be {}", describe(kind))));
                false
            }
            Some(_) => true,
        }
    });
    true
}

fn check_array(name: &str, value: &mut Value, keys: &[(&str, Kind)], errors: &mut Vec<ConfigError>) -> bool {
    let Some(entries) = value.as_array_mut() else {
        errors.push(ConfigError::new(name, format!("must be an array of [[{name}]] tables")));
        return false;
    };
    for (index, entry) in entries.iter_mut().enumerate() {
        let Some(table) = entry.as_table_mut() else {
            errors.push(ConfigError::new(format!("{name}[{index}]"), "must be a table"));
            *entry = Value::Table(Table::new());
            continue;
        };
        table.retain(|key, value| {
            let path = format!("{name}[{index}].{key}");
            match keys.iter().find(|(k, _)| *k == key) {
                None => {
                    errors.push(ConfigError::new(&path, "unknown key"));
                    false
                }
                Some((_, kind)) if !matches_kind(value, *kind) => {
                    errors.push(ConfigError::new(&path, format!("must be {}", describe(*kind))));
                    false
                }
                Some(_) => true,
            }
        });
    }
    true
}

/// The environment variable that overrides `section.key` (`server.tls` gives
/// `TOKENGATE_SERVER_TLS_<KEY>`).
pub fn env_name(section: &str, key: &str) -> String {
    format!("TOKENGATE_{}_{}", section.replace('.', "_").to_ascii_uppercase(), key.to_ascii_uppercase())
}

/// Applies `TOKENGATE_<SECTION>_<KEY>` overrides from `env` onto the parsed file.
pub fn apply_env_overrides(
    table: &mut Table,
    env: &dyn Fn(&str) -> Option<String>,
    errors: &mut Vec<ConfigError>,
) {
    for (section, key, kind) in KEYS {
        let name = env_name(section, key);
        let Some(raw) = env(&name) else { continue };
        let value = match parse_override(&raw, *kind) {
            Ok(value) => value,
            Err(message) => {
                errors.push(ConfigError::new(format!("{section}.{key} (from {name})"), message));
                continue;
            }
        };
        if let Some(section_table) = table_at(table, section) {
            section_table.insert(key.to_string(), value);
        }
    }
}

/// The table at a dotted section path (`server.tls`), created where missing. `None` only
/// if something on the path is not a table (`check_table` has removed those already).
fn table_at<'t>(table: &'t mut Table, section: &str) -> Option<&'t mut Table> {
    section.split('.').try_fold(table, |table, part| {
        table.entry(part.to_string()).or_insert_with(|| Value::Table(Table::new())).as_table_mut()
    })
}

fn parse_override(raw: &str, kind: Kind) -> Result<Value, String> {
    match kind {
        Kind::Str => Ok(Value::String(raw.to_string())),
        Kind::Int => raw
            .trim()
            .parse::<i64>()
            .ok()
            .filter(|n| *n >= 0)
            .map(Value::Integer)
            .ok_or_else(|| "must be a non-negative integer".to_string()),
        Kind::Bool => match raw.trim() {
            "true" | "1" => Ok(Value::Boolean(true)),
            "false" | "0" => Ok(Value::Boolean(false)),
            _ => Err("must be true or false".to_string()),
        },
        Kind::Number => raw
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|n| n.is_finite() && *n >= 0.0)
            .map(Value::Float)
            .ok_or_else(|| "must be a non-negative number".to_string()),
        Kind::StrList => Ok(Value::Array(
            raw.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| Value::String(s.to_string()))
                .collect(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_problem_is_reported_with_its_key() {
        let table: Table = toml::from_str(
            r#"
            [server]
            listen = 8080
            bogus = 1
            [nonsense]
            [[route]]
            prefix = "/api/"
            extra = true
            "#,
        )
        .unwrap_or_default();
        let mut table = table;
        let mut errors = Vec::new();
        check_table(&mut table, &mut errors);
        let keys: Vec<&str> = errors.iter().map(|e| e.key.as_str()).collect();
        assert!(keys.contains(&"server.listen"), "{keys:?}");
        assert!(keys.contains(&"server.bogus"), "{keys:?}");
        assert!(keys.contains(&"nonsense"), "{keys:?}");
        assert!(keys.contains(&"route[0].extra"), "{keys:?}");
        assert_eq!(errors.len(), 4);
        // What was reported is gone; the rest stays for validation.
        assert!(table["server"].as_table().is_some_and(Table::is_empty), "{table:?}");
        assert!(!table.contains_key("nonsense"));
        assert_eq!(table["route"][0]["prefix"].as_str(), Some("/api/"));
        assert!(table["route"][0].get("extra").is_none());
    }

    #[test]
    fn a_route_that_is_not_a_table_keeps_the_others_at_their_index() {
        let mut table: Table = toml::from_str("route = [1, { prefix = \"/api/\" }]\n").unwrap_or_default();
        let mut errors = Vec::new();
        check_table(&mut table, &mut errors);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].key, "route[0]");
        assert_eq!(table["route"][1]["prefix"].as_str(), Some("/api/"));
    }

    #[test]
    fn an_override_of_a_sub_table_key_lands_in_the_sub_table() {
        let mut table: Table = toml::from_str("[server]\nlisten = \"127.0.0.1:1\"\n").unwrap_or_default();
        let env = |name: &str| (name == "TOKENGATE_SERVER_TLS_CERT_FILE").then(|| "/c.pem".to_string());
        let mut errors = Vec::new();
        apply_env_overrides(&mut table, &env, &mut errors);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(table["server"]["tls"]["cert_file"].as_str(), Some("/c.pem"));
        assert_eq!(table["server"]["listen"].as_str(), Some("127.0.0.1:1"));
    }

    #[test]
    fn overrides_take_the_type_of_their_key() {
        let mut table = Table::new();
        let env = |name: &str| match name {
            "TOKENGATE_OAUTH_CLIENT_ID" => Some("12345".to_string()),
            "TOKENGATE_SESSION_MAX_SESSIONS" => Some("10".to_string()),
            "TOKENGATE_SESSION_COOKIE_SECURE" => Some("false".to_string()),
            "TOKENGATE_SERVER_ALLOWED_ORIGINS" => Some("http://a, http://b".to_string()),
            _ => None,
        };
        let mut errors = Vec::new();
        apply_env_overrides(&mut table, &env, &mut errors);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(table["oauth"]["client_id"].as_str(), Some("12345"));
        assert_eq!(table["session"]["max_sessions"].as_integer(), Some(10));
        assert_eq!(table["session"]["cookie_secure"].as_bool(), Some(false));
        assert_eq!(table["server"]["allowed_origins"].as_array().map(Vec::len), Some(2));
    }

    #[test]
    fn a_bad_override_names_its_variable() {
        let mut table = Table::new();
        let env = |name: &str| (name == "TOKENGATE_SESSION_MAX_SESSIONS").then(|| "lots".into());
        let mut errors = Vec::new();
        apply_env_overrides(&mut table, &env, &mut errors);
        assert_eq!(errors.len(), 1);
        assert!(errors[0].key.contains("TOKENGATE_SESSION_MAX_SESSIONS"));
    }
}
