//! Property tests of the three parsers that read untrusted text: the `Cookie` header, the
//! configuration file and the hosted login's callback parameters.
//!
//! They are the normal test suite's bounded counterpart of the `cargo fuzz` targets in
//! `fuzz/` (see `fuzz/README.md`): beyond "never panics", each checks what the parser
//! promises, and that no secret leaks through an error or a `Debug`.

use std::collections::BTreeMap;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use http::header::COOKIE;
use http::{HeaderMap, HeaderValue};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;
use tokengate::callback::{
    parse_callback_query, CallbackError, CallbackOutcome, CallbackParams, MAX_CALLBACK_BYTES,
};
use tokengate::config::keys::{env_name, Kind, KEYS};
use tokengate::config::Config;
use tokengate::cookie::{read_session_cookie, CookieLookup};
use tokengate::secret::AccessToken;
use tokengate::session_id::{KeyMemo, SessionId, SESSION_ID_LEN};

const COOKIE_NAME: &str = "__Host-tokengate";
const BASE64URL: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

fn config() -> ProptestConfig {
    ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() }
}

// ---------------------------------------------------------------------------------------
// Session ids and the Cookie header
// ---------------------------------------------------------------------------------------

/// An independent statement of what `SessionId::parse` accepts: 43 base64url characters
/// that decode to exactly 32 bytes, i.e. whose last character leaves its two spare bits 0.
fn is_canonical_id(value: &str) -> bool {
    let bytes = value.as_bytes();
    bytes.len() == SESSION_ID_LEN
        && bytes.iter().all(|b| BASE64URL.contains(b))
        && BASE64URL.iter().position(|c| Some(c) == bytes.last()).is_some_and(|index| index % 4 == 0)
}

fn encoded_id() -> impl Strategy<Value = String> {
    proptest::array::uniform32(any::<u8>()).prop_map(|bytes| URL_SAFE_NO_PAD.encode(bytes))
}

/// Strings near the shape of an id: right length, one character off, one too many or few.
fn id_candidate() -> impl Strategy<Value = String> {
    prop_oneof![
        encoded_id(),
        "[A-Za-z0-9_-]{43}",
        "[A-Za-z0-9_-]{42,44}",
        "[A-Za-z0-9_+/=-]{43}",
        (encoded_id(), any::<Index>(), "[+/=!. \"\\t%é]").prop_map(|(id, at, c)| {
            let mut chars: Vec<char> = id.chars().collect();
            let at = at.index(chars.len());
            chars[at] = c.chars().next().unwrap_or('!');
            chars.into_iter().collect()
        }),
        "\\PC{0,60}",
    ]
}

/// A cookie pair that is not ours: a token name and a value without `;`, or a bare word.
fn other_cookie() -> impl Strategy<Value = String> {
    prop_oneof![
        ("[A-Za-z0-9!#$%&'*+.^_`|~-]{1,20}", "[ -:<-~]{0,40}")
            .prop_filter("not our cookie", |(name, _)| name != COOKIE_NAME)
            .prop_map(|(name, value)| format!("{name}={value}")),
        "[A-Za-z]{1,8}",
        Just(String::new()),
        Just(format!("{COOKIE_NAME}x=1")),
        Just(format!("x{COOKIE_NAME}=1")),
    ]
}

fn cookie_headers(headers: &[String]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for header in headers {
        map.append(COOKIE, HeaderValue::from_str(header).expect("the strategy makes valid header values"));
    }
    map
}

