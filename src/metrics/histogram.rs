//! A histogram of durations whose `observe` is two adds, without a lock prefix on the
//! connection workers.
//!
//! `prometheus_client`'s own `Histogram` keeps its state behind one `RwLock` and takes the
//! write lock on every `observe`, so every request of a route would serialise on it. This
//! one keeps a plain `AtomicU64` per bucket and one for the sum, and does all the folding
//! (cumulative counts, the total count, seconds) when the registry is encoded, off the
//! request path. It encodes through the same `MetricEncoder::encode_histogram` call as the
//! stock histogram, so the exposition is the same text: `_sum`, `_count`, and
//! `_bucket{le="…"}` for every bound plus `+Inf`.
//!
//! - Buckets use the Prometheus `le` rule, with the same `f64` comparison as the stock
//!   histogram: an observation goes in the first bucket whose upper bound is `>=` its value
//!   in seconds (`Duration::as_secs_f64`), so a value equal to a bound is counted in it.
//! - Each bucket counts only its own observations; the encoder accumulates. The `_count`
//!   is the sum of the bucket counters, so it always equals the `+Inf` bucket, even in a
//!   scrape that races observations.
//! - The sum is integer microseconds (each observation rounded to the nearest µs), added
//!   with `fetch_add`: exact for whole-microsecond durations, never drifting the way a
//!   float accumulator does, and good for about 584,000 years of summed durations before
//!   it wraps. Nanoseconds would wrap after 584 years of *summed* time, which a busy route
//!   (a thousand requests in flight) reaches in months.
//! - A scrape reads each counter on its own, so the sum may include an observation whose
//!   bucket it has not yet seen, or the reverse; never a lost or double-counted one.
//! - The counters are sharded: each connection worker claims a shard of its own
//!   ([`claim_shard`]) and is its only writer, so it adds with a plain load and store (an
//!   atomic read-modify-write costs ~8 ns even uncontended, and every request observes two
//!   histograms; between cores the counters' cache lines would bounce at each request, as
//!   they do in a histogram every thread adds to); every other thread adds to one shared
//!   shard with `fetch_add`. A scrape adds the shards up. Shards lie 128 bytes apart, so
//!   no two share a cache line or a pair of lines the prefetcher fetches together.

use std::cell::Cell;
use std::fmt;
use std::iter::once;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::{MetricType, TypedMetric};

/// A lock-free histogram of durations, exported in seconds. Clones share the counters.
#[derive(Debug, Clone)]
pub struct Histogram {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// Upper bounds in seconds, strictly ascending and finite; `+Inf` is implied.
    bounds: Box<[f64]>,
    /// Words from one shard to the next.
    stride: usize,
    /// `OWN_SHARDS + 1` shards, `stride` words each, the last the shared one. A shard holds
    /// the observations per bucket (not cumulative; one more than `bounds`, the last is
    /// `+Inf`), then the sum of the observations in microseconds, then unused words.
    words: Box<[AtomicU64]>,
}

/// Shards for threads of their own: enough for a connection worker per core on the
/// machines tokengate runs on; workers beyond them share the atomic shard.
const OWN_SHARDS: usize = 16;
/// Unused words after each shard's: 128 bytes.
const GAP: usize = 16;

/// Shards claimed so far in this process: a shard is never claimed twice, so each has one
/// writer at most, ever. (Not `server::worker_index`: each set of workers numbers its
/// threads from 0, and a process may run more than one set.)
static CLAIMED: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// This thread's own shard, if it claimed one.
    static SHARD: Cell<Option<usize>> = const { Cell::new(None) };
}

/// Gives this thread a shard of its own in every histogram, if one is left: its
/// observations are then plain adds. For threads that observe often (the connection
/// workers); once per thread.
pub fn claim_shard() {
    if SHARD.get().is_none() {
        let next = CLAIMED.fetch_add(1, Relaxed);
        if next < OWN_SHARDS {
            SHARD.set(Some(next));
        }
    }
}

/// Adds `value` to a counter this thread alone writes: no lock prefix, and a scrape's
/// relaxed load sees the old value or the new one.
fn add_alone(counter: &AtomicU64, value: u64) {
    counter.store(counter.load(Relaxed).wrapping_add(value), Relaxed);
}

