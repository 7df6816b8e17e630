//! The schema of `proxy.toml`, stated once: the serde structs that mirror the file before
//! validation, and the key table ([`KEYS`], [`ARRAYS`]) that drives the type check and
//! the `TOKENGATE_<SECTION>_<KEY>` overrides in [`super::keys`].
//!
//! Both come from the one list in the [`schema!`] invocation below: each key is written
//! once, as `name: Kind`, and becomes a struct field of the kind's type *and* a row of the
//! table. A key cannot be in one and not in the other, or have two types.
//!
//! Every field is optional so that a missing key falls back to its documented default in
//! `validate`, and every struct rejects unknown keys.

use serde::Deserialize;

use super::keys::Kind;

/// The Rust type a key of each [`Kind`] is read into.
macro_rules! raw_type {
    (Str) => { String };
    (Int) => { u64 };
    (Bool) => { bool };
    (StrList) => { Vec<String> };
    (Number) => { f64 };
}

/// Generates, from one list of sections (each with its `key: Kind` pairs and optional
/// sub-tables) and arrays of tables:
/// - `RawConfig`, with one field per section (defaulted when absent) and per array;
/// - one `Raw*` struct per section, sub-table and array, with an `Option` field per key
///   (a sub-table is an `Option` of its struct: its presence means something);
/// - [`KEYS`]: `(section path, key, kind)` for every section and sub-table key;
/// - [`ARRAYS`]: `(name, [(key, kind)])` for every array of tables.
macro_rules! schema {
    (
        sections {
            $(
                $(#[$section_doc:meta])*
                $section:ident: $Section:ident { $($key:ident: $kind:ident),* $(,)? }
                $(tables {
                    $(
                        $(#[$sub_doc:meta])*
                        $sub:ident: $Sub:ident { $($sub_key:ident: $sub_kind:ident),* $(,)? }
                    ),* $(,)?
                })?
            ),* $(,)?
        }
        arrays {
            $(
                $(#[$array_doc:meta])*
                $array:ident: $Array:ident { $($array_key:ident: $array_kind:ident),* $(,)? }
            ),* $(,)?
        }
    ) => {
        /// The whole file.
        #[derive(Debug, Default, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct RawConfig {
            $( #[serde(default)] pub $section: $Section, )*
            $( #[serde(default)] pub $array: Vec<$Array>, )*
        }

        $(
            $(#[$section_doc])*
            #[derive(Debug, Default, Deserialize)]
            #[serde(deny_unknown_fields)]
            pub struct $Section {
                $( pub $key: Option<raw_type!($kind)>, )*
                $($( pub $sub: Option<$Sub>, )*)?
            }

            $($(
                $(#[$sub_doc])*
                #[derive(Debug, Default, Deserialize)]
                #[serde(deny_unknown_fields)]
                pub struct $Sub {
                    $( pub $sub_key: Option<raw_type!($sub_kind)>, )*
                }
            )*)?
        )*

        $(
            $(#[$array_doc])*
            #[derive(Debug, Default, Deserialize)]
            #[serde(deny_unknown_fields)]
            pub struct $Array {
                $( pub $array_key: Option<raw_type!($array_kind)>, )*
            }
        )*

        /// Every key of every `[section]` and `[section.table]`, with its type, in the
        /// order of the schema. `[[route]]` keys are in [`ARRAYS`].
        pub const KEYS: &[(&str, &str, Kind)] = &[
            $(
                $( (stringify!($section), stringify!($key), Kind::$kind), )*
                $($($(
                    (concat!(stringify!($section), ".", stringify!($sub)), stringify!($sub_key), Kind::$sub_kind),
                )*)*)?
            )*
        ];

        /// The keys of each array of tables (`[[route]]`), with their types.
        pub const ARRAYS: &[(&str, &[(&str, Kind)])] = &[
            $( (stringify!($array), &[ $( (stringify!($array_key), Kind::$array_kind), )* ]), )*
        ];
    };
}

schema! {
    sections {
        /// `[server]`
        server: RawServer {
            listen: Str,
            admin_listen: Str,
            public_origin: Str,
            allowed_origins: StrList,
            cors: Bool,
            max_body_bytes: Int,
            shutdown_timeout: Str,
            demo_page: Bool,
            csrf: Str,
            max_header_bytes: Int,
            header_read_timeout: Str,
            keep_alive_timeout: Str,
            max_connections: Int,
            trusted_proxy_depth: Int,
        }
        tables {
            /// `[server.tls]`
            tls: RawTls {
                cert_file: Str,
                key_file: Str,
            },
        },
        /// `[upstream]`
        upstream: RawUpstream {
            base_url: Str,
            connect_timeout: Str,
            request_timeout: Str,
            ca_file: Str,
            pool_idle_timeout: Str,
            pool_max_idle_per_host: Int,
            protocol: Str,
        },
        /// `[oauth]`
        oauth: RawOAuth {
            flavor: Str,
            client_id: Str,
            client_secret_env: Str,
            client_secret_file: Str,
            token_path: Str,
            access_token_path: Str,
            password_encoding: Str,
            authorize_carry_guest: Bool,
            authorize_path: Str,
            refresh_ahead: Str,
            refresh_wait_timeout: Str,
            issuer: Str,
            client_auth: Str,
            scope: Str,
            revocation_path: Str,
            jwks_refetch_interval: Str,
        },
        /// `[session]`
        session: RawSession {
            cookie_name: Str,
            cookie_secure: Bool,
            same_site: Str,
            idle_timeout: Str,
            absolute_timeout: Str,
            max_sessions: Int,
            guest: Str,
            sweep_interval: Str,
        },
        /// `[store]`
        store: RawStore {
            kind: Str,
            url_env: Str,
            encryption_key_env: Str,
            pool_size: Int,
            connect_timeout: Str,
            command_timeout: Str,
            key_prefix: Str,
            lock_lease: Str,
            ca_file: Str,
            local_cache: Bool,
            local_cache_max: Int,
            snapshot_file: Str,
            snapshot_interval: Str,
            snapshot_on_error: Str,
        },
        /// `[rate_limit]`
        rate_limit: RawRateLimit {
            new_sessions_per_minute: Int,
            new_sessions_burst: Int,
            token_concurrency: Int,
        },
        /// `[leak_guard]`
        leak_guard: RawLeakGuard {
            enabled: Bool,
            max_body_bytes: Int,
        },
        /// `[client_hosted]`: the storefront's own sign-in (`POST /session/external`).
        client_hosted: RawClientHosted {
            secret_env: Str,
            secret_file: Str,
        },
        /// `[log]`
        log: RawLog {
            format: Str,
            level: Str,
            access: Bool,
        },
        /// `[tracing]`: OpenTelemetry traces over OTLP/HTTP (off without `otlp_endpoint`).
        tracing: RawTracing {
            otlp_endpoint: Str,
            service_name: Str,
            sample_ratio: Number,
            trust_traceparent: Bool,
            export_timeout: Str,
            batch_delay: Str,
            max_queue: Int,
            ca_file: Str,
        },
    }
    arrays {
        /// One `[[route]]`.
        route: RawRoute {
            prefix: Str,
            upstream_prefix: Str,
            session: Str,
            extra_methods: StrList,
        },
    }
}

#[cfg(test)]
mod tests {
    use toml::{Table, Value};

    use super::*;

    fn sample(kind: Kind) -> Value {
        match kind {
            Kind::Str => Value::String("x".into()),
            Kind::Int => Value::Integer(7),
            Kind::Bool => Value::Boolean(true),
            Kind::StrList => Value::Array(vec![Value::String("x".into())]),
            Kind::Number => Value::Float(0.5),
        }
    }

    /// A file that sets every key of the table deserializes into the structs with every
    /// field set (the macro makes this so; the test shows it).
    #[test]
    fn the_key_table_and_the_structs_describe_the_same_file() {
        let mut file = Table::new();
        for (section, key, kind) in KEYS {
            let mut table = &mut file;
            for part in section.split('.') {
                let entry = table.entry(part.to_string()).or_insert_with(|| Value::Table(Table::new()));
                table = match entry {
                    Value::Table(inner) => inner,
                    _ => panic!("{section} is not a table"),
                };
            }
            table.insert(key.to_string(), sample(*kind));
        }
        for (array, keys) in ARRAYS {
            let route: Table = keys.iter().map(|(key, kind)| (key.to_string(), sample(*kind))).collect();
            file.insert(array.to_string(), Value::Array(vec![Value::Table(route)]));
        }
        let raw: RawConfig = Value::Table(file).try_into().unwrap_or_else(|e| panic!("{e}"));
        let shown = format!("{raw:?}");
        assert!(!shown.contains("None"), "a key of the table has no field: {shown}");
        assert_eq!(raw.server.max_body_bytes, Some(7));
        assert_eq!(raw.server.tls.and_then(|tls| tls.key_file).as_deref(), Some("x"));
        assert_eq!(raw.route.len(), 1);
    }
}
