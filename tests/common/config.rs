//! The proxy's configuration file as typed TOML tables, so a test changes one key with a
//! method call instead of editing text:
//!
//! ```ignore
//! let config = ProxyToml::harness()
//!     .set("server", "csrf", "origin")
//!     .set("server.tls", "cert_file", cert.display().to_string())
//!     .remove("server", "admin_listen")
//!     .route("/shop/", "/v1/", "required");
//! ```
//!
//! A section is a top-level table (`server`, `upstream`, `oauth`, `session`, `store`,
//! `log`, `rate_limit`, `leak_guard`, …) or a dotted path to a nested one (`server.tls`);
//! it is created when first set. Routes are the `[[route]]` array, kept in order. The
//! file is rendered by the `toml` crate, so quoting and escaping are never a test's
//! problem. Unknown sections or keys are not refused here: the proxy refuses them, which
//! is what the config tests want to see.

use std::path::Path;

use toml::{Table, Value};

use super::{CLIENT_ID, COOKIE};

/// A proxy configuration under construction.
#[derive(Debug, Clone, PartialEq)]
pub struct ProxyToml {
    document: Table,
}

impl Default for ProxyToml {
    fn default() -> Self {
        ProxyToml::harness()
    }
}

impl ProxyToml {
    /// No key at all: for configs that exercise the loader itself.
    pub fn empty() -> ProxyToml {
        ProxyToml { document: Table::new() }
    }

    /// The configuration every integration test starts from: loopback listeners on port 0
    /// (admin included), `http://shop.test` as the public origin, 5 s upstream timeouts
    /// and refresh-ahead, lazy guests, trace logging with the access log on, and three routes (`/api/` required,
    /// `/api/public/` none, `/api/maybe/` optional; the last two reach the mock's
    /// `/v1/debug/`). `upstream.base_url` is left out: `Env` points it at its mock.
    pub fn harness() -> ProxyToml {
        ProxyToml::empty()
            .set("server", "listen", "127.0.0.1:0")
            .set("server", "admin_listen", "127.0.0.1:0")
            .set("server", "public_origin", "http://shop.test")
            .set("server", "max_body_bytes", 8 * 1024 * 1024)
            .set("server", "shutdown_timeout", "10s")
            .set("upstream", "connect_timeout", "1s")
            .set("upstream", "request_timeout", "5s")
            .set("oauth", "client_id", CLIENT_ID)
            .set("oauth", "client_secret_env", "TEST_CLIENT_SECRET")
            .set("oauth", "refresh_ahead", "5s")
            .set("session", "cookie_name", COOKIE)
            .set("session", "cookie_secure", false)
            .set("session", "idle_timeout", "1h")
            .set("session", "absolute_timeout", "1d")
            .set("session", "max_sessions", 10_000)
            .set("session", "guest", "lazy")
            .set("log", "level", "trace")
            .set("log", "access", true)
            .route("/api/", "/v1/", "required")
            .route("/api/public/", "/v1/debug/", "none")
            .route("/api/maybe/", "/v1/debug/", "optional")
    }

    /// [`ProxyToml::harness`] with `upstream.base_url` set.
    pub fn for_upstream(base_url: &str) -> ProxyToml {
        ProxyToml::harness().set("upstream", "base_url", base_url)
    }

    /// Sets `section.key` (creating the section), replacing any previous value.
    pub fn set(mut self, section: &str, key: &str, value: impl Into<Value>) -> ProxyToml {
        self.section_mut(section).insert(key.to_string(), value.into());
        self
    }

    /// Removes `section.key`; the key must be there (a test that removes a key it never
    /// had is testing nothing).
    pub fn remove(mut self, section: &str, key: &str) -> ProxyToml {
        let removed = self.section_mut(section).remove(key);
        assert!(removed.is_some(), "{section}.{key} is not in the config to remove");
        self
    }

    /// Removes a whole section (a top-level table or a dotted path to a nested one).
    pub fn remove_section(mut self, section: &str) -> ProxyToml {
        let (parent, name) = match section.rsplit_once('.') {
            Some((parent, name)) => (self.section_mut(parent), name),
            None => (&mut self.document, section),
        };
        assert!(parent.remove(name).is_some(), "section {section} is not in the config to remove");
        self
    }

    /// Appends a `[[route]]` with these three keys.
    pub fn route(self, prefix: &str, upstream_prefix: &str, session: &str) -> ProxyToml {
        self.route_with([("prefix", prefix), ("upstream_prefix", upstream_prefix), ("session", session)])
    }

    /// Appends a `[[route]]` with exactly these keys (e.g. an incomplete one, or one with
    /// a key `route` does not take).
    pub fn route_with<V: Into<Value>>(
        mut self,
        keys: impl IntoIterator<Item = (&'static str, V)>,
    ) -> ProxyToml {
        let table: Table = keys.into_iter().map(|(key, value)| (key.to_string(), value.into())).collect();
        let routes = self.document.entry("route").or_insert_with(|| Value::Array(Vec::new()));
        match routes {
            Value::Array(routes) => routes.push(Value::Table(table)),
            other => panic!("route is not an array of tables: {other}"),
        }
        self
    }

    /// Drops the `[[route]]` with this prefix (panics if there is none).
    pub fn remove_route(mut self, prefix: &str) -> ProxyToml {
        let routes = self.document.get_mut("route").and_then(Value::as_array_mut);
        let routes = routes.unwrap_or_else(|| panic!("no [[route]] to remove {prefix} from"));
        let before = routes.len();
        routes.retain(|route| route.get("prefix").and_then(Value::as_str) != Some(prefix));
        assert_eq!(routes.len() + 1, before, "exactly one route has the prefix {prefix}");
        self
    }

    /// Drops every `[[route]]`.
    pub fn without_routes(mut self) -> ProxyToml {
        self.document.remove("route");
        self
    }

    /// The value of `section.key`, if set.
    pub fn get(&self, section: &str, key: &str) -> Option<&Value> {
        let mut table = &self.document;
        for name in section.split('.') {
            table = table.get(name)?.as_table()?;
        }
        table.get(key)
    }

    /// The value of `section.key` as a string, if it is one.
    pub fn get_str(&self, section: &str, key: &str) -> Option<&str> {
        self.get(section, key).and_then(Value::as_str)
    }

    /// How many `[[route]]` entries there are.
    pub fn route_count(&self) -> usize {
        self.document.get("route").and_then(Value::as_array).map_or(0, Vec::len)
    }

    /// The TOML text.
    pub fn render(&self) -> String {
        toml::to_string(&self.document).expect("a TOML table renders as TOML")
    }

    /// Writes the TOML text to `path`.
    pub fn write(&self, path: &Path) {
        std::fs::write(path, self.render()).expect("the config file is writable");
    }

    fn section_mut(&mut self, section: &str) -> &mut Table {
        let mut table = &mut self.document;
        for name in section.split('.') {
            assert!(!name.is_empty(), "empty name in section {section:?}");
            let entry = table.entry(name).or_insert_with(|| Value::Table(Table::new()));
            table = match entry {
                Value::Table(inner) => inner,
                other => panic!("{name} in {section} is a {}, not a table", other.type_str()),
            };
        }
        table
    }
}
