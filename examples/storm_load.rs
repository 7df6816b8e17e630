//! The load generator of `bench/refresh-storm.sh`: guest sessions, then closed-loop load
//! over all of them while their access tokens expire at one instant.
//!
//! 1. Creates `--sessions` guest sessions (`POST /session/guest`), spread over the
//!    `--targets` (tokengate replicas), and keeps their cookies.
//! 2. Runs `--connections` keep-alive connections (connection *i* to target *i* mod the
//!    number of targets), each sending `GET --path` one after the other, the cookie taken
//!    from a shared rotation over every session, so each session's calls reach every
//!    replica in turn. The rotation hands each session out `--burst` times in a row, to
//!    whichever connections are free next: those calls of one session are in flight at
//!    the same time, on different connections (and replicas), so the first calls after
//!    the instant race to refresh the same session, which single-flight must turn into
//!    one refresh call. Every request is timed from send to the last byte of the body.
//! 3. Stops `--after` seconds past `--storm-at` (Unix seconds, the instant the mock was
//!    told to expire every access token at), once every session has been called at least
//!    once after that instant (bounded: at most 60 s past it).
//!
//! It prints the steady p99 (from one second into the load to one second before the
//! instant), the storm p99 (one second before the instant until every session has been
//! called after it, at least `--storm-window` seconds), a per-second timeline, requests per second, failures (non-2xx answers,
//! socket errors, timeouts), and the mock's refresh counter before the instant and at the
//! end (`--mock`). The last lines are `KEY=value` for the script. It asserts nothing.
//!
//! With `--create-only` it stops after step 1 (`bench/memory.sh` measures tokengate's
//! resident memory around it).
//!
//! ```sh
//! storm_load --targets http://127.0.0.1:8080 --mock http://127.0.0.1:8081 \
//!     --sessions 10000 --connections 64 --storm-at 1800000000
//! ```

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::{handshake, SendRequest};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// One request longer than this counts as failed (a timeout).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest the load runs past the instant, whatever the coverage.
const MAX_AFTER: Duration = Duration::from_secs(60);

struct Args {
    targets: Vec<String>,
    mock: String,
    sessions: usize,
    connections: usize,
    storm_at: u64,
    after: u64,
    storm_window: u64,
    path: String,
    cookie: String,
    /// Consecutive calls of one session (in flight together) before the rotation moves on.
    burst: usize,
    /// Only create the sessions, then exit (the end-to-end leg of `bench/memory.sh`).
    create_only: bool,
}

fn args() -> Result<Args, String> {
    let mut parsed = Args {
        targets: Vec::new(),
        mock: String::new(),
        sessions: 10_000,
        connections: 64,
        storm_at: 0,
        after: 10,
        storm_window: 4,
        path: "/api/shoppers/me".into(),
        cookie: "tg".into(),
        burst: 3,
        create_only: false,
    };
    let mut words = std::env::args().skip(1);
    while let Some(flag) = words.next() {
        if flag == "--create-only" {
            parsed.create_only = true;
            continue;
        }
        let value = words.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let number = || value.parse::<u64>().map_err(|_| format!("{flag}: {value:?} is not a number"));
        match flag.as_str() {
            "--targets" => {
                parsed.targets = value.split(',').map(|t| t.trim_end_matches('/').to_owned()).collect()
            }
            "--mock" => parsed.mock = value.trim_end_matches('/').to_owned(),
            "--sessions" => parsed.sessions = number()? as usize,
            "--connections" => parsed.connections = number()? as usize,
            "--storm-at" => parsed.storm_at = number()?,
            "--after" => parsed.after = number()?,
            "--storm-window" => parsed.storm_window = number()?,
            "--path" => parsed.path = value,
            "--cookie" => parsed.cookie = value,
            "--burst" => parsed.burst = number()? as usize,
            _ => return Err(format!("unknown option {flag}")),
        }
    }
    if parsed.targets.is_empty() {
        return Err("--targets is required".into());
    }
    if !parsed.create_only && (parsed.mock.is_empty() || parsed.storm_at == 0) {
        return Err("--mock and --storm-at are required (unless --create-only)".into());
    }
    if parsed.sessions == 0 || parsed.connections == 0 || parsed.burst == 0 {
        return Err("--sessions, --connections and --burst must be positive".into());
    }
    Ok(parsed)
}

/// `http://host:port` → `host:port`.
fn authority(url: &str) -> Result<String, String> {
    url.strip_prefix("http://").map(str::to_owned).ok_or_else(|| format!("{url}: only http:// targets"))
}

