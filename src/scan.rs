//! Searching a response body for a session's tokens as it streams, in every form a page
//! could turn back into the token.
//!
//! **Forms.** A token may come back raw, JSON-escaped (`\/`, or any character as `\u00XX`),
//! percent-encoded (any character as `%XX`), or base64 / base64url encoded inside a larger
//! encoded blob. The escapes can be applied to any subset of characters, so they cannot be
//! listed in advance: each scanned stretch is also searched in a *decoded view* where
//! `\uXXXX`, `\/`, `\\`, `\"` and `%XX` are undone. Base64 depends on where the token
//! starts within the 3-byte groups; for each of the three alignments the part of the
//! encoding that does not depend on the neighbouring bytes is a needle of its own, in the
//! standard and the URL-safe alphabet.
//!
//! **Streaming.** There is no whole-body buffer and no size above which scanning stops:
//! each frame is searched together with the last [`Scanner::window`] bytes before it (the
//! longest stretch one encoded token can span), so an occurrence split across frames is
//! found in the frame that completes it. Bytes go out as soon as their frame is searched;
//! a hit in a later frame is reported, and the caller ends the response mid-way (the
//! connection or stream is reset, never completed).
//!
//! **Needles.** Each token is searched by its last [`MAX_NEEDLE_LEN`] bytes: every
//! occurrence of the whole token holds them, and 32 bytes of a random token (128 bits for
//! hex, more for base64 or a JWT's signature) never turn up in a body by chance, so the
//! search finds every full occurrence while its needles, its overlap window and its
//! building cost stay the same whatever the token's length (a 1 KiB JWT costs what a
//! 160-character Digital River token costs). A stretch of at least [`FINDER_MIN_HAYSTACK`]
//! bytes is searched with one `memchr::memmem` searcher per needle (SIMD); building a
//! multi-pattern automaton (Aho-Corasick) for them costs hundreds of microseconds to
//! milliseconds, far more than a few vectorised passes over a typical body. The searchers
//! themselves cost several microseconds to build for a session's dozen needles, more than
//! searching a short stretch without them, so they are built only at a session's first long
//! stretch; shorter ones (header values, most JSON answers) are searched in a strided pass:
//! only every `stride`-th position is tested against a filter of every four-byte gram of
//! every needle (an occurrence always covers such a position), and where it passes the
//! starts that could cover it are compared in full. The base64 cores are encoded only at a
//! session's first stretch holding a run of base64 characters long enough to be one (most
//! JSON answers and header values hold none). The needles (and any searchers) are built once
//! per session generation and shared by every response of that generation ([`NeedleCache`]).
//! Most stretches need none of them: a header value or a short answer with no escape and no
//! long base64 run is searched for the raw tails alone, with the gram filter each token was
//! made with ([`TokenTails`], [`crate::tail_grams`]), so it costs nothing to build whether
//! or not the cache holds the session. Every needle is searched over the raw bytes, and over
//! the decoded view only when the stretch holds a `%` or `\`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use base64::engine::general_purpose::STANDARD_NO_PAD;
use base64::Engine;
use bytes::{Bytes, BytesMut};
use memchr::memmem::Finder;

use crate::session_id::SessionKey;
pub use crate::tail_grams::MAX_NEEDLE_LEN;
use crate::tail_grams::{tail, GramFilter, Hashed, TailGrams, MIN_SECRET_LEN};

/// The longest encoding of one character in the forms searched (`\u00XX`).
const MAX_ESCAPE_LEN: usize = 6;

/// The session's tokens, in every form searched. Its `Debug` shows no token byte.
///
/// The needles come in two sets: the raw tails, built with the needles (a few dozen bytes
/// and two small filters), and the base64 cores, built only at the first stretch that could
/// hold one: a core is made of base64 characters alone, so a stretch without a run of them
/// as long as the shortest core (a JSON answer of short words, a header value) holds none,
/// and a session whose answers never carry such a run never pays for encoding its tokens.
/// Within a set, the `memmem` searchers, which cost several microseconds to build for a
/// session's dozen needles, are built the first time a stretch of at least
/// [`FINDER_MIN_HAYSTACK`] bytes is searched and kept from then on; shorter stretches are
/// searched in one strided pass ([`Needles::found_by_stride`]). Every search finds every
/// needle at every position.
pub struct Needles {
    /// The raw tails, in the order given.
    raw: RawSet,
    /// The base64 cores of the raw tails (`None`: none is long enough to search for).
    encoded: OnceLock<Option<Box<EncodedSet>>>,
    /// The shortest base64 core's length: a stretch with no run of base64 characters this
    /// long holds no core. `None` when base64 is not searched (or no tail has a core).
    shortest_core: Option<usize>,
    /// The fewest bytes any form of a needle takes (a raw tail or a base64 core; escaped
    /// forms are longer, undoing escapes only shortens): a shorter stretch holds none, so
    /// most header values are passed over without a search.
    shortest: usize,
    /// The longest raw stretch one occurrence can span.
    window: usize,
    /// Whether stretches holding `%` or `\` are also searched with their escapes undone.
    escapes: bool,
}

/// Needles searched together, with what makes the search fast: a filter of `F` words of
/// the needles' first four bytes and one of `G` words of their grams, sized for how many
/// needles a set holds (a small set is built at every needle-cache miss, so its bytes count).
struct NeedleSet<const F: usize, const G: usize> {
    /// Every needle, end to end.
    bytes: Box<[u8]>,
    /// Where each needle ends in `bytes`.
    ends: Box<[usize]>,
    /// One bit per hash of the first four bytes of some needle: a position whose four
    /// bytes hash to a clear bit starts no needle.
    filter: [u64; F],
    /// One bit per hash of four bytes inside some needle: the strided search
    /// ([`NeedleSet::found_by_stride`]) tests only every `stride`-th position against it.
    grams: [u64; G],
    /// The shortest needle's length, less three: every occurrence of a needle holds four
    /// whole bytes starting at a multiple of this.
    stride: usize,
    /// The longest needle's length.
    longest_needle: usize,
    /// The `memmem` searchers, built at the first long stretch.
    finders: OnceLock<Box<[Finder<'static>]>>,
}

/// Stretches at least this long are searched with the prebuilt `memmem` searchers (SIMD,
/// ~20 µs per MiB a needle), shorter ones with the filter loop (about a nanosecond a byte
/// for all needles together, nothing to build): under this length the searchers' build
/// would cost more than it saves (measured with `examples/scan_cost.rs`).
pub const FINDER_MIN_HAYSTACK: usize = 2048;

/// The raw tails (a session's two): 2 prefixes in 256 bits, and the grams the strided
/// search tests (58 for two 32-byte Digital River tails) in 2,048 bits, so about 3% of the
/// probed positions pass. 300 bytes of filters, written at every needle-cache miss.
type RawSet = NeedleSet<4, 32>;

/// The base64 cores (a dozen): 12 prefixes in 1,024 bits (about 1% of the positions pass
/// and are compared in full) and about 400 grams in 4,096 bits (a tenth).
type EncodedSet = NeedleSet<16, 64>;

/// The forms of a token searched besides the raw one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Forms {
    /// base64 and base64url inside a larger encoded blob (three alignments each).
    pub base64: bool,
    /// JSON escapes (`\uXXXX`, `\/`) and percent-encoding, undone in a decoded view.
    pub escapes: bool,
}

impl Forms {
    /// Every form: what the leak guard searches.
    pub const ALL: Forms = Forms { base64: true, escapes: true };
    /// The raw token alone.
    pub const RAW: Forms = Forms { base64: false, escapes: false };
}

impl std::fmt::Debug for Needles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let encoded = self.encoded.get().and_then(Option::as_deref);
        f.debug_struct("Needles")
            .field("raw", &self.raw.ends.len())
            .field("encoded", &encoded.map(|set| set.ends.len()))
            .field("searchers_built", &self.raw.finders.get().is_some())
            .finish_non_exhaustive()
    }
}

