//! What each form the leak guard searches costs (issue 10: "measure the cost of each").
//!
//!     cargo run --release --example scan_cost
//!
//! Prices, for a Digital River session (access 160 hex, refresh 176 hex) and for 1 KiB
//! JWTs, the searchers' build and the streaming search (16 KiB frames, the overlap window
//! carried between them) of a 179-byte JSON answer and of 1 MiB of JSON, once with no `%`
//! or `\` in it and once with JSON-escaped slashes in every URL (`https:\/\/...`, as some
//! serializers write them: then every frame is also searched decoded). Each form is
//! switched on alone over the raw search, then all together (what the guard runs).
//! The build is split in two: the needles' bytes (computed at every cache miss) and the
//! `memmem` searchers (built only at a session's first stretch of at least
//! `FINDER_MIN_HAYSTACK` bytes); "miss + 179 B" is what a response costs the guard when its
//! session's needles are not cached: the bytes built, then the small answer searched.
//! A second table prices a search of N bytes with the filter loop against the prebuilt
//! searchers, which is how `FINDER_MIN_HAYSTACK` was chosen.
//! Medians of repeated runs; a benchmark, not a test: figures move with the machine.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokengate::scan::{Forms, Needles, Scanner};

const FRAME: usize = 16 * 1024;

fn main() {
    let sessions = [("Digital River (160 + 176 hex)", dr_tokens()), ("1 KiB JWTs", jwt_tokens())];
    let forms = [
        ("raw only", Forms::RAW),
        ("raw + base64/base64url", Forms { base64: true, escapes: false }),
        ("raw + JSON/percent escapes", Forms { base64: false, escapes: true }),
        ("all forms (the guard)", Forms::ALL),
    ];
    let small = Bytes::from_static(
        br#"{"shopper":{"currency":"USD","emailAddress":null,"firstName":null,"id":"Anonymous","lastName":null,"locale":"en_US","uri":"http://127.0.0.1:8081/v1/shoppers/me","username":null}}"#,
    );
    let plain = json_body(1 << 20, false);
    let escaped = json_body(1 << 20, true);
    println!("leak guard search cost per form (median of runs; µs unless noted)");
    println!(
        "{:<30} {:<28} {:>9} {:>10} {:>11} {:>14} {:>13} {:>15}",
        "tokens", "forms", "bytes", "searchers", "179 B JSON", "miss + 179 B", "1 MiB JSON", "1 MiB escaped"
    );
    for (name, tokens) in &sessions {
        for (form_name, forms) in forms {
            let secrets = || tokens.iter().map(|t| t.as_bytes());
            let build = median(2000, || {
                black_box(Needles::with_forms(secrets(), forms));
            });
            let searchers = median(200, || {
                let needles = Needles::with_forms(secrets(), forms).unwrap_or_else(|| panic!("needles"));
                needles.build_searchers();
                black_box(needles);
            })
            .saturating_sub(build);
            let needles =
                Arc::new(Needles::with_forms(secrets(), forms).unwrap_or_else(|| panic!("needles")));
            let small_cost = median(2000, || scan(&needles, &small, small.len()));
            let miss_cost = median(2000, || {
                let needles =
                    Arc::new(Needles::with_forms(secrets(), forms).unwrap_or_else(|| panic!("needles")));
                scan(&needles, &small, small.len());
            });
            let plain_cost = median(15, || scan(&needles, &plain, FRAME));
            let escaped_cost = median(15, || scan(&needles, &escaped, FRAME));
            println!(
                "{:<30} {:<28} {:>9.2} {:>10.2} {:>11.3} {:>14.3} {:>13.0} {:>15.0}",
                name,
                form_name,
                micros(build),
                micros(searchers),
                micros(small_cost),
                micros(miss_cost),
                micros(plain_cost),
                micros(escaped_cost)
            );
        }
    }
    crossover(&sessions[0].1);
}

/// A search of `len` bytes of JSON, all forms of Digital River tokens, with the filter loop
/// and with the prebuilt searchers (ns).
fn crossover(tokens: &[String]) {
    let needles = Needles::new(tokens.iter().map(|t| t.as_bytes())).unwrap_or_else(|| panic!("needles"));
    needles.build_searchers();
    let body = json_body(1 << 16, false);
    println!();
    println!("a search of N bytes, all forms, Digital River tokens (median, ns): filter loop vs searchers");
    println!("{:>8} {:>12} {:>12}", "N", "filter", "searchers");
    for len in [64, 179, 512, 1024, 2048, 4096, 16384] {
        let haystack = &body[..len];
        let filtered = median(2000, || assert!(!needles.found_by_filter(black_box(haystack))));
        let searched = median(2000, || assert!(!needles.found_by_searchers(black_box(haystack))));
        println!("{:>8} {:>12.0} {:>12.0}", len, filtered.as_secs_f64() * 1e9, searched.as_secs_f64() * 1e9);
    }
}

/// Streams `body` through a scanner in `frame`-sized frames.
fn scan(needles: &Arc<Needles>, body: &Bytes, frame: usize) {
    let mut scanner = Scanner::new(Arc::clone(needles));
    let mut at = 0;
    while at < body.len() {
        let end = (at + frame).min(body.len());
        let found = scanner.push(&body.slice(at..end));
        assert!(found.is_ok(), "a clean body");
        at = end;
    }
}

fn median(runs: usize, mut work: impl FnMut()) -> Duration {
    work();
    let mut times: Vec<Duration> = (0..runs)
        .map(|_| {
            let started = Instant::now();
            work();
            started.elapsed()
        })
        .collect();
    times.sort();
    times[times.len() / 2]
}

fn micros(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e6
}

/// A pseudo-random string over `alphabet` (fixed seed: the same tokens every run).
fn random(len: usize, alphabet: &[u8], seed: u64) -> String {
    let mut state = seed;
    (0..len)
        .map(|_| {
            state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            char::from(alphabet[(state >> 33) as usize % alphabet.len()])
        })
        .collect()
}

fn dr_tokens() -> Vec<String> {
    vec![random(160, b"0123456789abcdef", 1), random(176, b"0123456789abcdef", 2)]
}

fn jwt_tokens() -> Vec<String> {
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let jwt = |seed| format!("eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.{}", random(1024 - 37, alphabet, seed));
    vec![jwt(3), jwt(4)]
}

/// About `size` bytes of a JSON list of shopper-shaped items.
fn json_body(size: usize, escaped_slashes: bool) -> Bytes {
    let uri = if escaped_slashes {
        r"https:\/\/api.digitalriver.com\/v1\/shoppers\/me"
    } else {
        "https://api.digitalriver.com/v1/shoppers/me"
    };
    let item = format!(r#"{{"uri":"{uri}","id":"4343434343","locale":"en_US","currency":"USD"}},"#);
    let mut body = String::from(r#"{"items":["#);
    while body.len() + item.len() + 4 <= size {
        body.push_str(&item);
    }
    body.push_str("{}]}");
    Bytes::from(body)
}