/// Bytes a `HeaderValue` accepts (controls other than tab are moved up into letters).
fn header_bytes() -> impl Strategy<Value = Vec<u8>> {
    let raw = prop_oneof![
        vec(any::<u8>(), 0..120),
        "[ -~]{0,80}".prop_map(String::into_bytes),
        (vec(other_cookie(), 0..4), id_candidate()).prop_map(|(others, value)| {
            let mut pairs = others;
            pairs.push(format!(" {COOKIE_NAME} = \"{value}\" "));
            pairs.join(";").into_bytes()
        }),
    ];
    raw.prop_map(|bytes| {
        bytes
            .into_iter()
            .map(|b| match b {
                0x7f => b'~',
                b'\t' => b,
                0..0x20 => b | 0x40,
                _ => b,
            })
            .collect()
    })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn session_id_parse_accepts_exactly_canonical_base64url_of_32_bytes(value in id_candidate()) {
        let parsed = SessionId::parse(&value);
        prop_assert_eq!(parsed.is_some(), is_canonical_id(&value), "{:?}", value);
        if let Some(id) = parsed {
            prop_assert_eq!(id.expose(), value.as_str());
            prop_assert_eq!(URL_SAFE_NO_PAD.decode(&value).map(|b| b.len()).ok(), Some(32));
        }
    }

    #[test]
    fn every_32_byte_value_round_trips(bytes in proptest::array::uniform32(any::<u8>())) {
        let value = URL_SAFE_NO_PAD.encode(bytes);
        let id = SessionId::parse(&value);
        prop_assert_eq!(id.as_ref().map(SessionId::expose), Some(value.as_str()));
        prop_assert!(!format!("{id:?}").contains(&value), "Debug shows the id");
    }

    #[test]
    fn a_valid_id_is_found_among_any_other_cookies(
        id in encoded_id(),
        mut headers in vec(vec(other_cookie(), 0..6), 1..4),
        header_at in any::<Index>(),
        pair_at in any::<Index>(),
        quoted in any::<bool>(),
        padding in "[ \\t]{0,2}",
    ) {
        let pairs = header_at.get_mut(&mut headers);
        let value = if quoted { format!("\"{id}\"") } else { id.clone() };
        pairs.insert(pair_at.index(pairs.len() + 1), format!("{padding}{COOKIE_NAME}{padding}={padding}{value}"));
        let texts: Vec<String> = headers.iter().map(|pairs| pairs.join("; ")).collect();
        let lookup = read_session_cookie(&cookie_headers(&texts), COOKIE_NAME, &KeyMemo::default());
        prop_assert!(
            matches!(&lookup, CookieLookup::Present(found) if found.expose() == id),
            "{:?} in {:?}", lookup, texts
        );
    }

    #[test]
    fn without_our_cookie_the_lookup_is_absent(headers in vec(vec(other_cookie(), 0..6), 0..4)) {
        let texts: Vec<String> = headers.iter().map(|pairs| pairs.join(";")).collect();
        let lookup = read_session_cookie(&cookie_headers(&texts), COOKIE_NAME, &KeyMemo::default());
        prop_assert!(matches!(lookup, CookieLookup::Absent), "{:?} for {:?}", lookup, texts);
    }

    #[test]
    fn our_cookie_with_any_other_value_is_malformed(
        value in "[ -:<-~]{0,60}",
        others in vec(other_cookie(), 0..4),
    ) {
        let trimmed = value.trim().trim_matches('"');
        prop_assume!(!is_canonical_id(trimmed));
        let mut pairs = others;
        pairs.push(format!("{COOKIE_NAME}={value}"));
        let text = pairs.join("; ");
        let lookup = read_session_cookie(&cookie_headers(std::slice::from_ref(&text)), COOKIE_NAME, &KeyMemo::default());
        prop_assert!(matches!(lookup, CookieLookup::Malformed), "{:?} for {:?}", lookup, text);
    }

    #[test]
    fn any_cookie_header_is_read_without_panicking(headers in vec(header_bytes(), 0..4)) {
        let mut map = HeaderMap::new();
        for bytes in &headers {
            let value = HeaderValue::from_bytes(bytes);
            prop_assert!(value.is_ok(), "{:?}", bytes);
            if let Ok(value) = value {
                map.append(COOKIE, value);
            }
        }
        if let CookieLookup::Present(id) = read_session_cookie(&map, COOKIE_NAME, &KeyMemo::default()) {
            prop_assert!(is_canonical_id(id.expose()));
        }
    }
}

/// Browsers send every cookie of the site in one `Cookie` header over HTTP/1.1, including
/// cookies whose values hold UTF-8 (set by other scripts of the shop). Such a byte must not
/// hide the session cookie (it once did: the header was read with `to_str`, which fails).
#[test]
fn a_non_ascii_cookie_beside_ours_does_not_hide_it() {
    let id = SessionId::generate().expect("the OS has randomness");
    let header = format!("theme=caf\u{e9}; {COOKIE_NAME}={}", id.expose());
    let mut map = HeaderMap::new();
    map.append(
        COOKIE,
        HeaderValue::from_bytes(header.as_bytes()).expect("a cookie header is a valid header value"),
    );
    let lookup = read_session_cookie(&map, COOKIE_NAME, &KeyMemo::default());
    assert!(matches!(&lookup, CookieLookup::Present(found) if found == &id), "{lookup:?}");
}