impl Needles {
    /// The needles for `secrets` (shorter ones than eight bytes are left out); `None` when
    /// nothing is left to search for.
    pub fn new<'a>(secrets: impl IntoIterator<Item = &'a [u8]>) -> Option<Self> {
        Self::with_forms(secrets, Forms::ALL)
    }

    /// The needles for only some [`Forms`]: for pricing each form (`examples/scan_cost.rs`);
    /// the leak guard always searches them all.
    pub fn with_forms<'a>(secrets: impl IntoIterator<Item = &'a [u8]>, forms: Forms) -> Option<Self> {
        let raw = RawSet::new(|add| {
            for secret in secrets.into_iter().filter(|secret| secret.len() >= MIN_SECRET_LEN) {
                add(tail(secret));
            }
        })?;
        let longest = raw.longest_needle;
        let shortest_core =
            forms.base64.then(|| raw.needles().filter_map(|tail| tail_core(tail.len())).min()).flatten();
        let shortest_raw = raw.needles().map(<[u8]>::len).min().unwrap_or(MIN_SECRET_LEN);
        let shortest = shortest_core.map_or(shortest_raw, |core| core.min(shortest_raw));
        Some(Self {
            raw,
            encoded: OnceLock::new(),
            shortest_core,
            shortest,
            window: longest * MAX_ESCAPE_LEN,
            escapes: forms.escapes,
        })
    }

    /// Builds every needle and the `memmem` searchers now rather than at the first stretch
    /// that needs them (for pricing them: `examples/scan_cost.rs`).
    pub fn build_searchers(&self) {
        self.raw.finders();
        if let Some(encoded) = self.encoded() {
            encoded.finders();
        }
    }

    /// The base64 cores, built now if they are not yet; `None` when base64 is not searched.
    fn encoded(&self) -> Option<&EncodedSet> {
        self.shortest_core?;
        self.encoded
            .get_or_init(|| {
                EncodedSet::new(|add| self.raw.needles().for_each(|tail| base64_cores(tail, add)))
                    .map(Box::new)
            })
            .as_deref()
    }

    /// Every needle: the raw tails first (the base64 cores built if they are not yet).
    #[cfg(test)]
    fn needles(&self) -> impl Iterator<Item = &[u8]> + '_ {
        self.raw.needles().chain(self.encoded().into_iter().flat_map(EncodedSet::needles))
    }

    /// Whether these are the needles of `secrets` (in the order given to [`Needles::new`]).
    pub fn are_for<'a>(&self, secrets: impl IntoIterator<Item = &'a [u8]>) -> bool {
        let mut raw = self.raw.needles();
        secrets
            .into_iter()
            .filter(|secret| secret.len() >= MIN_SECRET_LEN)
            .all(|secret| raw.next().is_some_and(|needle| needle == tail(secret)))
            && raw.next().is_none()
    }

    /// Whether `haystack` holds a secret as it is, in any case (for header names).
    pub fn found_in_ignoring_case(&self, haystack: &[u8]) -> bool {
        // Most haystacks here are header names, shorter than any needle.
        if haystack.len() < self.shortest {
            return false;
        }
        holds_ignoring_case(self.raw.needles(), haystack)
    }

    /// Whether `haystack` holds a needle, raw or once its escapes are undone.
    pub fn found_in(&self, haystack: &[u8]) -> bool {
        if haystack.len() < self.shortest {
            return false;
        }
        if self.matches(haystack) {
            return true;
        }
        self.escapes && memchr::memchr2(b'%', b'\\', haystack).is_some() && self.matches(&decoded(haystack))
    }

    fn matches(&self, haystack: &[u8]) -> bool {
        self.raw.matches(haystack)
            || self.encoded_for(haystack).is_some_and(|encoded| encoded.matches(haystack))
    }

    /// The base64 cores, if `haystack` could hold one.
    fn encoded_for(&self, haystack: &[u8]) -> Option<&EncodedSet> {
        let run = self.shortest_core?;
        has_base64_run(haystack, run).then(|| self.encoded()).flatten()
    }

    /// The strided search over every needle (public for pricing: `scan_cost`; the guard
    /// picks the search by the stretch's length).
    pub fn found_by_stride(&self, haystack: &[u8]) -> bool {
        self.raw.found_by_stride(haystack)
            || self.encoded_for(haystack).is_some_and(|encoded| encoded.found_by_stride(haystack))
    }

    /// The raw search with the `memmem` searchers (built now if they are not yet), whatever
    /// the length: for pricing against [`Needles::found_by_filter`] (`scan_cost`).
    pub fn found_by_searchers(&self, haystack: &[u8]) -> bool {
        self.raw.found_by_searchers(haystack)
            || self.encoded_for(haystack).is_some_and(|encoded| encoded.found_by_searchers(haystack))
    }

    /// The search without searchers: every position whose first four bytes pass the
    /// filter is compared with every needle (public for pricing: `scan_cost`).
    pub fn found_by_filter(&self, haystack: &[u8]) -> bool {
        self.raw.found_by_filter(haystack)
            || self.encoded_for(haystack).is_some_and(|encoded| encoded.found_by_filter(haystack))
    }
}

/// Whether `haystack` holds one of `needles` in any case.
fn holds_ignoring_case<'a>(mut needles: impl Iterator<Item = &'a [u8]>, haystack: &[u8]) -> bool {
    needles.any(|needle| {
        haystack.len() >= needle.len()
            && haystack.windows(needle.len()).any(|window| window.eq_ignore_ascii_case(needle))
    })
}

/// A session's tokens as its record keeps them, each with the grams of its tail made with
/// the token ([`TailGrams`]): a short stretch is searched for the raw tails with nothing
/// built (the strided pass of [`NeedleSet::found_by_stride`], against each token's own
/// filter). Where that search is not the whole answer — a stretch long enough for the
/// `memmem` searchers, one holding `%` or `\` (the escapes' decoded view), or a run of
/// base64 characters as long as a base64 core — [`TokenTails::found_in`] says so, and the
/// caller searches with the [`Needles`] of the same tokens. Made per response (a few
/// loads from the record), it answers exactly as those `Needles` do wherever it answers.
#[derive(Clone)]
pub struct TokenTails<'a> {
    /// The tails searched (tokens of at least [`MIN_SECRET_LEN`] bytes), with their grams.
    tails: [(&'a [u8], &'a GramFilter); 2],
    count: usize,
    /// The shortest tail's length, less three: every occurrence of a tail holds four whole
    /// bytes starting at a multiple of this.
    stride: usize,
    /// The fewest bytes any form takes (as [`Needles`]'s `shortest`).
    shortest: usize,
    /// The shortest base64 core (as [`Needles`]'s `shortest_core`, every form searched).
    shortest_core: Option<usize>,
}

impl std::fmt::Debug for TokenTails<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenTails").field("count", &self.count).finish_non_exhaustive()
    }
}

impl<'a> TokenTails<'a> {
    /// The tails of a session's access token and its refresh token if it has one (each
    /// its bytes and its [`TailGrams`]), searched in every form ([`Forms::ALL`]); `None`
    /// when neither is long enough to search for (as [`Needles::new`]).
    pub fn new(
        access: (&'a [u8], &'a TailGrams),
        refresh: Option<(&'a [u8], &'a TailGrams)>,
    ) -> Option<Self> {
        Self::of(std::iter::once(access).chain(refresh))
    }

    /// [`TokenTails::new`] of at most two tokens (a third would make it `None`).
    fn of(tokens: impl Iterator<Item = (&'a [u8], &'a TailGrams)>) -> Option<Self> {
        let mut tails = [(&[][..], &GramFilter::EMPTY); 2];
        let mut count = 0;
        for (token, grams) in tokens.filter(|(token, _)| token.len() >= MIN_SECRET_LEN) {
            *tails.get_mut(count)? = (tail(token), grams.filter());
            count += 1;
        }
        let tails_of = &tails[..count];
        let shortest_raw = tails_of.iter().map(|(tail, _)| tail.len()).min()?;
        let shortest_core = tails_of.iter().filter_map(|(tail, _)| tail_core(tail.len())).min();
        Some(Self {
            tails,
            count,
            stride: shortest_raw - 3,
            shortest: shortest_core.map_or(shortest_raw, |core| core.min(shortest_raw)),
            shortest_core,
        })
    }

    fn tails(&self) -> &[(&'a [u8], &'a GramFilter)] {
        &self.tails[..self.count]
    }

    /// Whether `haystack` holds a tail as it is, in any case (for header names).
    pub fn found_in_ignoring_case(&self, haystack: &[u8]) -> bool {
        haystack.len() >= self.shortest
            && holds_ignoring_case(self.tails().iter().map(|(tail, _)| *tail), haystack)
    }

