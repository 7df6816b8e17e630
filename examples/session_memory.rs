//! Resident memory per session in the memory store (the benchmark of `bench/memory.sh`).
//!
//! Inserts `--sessions` sessions into a [`MemoryStore`] the way the proxy does: a key
//! derived from a fresh [`SessionId`], an `Arc<SessionRecord>` whose tokens were copied
//! out of a parsed token-endpoint answer (`AccessToken::new(&str)`, as the token client
//! does). It reads the process's `VmRSS` from `/proc/self/status` before and after (and
//! after `malloc_trim(0)`, glibc's allocator being the one tokengate uses), and glibc's
//! own count of bytes in use (`mallinfo2`), then prints the bytes per session, the token
//! bytes per session and the overhead beyond the token bytes.
//!
//! ```sh
//! cargo run --release --example session_memory -- --sessions 1000000 --access 160 --refresh 176
//! ```
//!
//! It measures; it asserts nothing (the overhead is compared with a budget by the script).

use std::sync::Arc;
use std::time::Instant;

use tokengate::secret::{AccessToken, RefreshToken};
use tokengate::session_id::SessionId;
use tokengate::store::{MemoryStore, SessionKind, SessionRecord, SessionStore};

/// glibc's `struct mallinfo2` (every field a `size_t`).
#[repr(C)]
#[derive(Default)]
struct MallInfo2 {
    arena: usize,
    ordblks: usize,
    smblks: usize,
    hblks: usize,
    hblkhd: usize,
    usmblks: usize,
    fsmblks: usize,
    uordblks: usize,
    fordblks: usize,
    keepcost: usize,
}

extern "C" {
    fn malloc_trim(pad: usize) -> i32;
    fn mallinfo2() -> MallInfo2;
}

/// Bytes glibc's malloc has handed out and not had back (small chunks plus mmapped ones).
fn heap_in_use() -> usize {
    // SAFETY: mallinfo2 only reads the allocator's statistics (glibc ≥ 2.33).
    let info = unsafe { mallinfo2() };
    info.uordblks + info.hblkhd
}

fn trim() {
    // SAFETY: malloc_trim returns free memory to the system; no pointer is involved.
    unsafe { malloc_trim(0) };
}

/// The process's resident set, in bytes, from `/proc/self/status`.
fn rss() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse::<usize>().ok())
        .map_or(0, |kib| kib * 1024)
}

struct Args {
    sessions: usize,
    access: usize,
    refresh: usize,
}

fn args() -> Args {
    let mut parsed = Args { sessions: 1_000_000, access: 160, refresh: 176 };
    let mut words = std::env::args().skip(1);
    while let Some(flag) = words.next() {
        let value = words.next().and_then(|v| v.parse::<usize>().ok());
        match (flag.as_str(), value) {
            ("--sessions", Some(n)) => parsed.sessions = n,
            ("--access", Some(n)) => parsed.access = n,
            ("--refresh", Some(n)) => parsed.refresh = n,
            _ => {
                eprintln!("usage: session_memory [--sessions N] [--access BYTES] [--refresh BYTES]");
                std::process::exit(2);
            }
        }
    }
    parsed
}

/// `len` hex digits that differ from session to session (a splitmix64 stream).
fn fill_hex(text: &mut String, len: usize, seed: &mut u64) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    text.clear();
    while text.len() < len {
        *seed = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = *seed;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        for shift in (0..64).step_by(4) {
            if text.len() < len {
                text.push(char::from(DIGITS[((z >> shift) & 0xf) as usize]));
            }
        }
    }
}

fn main() {
    let Args { sessions, access, refresh } = args();
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap_or_else(|e| panic!("{e}"));
    let store = MemoryStore::new(sessions);
    // Scratch buffers, as the token client's parsed JSON answer: the token types copy
    // out of them exactly as `AccessToken::new(&str)` does on the request path.
    let (mut access_text, mut refresh_text) = (String::new(), String::new());
    let mut seed = 0x5eed_u64;
    fill_hex(&mut access_text, access, &mut seed);
    trim();
    let (rss_before, heap_before) = (rss(), heap_in_use());

    let started = Instant::now();
    runtime.block_on(async {
        for _ in 0..sessions {
            let key = SessionId::generate().unwrap_or_else(|e| panic!("{e}")).key();
            fill_hex(&mut access_text, access, &mut seed);
            fill_hex(&mut refresh_text, refresh, &mut seed);
            let record = Arc::new(SessionRecord {
                kind: SessionKind::Guest,
                access_token: AccessToken::new(access_text.as_str()),
                refresh_token: (refresh > 0).then(|| RefreshToken::new(refresh_text.as_str())),
                access_expires_at: 1_900_000_000,
                created_at: 1_800_000_000,
                absolute_expires_at: 1_900_000_000,
                generation: 0,
                identity: None,
            });
            store.insert(key, record, 1_800_000_000).await.unwrap_or_else(|e| panic!("{e}"));
        }
    });
    let elapsed = started.elapsed();
    let (rss_after, heap_after) = (rss(), heap_in_use());
    trim();
    let rss_trimmed = rss();

    let per = |bytes: usize| bytes.saturating_sub(0) as f64 / sessions as f64;
    let token_bytes = access + refresh;
    let rss_per = per(rss_after.saturating_sub(rss_before));
    let trimmed_per = per(rss_trimmed.saturating_sub(rss_before));
    let heap_per = per(heap_after.saturating_sub(heap_before));
    println!("allocator            glibc malloc (the system allocator; tokengate sets no other)");
    println!("sessions             {sessions} (counted: {:?})", store.counts());
    println!("tokens               access {access} B + refresh {refresh} B = {token_bytes} B per session");
    println!("inserted in          {:.2} s", elapsed.as_secs_f64());
    println!(
        "VmRSS before/after   {} KiB / {} KiB (after malloc_trim: {} KiB)",
        rss_before / 1024,
        rss_after / 1024,
        rss_trimmed / 1024
    );
    println!(
        "per session (RSS)    {rss_per:.1} B, overhead beyond tokens {:.1} B",
        rss_per - token_bytes as f64
    );
    println!(
        "per session (trim)   {trimmed_per:.1} B, overhead beyond tokens {:.1} B",
        trimmed_per - token_bytes as f64
    );
    println!(
        "per session (malloc) {heap_per:.1} B in use, overhead beyond tokens {:.1} B",
        heap_per - token_bytes as f64
    );
    // One line for the script to read: the trimmed RSS overhead, in whole bytes.
    println!("OVERHEAD_BYTES={:.0}", trimmed_per - token_bytes as f64);
    drop(store);
}