// ---------------------------------------------------------------------------------------
// The configuration loader
// ---------------------------------------------------------------------------------------

/// The value the environment gives for the client secret: it must never appear in an
/// error or in the `Debug` of a loaded configuration.
const SECRET: &str = "pt-Secret-3b9f1c7e5a-VALUE";

const INTERESTING_STRINGS: &[&str] = &[
    "",
    "off",
    "0.0.0.0:8080",
    "127.0.0.1:0",
    "[::1]:8080",
    "nowhere",
    "0s",
    "90s",
    "30d",
    "1.5h",
    "99999999999999999999999d",
    "soon",
    "https://shop.example.com",
    "http://127.0.0.1:8081/base/",
    "ftp://x",
    "http://a?b",
    "/oauth20/token",
    "/x?y",
    "relative",
    "digitalriver",
    "oauth2",
    "base64",
    "plain",
    "strict",
    "lax",
    "none",
    "lazy",
    "memory",
    "redis",
    "text",
    "json",
    "info",
    "tokengate=debug,hyper=warn",
    "[{x=/(a+)+$/}]=trace",
    "header",
    "origin",
    "fail",
    "empty",
    "TOKENGATE_CLIENT_SECRET",
    "UNSET_VARIABLE",
    "__Host-tokengate",
    "__Secure-x",
    "tokengate",
    "bad name",
    "/nonexistent/path",
];

fn toml_string() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => proptest::sample::select(INTERESTING_STRINGS).prop_map(str::to_string),
        1 => "[ -~]{0,24}",
        1 => "\\PC{0,12}",
    ]
}

fn toml_value_of(kind: Kind) -> BoxedStrategy<toml::Value> {
    match kind {
        Kind::Str => toml_string().prop_map(toml::Value::String).boxed(),
        Kind::Int => prop_oneof![0..=20i64, any::<i64>(), Just(i64::MAX), Just(1 << 30)]
            .prop_map(toml::Value::Integer)
            .boxed(),
        Kind::Bool => any::<bool>().prop_map(toml::Value::Boolean).boxed(),
        Kind::StrList => {
            vec(toml_string().prop_map(toml::Value::String), 0..4).prop_map(toml::Value::Array).boxed()
        }
        Kind::Number => prop_oneof![
            (0.0..=1.0f64).prop_map(toml::Value::Float),
            any::<f64>().prop_map(toml::Value::Float),
            (0..=3i64).prop_map(toml::Value::Integer),
        ]
        .boxed(),
    }
}

fn toml_value(kind: Kind) -> BoxedStrategy<toml::Value> {
    // Mostly the key's own type, sometimes any other (a type error to report).
    let any_kind = prop_oneof![
        toml_value_of(Kind::Str),
        toml_value_of(Kind::Int),
        toml_value_of(Kind::Bool),
        toml_value_of(Kind::StrList),
        toml_value_of(Kind::Number),
    ];
    prop_oneof![6 => toml_value_of(kind), 1 => any_kind].boxed()
}

/// A file path key: never something that could block or be huge when read.
fn is_file_key(key: &str) -> bool {
    key.ends_with("_file")
}

fn section_entry() -> impl Strategy<Value = (usize, toml::Value)> {
    (0..KEYS.len()).prop_flat_map(|index| {
        let (_, key, kind) = KEYS[index];
        let value = if is_file_key(key) {
            Just(toml::Value::String("/nonexistent/tokengate-proptest".into())).boxed()
        } else {
            toml_value(kind)
        };
        (Just(index), value)
    })
}

fn route_table() -> impl Strategy<Value = toml::Table> {
    let prefix = prop_oneof![
        proptest::sample::select(
            &["/api/", "/api/public/", "/v1/", "/session/x", "/oauth20/", "/__x", "api"][..]
        )
        .prop_map(str::to_string),
        "/[a-z]{0,6}/?",
    ];
    let session = prop_oneof![
        proptest::sample::select(&["required", "optional", "none", "sometimes"][..]).prop_map(str::to_string),
        "[a-z]{0,8}",
    ];
    (proptest::option::of(prefix.clone()), proptest::option::of(prefix), proptest::option::of(session))
        .prop_map(|(prefix, upstream_prefix, session)| {
            let mut table = toml::Table::new();
            for (key, value) in
                [("prefix", prefix), ("upstream_prefix", upstream_prefix), ("session", session)]
            {
                if let Some(value) = value {
                    table.insert(key.into(), toml::Value::String(value));
                }
            }
            table
        })
}