    /// Whether `haystack` holds a token in any form, as [`Needles::found_in`] answers; `None`
    /// when only those needles can tell (see [`TokenTails`]).
    pub fn found_in(&self, haystack: &[u8]) -> Option<bool> {
        if haystack.len() < self.shortest {
            return Some(false);
        }
        if haystack.len() >= FINDER_MIN_HAYSTACK
            || memchr::memchr2(b'%', b'\\', haystack).is_some()
            || self.shortest_core.is_some_and(|run| has_base64_run(haystack, run))
        {
            return None;
        }
        Some(self.found_by_stride(haystack))
    }

    /// Only every `stride`-th position is tested, against all tails' grams; where that
    /// passes, against each tail's, then its neighbours ([`neighbour_held`]), and only then
    /// are the starts that would put that tail over the position compared.
    fn found_by_stride(&self, haystack: &[u8]) -> bool {
        // Every tail's grams in one filter (made here, for the one stretch a response has
        // that gets this far, and not carried with the rest): a probed position is tested
        // once, and against the tails' own filters only where this passes.
        let either = self.tails().iter().fold(GramFilter::EMPTY, |either, (_, grams)| either.union(grams));
        let mut at = 0;
        while let Some(gram) = haystack.get(at..).and_then(<[u8]>::first_chunk::<4>) {
            let here = Hashed::of(*gram);
            if either.holds(here)
                && self.tails().iter().any(|(tail, grams)| {
                    grams.holds(here) && neighbour_held(haystack, at, grams) && covers(haystack, tail, at)
                })
            {
                return true;
            }
            at += self.stride;
        }
        false
    }
}

/// Whether the four bytes one after `at`, or one before it, may be grams of the tail whose
/// filter is `grams`: an occurrence of a tail (at least eight bytes: five grams) that covers
/// the four at `at` covers one of those too, so where neither passes there is none, and the
/// full comparison is left out (a position passes one tail's filter by chance about once in
/// 18 tries, and a neighbour too about once in 170).
fn neighbour_held(haystack: &[u8], at: usize, grams: &GramFilter) -> bool {
    let held = |from: usize| {
        haystack.get(from..).and_then(<[u8]>::first_chunk::<4>).is_some_and(|gram| grams.may_hold(*gram))
    };
    held(at + 1) || at.checked_sub(1).is_some_and(held)
}

/// Whether an occurrence of `needle` (at least four bytes) in `haystack` covers the four
/// bytes at `at`.
fn covers(haystack: &[u8], needle: &[u8], at: usize) -> bool {
    let Some(&first_byte) = needle.first() else { return false };
    let first = at.saturating_sub(needle.len().saturating_sub(4));
    let Some(starts) = haystack.get(first..=at) else { return false };
    // Only the starts holding the needle's first byte (one pass over at most 29 bytes).
    memchr::memchr_iter(first_byte, starts)
        .any(|start| haystack.get(first + start..first + start + needle.len()) == Some(needle))
}

impl<const F: usize, const G: usize> NeedleSet<F, G> {
    const FILTER_BITS_LOG2: u32 = (F * 64).trailing_zeros();
    const GRAM_BITS_LOG2: u32 = (G * 64).trailing_zeros();

    /// The filter bit of a position starting with `prefix` (its first four bytes).
    fn filter_bit(prefix: [u8; 4]) -> usize {
        (u32::from_le_bytes(prefix).wrapping_mul(0x9E37_79B1) >> (32 - Self::FILTER_BITS_LOG2)) as usize
    }

    /// The gram-filter bit of four bytes.
    fn gram_bit(gram: [u8; 4]) -> usize {
        (u32::from_le_bytes(gram).wrapping_mul(0x85EB_CA77) >> (32 - Self::GRAM_BITS_LOG2)) as usize
    }

    /// The set of the needles `fill` hands to its `add`; `None` if it hands none.
    fn new(fill: impl FnOnce(&mut dyn FnMut(&[u8]))) -> Option<Self> {
        let mut bytes = Vec::with_capacity(2 * MAX_NEEDLE_LEN);
        let mut ends = Vec::with_capacity(2);
        let mut filter = [0u64; F];
        let (mut shortest, mut longest_needle) = (usize::MAX, 0);
        fill(&mut |needle: &[u8]| {
            bytes.extend_from_slice(needle);
            ends.push(bytes.len());
            shortest = shortest.min(needle.len());
            longest_needle = longest_needle.max(needle.len());
            if let Some(prefix) = needle.first_chunk::<4>() {
                let bit = Self::filter_bit(*prefix);
                filter[bit / 64] |= 1 << (bit % 64);
            }
        });
        if ends.is_empty() {
            return None;
        }
        // Needles are at least MIN_SECRET_LEN (8) bytes, so the stride is at least 5.
        let stride = shortest.saturating_sub(3).max(1);
        let grams = Self::strided_grams(&bytes, &ends, stride);
        Some(Self {
            bytes: bytes.into_boxed_slice(),
            ends: ends.into_boxed_slice(),
            filter,
            grams,
            stride,
            longest_needle,
            finders: OnceLock::new(),
        })
    }

    /// The gram filter of the strided search. An occurrence of a needle at `p` is tested at
    /// the first multiple of `stride` at or after `p`, which is at most `stride - 1` bytes
    /// into the needle: only the grams starting at the needle's first `stride` bytes can ever
    /// be tested, so only those are set (fewer bits to set at every cache miss, and fewer
    /// false passes).
    fn strided_grams(bytes: &[u8], ends: &[usize], stride: usize) -> [u64; G] {
        let mut grams = [0u64; G];
        let mut start = 0;
        for &end in ends {
            let needle = &bytes[start..end];
            // Built at every needle-cache miss (each request of a session without a slot):
            // a plain loop over the gram starts, each gram one load.
            for at in 0..needle.len().saturating_sub(3).min(stride) {
                let Some(gram) = needle.get(at..).and_then(<[u8]>::first_chunk::<4>) else { break };
                let bit = Self::gram_bit(*gram);
                grams[bit / 64] |= 1 << (bit % 64);
            }
            start = end;
        }
        grams
    }

    fn needles(&self) -> impl Iterator<Item = &[u8]> + '_ {
        let starts = std::iter::once(0).chain(self.ends.iter().copied());
        starts.zip(self.ends.iter().copied()).map(|(start, end)| &self.bytes[start..end])
    }

    fn finders(&self) -> &[Finder<'static>] {
        self.finders.get_or_init(|| self.needles().map(|needle| Finder::new(needle).into_owned()).collect())
    }

    fn matches(&self, haystack: &[u8]) -> bool {
        if haystack.len() < FINDER_MIN_HAYSTACK {
            return self.found_by_stride(haystack);
        }
        self.found_by_searchers(haystack)
    }

    /// The strided search: an occurrence of a needle of length `L` covers `L - 3`
    /// consecutive four-byte positions, so at least one of them is a multiple of
    /// `stride` (the shortest needle's `L - 3`), and its four bytes are a gram of that
    /// needle. Only those positions are tested against the gram filter; where one
    /// passes, every start that could put a needle over it is checked with the
    /// per-position filter loop. About `1/stride` of the positions are looked at (a
    /// 32-byte Digital River tail: one in 29).
    fn found_by_stride(&self, haystack: &[u8]) -> bool {
        let mut at = 0;
        while let Some(gram) = haystack.get(at..).and_then(<[u8]>::first_chunk::<4>) {
            let bit = Self::gram_bit(*gram);
            if self.grams[bit / 64] & (1 << (bit % 64)) != 0 {
                let first = at.saturating_sub(self.longest_needle - 4);
                let end = (at + self.longest_needle).min(haystack.len());
                if self.found_by_filter_from(&haystack[..end], first, at) {
                    return true;
                }
            }
            at += self.stride;
        }
        false
    }

    fn found_by_searchers(&self, haystack: &[u8]) -> bool {
        self.finders()
            .iter()
            .any(|finder| haystack.len() >= finder.needle().len() && finder.find(haystack).is_some())
    }

    /// Every needle is at least [`MIN_SECRET_LEN`] bytes long, so only positions with that
    /// many bytes after them can start one.
    fn found_by_filter(&self, haystack: &[u8]) -> bool {
        self.found_by_filter_from(haystack, 0, haystack.len())
    }

    /// [`NeedleSet::found_by_filter`] for needles starting at `first..=last` only.
    fn found_by_filter_from(&self, haystack: &[u8], first: usize, last: usize) -> bool {
        haystack.windows(MIN_SECRET_LEN).enumerate().skip(first).take_while(|(at, _)| *at <= last).any(
            |(at, window)| {
                let bit = Self::filter_bit([window[0], window[1], window[2], window[3]]);
                self.filter[bit / 64] & (1 << (bit % 64)) != 0
                    && self.needles().any(|needle| haystack[at..].starts_with(needle))
            },
        )
    }
}

