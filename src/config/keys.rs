//! The table of every `proxy.toml` key, and what it drives: the type check that reports
//! every bad key at once, and the `TOKENGATE_<SECTION>_<KEY>` environment overrides.
//!
//! Keeping the table next to the raw structs (a unit test checks they agree) means an
//! override can be parsed as the key's own type: `TOKENGATE_OAUTH_CLIENT_ID=12345` stays
//! a string and `TOKENGATE_SESSION_MAX_SESSIONS=10` becomes a number.

use toml::{Table, Value};

use super::ConfigError;

/// The TOML type a key holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Str,
    Int,
    Bool,
    StrList,
}

/// Every key of every `[section]`, with its type. `[[route]]` is checked separately.
pub const KEYS: &[(&str, &str, Kind)] = &[
    ("server", "listen", Kind::Str),
    ("server", "admin_listen", Kind::Str),
    ("server", "public_origin", Kind::Str),
    ("server", "allowed_origins", Kind::StrList),
    ("server", "max_body_bytes", Kind::Int),
    ("server", "shutdown_timeout", Kind::Str),
    ("server", "demo_page", Kind::Bool),
    ("server", "csrf", Kind::Str),
    ("server", "max_header_bytes", Kind::Int),
    ("server", "header_read_timeout", Kind::Str),
    ("server", "keep_alive_timeout", Kind::Str),
    ("server", "max_connections", Kind::Int),
    ("server", "trusted_proxy_depth", Kind::Int),
    ("server.tls", "cert_file", Kind::Str),
    ("server.tls", "key_file", Kind::Str),
    ("upstream", "base_url", Kind::Str),
    ("upstream", "connect_timeout", Kind::Str),
    ("upstream", "request_timeout", Kind::Str),
    ("upstream", "ca_file", Kind::Str),
    ("upstream", "pool_idle_timeout", Kind::Str),
    ("upstream", "pool_max_idle_per_host", Kind::Int),
    ("oauth", "flavor", Kind::Str),
    ("oauth", "client_id", Kind::Str),
    ("oauth", "client_secret_env", Kind::Str),
    ("oauth", "client_secret_file", Kind::Str),
    ("oauth", "token_path", Kind::Str),
    ("oauth", "access_token_path", Kind::Str),
    ("oauth", "password_encoding", Kind::Str),
    ("oauth", "authorize_carry_guest", Kind::Bool),
    ("oauth", "authorize_path", Kind::Str),
    ("oauth", "refresh_ahead", Kind::Str),
    ("oauth", "refresh_wait_timeout", Kind::Str),
    ("session", "cookie_name", Kind::Str),
    ("session", "cookie_secure", Kind::Bool),
    ("session", "same_site", Kind::Str),
    ("session", "idle_timeout", Kind::Str),
    ("session", "absolute_timeout", Kind::Str),
    ("session", "max_sessions", Kind::Int),
    ("session", "guest", Kind::Str),
    ("session", "sweep_interval", Kind::Str),
    ("store", "kind", Kind::Str),
    ("store", "url_env", Kind::Str),
    ("store", "encryption_key_env", Kind::Str),
    ("store", "snapshot_file", Kind::Str),
    ("store", "snapshot_interval", Kind::Str),
    ("store", "snapshot_on_error", Kind::Str),
    ("rate_limit", "new_sessions_per_minute", Kind::Int),
    ("rate_limit", "new_sessions_burst", Kind::Int),
    ("rate_limit", "token_concurrency", Kind::Int),
    ("leak_guard", "enabled", Kind::Bool),
    ("leak_guard", "max_body_bytes", Kind::Int),
    ("log", "format", Kind::Str),
    ("log", "level", Kind::Str),
];

/// The keys of one `[[route]]` table.
pub const ROUTE_KEYS: &[(&str, Kind)] =
    &[("prefix", Kind::Str), ("upstream_prefix", Kind::Str), ("session", Kind::Str)];

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
        _ => false,
    }
}

fn describe(kind: Kind) -> &'static str {
    match kind {
        Kind::Str => "a string",
        Kind::Int => "a non-negative integer",
        Kind::Bool => "true or false",
        Kind::StrList => "a list of strings",
    }
}

/// Reports every unknown section, unknown key and wrongly typed value in the file.
pub fn check_table(table: &Table, errors: &mut Vec<ConfigError>) {
    for (section, value) in table {
        if section == "route" {
            check_routes(value, errors);
            continue;
        }
        if !is_section(section) || section.contains('.') {
            errors.push(ConfigError::new(section, "unknown section"));
            continue;
        }
        check_section(section, value, errors);
    }
}

/// Checks the keys of `[section]`, descending into known sub-tables such as `[server.tls]`.
fn check_section(section: &str, value: &Value, errors: &mut Vec<ConfigError>) {
    let Some(keys) = value.as_table() else {
        errors.push(ConfigError::new(section, "must be a table"));
        return;
    };
    for (key, value) in keys {
        let path = format!("{section}.{key}");
        if is_section(&path) {
            check_section(&path, value, errors);
            continue;
        }
        match kind_of(section, key) {
            None => errors.push(ConfigError::new(&path, "unknown key")),
            Some(kind) if !matches_kind(value, kind) => {
                errors.push(ConfigError::new(&path, format!("must be {}", describe(kind))))
            }
            Some(_) => {}
        }
    }
}

fn check_routes(value: &Value, errors: &mut Vec<ConfigError>) {
    let Some(routes) = value.as_array() else {
        errors.push(ConfigError::new("route", "must be an array of [[route]] tables"));
        return;
    };
    for (index, route) in routes.iter().enumerate() {
        let Some(route) = route.as_table() else {
            errors.push(ConfigError::new(format!("route[{index}]"), "must be a table"));
            continue;
        };
        for (key, value) in route {
            let path = format!("route[{index}].{key}");
            match ROUTE_KEYS.iter().find(|(k, _)| k == key) {
                None => errors.push(ConfigError::new(&path, "unknown key")),
                Some((_, kind)) if !matches_kind(value, *kind) => {
                    errors.push(ConfigError::new(&path, format!("must be {}", describe(*kind))))
                }
                Some(_) => {}
            }
        }
    }
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
        let section_table = table.entry(section.to_string()).or_insert_with(|| Value::Table(Table::new()));
        if let Some(section_table) = section_table.as_table_mut() {
            section_table.insert(key.to_string(), value);
        }
    }
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
        let mut errors = Vec::new();
        check_table(&table, &mut errors);
        let keys: Vec<&str> = errors.iter().map(|e| e.key.as_str()).collect();
        assert!(keys.contains(&"server.listen"), "{keys:?}");
        assert!(keys.contains(&"server.bogus"), "{keys:?}");
        assert!(keys.contains(&"nonsense"), "{keys:?}");
        assert!(keys.contains(&"route[0].extra"), "{keys:?}");
        assert_eq!(errors.len(), 4);
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