fn empty_table() -> toml::Value {
    toml::Value::Table(toml::Table::new())
}

/// A configuration file built from the key table, with values of the right type or not.
fn config_text() -> impl Strategy<Value = String> {
    (vec(section_entry(), 0..14), vec(route_table(), 0..3), proptest::option::weighted(0.15, "[a-z_]{1,8}"))
        .prop_map(|(entries, routes, stray_section)| {
            let mut table = toml::Table::new();
            for (index, value) in entries {
                let (section, key, _) = KEYS[index];
                // `server.tls` is the table `tls` inside `[server]`.
                let (outer, inner) = section.split_once('.').map_or((section, None), |(o, i)| (o, Some(i)));
                let Some(outer) = table.entry(outer).or_insert_with(empty_table).as_table_mut() else {
                    continue;
                };
                let at = match inner {
                    Some(inner) => match outer.entry(inner).or_insert_with(empty_table).as_table_mut() {
                        Some(inner) => inner,
                        None => continue,
                    },
                    None => outer,
                };
                at.insert(key.into(), value);
            }
            if !routes.is_empty() {
                table.insert(
                    "route".into(),
                    toml::Value::Array(routes.into_iter().map(toml::Value::Table).collect()),
                );
            }
            if let Some(name) = stray_section {
                table.entry(name).or_insert_with(|| toml::Value::Table(toml::Table::new()));
            }
            toml::to_string(&table).expect("a TOML table renders as TOML")
        })
}

/// Environment overrides, keyed by variable name.
fn overrides() -> impl Strategy<Value = BTreeMap<String, String>> {
    vec((0..KEYS.len(), toml_string()), 0..4).prop_map(|pairs| {
        pairs
            .into_iter()
            .filter(|(index, _)| !is_file_key(KEYS[*index].1))
            .map(|(index, value)| (env_name(KEYS[index].0, KEYS[index].1), value))
            .collect()
    })
}

fn load(
    text: &str,
    overrides: &BTreeMap<String, String>,
) -> Result<Config, Vec<tokengate::config::ConfigError>> {
    let env = |name: &str| match name {
        "TOKENGATE_CLIENT_SECRET" => Some(SECRET.to_string()),
        _ => overrides.get(name).cloned(),
    };
    Config::from_toml(text, &env)
}

/// What every load must satisfy, whatever the input.
fn check_load(text: &str, overrides: &BTreeMap<String, String>) -> Result<(), TestCaseError> {
    match load(text, overrides) {
        Ok(config) => {
            let shown = format!("{config:?}");
            prop_assert!(!shown.contains(SECRET), "the secret is in the config's Debug: {}", shown);
        }
        Err(errors) => {
            prop_assert!(!errors.is_empty(), "Err with no error for {:?}", text);
            for error in &errors {
                let shown = format!("{error} {error:?}");
                prop_assert!(!shown.contains(SECRET), "the secret is in an error: {}", shown);
            }
        }
    }
    Ok(())
}

const MINIMAL: &str = "[oauth]\nclient_id = \"key\"\n[[route]]\nprefix = \"/api/\"\n";