/// Whether `haystack` has a run of at least `run` characters of base64 or base64url (any
/// base64 core is one). Only every `run / 2`-th position is looked at: a long enough run
/// covers two neighbouring ones, so the run around a position is measured only where the
/// next one is a base64 character too (in text, where words are short, almost never).
/// `run` is a core's length, more than [`MIN_SECRET_LEN`] (`base64_core_span`), so the
/// step is at least four.
fn has_base64_run(haystack: &[u8], run: usize) -> bool {
    if haystack.len() < run {
        return false;
    }
    let step = (run / 2).max(1);
    // The probes are the chunks' last bytes; a run is measured around the earlier of two
    // neighbouring probes that are both base64 characters.
    let mut previous = false;
    for (index, chunk) in haystack.chunks_exact(step).enumerate() {
        let here = chunk.last().is_some_and(|&byte| is_base64(byte));
        // A run over both probes holds every byte between them: those are looked at first
        // (in text a word ends there), the run measured only if they all are base64. A run
        // around the earlier probe alone that is long enough holds the probe before it,
        // and was measured with that one.
        let from = (index * step).wrapping_sub(1);
        let between = || haystack[from..from + step].iter().all(|&byte| is_base64(byte));
        if previous && here && between() && run_around(haystack, from, run) >= run {
            return true;
        }
        previous = here;
    }
    false
}

/// The length of the run of base64 characters around `at`, counted up to `cap` each side.
fn run_around(haystack: &[u8], at: usize, cap: usize) -> usize {
    let before = haystack[..at].iter().rev().take(cap).take_while(|&&byte| is_base64(byte)).count();
    let after = haystack[at..].iter().take(cap).take_while(|&&byte| is_base64(byte)).count();
    before + after
}

/// A character of the base64 or the base64url alphabet.
fn is_base64(byte: u8) -> bool {
    BASE64_ALPHABETS[usize::from(byte)]
}

/// [`is_base64`] as a table.
static BASE64_ALPHABETS: [bool; 256] = {
    let mut table = [false; 256];
    let mut byte = 0;
    while byte < 256 {
        let b = byte as u8;
        table[byte] = b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'-' | b'_');
        byte += 1;
    }
    table
};

/// Slots in the [`NeedleCache`]. An entry is about 0.9 KiB (the raw tails and their two
/// filters, in three allocations), about 1.4 KiB more once a stretch with a long base64 run
/// has its session's base64 cores built, and about 4 KiB more once a long stretch has the
/// searchers built: 15 MiB with every slot taken, about 100 MiB at most if every cached
/// session also had long bodies of every kind searched.
const CACHE_SLOTS: usize = 16_384;

/// The needles of recently served sessions, so that a session's searchers are built once
/// per token generation instead of once per response. Slots are picked by the session key
/// (a SHA-256 output, already uniform), each behind its own lock (held for a comparison or a
/// swap, never while needles are built: no two requests wait on each other unless they
/// want the same slot at the same instant); a slot holds one session, so memory stays
/// bounded whatever the number of sessions. A newcomer takes a slot over only from an
/// occupant not used for [`EVICT_IDLE_SECS`] (or from its own session's older generation):
/// when more sessions are active than there are slots, the ones holding slots keep them
/// and the others have their needles built for each response (cheap: the raw tails' set)
/// instead of every request evicting and freeing another's entry in cold memory. An entry
/// is used only for the same key, the same generation *and* the same token tails: needles
/// of a rotated-away token are never used.
///
/// Beside each slot, a word says who holds it and when it was last used ([`Tag`]): 128 KiB
/// for all of them, which stay in the core's cache where the slots' megabyte does not. A
/// request whose session is not the occupant (by the word) and may not take the slot over
/// reads only the word: with more sessions than slots (every request a different session,
/// as over 100,000), it no longer waits on the slot's cold lock to learn it has nothing to
/// do there. The word is a hint, written under the slot's lock: needles are only ever
/// taken from the slot itself, under the lock, after the full comparison.
pub struct NeedleCache {
    slots: Box<[Mutex<Option<Cached>>]>,
    tags: Box<[AtomicU64]>,
}

/// A slot's word: 32 bits of its occupant's key (bits [`Tag::of`] picks, with the lowest
/// set, so an occupied slot's word is never 0) above the occupant's last use, in Unix
/// seconds (saturated at `u32::MAX`); 0 for an empty slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Tag(u64);

impl Tag {
    const EMPTY: Tag = Tag(0);

    /// The key's bits in the word: its last four bytes (the slot is picked by its first
    /// eight, so two keys in one slot differ here unless they agree on twelve bytes).
    fn of(key: &SessionKey) -> u32 {
        let mut last = [0u8; 4];
        last.copy_from_slice(&key.0[28..]);
        u32::from_le_bytes(last) | 1
    }

    fn new(key: u32, used_at: u64) -> Self {
        Tag(u64::from(key) << 32 | used_at.min(u64::from(u32::MAX)))
    }

    fn key(self) -> u32 {
        (self.0 >> 32) as u32
    }

    fn used_at(self) -> u64 {
        self.0 & u64::from(u32::MAX)
    }
}

struct Cached {
    key: SessionKey,
    generation: u64,
    needles: Arc<Needles>,
    /// When (Unix seconds) the entry was last used.
    used_at: u64,
}

/// How long an entry must have gone unused before another session may take its slot.
pub const EVICT_IDLE_SECS: u64 = 5;

impl std::fmt::Debug for NeedleCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NeedleCache").field("slots", &self.slots.len()).finish()
    }
}

impl Default for NeedleCache {
    fn default() -> Self {
        Self {
            slots: (0..CACHE_SLOTS).map(|_| Mutex::new(None)).collect(),
            tags: (0..CACHE_SLOTS).map(|_| AtomicU64::new(Tag::EMPTY.0)).collect(),
        }
    }
}

impl NeedleCache {
    /// The needles for the tokens `secrets` of generation `generation` of session `key`,
    /// from the cache or built now (and cached unless another session used the slot within
    /// [`EVICT_IDLE_SECS`] of `now`, in Unix seconds); `None` when nothing is long enough to
    /// search for.
    pub fn get<'a, I>(&self, key: &SessionKey, generation: u64, secrets: I, now: u64) -> Option<Arc<Needles>>
    where
        I: IntoIterator<Item = &'a [u8]> + Clone,
    {
        // A panic cannot leave a slot half-written (it is replaced whole), so a poisoned
        // lock's value is as good as any.
        let index = slot_of(key);
        let (slot, word) = (&self.slots[index], &self.tags[index]);
        let lock = || slot.lock().unwrap_or_else(PoisonError::into_inner);
        let mine = Tag::of(key);
        let seen = Tag(word.load(Ordering::Relaxed));
        if seen.key() == mine {
            if let Some(cached) = lock().as_mut() {
                if cached.key == *key
                    && cached.generation == generation
                    && cached.needles.are_for(secrets.clone())
                {
                    if now > cached.used_at {
                        cached.used_at = now;
                        word.store(Tag::new(mine, now).0, Ordering::Relaxed);
                    }
                    return Some(Arc::clone(&cached.needles));
                }
            }
        }
        let needles = Arc::new(Needles::new(secrets)?);
        if seen != Tag::EMPTY && !may_take(seen.key() == mine, seen.used_at(), now) {
            // Another session's, used lately (by the word): the slot is not ours to take.
            return Some(needles);
        }
        let mut taken = lock();
        let admitted = match taken.as_ref() {
            None => true,
            Some(occupant) => may_take(occupant.key == *key, occupant.used_at, now),
        };
        if !admitted {
            return Some(needles);
        }
        let evicted =
            taken.replace(Cached { key: *key, generation, needles: Arc::clone(&needles), used_at: now });
        word.store(Tag::new(mine, now).0, Ordering::Relaxed);
        drop(taken);
        // The entry it takes over is freed here, outside the lock.
        drop(evicted);
        Some(needles)
    }
}

/// The admission rule: a session may take a slot that holds its own older entry, or
/// another session's entry unused since `used_at` for [`EVICT_IDLE_SECS`] by `now`. Read
/// first on the slot's word (a hint), then on the slot itself, under its lock.
fn may_take(own: bool, used_at: u64, now: u64) -> bool {
    own || used_at.saturating_add(EVICT_IDLE_SECS) <= now
}

