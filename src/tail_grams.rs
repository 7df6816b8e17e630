//! The four-byte grams of a token's tail, as a 512-bit filter made with the token.
//!
//! The leak guard searches each token by its last [`MAX_NEEDLE_LEN`] bytes (its *tail*:
//! `scan`'s needles). A short answer is searched in a strided pass that tests only every
//! few positions against a filter of the tails' grams (`scan::TokenTails`). Made here, with
//! the token (`AccessToken::new`, `RefreshToken::new`), the filter lives as long as the
//! token and can never belong to another one: no response builds it, and a session the
//! needle cache does not hold costs nothing to search (one a second of 100,000 sessions
//! used to build its tails' set at every response, ~1.4k instructions).
//!
//! A leaf: it depends on nothing, so `secret` can hold one.

use std::fmt;

use zeroize::Zeroize;

/// The bytes of each token searched for: its tail, at most this long.
pub const MAX_NEEDLE_LEN: usize = 32;

/// Shorter secrets are not searched (they would match by chance).
pub const MIN_SECRET_LEN: usize = 8;

/// Bits in the filter (512: 64 bytes a token), one set per gram ([`bit`]).
const BITS_LOG2: u32 = 9;

/// A set of four-byte grams as 512 bits: a gram whose hash's bit is clear is not in it.
/// Its `Debug` shows no bit (they are hashes of a token's bytes).
#[derive(Clone, Copy)]
pub struct GramFilter([u64; 1 << (BITS_LOG2 - 6)]);

impl GramFilter {
    /// No gram.
    pub const EMPTY: GramFilter = GramFilter([0; 1 << (BITS_LOG2 - 6)]);

    /// Whether `gram` may be in the set (never `false` for one that is).
    #[inline]
    pub fn may_hold(&self, gram: [u8; 4]) -> bool {
        self.holds(Hashed::of(gram))
    }

    /// [`GramFilter::may_hold`] for a gram hashed once and tested against several filters
    /// (the union of a session's, then each token's).
    #[inline]
    pub fn holds(&self, gram: Hashed) -> bool {
        self.0[gram.0 / 64] & (1 << (gram.0 % 64)) != 0
    }

    /// The grams of both: a gram of either passes it.
    pub fn union(mut self, other: &GramFilter) -> GramFilter {
        for (word, theirs) in self.0.iter_mut().zip(&other.0) {
            *word |= theirs;
        }
        self
    }

    fn add(&mut self, gram: [u8; 4]) {
        let bit = bit(gram);
        self.0[bit / 64] |= 1 << (bit % 64);
    }
}

/// A gram's bit in any [`GramFilter`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hashed(usize);

impl Hashed {
    /// The bit of `gram`.
    #[inline]
    pub fn of(gram: [u8; 4]) -> Self {
        Hashed(bit(gram))
    }
}

/// Which four-byte grams a token's tail holds (all of them, at every offset): a position
/// whose four bytes are not in it is inside no occurrence of the tail. Empty for a secret
/// shorter than [`MIN_SECRET_LEN`], which is not searched. Wiped on drop like the token.
#[derive(Clone)]
pub struct TailGrams(GramFilter);

impl TailGrams {
    /// The grams of `secret`'s tail.
    pub fn of(secret: &[u8]) -> Self {
        let mut grams = GramFilter::EMPTY;
        if secret.len() >= MIN_SECRET_LEN {
            for gram in tail(secret).windows(4) {
                grams.add([gram[0], gram[1], gram[2], gram[3]]);
            }
        }
        Self(grams)
    }

    /// The filter.
    pub fn filter(&self) -> &GramFilter {
        &self.0
    }
}

/// The filter bit of a gram (a multiplicative hash, as `scan`'s sets use). One bit a gram:
/// a 32-byte tail's 29 grams set about 28 of the 512, so a gram not in it passes about once
/// in 18 tries. Two bits a gram (a Bloom filter with two hashes) would pass it once in 90,
/// but the second hash costs every probed position more than the rarer passes save: over
/// 2,000 random Digital River token pairs and the benchmark's 179-byte answer, 406
/// instructions a search against 363 (`examples/tails_cost.rs`).
#[inline]
fn bit(gram: [u8; 4]) -> usize {
    (u32::from_le_bytes(gram).wrapping_mul(0x85EB_CA77) >> (32 - BITS_LOG2)) as usize
}

/// The last [`MAX_NEEDLE_LEN`] bytes of `secret`.
pub fn tail(secret: &[u8]) -> &[u8] {
    &secret[secret.len().saturating_sub(MAX_NEEDLE_LEN)..]
}

impl Drop for TailGrams {
    fn drop(&mut self) {
        self.0 .0.zeroize();
    }
}

impl fmt::Debug for TailGrams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TailGrams(<redacted>)")
    }
}

impl fmt::Debug for GramFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("GramFilter(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_gram_of_the_tail_is_held_and_a_short_secret_has_none() {
        let token = b"0123456789abcdef0123456789abcdefXYZW0123456789";
        let grams = TailGrams::of(token);
        let tail = tail(token);
        assert_eq!(tail.len(), MAX_NEEDLE_LEN);
        for gram in tail.windows(4) {
            assert!(grams.filter().may_hold([gram[0], gram[1], gram[2], gram[3]]), "{gram:?}");
        }
        // A gram only before the tail is (almost surely) not held: the filter is the tail's.
        let set = grams.0 .0.iter().map(|word| word.count_ones()).sum::<u32>();
        assert!(set > 0 && set <= 29, "{set}: a bit a gram");
        assert!(TailGrams::of(b"short").0 .0.iter().all(|word| *word == 0));
        let (a, b) = (TailGrams::of(b"0123456789abcdef"), TailGrams::of(b"ghijklmnopqrstuv"));
        let either = a.filter().union(b.filter());
        for gram in [*b"0123", *b"cdef", *b"ghij", *b"stuv"] {
            assert!(either.may_hold(gram));
        }
    }

    #[test]
    fn debug_shows_no_bit() {
        let grams = TailGrams::of(b"0123456789abcdef");
        assert_eq!(format!("{grams:?}"), "TailGrams(<redacted>)");
        assert_eq!(format!("{:?}", grams.filter()), "GramFilter(<redacted>)");
    }
}