async fn connect(authority: &str) -> Result<SendRequest<Empty<Bytes>>, String> {
    let stream = TcpStream::connect(authority).await.map_err(|e| format!("connect {authority}: {e}"))?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let (sender, connection) =
        handshake(TokioIo::new(stream)).await.map_err(|e| format!("handshake {authority}: {e}"))?;
    tokio::spawn(connection);
    Ok(sender)
}

/// What one request came to.
enum Outcome {
    Status(u16, hyper::HeaderMap),
    Failed(String),
}

async fn send(sender: &mut SendRequest<Empty<Bytes>>, request: Request<Empty<Bytes>>) -> Outcome {
    let exchange = async {
        sender.ready().await.map_err(|e| e.to_string())?;
        let response = sender.send_request(request).await.map_err(|e| e.to_string())?;
        let (parts, body) = response.into_parts();
        body.collect().await.map_err(|e| e.to_string())?;
        Ok::<_, String>((parts.status.as_u16(), parts.headers))
    };
    match tokio::time::timeout(REQUEST_TIMEOUT, exchange).await {
        Ok(Ok((status, headers))) => Outcome::Status(status, headers),
        Ok(Err(error)) => Outcome::Failed(error),
        Err(_) => Outcome::Failed("timed out".into()),
    }
}

fn request(method: Method, path: &str, host: &str, cookie: Option<&str>) -> Request<Empty<Bytes>> {
    let mut builder = Request::builder().method(method).uri(path).header("host", host).header("x-csrf", "1");
    if let Some(cookie) = cookie {
        builder = builder.header("cookie", cookie);
    }
    builder.body(Empty::new()).unwrap_or_else(|e| panic!("a fixed request is valid: {e}"))
}

/// `POST /session/guest` `sessions` times over `connections` connections; the cookies.
async fn create(args: &Args) -> Result<Vec<String>, String> {
    let claimed = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for index in 0..args.connections.min(32) {
        let host = authority(&args.targets[index % args.targets.len()])?;
        let (claimed, total, name) = (Arc::clone(&claimed), args.sessions, format!("{}=", args.cookie));
        tasks.push(tokio::spawn(async move {
            let mut sender = connect(&host).await?;
            let mut cookies = Vec::new();
            while claimed.fetch_add(1, Ordering::Relaxed) < total {
                let answer = send(&mut sender, request(Method::POST, "/session/guest", &host, None)).await;
                let Outcome::Status(200, headers) = answer else {
                    return Err(match answer {
                        Outcome::Status(status, _) => format!("POST /session/guest answered {status}"),
                        Outcome::Failed(error) => format!("POST /session/guest failed: {error}"),
                    });
                };
                let cookie = headers
                    .get_all("set-cookie")
                    .iter()
                    .filter_map(|value| value.to_str().ok())
                    .find(|value| value.starts_with(&name))
                    .and_then(|value| value.split(';').next())
                    .ok_or("POST /session/guest set no session cookie")?;
                cookies.push(cookie.to_owned());
            }
            Ok::<_, String>(cookies)
        }));
    }
    let mut cookies = Vec::with_capacity(args.sessions);
    for task in tasks {
        cookies.extend(task.await.map_err(|e| e.to_string())??);
    }
    Ok(cookies)
}

/// One timed request: when it was sent (µs since the load started), how long it took,
/// and whether it was a 2xx.
#[derive(Clone, Copy)]
struct Sample {
    sent_us: u64,
    latency_us: u32,
    ok: bool,
}

struct Shared {
    cookies: Vec<String>,
    burst: usize,
    next: AtomicUsize,
    stop: AtomicBool,
    /// Per session: whether a call was sent after the instant.
    hit_after: Vec<AtomicBool>,
    hits_after: AtomicUsize,
    /// When (µs since the load began) the last session got its first call after the
    /// instant: the storm, every session's refresh, lies between the instant and this.
    covered_us: AtomicU64,
    failures: Mutex<BTreeMap<String, u64>>,
    reconnects: AtomicU64,
}