/// The counters as read by one scrape.
#[derive(Debug, Clone, PartialEq)]
struct Snapshot {
    sum_seconds: f64,
    count: u64,
    /// `(upper bound, observations in this bucket only)`, ending with `f64::MAX` for `+Inf`
    /// (what `encode_histogram` expects).
    buckets: Vec<(f64, u64)>,
}

impl Histogram {
    /// A histogram with these upper bounds, in seconds (`+Inf` is added).
    ///
    /// # Panics
    ///
    /// If the bounds are not finite and strictly ascending (a programming error, found at
    /// startup where the metrics are built).
    pub fn new(bounds: impl IntoIterator<Item = f64>) -> Self {
        let bounds: Box<[f64]> = bounds.into_iter().collect();
        assert!(
            bounds.iter().all(|bound| bound.is_finite()) && bounds.windows(2).all(|pair| pair[0] < pair[1]),
            "histogram bounds must be finite and strictly ascending: {bounds:?}"
        );
        // The buckets and the sum, rounded up to whole 128-byte runs, then the gap.
        let stride = (bounds.len() + 2).next_multiple_of(GAP) + GAP;
        let words = (0..stride * (OWN_SHARDS + 1)).map(|_| AtomicU64::new(0)).collect();
        Self { inner: Arc::new(Inner { bounds, stride, words }) }
    }

    /// Records one duration: a binary search over the bounds and two adds to this thread's
    /// shard (plain ones in a shard of its own, else relaxed atomic ones).
    pub fn observe(&self, value: Duration) {
        let seconds = value.as_secs_f64();
        let inner = &*self.inner;
        // The first bound >= the value (the `le` rule); `bounds.len()` is the `+Inf` bucket.
        let bucket = inner.bounds.partition_point(|&bound| bound < seconds);
        let own = SHARD.get();
        let start = own.unwrap_or(OWN_SHARDS) * inner.stride;
        let shard = &inner.words[start..start + inner.bounds.len() + 2];
        let (count, sum) = (&shard[bucket], &shard[inner.bounds.len() + 1]);
        if own.is_some() {
            add_alone(count, 1);
            add_alone(sum, round_to_micros(value));
        } else {
            count.fetch_add(1, Relaxed);
            sum.fetch_add(round_to_micros(value), Relaxed);
        }
    }

    /// Word `index` of a shard, added up over the shards.
    fn total(&self, index: usize) -> u64 {
        let inner = &*self.inner;
        (0..=OWN_SHARDS)
            .map(|shard| inner.words[shard * inner.stride + index].load(Relaxed))
            .fold(0, u64::wrapping_add)
    }

    fn sum_micros(&self) -> u64 {
        self.total(self.inner.bounds.len() + 1)
    }

    fn snapshot(&self) -> Snapshot {
        let buckets: Vec<(f64, u64)> = self
            .inner
            .bounds
            .iter()
            .copied()
            .chain(once(f64::MAX))
            .enumerate()
            .map(|(bucket, bound)| (bound, self.total(bucket)))
            .collect();
        let count = buckets.iter().map(|(_, count)| count).sum();
        // u64 -> f64 is exact up to 2^53 µs (285 years); beyond that it rounds, as any f64 does.
        let sum_seconds = self.sum_micros() as f64 / 1e6;
        Snapshot { sum_seconds, count, buckets }
    }
}

fn round_to_micros(value: Duration) -> u64 {
    u64::try_from(value.as_nanos().saturating_add(500) / 1000).unwrap_or(u64::MAX)
}