fn slot_of(key: &SessionKey) -> usize {
    let mut first = [0u8; 8];
    first.copy_from_slice(&key.0[..8]);
    (u64::from_le_bytes(first) % CACHE_SLOTS as u64) as usize
}

/// The parts of base64(`secret`) that do not depend on the bytes around it, for each of
/// the three positions it can start at within a 3-byte group, in both alphabets.
/// Each is handed to `add`; `secret` is a tail, at most [`MAX_NEEDLE_LEN`] bytes, so the
/// work is done in stack buffers.
fn base64_cores(secret: &[u8], add: &mut dyn FnMut(&[u8])) {
    let mut shifted = [0u8; MAX_NEEDLE_LEN + 2];
    let mut encoded = [0u8; (MAX_NEEDLE_LEN + 2).div_ceil(3) * 4];
    let Some(len) = secret.len().checked_add(2).filter(|len| *len <= shifted.len()) else {
        return;
    };
    shifted[2..len].copy_from_slice(secret);
    for offset in 0..3usize {
        let Some(core) = base64_core_span(secret.len(), offset) else { continue };
        // The secret after `offset` zero bytes (the buffer's first bytes stay zero).
        let shifted = &shifted[2 - offset..len];
        // Encoded once: base64url differs from base64 only in two characters, so its
        // core is the same bytes mapped (and not added again when neither occurs).
        let Ok(written) = STANDARD_NO_PAD.encode_slice(shifted, &mut encoded) else { continue };
        if written < core.end {
            continue;
        }
        let core = &mut encoded[core];
        add(core);
        if core.iter().any(|&byte| byte == b'+' || byte == b'/') {
            core.iter_mut().for_each(|byte| *byte = url_safe(*byte));
            add(core);
        }
    }
}

/// Where, in the base64 of a `len`-byte secret after `offset` other bytes (0 to 2), the
/// characters made of the secret's bits alone are: the first characters mix in the bytes
/// before the secret, the last ones the bytes after it. `None` when too few are left to
/// search for.
const fn base64_core_span(len: usize, offset: usize) -> Option<std::ops::Range<usize>> {
    let skip_front = if offset == 0 { 0 } else { offset + 1 };
    let end = (len + offset) / 3 * 4;
    if end > skip_front + MIN_SECRET_LEN {
        Some(skip_front..end)
    } else {
        None
    }
}

/// The length of the shortest base64 core of a `len`-byte secret (`None`: it has none).
const fn shortest_base64_core(len: usize) -> Option<usize> {
    let mut shortest: Option<usize> = None;
    let mut offset = 0;
    while offset < 3 {
        if let Some(span) = base64_core_span(len, offset) {
            let core = span.end - span.start;
            shortest = match shortest {
                Some(known) if known <= core => Some(known),
                _ => Some(core),
            };
        }
        offset += 1;
    }
    shortest
}

/// [`shortest_base64_core`] of a whole tail (any token of at least [`MAX_NEEDLE_LEN`]
/// bytes), worked out once.
const FULL_TAIL_CORE: Option<usize> = shortest_base64_core(MAX_NEEDLE_LEN);

/// [`shortest_base64_core`], for a tail.
fn tail_core(len: usize) -> Option<usize> {
    if len == MAX_NEEDLE_LEN {
        FULL_TAIL_CORE
    } else {
        shortest_base64_core(len)
    }
}

/// The base64url character for a base64 character.
fn url_safe(byte: u8) -> u8 {
    match byte {
        b'+' => b'-',
        b'/' => b'_',
        other => other,
    }
}

/// `haystack` with `\uXXXX` (ASCII), `\/`, `\\`, `\"` and `%XX` undone; everything else
/// as it is. The stretches between escapes are copied whole (found with `memchr2`), so a
/// body with an escaped slash in every URL costs a copy, not a byte-by-byte walk.
fn decoded(haystack: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(haystack.len());
    let mut at = 0;
    while let Some(found) = memchr::memchr2(b'%', b'\\', &haystack[at..]) {
        out.extend_from_slice(&haystack[at..at + found]);
        at += found;
        let (byte, used) = match &haystack[at..] {
            [b'%', high, low, ..] => match hex_pair(*high, *low) {
                Some(byte) => (byte, 3),
                None => (b'%', 1),
            },
            [b'\\', b'u', a, b, c, d, ..] => match (hex_pair(*a, *b), hex_pair(*c, *d)) {
                (Some(0), Some(byte)) => (byte, 6),
                _ => (b'\\', 1),
            },
            [b'\\', escaped @ (b'/' | b'\\' | b'"'), ..] => (*escaped, 2),
            [byte, ..] => (*byte, 1),
            [] => break,
        };
        out.push(byte);
        at += used;
    }
    out.extend_from_slice(&haystack[at..]);
    out
}

fn hex_pair(high: u8, low: u8) -> Option<u8> {
    let digit = |c: u8| char::from(c).to_digit(16).and_then(|d| u8::try_from(d).ok());
    Some(digit(high)? << 4 | digit(low)?)
}

/// A hit: the body carried one of the session's tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hit;

/// The search state of one response body.
#[derive(Debug)]
pub struct Scanner {
    needles: Arc<Needles>,
    /// The last bytes already searched, searched again with the next frame.
    overlap: BytesMut,
}

impl Scanner {
    pub fn new(needles: Arc<Needles>) -> Self {
        Self { needles, overlap: BytesMut::new() }
    }

    /// How many bytes before a frame are searched with it.
    pub fn window(&self) -> usize {
        self.needles.window
    }

    /// Searches the next frame and the seam before it; `Err` on a hit.
    ///
    /// An occurrence that crosses the seam starts within the last [`Scanner::window`]
    /// bytes before it and ends within the first `window` bytes of the frame, so the seam
    /// (those two stretches, a few hundred bytes) is searched on its own and the frame
    /// alone: no frame is ever copied whole.
    pub fn push(&mut self, data: &Bytes) -> Result<(), Hit> {
        let joined = self.search(data)?;
        self.keep_tail(data, joined);
        Ok(())
    }

    /// [`Scanner::push`] for the body's last frame: nothing follows, so no seam is kept (a
    /// small answer read whole with its head is one frame, and its tail was copied for
    /// nothing).
    pub fn push_last(&mut self, data: &Bytes) -> Result<(), Hit> {
        self.search(data).map(|_| ())
    }

    /// Searches the seam before `data` and `data`; whether the seam was joined to it.
    fn search(&mut self, data: &Bytes) -> Result<bool, Hit> {
        let window = self.window();
        let joined = !self.overlap.is_empty();
        if joined {
            self.overlap.extend_from_slice(&data[..data.len().min(window)]);
            if self.needles.found_in(&self.overlap) {
                return Err(Hit);
            }
        }
        if self.needles.found_in(data) {
            return Err(Hit);
        }
        Ok(joined)
    }

    /// Keeps the last `window` bytes searched so far for the next seam. `joined`: the
    /// overlap already ends with the frame's first `window` bytes.
    fn keep_tail(&mut self, data: &Bytes, joined: bool) {
        let window = self.window();
        if data.len() >= window {
            self.overlap.clear();
            self.overlap.extend_from_slice(&data[data.len() - window..]);
            return;
        }
        // A short frame: it is all in the overlap now (appended whole above, or added here).
        if !joined {
            self.overlap.extend_from_slice(data);
        }
        if self.overlap.len() > window {
            let excess = self.overlap.len() - window;
            let _ = self.overlap.split_to(excess);
        }
    }
}

#[cfg(test)]
mod tests {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    use super::*;

    const TOKEN: &[u8] = b"42acc9dd3162322cbdb95801d54d600dfaaf743a";

    fn needles() -> Needles {
        Needles::new([TOKEN, b"short".as_slice()]).unwrap_or_else(|| panic!("needles"))
    }

    fn scan(frames: &[&[u8]]) -> Result<(), Hit> {
        let mut scanner = Scanner::new(Arc::new(needles()));
        frames.iter().try_for_each(|frame| scanner.push(&Bytes::copy_from_slice(frame)))
    }

    fn json_escaped(text: &[u8]) -> Vec<u8> {
        text.iter().flat_map(|b| format!("\\u{:04x}", b).into_bytes()).collect()
    }

    fn percent_encoded(text: &[u8]) -> Vec<u8> {
        text.iter().flat_map(|b| format!("%{:02X}", b).into_bytes()).collect()
    }