async fn load_connection(
    shared: Arc<Shared>,
    host: String,
    path: String,
    epoch: Instant,
    instant_us: u64,
) -> Vec<Sample> {
    let mut samples = Vec::with_capacity(1 << 16);
    let mut sender = None;
    while !shared.stop.load(Ordering::Relaxed) {
        let current = match sender.as_mut() {
            Some(current) => current,
            None => match connect(&host).await {
                Ok(fresh) => sender.insert(fresh),
                Err(error) => {
                    *shared.failures.lock().unwrap_or_else(|e| e.into_inner()).entry(error).or_default() += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let session = shared.next.fetch_add(1, Ordering::Relaxed) / shared.burst % shared.cookies.len();
        let sent = epoch.elapsed();
        let sent_us = sent.as_micros() as u64;
        if sent_us >= instant_us
            && !shared.hit_after[session].swap(true, Ordering::Relaxed)
            && shared.hits_after.fetch_add(1, Ordering::Relaxed) + 1 == shared.cookies.len()
        {
            shared.covered_us.store(sent_us, Ordering::Relaxed);
        }
        let outcome = send(current, request(Method::GET, &path, &host, Some(&shared.cookies[session]))).await;
        let latency_us = u32::try_from((epoch.elapsed() - sent).as_micros()).unwrap_or(u32::MAX);
        let ok = match outcome {
            Outcome::Status(status, _) if (200..300).contains(&status) => true,
            Outcome::Status(status, _) => {
                let mut failures = shared.failures.lock().unwrap_or_else(|e| e.into_inner());
                *failures.entry(format!("HTTP {status}")).or_default() += 1;
                false
            }
            Outcome::Failed(error) => {
                let mut failures = shared.failures.lock().unwrap_or_else(|e| e.into_inner());
                *failures.entry(format!("socket: {error}")).or_default() += 1;
                sender = None;
                shared.reconnects.fetch_add(1, Ordering::Relaxed);
                false
            }
        };
        samples.push(Sample { sent_us, latency_us, ok });
    }
    samples
}

/// The mock's refresh counter (`/__mock/stats`).
async fn refresh_count(mock: &str) -> Result<u64, String> {
    let host = authority(mock)?;
    let mut sender = connect(&host).await?;
    let exchange = async {
        sender.ready().await.map_err(|e| e.to_string())?;
        let response = sender
            .send_request(request(Method::GET, "/__mock/stats", &host, None))
            .await
            .map_err(|e| e.to_string())?;
        let body = response.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
        let stats: serde_json::Value = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
        stats["token_calls"]["refresh"]
            .as_u64()
            .ok_or_else(|| "no token_calls.refresh in the stats".to_owned())
    };
    tokio::time::timeout(Duration::from_secs(5), exchange).await.map_err(|_| "stats timed out".to_owned())?
}

fn percentile(sorted: &[u32], fraction: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((sorted.len() as f64 * fraction).ceil() as usize).clamp(1, sorted.len());
    f64::from(sorted[rank - 1]) / 1000.0
}

/// Requests, req/s, p50/p99/max (ms) and failures of the samples sent in `[from, to)` µs.
struct Window {
    requests: usize,
    per_second: f64,
    p50: f64,
    p99: f64,
    max: f64,
    failed: usize,
}

fn window(samples: &[Sample], from: u64, to: u64) -> Window {
    let mut latencies: Vec<u32> =
        samples.iter().filter(|s| s.sent_us >= from && s.sent_us < to).map(|s| s.latency_us).collect();
    latencies.sort_unstable();
    let failed = samples.iter().filter(|s| s.sent_us >= from && s.sent_us < to && !s.ok).count();
    let seconds = (to.saturating_sub(from)) as f64 / 1e6;
    Window {
        requests: latencies.len(),
        per_second: latencies.len() as f64 / seconds.max(1e-9),
        p50: percentile(&latencies, 0.50),
        p99: percentile(&latencies, 0.99),
        max: latencies.last().map_or(f64::NAN, |&max| f64::from(max) / 1000.0),
        failed,
    }
}

async fn run(args: Args) -> Result<(), String> {
    let started = Instant::now();
    let cookies = create(&args).await?;
    println!(
        "created              {} guest sessions in {:.1} s",
        cookies.len(),
        started.elapsed().as_secs_f64()
    );
    if args.create_only {
        println!("CREATED={}", cookies.len());
        return Ok(());
    }

    // The load's clock: µs since `epoch`, with the instant placed on it.
    let epoch = Instant::now();
    let epoch_unix = SystemTime::now().duration_since(UNIX_EPOCH).map_err(|e| e.to_string())?;
    let instant_from_epoch = Duration::from_secs(args.storm_at).checked_sub(epoch_unix).ok_or_else(|| {
        format!("the instant {} passed before the load began (creation too slow)", args.storm_at)
    })?;
    if instant_from_epoch < Duration::from_secs(3) {
        return Err(format!(
            "only {:.1} s of steady load before the instant: start the mock with a later --access-expires-at",
            instant_from_epoch.as_secs_f64()
        ));
    }
    let instant_us = instant_from_epoch.as_micros() as u64;
    let shared = Arc::new(Shared {
        hit_after: (0..cookies.len()).map(|_| AtomicBool::new(false)).collect(),
        cookies,
        burst: args.burst,
        next: AtomicUsize::new(0),
        stop: AtomicBool::new(false),
        hits_after: AtomicUsize::new(0),
        covered_us: AtomicU64::new(0),
        failures: Mutex::new(BTreeMap::new()),
        reconnects: AtomicU64::new(0),
    });
    let mut tasks = Vec::new();
    for index in 0..args.connections {
        let host = authority(&args.targets[index % args.targets.len()])?;
        tasks.push(tokio::spawn(load_connection(
            Arc::clone(&shared),
            host,
            args.path.clone(),
            epoch,
            instant_us,
        )));
    }

    // Just before the instant: nothing should have been refreshed yet.
    tokio::time::sleep_until((epoch + instant_from_epoch - Duration::from_millis(200)).into()).await;
    let refresh_before = refresh_count(&args.mock).await?;
    let earliest_stop = epoch + instant_from_epoch + Duration::from_secs(args.after);
    let latest_stop = epoch + instant_from_epoch + MAX_AFTER;
    tokio::time::sleep_until(earliest_stop.into()).await;
    while shared.hits_after.load(Ordering::Relaxed) < shared.cookies.len() && Instant::now() < latest_stop {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    shared.stop.store(true, Ordering::Relaxed);
    let load_ended = epoch.elapsed().as_micros() as u64;
    let mut samples = Vec::new();
    for task in tasks {
        samples.extend(task.await.map_err(|e| e.to_string())?);
    }
    let refresh_after = refresh_count(&args.mock).await?;

    let second = 1_000_000u64;
    let steady = window(&samples, second, instant_us.saturating_sub(second));
    // The storm: from one second before the instant (a token whose expiry was rounded down
    // is refreshed up to a second early) until the last session's first call after it
    // (at least --storm-window seconds; that long if not every session was called).
    let covered_us = shared.covered_us.load(Ordering::Relaxed);
    let storm_end = covered_us.max(instant_us + args.storm_window * second);
    let storm = window(&samples, instant_us.saturating_sub(second), storm_end);
    let all = window(&samples, 0, load_ended);
    let failures = shared.failures.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let failed: u64 = failures.values().sum();

    println!(
        "load                 {} connections over {} target(s), {:.1} s, each session {} call(s) at a time",
        args.connections,
        args.targets.len(),
        load_ended as f64 / 1e6,
        args.burst
    );
    println!("timeline (second relative to the instant: requests, p50 / p99 / max ms, failed)");
    let first = -((instant_us / second) as i64);
    let last = ((load_ended.saturating_sub(instant_us)) / second) as i64;
    for relative in first..=last {
        let from = instant_us as i64 + relative * second as i64;
        let (from, to) = (from.max(0) as u64, (from + second as i64).max(0) as u64);
        let w = window(&samples, from, to.min(load_ended));
        if w.requests > 0 {
            println!(
                "  {relative:+4} s  {:6}  {:7.2} / {:7.2} / {:8.2}  {}",
                w.requests, w.p50, w.p99, w.max, w.failed
            );
        }
    }
    println!(
        "steady               {} req, {:.0} req/s, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        steady.requests, steady.per_second, steady.p50, steady.p99, steady.max
    );
    println!("storm                {} req, {:.0} req/s, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms (from 1 s before the instant to {:.1} s after)", storm.requests, storm.per_second, storm.p50, storm.p99, storm.max, (storm_end - instant_us) as f64 / 1e6);
    if covered_us > 0 {
        println!("every session called {:.2} s after the instant", (covered_us - instant_us) as f64 / 1e6);
    }
    println!("whole run            {} req, {:.0} req/s", all.requests, all.per_second);
    println!(
        "sessions called after the instant: {} of {}",
        shared.hits_after.load(Ordering::Relaxed),
        shared.cookies.len()
    );
    println!("refresh calls at the mock: {refresh_before} before the instant, {refresh_after} at the end");
    for (what, count) in &failures {
        println!("failure              {count} × {what}");
    }
    println!("STEADY_P99_MS={:.2}", steady.p99);
    println!("STORM_P99_MS={:.2}", storm.p99);
    println!("RPS={:.0}", all.per_second);
    println!("STORM_SECS={:.1}", (storm_end - instant_us) as f64 / 1e6);
    println!("FAILED={failed}");
    println!("SESSIONS={}", shared.cookies.len());
    println!("COVERED={}", shared.hits_after.load(Ordering::Relaxed));
    println!("REFRESH_BEFORE={refresh_before}");
    println!("REFRESH_AFTER={refresh_after}");
    Ok(())
}

fn main() {
    let args = match args() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("storm_load: {message}");
            std::process::exit(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    if let Err(message) = runtime.block_on(run(args)) {
        eprintln!("storm_load: {message}");
        std::process::exit(1);
    }
}