impl TypedMetric for Histogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for Histogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), fmt::Error> {
        let Snapshot { sum_seconds, count, buckets } = self.snapshot();
        encoder.encode_histogram::<NoLabelSet>(sum_seconds, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use prometheus_client::encoding::{text::encode, EncodeLabelSet};
    use prometheus_client::metrics::family::Family;
    use prometheus_client::metrics::histogram::{exponential_buckets, Histogram as StockHistogram};
    use prometheus_client::registry::Registry;

    const BOUNDS: [f64; 3] = [0.001, 0.01, 0.1];

    fn counts(histogram: &Histogram) -> Vec<u64> {
        histogram.snapshot().buckets.iter().map(|(_, count)| *count).collect()
    }

    #[test]
    fn observations_land_in_the_first_bucket_whose_bound_is_at_least_them() {
        let histogram = Histogram::new(BOUNDS);
        histogram.observe(Duration::ZERO); // le 0.001
        histogram.observe(Duration::from_micros(999)); // le 0.001
        histogram.observe(Duration::from_millis(1)); // on the bound: le 0.001
        histogram.observe(Duration::from_nanos(1_000_001)); // just above: le 0.01
        histogram.observe(Duration::from_millis(10)); // on the bound: le 0.01
        histogram.observe(Duration::from_millis(100)); // on the bound: le 0.1
        histogram.observe(Duration::from_nanos(100_000_001)); // just above: +Inf
        histogram.observe(Duration::from_secs(3600)); // +Inf
        assert_eq!(counts(&histogram), [3, 2, 1, 2]);
        let bounds: Vec<f64> = histogram.snapshot().buckets.iter().map(|(bound, _)| *bound).collect();
        assert_eq!(bounds, [0.001, 0.01, 0.1, f64::MAX]);
    }

    #[test]
    fn boundaries_match_the_stock_histogram_on_the_bounds_tokengate_uses() {
        let ours = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        let stock = StockHistogram::new(exponential_buckets(0.001, 2.0, 16));
        let mut registry = Registry::default();
        registry.register("ours", "", ours.clone());
        registry.register("stock", "", stock.clone());
        // Every bound itself, and one nanosecond either side of it.
        for i in 0..16 {
            let bound = Duration::from_millis(1 << i);
            for value in [bound - Duration::from_nanos(1), bound, bound + Duration::from_nanos(1)] {
                ours.observe(value);
                stock.observe(value.as_secs_f64());
            }
        }
        let text = encoded(&registry);
        let buckets = |name: &str| -> Vec<String> {
            text.lines()
                .filter_map(|line| line.strip_prefix(&format!("{name}_bucket")).map(str::to_string))
                .collect()
        };
        assert_eq!(buckets("ours"), buckets("stock"));
        // The bound and the value below it in each bucket; the value above in the next.
        assert!(text.contains("ours_bucket{le=\"0.001\"} 2\n"), "{text}");
        assert!(text.contains("ours_bucket{le=\"0.002\"} 5\n"), "{text}");
        assert!(text.contains("ours_bucket{le=\"+Inf\"} 48\n"), "{text}");
    }

    #[test]
    fn sum_and_count_are_exact() {
        let histogram = Histogram::new(BOUNDS);
        let mut expected_micros = 0;
        for micros in (0..10_000).map(|i| i * 37 + 1) {
            histogram.observe(Duration::from_micros(micros));
            expected_micros += micros;
        }
        let snapshot = histogram.snapshot();
        assert_eq!(snapshot.count, 10_000);
        assert_eq!(histogram.sum_micros(), expected_micros);
        assert_eq!(snapshot.sum_seconds, expected_micros as f64 / 1e6);
    }

    #[test]
    fn the_sum_rounds_each_observation_to_the_nearest_microsecond() {
        let histogram = Histogram::new(BOUNDS);
        histogram.observe(Duration::from_nanos(1_499)); // 1 µs
        histogram.observe(Duration::from_nanos(1_500)); // 2 µs
        histogram.observe(Duration::from_nanos(499)); // 0 µs
        assert_eq!(histogram.sum_micros(), 3);
        assert_eq!(histogram.snapshot().count, 3);
    }

    #[test]
    fn threads_with_shards_of_their_own_and_threads_without_lose_nothing() {
        // More threads than shards: those that claim one in time write theirs alone, the
        // rest (and any thread of another test in this process) share the atomic one.
        const THREADS: u64 = OWN_SHARDS as u64 + 4;
        const PER_THREAD: u64 = 20_000;
        let histogram = Histogram::new(BOUNDS);
        std::thread::scope(|scope| {
            for thread in 0..THREADS {
                let histogram = histogram.clone();
                scope.spawn(move || {
                    if thread % 5 != 0 {
                        claim_shard();
                    }
                    for i in 0..PER_THREAD {
                        let micros = [1, 2_000, 20_000, 200_000][((i + thread) % 4) as usize];
                        histogram.observe(Duration::from_micros(micros));
                    }
                });
            }
        });
        let each = THREADS * PER_THREAD / 4;
        assert_eq!(counts(&histogram), [each, each, each, each]);
        assert_eq!(histogram.sum_micros(), each * (1 + 2_000 + 20_000 + 200_000));
    }

    #[test]
    fn a_thread_with_a_shard_of_its_own_writes_only_that_shard() {
        let histogram = Histogram::new(BOUNDS);
        let shard = std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    claim_shard();
                    histogram.observe(Duration::from_millis(2));
                    SHARD.get()
                })
                .join()
        });
        let Ok(Some(shard)) = shard else { return }; // every shard claimed by other tests' threads
        let inner = &*histogram.inner;
        let written: Vec<usize> =
            (0..inner.words.len()).filter(|&index| inner.words[index].load(Relaxed) != 0).collect();
        let start = shard * inner.stride;
        assert_eq!(written, [start + 1, start + BOUNDS.len() + 1], "the bucket and the sum of its shard");
        assert_eq!(counts(&histogram), [0, 1, 0, 0]);
    }

    #[test]
    #[should_panic(expected = "strictly ascending")]
    fn unordered_bounds_are_refused() {
        let _ = Histogram::new([0.1, 0.01]);
    }

    #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
    struct RouteLabel {
        route: String,
    }

    fn encoded(registry: &Registry) -> String {
        let mut text = String::new();
        encode(&mut text, registry).unwrap();
        text
    }

    /// Values in whole microseconds that are also exact binary fractions of a second, so the
    /// stock histogram's f64 sum is exact too and the two expositions can be compared byte
    /// for byte.
    fn observations() -> impl Iterator<Item = Duration> {
        [0, 15_625, 31_250, 62_500, 125_000, 250_000, 500_000, 1_000_000, 2_000_000, 64_000_000]
            .into_iter()
            .cycle()
            .take(57)
            .map(Duration::from_micros)
    }

    #[test]
    fn the_exposition_is_the_stock_histograms_byte_for_byte() {
        let buckets = || exponential_buckets(0.001, 2.0, 16);
        let registry_with = |stock: bool| {
            let mut registry = Registry::with_prefix("tokengate");
            if stock {
                let family = Family::<RouteLabel, StockHistogram>::new_with_constructor(|| {
                    StockHistogram::new(exponential_buckets(0.001, 2.0, 16))
                });
                registry.register("request_duration_seconds", "Time to answer", family.clone());
                let single = StockHistogram::new(buckets());
                registry.register("token_call_duration_seconds", "Time of a call", single.clone());
                let handle = family.get_or_create(&RouteLabel { route: "/api/".into() }).clone();
                for value in observations() {
                    handle.observe(value.as_secs_f64());
                    single.observe(value.as_secs_f64());
                }
            } else {
                let family = Family::<RouteLabel, Histogram>::new_with_constructor(|| {
                    Histogram::new(exponential_buckets(0.001, 2.0, 16))
                });
                registry.register("request_duration_seconds", "Time to answer", family.clone());
                let single = Histogram::new(buckets());
                registry.register("token_call_duration_seconds", "Time of a call", single.clone());
                let handle = family.get_or_create(&RouteLabel { route: "/api/".into() }).clone();
                for value in observations() {
                    handle.observe(value);
                    single.observe(value);
                }
            }
            encoded(&registry)
        };
        let (ours, stock) = (registry_with(false), registry_with(true));
        assert_eq!(ours, stock);
        for line in [
            "# TYPE tokengate_request_duration_seconds histogram\n",
            "tokengate_request_duration_seconds_sum{route=\"/api/\"} 340.90625\n",
            "tokengate_request_duration_seconds_count{route=\"/api/\"} 57\n",
            "tokengate_request_duration_seconds_bucket{le=\"0.016\",route=\"/api/\"} 12\n",
            "tokengate_request_duration_seconds_bucket{le=\"+Inf\",route=\"/api/\"} 57\n",
            "tokengate_token_call_duration_seconds_bucket{le=\"+Inf\"} 57\n",
        ] {
            assert!(ours.contains(line), "{line} missing from\n{ours}");
        }
    }

    #[test]
    fn an_empty_histogram_encodes_like_the_stock_one() {
        let mut ours = Registry::default();
        ours.register("h", "", Histogram::new(BOUNDS));
        let mut stock = Registry::default();
        stock.register("h", "", StockHistogram::new(BOUNDS));
        assert_eq!(encoded(&ours), encoded(&stock));
    }
}
