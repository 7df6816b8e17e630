//! Instructions of one short answer's search by the leak guard, each way it can be done,
//! over 2,000 random Digital River token pairs (160 and 176 hex characters) and the
//! benchmark's 179-byte JSON answer. Run it under callgrind and read each function's
//! inclusive cost divided by 2,000:
//!
//!     cargo build --release --example tails_cost
//!     valgrind --tool=callgrind --callgrind-out-file=tails.out target/release/examples/tails_cost
//!     callgrind_annotate --inclusive=yes tails.out | grep "=> .*tails_cost::"
//!
//! * `built_then_searched`: the needles built, then the answer searched (what a response
//!   cost when its session's needles were not in the `NeedleCache`);
//! * `prebuilt_searched`: the answer searched with needles already built (a cache hit,
//!   without the cache's own lookup);
//! * `tails_searched`: `TokenTails` made from the tokens and the grams made with them, then
//!   the answer searched (what every such response costs now).
//!
//! Random tokens, because how often a filter passes a probed position by chance depends on
//! the token bytes: one fixed pair (the callgrind benchmark's) can be lucky or not.
use std::hint::black_box;

use tokengate::scan::{Needles, TokenTails};
use tokengate::tail_grams::TailGrams;

const BODY: &[u8] = br#"{"shopper":{"currency":"USD","emailAddress":null,"firstName":null,"id":"Anonymous","lastName":null,"locale":"en_US","uri":"http://127.0.0.1:8081/v1/shoppers/me","username":null}}"#;

const PAIRS: u64 = 2000;

/// `len` hex characters from a xorshift seeded by `seed`.
fn hex(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            b"0123456789abcdef"[(x % 16) as usize]
        })
        .collect()
}

#[inline(never)]
fn built_then_searched(pairs: &[(Vec<u8>, Vec<u8>)]) -> usize {
    pairs
        .iter()
        .filter(|(access, refresh)| {
            Needles::new([access.as_slice(), refresh.as_slice()]).is_some_and(|n| n.found_in(black_box(BODY)))
        })
        .count()
}

#[inline(never)]
fn prebuilt_searched(needles: &[Needles]) -> usize {
    needles.iter().filter(|needles| needles.found_in(black_box(BODY))).count()
}

#[inline(never)]
fn tails_searched(pairs: &[(Vec<u8>, Vec<u8>)], grams: &[(TailGrams, TailGrams)]) -> usize {
    pairs
        .iter()
        .zip(grams)
        .filter(|((access, refresh), (access_grams, refresh_grams))| {
            let tails =
                TokenTails::new((access.as_slice(), access_grams), Some((refresh.as_slice(), refresh_grams)));
            tails.and_then(|tails| tails.found_in(black_box(BODY))) == Some(true)
        })
        .count()
}

fn main() {
    let pairs: Vec<_> = (0..PAIRS).map(|i| (hex(i, 160), hex(i + 100_000, 176))).collect();
    let needles: Vec<Needles> = pairs
        .iter()
        .filter_map(|(access, refresh)| Needles::new([access.as_slice(), refresh.as_slice()]))
        .collect();
    let grams: Vec<_> =
        pairs.iter().map(|(access, refresh)| (TailGrams::of(access), TailGrams::of(refresh))).collect();
    // None of the answers holds a token: every search runs to its end.
    println!(
        "hits: built {}, prebuilt {}, tails {} (of {PAIRS})",
        built_then_searched(&pairs),
        prebuilt_searched(&needles),
        tails_searched(&pairs, &grams)
    );
}