    #[test]
    fn the_last_frame_is_searched_with_its_seam_and_keeps_none() {
        // A token split over the last two frames is found by `push_last` (the seam the
        // frame before kept); a clean last frame leaves no seam behind.
        let (head, rest) = TOKEN.split_at(TOKEN.len() / 2);
        let mut scanner = Scanner::new(Arc::new(needles()));
        assert!(scanner.push(&Bytes::copy_from_slice(head)).is_ok());
        assert!(scanner.push_last(&Bytes::copy_from_slice(rest)).is_err(), "across the seam");
        let mut clean = Scanner::new(Arc::new(needles()));
        assert!(clean.push_last(&Bytes::from_static(b"{\"shopper\":{}}")).is_ok());
        assert!(clean.overlap.is_empty(), "nothing kept after the last frame");
        assert!(clean.push_last(&Bytes::copy_from_slice(TOKEN)).is_err(), "a whole token");
    }

    #[test]
    fn every_form_of_the_token_is_found() {
        let mut forms: Vec<Vec<u8>> = vec![TOKEN.to_vec(), json_escaped(TOKEN), percent_encoded(TOKEN)];
        for prefix in ["", "a", "ab"] {
            let mut blob = prefix.as_bytes().to_vec();
            blob.extend_from_slice(TOKEN);
            blob.extend_from_slice(b"tail");
            forms.push(STANDARD_NO_PAD.encode(&blob).into_bytes());
            forms.push(URL_SAFE_NO_PAD.encode(&blob).into_bytes());
        }
        // Half escaped, half not.
        let mut mixed = TOKEN[..10].to_vec();
        mixed.extend(json_escaped(&TOKEN[10..20]));
        mixed.extend(percent_encoded(&TOKEN[20..]));
        forms.push(mixed);
        for form in forms {
            let mut body = br#"{"data":""#.to_vec();
            body.extend_from_slice(&form);
            body.extend_from_slice(br#""}"#);
            assert_eq!(scan(&[&body]), Err(Hit), "{}", String::from_utf8_lossy(&form));
        }
    }

    #[test]
    fn a_token_split_across_frames_is_found_in_the_frame_that_completes_it() {
        let mut body = vec![b'x'; 300 * 1024];
        body.extend_from_slice(&json_escaped(TOKEN));
        for cut in [1, 7, 100, 239] {
            let split = body.len() - cut;
            let frames: Vec<&[u8]> = body[..split].chunks(4096).chain([&body[split..]]).collect();
            assert_eq!(scan(&frames), Err(Hit), "cut {cut} bytes before the end");
        }
        let one_byte_frames: Vec<&[u8]> = TOKEN.chunks(1).collect();
        assert_eq!(scan(&one_byte_frames), Err(Hit), "one byte a frame");
    }

    #[test]
    fn every_form_is_found_whatever_the_frame_boundaries() {
        let mut state = 7u64;
        let mut next = |bound: usize| {
            state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            (state >> 33) as usize % bound
        };
        for form in [
            TOKEN.to_vec(),
            json_escaped(TOKEN),
            percent_encoded(TOKEN),
            URL_SAFE_NO_PAD.encode(TOKEN).into_bytes(),
        ] {
            for _ in 0..200 {
                let mut body = vec![b'.'; next(3000)];
                body.extend_from_slice(&form);
                body.extend(vec![b'.'; next(3000)]);
                let mut frames = Vec::new();
                let mut at = 0;
                while at < body.len() {
                    let end = (at + 1 + next(700)).min(body.len());
                    frames.push(&body[at..end]);
                    at = end;
                }
                assert_eq!(scan(&frames), Err(Hit), "{} frames", frames.len());
            }
        }
    }

    #[test]
    fn clean_bodies_and_near_misses_pass() {
        assert_eq!(scan(&[br#"{"ok":true}"#]), Ok(()));
        assert_eq!(scan(&[&TOKEN[..TOKEN.len() - 1], b"%zz\\u12"]), Ok(()), "a prefix is not the token");
        assert_eq!(scan(&[b"short short"]), Ok(()), "secrets under eight bytes are not searched");
        let big = vec![b'a'; 1024 * 1024];
        assert_eq!(scan(&[&big, &big]), Ok(()));
    }

    #[test]
    fn a_long_token_is_found_by_its_tail_in_every_form() {
        // A pseudo-random token (no repeats, unlike a periodic pattern) of a JWT's size.
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let alphabet = b"abcdefghijklmnopqrstuvwxyz0123456789-_";
        let jwt: Vec<u8> = (0..1024)
            .map(|_| {
                state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
                alphabet[(state >> 33) as usize % alphabet.len()]
            })
            .collect();
        let needles = Arc::new(Needles::new([jwt.as_slice()]).unwrap_or_else(|| panic!("needles")));
        let mut scanner = Scanner::new(Arc::clone(&needles));
        assert_eq!(
            scanner.window(),
            MAX_NEEDLE_LEN * MAX_ESCAPE_LEN,
            "the window does not grow with the token"
        );
        for form in [
            jwt.clone(),
            json_escaped(&jwt),
            percent_encoded(&jwt),
            STANDARD_NO_PAD.encode(&jwt).into_bytes(),
        ] {
            let mut scanner = Scanner::new(Arc::clone(&needles));
            assert_eq!(scanner.push(&Bytes::from(form)), Err(Hit));
        }
        assert_eq!(scanner.push(&Bytes::copy_from_slice(&jwt[..1000])), Ok(()), "a head without the tail");
    }

    #[test]
    fn the_shortest_stretch_that_holds_a_form_is_still_searched() {
        // `found_in` passes over stretches shorter than any form; each form cut to exactly
        // what identifies it must still be found, for long tokens and the shortest secrets.
        for secret in [TOKEN, b"eightby!".as_slice(), b"nine-byte".as_slice()] {
            let needles = Needles::new([secret]).unwrap_or_else(|| panic!("needles"));
            let tail = tail(secret);
            assert!(needles.found_in(tail), "the raw tail alone");
            assert!(!needles.found_in(&tail[..tail.len() - 1]), "one byte short is not a hit");
            for offset in 0..3 {
                let Some(span) = base64_core_span(tail.len(), offset) else { continue };
                let mut shifted = vec![b'x'; offset];
                shifted.extend_from_slice(tail);
                let encoded = STANDARD_NO_PAD.encode(&shifted).into_bytes();
                let core = &encoded[span];
                assert!(core.len() >= needles.shortest, "no core is shorter than the bound");
                assert!(needles.found_in(core), "the base64 core alone, offset {offset}");
            }
        }
    }

    #[test]
    fn each_form_is_searched_only_when_asked_for() {
        let body_of = |form: Vec<u8>| {
            let mut body = br#"{"t":""#.to_vec();
            body.extend(form);
            body.extend(br#""}"#);
            body
        };
        let escaped = body_of(json_escaped(TOKEN));
        let base64 = body_of(STANDARD_NO_PAD.encode(TOKEN).into_bytes());
        let with = |forms| Needles::with_forms([TOKEN], forms).unwrap_or_else(|| panic!("needles"));
        assert!(with(Forms::RAW).found_in(TOKEN));
        assert!(!with(Forms::RAW).found_in(&escaped) && !with(Forms::RAW).found_in(&base64));
        assert!(with(Forms { base64: false, escapes: true }).found_in(&escaped));
        assert!(with(Forms { base64: true, escapes: false }).found_in(&base64));
        assert!(with(Forms::ALL).found_in(&escaped) && with(Forms::ALL).found_in(&base64));
    }

    #[test]
    fn the_filter_loop_and_the_searchers_find_the_same_needles() {
        let needles = needles();
        let mut forms: Vec<Vec<u8>> = vec![TOKEN.to_vec()];
        for prefix in ["", "a", "ab"] {
            let mut blob = prefix.as_bytes().to_vec();
            blob.extend_from_slice(TOKEN);
            forms.push(STANDARD_NO_PAD.encode(&blob).into_bytes());
            forms.push(URL_SAFE_NO_PAD.encode(&blob).into_bytes());
        }
        for form in &forms {
            // At the very start, the very end and in the middle of short and long stretches.
            for (before, after) in [(0, 0), (0, 50), (50, 0), (700, 700), (FINDER_MIN_HAYSTACK, 3)] {
                let mut haystack = vec![b'.'; before];
                haystack.extend_from_slice(form);
                haystack.extend(vec![b'.'; after]);
                assert!(needles.found_by_filter(&haystack), "filter, {before}+{after}");
                assert!(needles.found_by_stride(&haystack), "stride, {before}+{after}");
                assert!(needles.found_by_searchers(&haystack), "searchers, {before}+{after}");
                assert!(needles.found_in(&haystack), "found_in, {before}+{after}");
                let cut = &haystack[..before + form.len() / 2];
                assert!(!needles.found_by_filter(cut) && !needles.found_by_searchers(cut), "cut short");
                assert!(!needles.found_by_stride(cut), "cut short, stride");
            }
        }
    }

    #[test]
    fn the_strided_search_agrees_with_the_filter_loop_everywhere() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        for round in 0..300 {
            // Secrets of every length from the shortest searched to past the tail length.
            let secrets: Vec<Vec<u8>> = (0..rng.random_range(1..4))
                .map(|_| {
                    (0..rng.random_range(MIN_SECRET_LEN..70)).map(|_| rng.random_range(b'0'..=b'z')).collect()
                })
                .collect();
            let needles =
                Needles::new(secrets.iter().map(Vec::as_slice)).unwrap_or_else(|| panic!("needles"));
            let every: Vec<Vec<u8>> = needles.needles().map(<[u8]>::to_vec).collect();
            for needle in &every {
                for _ in 0..4 {
                    let before = rng.random_range(0..90);
                    let after = rng.random_range(0..90);
                    let mut haystack: Vec<u8> = (0..before).map(|_| rng.random_range(b' '..=b'~')).collect();
                    haystack.extend_from_slice(needle);
                    haystack.extend((0..after).map(|_| rng.random_range(b' '..=b'~')));
                    assert!(needles.found_by_stride(&haystack), "round {round}: planted at {before}");
                    // Cut anywhere inside the needle: both searches agree on what is left.
                    let cut = &haystack[..before + rng.random_range(0..needle.len())];
                    assert_eq!(needles.found_by_stride(cut), needles.found_by_filter(cut), "round {round}");
                }
            }
            let noise: Vec<u8> =
                (0..rng.random_range(0..600)).map(|_| rng.random_range(b'0'..=b'z')).collect();
            assert_eq!(needles.found_by_stride(&noise), needles.found_by_filter(&noise), "round {round}");
        }
    }

    /// The tails of `secrets`, each with its grams as a token makes them.
    fn tails_of(secrets: &[Vec<u8>]) -> (Vec<TailGrams>, Option<Needles>) {
        let grams = secrets.iter().map(|secret| TailGrams::of(secret)).collect();
        (grams, Needles::new(secrets.iter().map(Vec::as_slice)))
    }

    #[test]
    fn the_tails_answer_as_the_needles_do_wherever_they_answer() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(23);
        let (mut answered, mut asked, mut found_there) = (0, 0, 0);
        for round in 0..400 {
            // One or two secrets (a session's two tokens), some too short to search.
            let secrets: Vec<Vec<u8>> = (0..rng.random_range(1..=2))
                .map(|_| (0..rng.random_range(4..70)).map(|_| rng.random_range(b'0'..=b'z')).collect())
                .collect();
            let (grams, needles) = tails_of(&secrets);
            let mut tokens = secrets.iter().map(Vec::as_slice).zip(&grams);
            let tails = tokens.next().and_then(|access| TokenTails::new(access, tokens.next()));
            let (Some(tails), Some(needles)) = (tails, needles) else {
                assert!(secrets.iter().all(|secret| secret.len() < MIN_SECRET_LEN), "round {round}");
                continue;
            };
            let every: Vec<Vec<u8>> = needles.needles().map(<[u8]>::to_vec).collect();
            // Noise from alphabets with and without escapes and base64 runs, a needle
            // (raw or a base64 core) planted in some, cut anywhere in others.
            let alphabets: [&[u8]; 4] =
                [b" ,:{}\"abcdefgh", b"0123456789abcdef-/", b" %\\abc\"{}", b"xyz _.,"];
            for _ in 0..8 {
                let alphabet = alphabets[rng.random_range(0..alphabets.len())];
                let mut noise = || -> Vec<u8> {
                    (0..rng.random_range(0..120))
                        .map(|_| alphabet[rng.random_range(0..alphabet.len())])
                        .collect()
                };
                let (before, after) = (noise(), noise());
                let needle = &every[rng.random_range(0..every.len())];
                let cut = rng.random_range(0..=needle.len());
                let planted = if rng.random_bool(0.5) { &needle[..] } else { &needle[..cut] };
                let haystack = [before.as_slice(), planted, after.as_slice()].concat();
                asked += 1;
                if let Some(found) = tails.found_in(&haystack) {
                    answered += 1;
                    found_there += usize::from(found);
                    assert_eq!(found, needles.found_in(&haystack), "round {round}");
                }
                let upper = haystack.to_ascii_uppercase();
                assert_eq!(
                    tails.found_in_ignoring_case(&upper),
                    needles.found_in_ignoring_case(&upper),
                    "round {round}"
                );
            }
        }
        // Many of these short stretches are answered from the tails, some with a hit (the
        // rest, with an escape or a long base64 run, go to the needles).
        assert!(
            answered * 5 > asked && found_there * 10 > answered,
            "{found_there} of {answered} of {asked}"
        );
    }

    #[test]
    fn the_tails_leave_to_the_needles_what_only_they_can_tell() {
        let secrets = [TOKEN.to_vec(), b"refresh-0123456789abcdef".to_vec()];
        let (grams, _) = tails_of(&secrets);
        let tails = TokenTails::new((&secrets[0], &grams[0]), Some((&secrets[1], &grams[1])))
            .unwrap_or_else(|| panic!("tails"));
        let answer = |body: &[u8]| tails.found_in(body);
        // A hex token is a base64 run itself: a whole one goes to the needles, its tail
        // after a character outside base64 does not.
        let mut json = br#"{"id":1,"echo":""#.to_vec();
        json.extend_from_slice(TOKEN);
        json.extend_from_slice(br#""}"#);
        assert_eq!(answer(&json), None, "a whole hex token is a long base64 run");
        let refresh = br#"{"id":1,"echo":"refresh-0123456789abcdef"}"#;
        assert_eq!(answer(refresh), Some(true), "a raw token in a short answer");
        assert_eq!(answer(br#"{"id":1,"name":"a shopper"}"#), Some(false));
        assert_eq!(answer(b"short"), Some(false), "shorter than any form");
        assert_eq!(answer(br#"{"url":"/a%20b?c=d&e=f g h i j"}"#), None, "an escape: the decoded view");
        assert_eq!(answer(br#"{"s":"a\/b c d e f g h i j k l m n o p"}"#), None, "a JSON escape");
        assert_eq!(answer(&[b'A'; 80]), None, "a base64 run as long as a core");
        assert_eq!(answer(&vec![b' '; FINDER_MIN_HAYSTACK]), None, "long enough for the searchers");
        assert!(tails.found_in_ignoring_case(&TOKEN.to_ascii_uppercase()));
        assert_eq!(format!("{tails:?}"), "TokenTails { count: 2, .. }");
        let too_short = TailGrams::of(b"short");
        assert!(TokenTails::new((b"short", &too_short), None).is_none(), "nothing to search");
        let (grams, _) = tails_of(&[b"short".to_vec(), TOKEN.to_vec()]);
        let refresh_only = TokenTails::new((b"short", &grams[0]), Some((TOKEN, &grams[1])))
            .unwrap_or_else(|| panic!("the long one"));
        // The tail alone is a run of 32 hex characters, shorter than a base64 core (40).
        let tail_only = [b"{\"x\":\"", &TOKEN[TOKEN.len() - MAX_NEEDLE_LEN..], b"\"}"].concat();
        assert_eq!(refresh_only.found_in(&tail_only), Some(true), "the second token, the first too short");
        assert_eq!(refresh_only.count, 1);
    }

    #[test]
    fn searchers_are_built_only_for_a_long_stretch() {
        let needles = Arc::new(needles());
        let mut scanner = Scanner::new(Arc::clone(&needles));
        assert_eq!(scanner.push(&Bytes::from(vec![b'.'; FINDER_MIN_HAYSTACK - 1])), Ok(()));
        assert!(format!("{needles:?}").contains("searchers_built: false"), "{needles:?}");
        let mut long = vec![b'.'; FINDER_MIN_HAYSTACK];
        long.extend_from_slice(TOKEN);
        assert_eq!(scanner.push(&Bytes::from(long)), Err(Hit));
        assert!(format!("{needles:?}").contains("searchers_built: true"), "{needles:?}");
    }

    #[test]
    fn the_base64_cores_are_built_only_for_a_stretch_that_could_hold_one() {
        let needles = Arc::new(needles());
        let mut scanner = Scanner::new(Arc::clone(&needles));
        let answer = br#"{"id":"8812345","firstName":"Jane","lastName":"Doe","locale":"en_US"}"#;
        assert_eq!(scanner.push(&Bytes::from_static(answer)), Ok(()));
        assert!(format!("{needles:?}").contains("encoded: None"), "short words only: {needles:?}");
        let blob = STANDARD_NO_PAD.encode(b"nothing secret in here, only a long enough run");
        assert_eq!(scanner.push(&Bytes::from(blob)), Ok(()));
        assert!(format!("{needles:?}").contains("encoded: Some("), "a long run: {needles:?}");
    }

    #[test]
    fn a_base64_run_is_found_wherever_it_lies_and_only_when_long_enough() {
        for run in [9, 13, 40] {
            for before in 0..2 * run {
                for len in [run - 1, run, run + 5] {
                    let mut haystack = vec![b'"'; before];
                    haystack.extend((0..len).map(|i| b"Az09+/-_"[i % 8]));
                    haystack.extend(vec![b','; (before * 7) % 5]);
                    assert_eq!(
                        has_base64_run(&haystack, run),
                        len >= run,
                        "run {run}, {before} before, {len}"
                    );
                }
            }
        }
    }

    #[test]
    fn needles_show_no_token_in_debug() {
        let shown = format!("{:?}", Scanner::new(Arc::new(needles())));
        assert!(!shown.contains("42acc9dd"), "{shown}");
    }

    #[test]
    fn the_cache_builds_once_per_generation_and_never_serves_other_tokens() {
        let cache = NeedleCache::default();
        let key = SessionKey([1; 32]);
        let first = cache.get(&key, 1, [TOKEN], 0).unwrap_or_else(|| panic!("needles"));
        let again = cache.get(&key, 1, [TOKEN], 0).unwrap_or_else(|| panic!("needles"));
        assert!(Arc::ptr_eq(&first, &again), "same session, same generation: built once");
        let other: &[u8] = b"99acc9dd3162322cbdb95801d54d600dfaaf7400";
        let rotated = cache.get(&key, 1, [other], 0).unwrap_or_else(|| panic!("needles"));
        assert!(!Arc::ptr_eq(&first, &rotated), "other tokens under the same generation are rebuilt");
        assert!(rotated.found_in(other) && !rotated.found_in(TOKEN));
        let next = cache.get(&key, 2, [other], 0).unwrap_or_else(|| panic!("needles"));
        assert!(!Arc::ptr_eq(&rotated, &next), "a new generation is rebuilt");
        assert!(cache.get(&SessionKey([2; 32]), 2, [b"short".as_slice()], 0).is_none());
    }

    #[test]
    fn the_cache_never_serves_another_sessions_or_generations_needles_under_contention() {
        // Four sessions sharing one slot (same first eight key bytes), each rotating its
        // token through generations, read and replaced from four threads at once.
        let cache = Arc::new(NeedleCache::default());
        let token = |session: u8, generation: u64| format!("{session:02x}{generation:030x}tail-of-the-token");
        let threads: Vec<_> = (0..4u8)
            .map(|thread| {
                let cache = Arc::clone(&cache);
                std::thread::spawn(move || {
                    for round in 0..2_000u64 {
                        let session = (thread + (round % 4) as u8) % 4;
                        let mut key = [0u8; 32];
                        key[31] = session;
                        let generation = round / 16;
                        let token = token(session, generation);
                        let needles = cache
                            .get(&SessionKey(key), generation, [token.as_bytes()], round / 100)
                            .unwrap_or_else(|| panic!("needles"));
                        assert!(
                            needles.are_for([token.as_bytes()]),
                            "session {session}, generation {generation}"
                        );
                        assert!(needles.found_in(token.as_bytes()));
                    }
                })
            })
            .collect();
        for thread in threads {
            assert!(thread.join().is_ok(), "a reader saw needles of other tokens");
        }
    }

    #[test]
    fn a_slot_in_use_is_kept_and_an_idle_one_taken_over() {
        let cache = NeedleCache::default();
        // Two sessions in one slot (the slot is picked by the first eight key bytes).
        let (first, second) = (
            SessionKey([3; 32]),
            SessionKey({
                let mut key = [3; 32];
                key[31] = 4;
                key
            }),
        );
        let other: &[u8] = b"99acc9dd3162322cbdb95801d54d600dfaaf7400";
        let held = cache.get(&first, 1, [TOKEN], 100).unwrap_or_else(|| panic!("needles"));
        let newcomer =
            cache.get(&second, 1, [other], 100 + EVICT_IDLE_SECS - 1).unwrap_or_else(|| panic!("needles"));
        assert!(newcomer.found_in(other) && !newcomer.found_in(TOKEN), "the newcomer's own needles");
        let again =
            cache.get(&first, 1, [TOKEN], 100 + EVICT_IDLE_SECS - 1).unwrap_or_else(|| panic!("needles"));
        assert!(Arc::ptr_eq(&held, &again), "a slot used within the last seconds is kept");
        let later = 100 + 2 * EVICT_IDLE_SECS;
        let taken = cache.get(&second, 1, [other], later).unwrap_or_else(|| panic!("needles"));
        let kept = cache.get(&second, 1, [other], later).unwrap_or_else(|| panic!("needles"));
        assert!(Arc::ptr_eq(&taken, &kept), "an idle occupant's slot is taken over");
        let rotated = cache.get(&second, 2, [TOKEN], later).unwrap_or_else(|| panic!("needles"));
        let cached = cache.get(&second, 2, [TOKEN], later).unwrap_or_else(|| panic!("needles"));
        assert!(
            Arc::ptr_eq(&rotated, &cached),
            "a session's own new generation replaces its old one at once"
        );
    }

    #[test]
    fn keys_alike_in_the_slot_word_are_still_told_apart() {
        // Same slot (first eight bytes) and same word bits (last four): only byte 20 differs,
        // so the word cannot tell them apart and the slot's own comparison must.
        let (first, second) = (SessionKey([5; 32]), {
            let mut key = [5; 32];
            key[20] = 6;
            SessionKey(key)
        });
        assert_eq!(Tag::of(&first), Tag::of(&second));
        let other: &[u8] = b"99acc9dd3162322cbdb95801d54d600dfaaf7400";
        let cache = NeedleCache::default();
        let held = cache_get(&cache, &first, TOKEN, 100);
        let newcomer = cache_get(&cache, &second, other, 101);
        assert!(newcomer.found_in(other) && !newcomer.found_in(TOKEN), "never the occupant's needles");
        assert!(Arc::ptr_eq(&held, &cache_get(&cache, &first, TOKEN, 101)), "the occupant keeps its slot");
        let taken = cache_get(&cache, &second, other, 101 + EVICT_IDLE_SECS);
        assert!(Arc::ptr_eq(&taken, &cache_get(&cache, &second, other, 101 + EVICT_IDLE_SECS)));
        let back = cache_get(&cache, &first, TOKEN, 101 + EVICT_IDLE_SECS);
        assert!(back.found_in(TOKEN) && !back.found_in(other), "the first session's own needles again");
    }

    #[test]
    fn the_slot_word_follows_its_occupant_and_its_last_use() {
        let cache = NeedleCache::default();
        let key = SessionKey([7; 32]);
        let index = slot_of(&key);
        assert_eq!(Tag(cache.tags[index].load(Ordering::Relaxed)), Tag::EMPTY);
        let _ = cache_get(&cache, &key, TOKEN, 40);
        let word = Tag(cache.tags[index].load(Ordering::Relaxed));
        assert_eq!((word.key(), word.used_at()), (Tag::of(&key), 40));
        let _ = cache_get(&cache, &key, TOKEN, 45);
        assert_eq!(Tag(cache.tags[index].load(Ordering::Relaxed)).used_at(), 45, "a hit moves the last use");
    }

    fn cache_get(cache: &NeedleCache, key: &SessionKey, token: &[u8], now: u64) -> Arc<Needles> {
        cache.get(key, 1, [token], now).unwrap_or_else(|| panic!("needles"))
    }

    #[test]
    fn the_decoded_view_undoes_only_what_it_should() {
        assert_eq!(decoded(b"a%41\\u0042\\/\\\\%zz%4"), b"aAB/\\%zz%4".to_vec());
        assert_eq!(decoded(b"\\u2603"), b"\\u2603".to_vec(), "non-ASCII escapes stay");
    }
}