proptest! {
    #![proptest_config(ProptestConfig { cases: 192, ..config() })]

    #[test]
    fn generated_configs_load_or_list_their_errors(text in config_text(), env in overrides()) {
        check_load(&text, &env)?;
    }

    #[test]
    fn arbitrary_text_loads_or_lists_its_errors(
        text in prop_oneof![
            "\\PC{0,200}",
            "((\\[{1,2}[a-z_.]{1,10}\\]{1,2}|[a-z_.\"]{1,15} ?= ?(\"[^\"\\\\]{0,20}\"|[0-9+-]{1,5}|true|false|\\[|\\{))\n){0,10}",
        ],
        env in overrides(),
    ) {
        check_load(&text, &env)?;
    }

    #[test]
    fn valid_values_load_as_written(
        idle in 1..100_000u64,
        unit in proptest::sample::select(&[("s", 1u64), ("m", 60), ("h", 3600), ("d", 86400)][..]),
        max_sessions in 1..1_000_000_000u64,
        secure in any::<bool>(),
        prefixes in proptest::collection::btree_set("/[a-z]{1,8}/", 1..5),
    ) {
        let mut text = format!("{MINIMAL}[session]\nidle_timeout = \"{idle}{}\"\ncookie_name = \"tg\"\n", unit.0);
        for prefix in prefixes.iter().filter(|p| !p.starts_with("/session") && !p.starts_with("/oauth20")) {
            if prefix != "/api/" {
                text.push_str(&format!("[[route]]\nprefix = \"{prefix}\"\nsession = \"optional\"\n"));
            }
        }
        let env: BTreeMap<String, String> = [
            ("TOKENGATE_SESSION_MAX_SESSIONS".to_string(), max_sessions.to_string()),
            ("TOKENGATE_SESSION_COOKIE_SECURE".to_string(), secure.to_string()),
        ]
        .into();
        let config = load(&text, &env).expect("a config of valid values loads");
        prop_assert_eq!(config.fixed.session.idle_timeout.as_secs(), idle * unit.1);
        prop_assert_eq!(config.fixed.session.max_sessions as u64, max_sessions);
        prop_assert_eq!(config.fixed.session.cookie_secure, secure);
        prop_assert_eq!(config.fixed.oauth.client_secret.expose(), SECRET);
        let lengths: Vec<usize> = config.live.routes.iter().map(|r| r.prefix.len()).collect();
        prop_assert!(lengths.windows(2).all(|w| w[0] >= w[1]), "not longest first: {:?}", lengths);
    }
}

#[test]
fn the_secret_read_from_any_variable_is_never_shown() {
    // Every key that names a variable points at the secret, and the loader must still only
    // ever say the variable's name.
    let text = format!(
        "{MINIMAL}[store]\nsnapshot_file = \"/nonexistent/snapshot\"\nencryption_key_env = \"TOKENGATE_CLIENT_SECRET\"\nurl_env = \"TOKENGATE_CLIENT_SECRET\"\n"
    );
    let errors = load(&text, &BTreeMap::new()).err().unwrap_or_default();
    assert!(!errors.is_empty());
    assert!(!errors.iter().any(|e| e.to_string().contains(SECRET)), "{errors:?}");
}

/// Found by `fuzz/` (config_loader): `log.level` (or `TOKENGATE_LOG_LEVEL`, or `RUST_LOG`
/// at start) with a directive such as `" a\u{e9}="` panicked inside tracing-subscriber's
/// `EnvFilter` parser (it slices the untrimmed directive at offsets into the trimmed one),
/// so `check-config` exited 101 with a panic instead of 78 with the list of problems.
/// `telemetry::parse_filter` now trims directives and refuses non-ASCII first.
#[test]
fn a_log_level_that_trips_the_filter_parser_is_an_error_not_a_panic() {
    for level in [" a\u{e9}=", "info, a\u{e9}=debug"] {
        let text = format!("{MINIMAL}[log]\nlevel = {level:?}\n");
        let loaded = std::panic::catch_unwind(|| load(&text, &BTreeMap::new()).map(|_| ()));
        assert!(loaded.is_ok(), "Config::from_toml panicked for log.level = {level:?}");
    }
}

// ---------------------------------------------------------------------------------------
// The callback query parser
// ---------------------------------------------------------------------------------------

// The characters of tokens, states and error codes, in the lengths each may have.
const TOKEN: &str = "[A-Za-z0-9._~+/=:-]{1,300}";
const STATE: &str = "[A-Za-z0-9._~+/=:-]{1,256}";
const CODE: &str = "[A-Za-z0-9._~+/=:-]{1,64}";

fn reserved(name: &str) -> bool {
    matches!(name, "access_token" | "expires_in" | "state" | "error")
}

fn extra_params() -> impl Strategy<Value = Vec<(String, String)>> {
    vec(("[a-z_]{1,12}".prop_filter("not ours", |n| !reserved(n)), "\\PC{0,20}"), 0..4)
}

fn encode(pairs: &[(String, String)]) -> String {
    let mut serializer = form_urlencoded::Serializer::new(String::new());
    for (name, value) in pairs {
        serializer.append_pair(name, value);
    }
    serializer.finish()
}

/// The `Debug` of a parsed callback must not depend on the token at all.
fn check_debug_hides_the_token(params: &CallbackParams) -> Result<(), TestCaseError> {
    if let CallbackOutcome::Token { access_token, expires_in } = &params.outcome {
        let shown = format!("{params:?}");
        let stand_in = CallbackParams {
            outcome: CallbackOutcome::Token { access_token: AccessToken::new("x"), expires_in: *expires_in },
            state: params.state.clone(),
        };
        let skeleton = format!("{stand_in:?}");
        prop_assert_eq!(&shown, &skeleton, "Debug depends on the token");
        if !skeleton.contains(access_token.expose()) {
            prop_assert!(!shown.contains(access_token.expose()));
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn a_well_formed_token_callback_round_trips(
        token in TOKEN,
        state in STATE,
        expires_in in proptest::option::of(any::<u64>()),
        extra in extra_params(),
        order in vec(any::<u32>(), 10),
    ) {
        let mut pairs = extra;
        pairs.push(("access_token".into(), token.clone()));
        pairs.push(("state".into(), state.clone()));
        pairs.push(("token_type".into(), "bearer".into()));
        if let Some(seconds) = expires_in {
            pairs.push(("expires_in".into(), seconds.to_string()));
        }
        let mut keyed: Vec<(u32, (String, String))> = order.into_iter().zip(pairs).collect();
        keyed.sort_by_key(|(key, _)| *key);
        let pairs: Vec<(String, String)> = keyed.into_iter().map(|(_, pair)| pair).collect();
        let input = encode(&pairs);
        let params = parse_callback_query(&input).expect("an encoded token callback parses");
        prop_assert_eq!(params.state.as_deref(), Some(state.as_str()));
        match &params.outcome {
            CallbackOutcome::Token { access_token, expires_in: parsed } => {
                prop_assert_eq!(access_token.expose(), token.as_str());
                prop_assert_eq!(*parsed, expires_in);
            }
            other => prop_assert!(false, "{:?}", other),
        }
        check_debug_hides_the_token(&params)?;
        // Without percent-encoding (as a fragment arrives) it reads the same, `+` aside,
        // which form encoding turns into a space.
        if !token.contains('+') && !state.contains('+') {
            let raw = format!("state={state}&access_token={token}");
            let again = parse_callback_query(&raw).expect("an unencoded token callback parses");
            prop_assert_eq!(again.outcome, CallbackOutcome::Token { access_token: AccessToken::new(token), expires_in: None });
        }
    }

    #[test]
    fn an_error_callback_round_trips(
        code in CODE,
        state in STATE,
        description in "\\PC{0,40}",
    ) {
        let pairs = vec![
            ("error".to_string(), code.clone()),
            ("error_description".to_string(), description),
            ("state".to_string(), state.clone()),
        ];
        let params = parse_callback_query(&encode(&pairs)).expect("an encoded error callback parses");
        prop_assert_eq!(params, CallbackParams { outcome: CallbackOutcome::Error { code }, state: Some(state) });
    }

    #[test]
    fn a_repeated_parameter_is_refused(
        name in proptest::sample::select(&["access_token", "expires_in", "state", "error"][..]),
        first in "\\PC{0,20}",
        second in "\\PC{0,20}",
        extra in extra_params(),
    ) {
        let mut pairs = extra;
        pairs.insert(0, (name.to_string(), first));
        pairs.push((name.to_string(), second));
        prop_assert_eq!(parse_callback_query(&encode(&pairs)).err(), Some(CallbackError::Repeated));
    }

    #[test]
    fn any_input_is_parsed_without_panicking_or_showing_a_token(
        input in prop_oneof![
            "\\PC{0,300}",
            vec(
                (
                    prop_oneof![
                        proptest::sample::select(&["access_token", "expires_in", "state", "error", "token_type"][..])
                            .prop_map(str::to_string),
                        "[a-z_%0-9]{0,8}",
                    ],
                    "[ -~]{0,24}",
                ).prop_map(|(name, value)| format!("{name}={value}")),
                0..6,
            ).prop_map(|pairs| pairs.join("&")),
            (0..64usize).prop_map(|extra| "a".repeat(MAX_CALLBACK_BYTES - 32 + extra)),
        ],
    ) {
        match parse_callback_query(&input) {
            Ok(params) => check_debug_hides_the_token(&params)?,
            Err(CallbackError::TooLarge) => prop_assert!(input.len() > MAX_CALLBACK_BYTES),
            Err(_) => prop_assert!(input.len() <= MAX_CALLBACK_BYTES),
        }
    }
}
