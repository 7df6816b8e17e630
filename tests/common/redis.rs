//! Real Redis servers for tests: Debian's `redis-server`, one per test, on free
//! 127.0.0.1 ports, each with its own temporary directory, stopped by PID on drop.
//!
//! * [`RedisServer`] is one standalone server; it can be stopped, killed and restarted on
//!   the same port with its data ([`RedisServer::restart_keeping_data`]) or without
//!   ([`RedisServer::restart_empty`]).
//! * [`RedisCluster`] is a cluster of N masters (no replicas) joined by
//!   `redis-cli --cluster create`.
//! * [`RespClient`] is a tiny blocking RESP2 client, so tests can look inside Redis
//!   without depending on the session store under test ([`RedisServer::dump_all`] is what
//!   a leak check reads).
//!
//! Everything is synchronous (like the way `Env` spawns its children) and bounded in
//! time: starting polls `PING` against a deadline, stopping polls the exit status against
//! a deadline. Only processes started here are ever signalled, and only by their PID.

use std::fs::OpenOptions;
use std::io::{self, BufRead, BufReader, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a server has to answer `PING` after it is spawned.
const START_DEADLINE: Duration = Duration::from_secs(20);
/// How long a server has to exit after SIGTERM before it gets SIGKILL.
const STOP_DEADLINE: Duration = Duration::from_secs(10);
/// How long `redis-cli --cluster create` may take, and then the cluster to settle.
const CLUSTER_DEADLINE: Duration = Duration::from_secs(60);
/// Fresh ports tried when the one picked was taken between picking and binding.
const PORT_ATTEMPTS: usize = 5;
/// How long a restart retries its (fixed) port while something else holds it.
const REBIND_DEADLINE: Duration = Duration::from_secs(5);
/// Connect, read and write timeout of the RESP client.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
const POLL: Duration = Duration::from_millis(20);
const LOG_TAIL_LINES: usize = 30;

// ---------------------------------------------------------------------------------------
// A standalone server

/// A `redis-server` process of this test: `--bind 127.0.0.1 --port P --save "" --appendonly
/// no --dir <tmp> --daemonize no --protected-mode yes`, logging to `<tmp>/redis.log`.
///
/// Nothing is persisted on its own: [`restart_keeping_data`](Self::restart_keeping_data)
/// calls `SAVE` (to `<tmp>/dump.rdb`) before it stops the server.
pub struct RedisServer {
    child: Option<Child>,
    /// The PID of the last process, kept after it stops (for tests of "is it gone").
    last_pid: u32,
    port: u16,
    /// Every argument after `redis-server`, fixed at the first start (so restarts reuse
    /// the same port, directory and, for a cluster node, the same bus port and nodes file).
    args: Vec<String>,
    log_file: PathBuf,
    dir: tempfile::TempDir,
}

impl RedisServer {
    /// Starts a standalone server on a free loopback port and waits until it answers `PING`.
    pub fn start() -> RedisServer {
        RedisServer::start_with(&[])
    }

    /// Like [`start`](Self::start), with extra `redis-server` arguments appended, e.g.
    /// `&["--maxmemory", "1mb"]`. (Not `--requirepass`: the readiness check and the
    /// helpers here do not authenticate.)
    pub fn start_with(extra_args: &[&str]) -> RedisServer {
        RedisServer::start_inner(extra_args, false)
    }

    fn start_inner(extra_args: &[&str], cluster: bool) -> RedisServer {
        let dir =
            tempfile::Builder::new().prefix("redis-").tempdir().expect("a temporary directory for redis");
        let log_file = dir.path().join("redis.log");
        let mut collisions = Vec::new();
        for _ in 0..PORT_ATTEMPTS {
            // Both listeners are held at once, so the data and bus ports differ.
            let (port, bus_port) = if cluster {
                let (a, b) = (free_listener(), free_listener());
                (local_port(&a), Some(local_port(&b)))
            } else {
                (local_port(&free_listener()), None)
            };
            let args = server_args(port, bus_port, dir.path(), extra_args);
            match launch(&args, port, &log_file) {
                Ok(child) => {
                    let last_pid = child.id();
                    return RedisServer { child: Some(child), last_pid, port, args, log_file, dir };
                }
                Err(LaunchError::PortTaken) => collisions.push(port),
                Err(LaunchError::Failed(why)) => panic!(
                    "redis-server did not start on 127.0.0.1:{port}: {why}\n--- {} (tail) ---\n{}",
                    log_file.display(),
                    tail(&log_file, LOG_TAIL_LINES)
                ),
            }
        }
        panic!(
            "redis-server found every port it tried taken ({collisions:?}), {PORT_ATTEMPTS} attempts\n\
             --- {} (tail) ---\n{}",
            log_file.display(),
            tail(&log_file, LOG_TAIL_LINES)
        );
    }

    /// `redis://127.0.0.1:P`
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// The PID of the running process, `None` after [`stop`](Self::stop) or [`kill`](Self::kill).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The PID of the most recent process, running or not.
    pub fn last_pid(&self) -> u32 {
        self.last_pid
    }

    /// Whether the process is still alive (it may have exited on its own).
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut().map(Child::try_wait) {
            Some(Ok(None)) => true,
            Some(_) => {
                self.child = None;
                false
            }
            None => false,
        }
    }

    /// The server's temporary directory (log, `dump.rdb`, `nodes-P.conf`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The whole server log (every start of this server, appended).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_file).unwrap_or_default()
    }

    /// The last `lines` lines of the server log.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log_file, lines)
    }

    /// A new connection. Panics (with the log tail) if the server does not accept one.
    pub fn client(&self) -> RespClient {
        RespClient::connect(self.addr()).unwrap_or_else(|e| {
            panic!(
                "cannot connect to redis at {}: {e}\n--- log (tail) ---\n{}",
                self.addr(),
                self.log_tail(LOG_TAIL_LINES)
            )
        })
    }

    /// Sends one command on a new connection and returns the reply (a Redis error is a
    /// [`RespValue::Error`], not a panic; an I/O error panics).
    pub fn command<A: AsRef<[u8]>>(&self, args: &[A]) -> RespValue {
        self.client().command(args)
    }

    /// Every key of database 0 (`SCAN` until the cursor comes back to 0), sorted.
    pub fn keys(&self) -> Vec<String> {
        let mut client = self.client();
        let mut keys: Vec<String> = scan_keys(&mut client).iter().map(|k| lossy(k)).collect();
        keys.sort();
        keys
    }

    /// Every key of every database with its value in a readable form, sorted by key; keys
    /// of a database other than 0 are named `db<N>:<key>`. See [`RespClient::dump_all`]
    /// for how each type is rendered. For a leak check: nothing in Redis escapes this.
    pub fn dump_all(&self) -> Vec<(String, Vec<u8>)> {
        self.client().dump_all()
    }

    /// `PTTL key`: milliseconds left, -1 without expiry, -2 when the key does not exist.
    pub fn pttl(&self, key: &str) -> i64 {
        let reply = self.command(&["PTTL", key]);
        reply.as_int().unwrap_or_else(|| panic!("PTTL {key} answered {reply:?}"))
    }

    /// `FLUSHALL`: every key of every database is gone.
    pub fn flushall(&self) {
        let reply = self.command(&["FLUSHALL"]);
        assert!(reply.is_ok(), "FLUSHALL answered {reply:?}");
    }

    /// Stops the server: SIGTERM by PID, then waits for it to exit (SIGKILL if it has not
    /// after 10 s). With `--save ""` nothing is written on the way out. A no-op when it
    /// is not running.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = child.id().to_string();
            let sent = Command::new("kill").args(["-s", "TERM", &pid]).stderr(Stdio::null()).status();
            let exited = sent.is_ok_and(|s| s.success())
                && poll_until(STOP_DEADLINE, || child.try_wait().ok().flatten()).is_some();
            if !exited {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }

    /// SIGKILL by PID, as a crash would: nothing is saved. A no-op when it is not running.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// `SAVE`, stop, and start again on the same port and directory: every key (with its
    /// TTL) comes back. On a server that is not running (after [`stop`](Self::stop) or
    /// [`kill`](Self::kill)) it only starts it again, with what the last `SAVE` wrote
    /// (nothing, if none did), the way a real restart after a crash would.
    pub fn restart_keeping_data(&mut self) {
        if self.is_running() {
            let reply = self.command(&["SAVE"]);
            assert!(reply.is_ok(), "SAVE answered {reply:?}");
            self.stop();
        }
        self.relaunch();
    }

    /// Stops the server, deletes what any earlier `SAVE` wrote, and starts it again on the
    /// same port and directory: it comes back empty.
    pub fn restart_empty(&mut self) {
        self.stop();
        let dump = self.dir.path().join("dump.rdb");
        match std::fs::remove_file(&dump) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => panic!("cannot delete {}: {e}", dump.display()),
        }
        self.relaunch();
    }

    /// Starts the (stopped) server again with the same arguments; retries for a few
    /// seconds while something else holds its port.
    fn relaunch(&mut self) {
        assert!(self.child.is_none(), "relaunch of a running redis-server");
        let started = Instant::now();
        loop {
            match launch(&self.args, self.port, &self.log_file) {
                Ok(child) => {
                    self.last_pid = child.id();
                    self.child = Some(child);
                    return;
                }
                Err(LaunchError::PortTaken) if started.elapsed() < REBIND_DEADLINE => {
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(LaunchError::PortTaken) => panic!(
                    "redis-server could not restart: 127.0.0.1:{} stayed taken for {REBIND_DEADLINE:?}\n\
                     --- log (tail) ---\n{}",
                    self.port,
                    self.log_tail(LOG_TAIL_LINES)
                ),
                Err(LaunchError::Failed(why)) => panic!(
                    "redis-server did not restart on 127.0.0.1:{}: {why}\n--- log (tail) ---\n{}",
                    self.port,
                    self.log_tail(LOG_TAIL_LINES)
                ),
            }
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("--- redis 127.0.0.1:{} log (last 20 lines) ---\n{}", self.port, self.log_tail(20));
        }
    }
}

fn server_args(port: u16, bus_port: Option<u16>, dir: &Path, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "--bind",
        "127.0.0.1",
        "--port",
        &port.to_string(),
        "--save",
        "",
        "--appendonly",
        "no",
        "--dbfilename",
        "dump.rdb",
        "--dir",
        &dir.display().to_string(),
        "--daemonize",
        "no",
        "--protected-mode",
        "yes",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if let Some(bus_port) = bus_port {
        // The bus port defaults to port + 10000, past 65535 for a third of Linux's
        // ephemeral range (32768-60999): it gets a free port of its own instead.
        args.extend(
            [
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                &format!("nodes-{port}.conf"),
                "--cluster-node-timeout",
                "2000",
                "--cluster-port",
                &bus_port.to_string(),
            ]
            .iter()
            .map(|s| s.to_string()),
        );
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

enum LaunchError {
    /// Someone else bound the port first: try another one.
    PortTaken,
    Failed(String),
}

/// Spawns `redis-server args`, appending to `log_file`, and waits until *this* process
/// answers `PING` on `port` (its `INFO server` names our PID: a stranger's redis on a
/// recycled port does not count).
fn launch(args: &[String], port: u16, log_file: &Path) -> Result<Child, LaunchError> {
    let log_start = std::fs::metadata(log_file).map(|m| m.len()).unwrap_or(0);
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_file)
        .map_err(|e| LaunchError::Failed(format!("cannot open {}: {e}", log_file.display())))?;
    let log_err =
        log.try_clone().map_err(|e| LaunchError::Failed(format!("cannot clone the log handle: {e}")))?;
    let mut child = Command::new("redis-server")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(log_err))
        .spawn()
        .map_err(|e| {
            LaunchError::Failed(format!(
                "cannot run redis-server ({e}); scripts/test.sh installs Debian's redis-server"
            ))
        })?;
    let pid = child.id();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let outcome = poll_until(START_DEADLINE, || {
        if let Ok(Some(status)) = child.try_wait() {
            let log = std::fs::read(log_file).unwrap_or_default();
            let this_start =
                String::from_utf8_lossy(log.get(log_start as usize..).unwrap_or_default()).into_owned();
            return Some(if this_start.contains("Address already in use") {
                Err(LaunchError::PortTaken)
            } else {
                Err(LaunchError::Failed(format!("it exited with {status}")))
            });
        }
        answers_as(addr, pid).then_some(Ok(()))
    });
    match outcome {
        Some(Ok(())) => Ok(child),
        Some(Err(e)) => Err(e),
        None => {
            let _ = child.kill();
            let _ = child.wait();
            Err(LaunchError::Failed(format!("it did not answer PING within {START_DEADLINE:?}")))
        }
    }
}

/// Whether the redis on `addr` answers `PONG` (not `-LOADING`) and is process `pid`.
fn answers_as(addr: SocketAddr, pid: u32) -> bool {
    let Ok(mut client) = RespClient::connect(addr) else { return false };
    if !matches!(client.try_command(&["PING"]), Ok(RespValue::Simple(ref s)) if s == "PONG") {
        return false;
    }
    let Ok(info) = client.try_command(&["INFO", "server"]) else { return false };
    info.as_string().is_some_and(|info| info_field(&info, "process_id") == Some(pid.to_string()))
}

// ---------------------------------------------------------------------------------------
// A cluster

/// A Redis Cluster of N masters (no replicas) on free loopback ports, each node its own
/// [`RedisServer`] (own directory, `--cluster-config-file nodes-P.conf`,
/// `--cluster-node-timeout 2000`), joined by `redis-cli --cluster create`. Every node is
/// stopped by PID on drop.
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts `masters` nodes (at least 3, what `redis-cli --cluster create` requires),
    /// joins them, and waits until every node reports `cluster_state:ok` and knows all of
    /// the others.
    pub fn start(masters: usize) -> RedisCluster {
        assert!(masters >= 3, "a Redis Cluster needs at least 3 masters, asked for {masters}");
        let nodes: Vec<RedisServer> = (0..masters).map(|_| RedisServer::start_inner(&[], true)).collect();
        let cluster = RedisCluster { nodes };
        cluster.create();
        cluster.wait_until_ok();
        cluster
    }

    fn create(&self) {
        let output_file = self.nodes[0].dir().join("cluster-create.log");
        let output = std::fs::File::create(&output_file).expect("the cluster-create log file");
        let output_err = output.try_clone().expect("the cluster-create log handle");
        let mut command = Command::new("redis-cli");
        command.arg("--cluster").arg("create");
        for node in &self.nodes {
            command.arg(format!("127.0.0.1:{}", node.port()));
        }
        command
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .stdout(Stdio::from(output))
            .stderr(Stdio::from(output_err));
        let mut child = command.spawn().expect("redis-cli runs (scripts/test.sh installs redis-tools)");
        let status = poll_until(CLUSTER_DEADLINE, || child.try_wait().ok().flatten());
        let output = || std::fs::read_to_string(&output_file).unwrap_or_default();
        match status {
            Some(status) if status.success() => {}
            Some(status) => {
                panic!("redis-cli --cluster create exited with {status}:\n{}\n{}", output(), self.log_tails())
            }
            None => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "redis-cli --cluster create did not finish within {CLUSTER_DEADLINE:?}:\n{}\n{}",
                    output(),
                    self.log_tails()
                );
            }
        }
    }

    fn wait_until_ok(&self) {
        let expected_nodes = self.nodes.len().to_string();
        let ok = poll_until(CLUSTER_DEADLINE, || {
            self.nodes
                .iter()
                .all(|node| {
                    let Ok(mut client) = RespClient::connect(node.addr()) else { return false };
                    let Ok(info) = client.try_command(&["CLUSTER", "INFO"]) else { return false };
                    let info = info.as_string().unwrap_or_default();
                    info_field(&info, "cluster_state").as_deref() == Some("ok")
                        && info_field(&info, "cluster_slots_ok").as_deref() == Some("16384")
                        && info_field(&info, "cluster_known_nodes").as_deref()
                            == Some(expected_nodes.as_str())
                })
                .then_some(())
        });
        if ok.is_none() {
            let infos: Vec<String> = self
                .nodes
                .iter()
                .map(|n| {
                    format!(
                        "{}: {:?}",
                        n.port(),
                        RespClient::connect(n.addr()).map(|mut c| c.try_command(&["CLUSTER", "INFO"]))
                    )
                })
                .collect();
            panic!(
                "the cluster did not reach cluster_state:ok within {CLUSTER_DEADLINE:?}:\n{}\n{}",
                infos.join("\n"),
                self.log_tails()
            );
        }
    }

    fn log_tails(&self) -> String {
        self.nodes
            .iter()
            .map(|n| {
                format!("--- node 127.0.0.1:{} log (tail) ---\n{}", n.port(), n.log_tail(LOG_TAIL_LINES))
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// `redis-cluster://127.0.0.1:P1?node=127.0.0.1:P2&node=127.0.0.1:P3` (the form `fred`'s
    /// `Config::from_url` takes for a cluster).
    pub fn url(&self) -> String {
        let mut url = format!("redis-cluster://127.0.0.1:{}", self.nodes[0].port());
        for (i, node) in self.nodes[1..].iter().enumerate() {
            url.push(if i == 0 { '?' } else { '&' });
            url.push_str(&format!("node=127.0.0.1:{}", node.port()));
        }
        url
    }

    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// The nodes, to stop or kill one (with no replicas, its slots then fail after the
    /// 2 s node timeout).
    pub fn nodes_mut(&mut self) -> &mut [RedisServer] {
        &mut self.nodes
    }

    /// `CLUSTER KEYSLOT key`.
    pub fn keyslot(&self, key: &str) -> u16 {
        let reply = self.nodes[0].command(&["CLUSTER", "KEYSLOT", key]);
        reply
            .as_int()
            .and_then(|n| u16::try_from(n).ok())
            .unwrap_or_else(|| panic!("CLUSTER KEYSLOT answered {reply:?}"))
    }

    /// The node that serves `key`'s slot, by `CLUSTER SLOTS` as the first node sees it.
    pub fn node_for_key(&self, key: &str) -> &RedisServer {
        let slot = i64::from(self.keyslot(key));
        let reply = self.nodes[0].command(&["CLUSTER", "SLOTS"]);
        let ranges = reply.as_array().unwrap_or_else(|| panic!("CLUSTER SLOTS answered {reply:?}"));
        for range in ranges {
            let parts = range.as_array().unwrap_or_default();
            let (Some(start), Some(end)) =
                (parts.first().and_then(RespValue::as_int), parts.get(1).and_then(RespValue::as_int))
            else {
                continue;
            };
            if (start..=end).contains(&slot) {
                let port = parts
                    .get(2)
                    .and_then(RespValue::as_array)
                    .and_then(|m| m.get(1))
                    .and_then(RespValue::as_int);
                return self
                    .nodes
                    .iter()
                    .find(|n| Some(i64::from(n.port())) == port)
                    .unwrap_or_else(|| panic!("slot {slot} is served by port {port:?}, not one of ours"));
            }
        }
        panic!("no node serves slot {slot}: {reply:?}");
    }

    /// Sends a command to the first node and, when it answers `MOVED <slot> <host:port>`,
    /// once more to that node (no `ASK` handling: the harness never reshards).
    pub fn command<A: AsRef<[u8]>>(&self, args: &[A]) -> RespValue {
        let reply = self.nodes[0].command(args);
        let Some(target) = reply.error().and_then(moved_target) else { return reply };
        let node = self
            .nodes
            .iter()
            .find(|n| n.addr() == target)
            .unwrap_or_else(|| panic!("MOVED to {target}, not one of our nodes: {reply:?}"));
        node.command(args)
    }

    /// Every key on every node, sorted.
    pub fn keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = self.nodes.iter().flat_map(RedisServer::keys).collect();
        keys.sort();
        keys
    }

    /// [`RedisServer::dump_all`] of every node, together, sorted by key.
    pub fn dump_all(&self) -> Vec<(String, Vec<u8>)> {
        let mut all: Vec<(String, Vec<u8>)> = self.nodes.iter().flat_map(RedisServer::dump_all).collect();
        all.sort();
        all
    }

    /// `PTTL key` on the node that holds it.
    pub fn pttl(&self, key: &str) -> i64 {
        let reply = self.command(&["PTTL", key]);
        reply.as_int().unwrap_or_else(|| panic!("PTTL {key} answered {reply:?}"))
    }

    /// `FLUSHALL` on every node.
    pub fn flushall(&self) {
        self.nodes.iter().for_each(RedisServer::flushall);
    }
}

/// The address in `MOVED 3999 127.0.0.1:6381`.
fn moved_target(error: &str) -> Option<SocketAddr> {
    let mut words = error.split_whitespace();
    (words.next() == Some("MOVED")).then_some(())?;
    words.nth(1)?.parse().ok()
}

// ---------------------------------------------------------------------------------------
// RESP

/// A RESP2 reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RespValue {
    /// `+OK`
    Simple(String),
    /// `-ERR ...`, `-MOVED ...`, `-WRONGTYPE ...`
    Error(String),
    /// `:42`
    Integer(i64),
    /// `$3\r\nabc`
    Bulk(Vec<u8>),
    /// `*2\r\n...`
    Array(Vec<RespValue>),
    /// `$-1` or `*-1`
    Nil,
}

impl RespValue {
    /// `+OK`
    pub fn is_ok(&self) -> bool {
        matches!(self, RespValue::Simple(s) if s == "OK")
    }

    pub fn is_nil(&self) -> bool {
        matches!(self, RespValue::Nil)
    }

    /// The bytes of a simple or bulk string.
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            RespValue::Simple(s) => Some(s.as_bytes()),
            RespValue::Bulk(b) => Some(b),
            _ => None,
        }
    }

    /// A simple or bulk string as text (invalid UTF-8 replaced).
    pub fn as_string(&self) -> Option<String> {
        self.as_bytes().map(lossy)
    }

    pub fn as_int(&self) -> Option<i64> {
        match self {
            RespValue::Integer(n) => Some(*n),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[RespValue]> {
        match self {
            RespValue::Array(items) => Some(items),
            _ => None,
        }
    }

    /// The message of an error reply.
    pub fn error(&self) -> Option<&str> {
        match self {
            RespValue::Error(e) => Some(e),
            _ => None,
        }
    }
}

/// One blocking connection speaking RESP2 (5 s connect, read and write timeouts).
pub struct RespClient {
    addr: SocketAddr,
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl RespClient {
    pub fn connect(addr: SocketAddr) -> io::Result<RespClient> {
        let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        stream.set_nodelay(true)?;
        let writer = stream.try_clone()?;
        Ok(RespClient { addr, reader: BufReader::new(stream), writer })
    }

    /// Sends a command, returns its reply; panics on an I/O or protocol error.
    pub fn command<A: AsRef<[u8]>>(&mut self, args: &[A]) -> RespValue {
        self.try_command(args).unwrap_or_else(|e| {
            let shown: Vec<String> = args.iter().take(2).map(|a| lossy(a.as_ref())).collect();
            panic!("redis {}: {shown:?}...: {e}", self.addr)
        })
    }

    pub fn try_command<A: AsRef<[u8]>>(&mut self, args: &[A]) -> io::Result<RespValue> {
        let mut frame = format!("*{}\r\n", args.len()).into_bytes();
        for arg in args {
            let arg = arg.as_ref();
            frame.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
            frame.extend_from_slice(arg);
            frame.extend_from_slice(b"\r\n");
        }
        self.writer.write_all(&frame)?;
        read_value(&mut self.reader)
    }

    /// `SELECT db`.
    pub fn select(&mut self, db: u32) {
        let reply = self.command(&["SELECT", &db.to_string()]);
        assert!(reply.is_ok(), "SELECT {db} answered {reply:?}");
    }

    /// Every key of the selected database with its value (see [`dump_all`](Self::dump_all)).
    pub fn dump_db(&mut self) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut dump = Vec::new();
        for key in scan_keys(self) {
            if let Some(value) = self.render_value(&key) {
                dump.push((key, value));
            }
        }
        dump
    }

    /// Every key of every database that `INFO keyspace` lists, with its value, sorted by
    /// key; a key of database N > 0 is named `db<N>:<key>`. Values, readable:
    /// * string: its bytes (`GET`);
    /// * hash: `field: value\n` per field, sorted (`HGETALL`);
    /// * list: `element\n` in order; set: `member\n` sorted;
    /// * sorted set: `member score\n` by score (`ZRANGE 0 -1 WITHSCORES`);
    /// * stream: `id field: value ...\n` per entry (`XRANGE - +`);
    /// * anything else: `<type> ` followed by the `DUMP` bytes.
    ///
    /// Keys that expire during the walk are left out.
    pub fn dump_all(&mut self) -> Vec<(String, Vec<u8>)> {
        let info = self.command(&["INFO", "keyspace"]).as_string().unwrap_or_default();
        let dbs: Vec<u32> = info
            .lines()
            .filter_map(|line| line.strip_prefix("db")?.split(':').next()?.parse().ok())
            .collect();
        let mut all = Vec::new();
        for db in dbs {
            self.select(db);
            for (key, value) in self.dump_db() {
                let name = if db == 0 { lossy(&key) } else { format!("db{db}:{}", lossy(&key)) };
                all.push((name, value));
            }
        }
        if !all.is_empty() {
            self.select(0);
        }
        all.sort();
        all
    }

    /// One key's value in the form [`dump_all`](Self::dump_all) describes; `None` if the
    /// key is gone.
    fn render_value(&mut self, key: &[u8]) -> Option<Vec<u8>> {
        let kind = self.command(&[b"TYPE".as_slice(), key]).as_string().unwrap_or_default();
        let reply = |client: &mut RespClient, args: &[&[u8]]| client.command(args);
        let mut out = Vec::new();
        match kind.as_str() {
            "none" => return None,
            "string" => return reply(self, &[b"GET", key]).as_bytes().map(<[u8]>::to_vec),
            "hash" => {
                let flat = reply(self, &[b"HGETALL", key]);
                let mut pairs: Vec<(Vec<u8>, Vec<u8>)> = flat
                    .as_array()
                    .unwrap_or_default()
                    .chunks(2)
                    .map(|p| (bytes_of(&p[0]), p.get(1).map(bytes_of).unwrap_or_default()))
                    .collect();
                pairs.sort();
                for (field, value) in pairs {
                    out.extend_from_slice(&field);
                    out.extend_from_slice(b": ");
                    out.extend_from_slice(&value);
                    out.push(b'\n');
                }
            }
            "list" | "set" => {
                let members = if kind == "list" {
                    reply(self, &[b"LRANGE", key, b"0", b"-1"])
                } else {
                    reply(self, &[b"SMEMBERS", key])
                };
                let mut members: Vec<Vec<u8>> =
                    members.as_array().unwrap_or_default().iter().map(bytes_of).collect();
                if kind == "set" {
                    members.sort();
                }
                for member in members {
                    out.extend_from_slice(&member);
                    out.push(b'\n');
                }
            }
            "zset" => {
                let flat = reply(self, &[b"ZRANGE", key, b"0", b"-1", b"WITHSCORES"]);
                for pair in flat.as_array().unwrap_or_default().chunks(2) {
                    out.extend_from_slice(&bytes_of(&pair[0]));
                    out.push(b' ');
                    out.extend_from_slice(&pair.get(1).map(bytes_of).unwrap_or_default());
                    out.push(b'\n');
                }
            }
            "stream" => {
                let entries = reply(self, &[b"XRANGE", key, b"-", b"+"]);
                for entry in entries.as_array().unwrap_or_default() {
                    let parts = entry.as_array().unwrap_or_default();
                    out.extend_from_slice(&parts.first().map(bytes_of).unwrap_or_default());
                    for pair in parts.get(1).and_then(RespValue::as_array).unwrap_or_default().chunks(2) {
                        out.push(b' ');
                        out.extend_from_slice(&bytes_of(&pair[0]));
                        out.extend_from_slice(b": ");
                        out.extend_from_slice(&pair.get(1).map(bytes_of).unwrap_or_default());
                    }
                    out.push(b'\n');
                }
            }
            other => {
                out.extend_from_slice(other.as_bytes());
                out.push(b' ');
                out.extend_from_slice(&bytes_of(&reply(self, &[b"DUMP", key])));
            }
        }
        Some(out)
    }
}

impl Drop for RespClient {
    fn drop(&mut self) {
        let _ = self.writer.shutdown(Shutdown::Both);
    }
}

/// `SCAN 0 COUNT 100` until the cursor is 0 again (bounded: a cursor loop that never
/// ends panics after 100,000 rounds).
fn scan_keys(client: &mut RespClient) -> Vec<Vec<u8>> {
    let mut keys = Vec::new();
    let mut cursor = b"0".to_vec();
    for _ in 0..100_000 {
        let reply = client.command(&[b"SCAN".as_slice(), &cursor, b"COUNT", b"100"]);
        let parts = reply.as_array().unwrap_or_else(|| panic!("SCAN answered {reply:?}"));
        let (Some(next), Some(batch)) =
            (parts.first().and_then(RespValue::as_bytes), parts.get(1).and_then(RespValue::as_array))
        else {
            panic!("SCAN answered {reply:?}");
        };
        keys.extend(batch.iter().map(bytes_of));
        if next == b"0" {
            // SCAN may return a key twice; a set of keys is what callers want.
            keys.sort();
            keys.dedup();
            return keys;
        }
        cursor = next.to_vec();
    }
    panic!("SCAN did not finish after 100000 rounds");
}

fn read_value(reader: &mut impl BufRead) -> io::Result<RespValue> {
    let line = read_line(reader)?;
    let (kind, rest) = line.split_first().ok_or_else(|| protocol_error("an empty line"))?;
    let text = || String::from_utf8_lossy(rest).into_owned();
    let number = || text().parse::<i64>().map_err(|_| protocol_error(&format!("not a number: {:?}", text())));
    match kind {
        b'+' => Ok(RespValue::Simple(text())),
        b'-' => Ok(RespValue::Error(text())),
        b':' => Ok(RespValue::Integer(number()?)),
        b'$' => {
            let len = number()?;
            if len < 0 {
                return Ok(RespValue::Nil);
            }
            let mut data = vec![0; len as usize + 2];
            reader.read_exact(&mut data)?;
            if !data.ends_with(b"\r\n") {
                return Err(protocol_error("a bulk string not ended by CRLF"));
            }
            data.truncate(len as usize);
            Ok(RespValue::Bulk(data))
        }
        b'*' => {
            let len = number()?;
            if len < 0 {
                return Ok(RespValue::Nil);
            }
            (0..len).map(|_| read_value(reader)).collect::<io::Result<Vec<_>>>().map(RespValue::Array)
        }
        other => Err(protocol_error(&format!("unknown reply type {:?}", *other as char))),
    }
}

/// One CRLF-terminated line, without the CRLF.
fn read_line(reader: &mut impl BufRead) -> io::Result<Vec<u8>> {
    let mut line = Vec::new();
    reader.read_until(b'\n', &mut line)?;
    if line.is_empty() {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "redis closed the connection"));
    }
    if !line.ends_with(b"\r\n") {
        return Err(protocol_error("a line not ended by CRLF"));
    }
    line.truncate(line.len() - 2);
    Ok(line)
}

fn protocol_error(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("RESP protocol error: {what}"))
}

// ---------------------------------------------------------------------------------------
// Small helpers

/// A listener on a free loopback port; dropping it frees the port for redis to bind
/// (a race with other processes, which [`RedisServer::start`] retries).
fn free_listener() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").expect("a free port on 127.0.0.1")
}

fn local_port(listener: &TcpListener) -> u16 {
    listener.local_addr().expect("the listener's address").port()
}

/// Polls `check` every 20 ms until it returns `Some` or `deadline` passes.
fn poll_until<T>(deadline: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let start = Instant::now();
    loop {
        if let Some(value) = check() {
            return Some(value);
        }
        if start.elapsed() > deadline {
            return None;
        }
        std::thread::sleep(POLL);
    }
}

/// `name:value` from `INFO` or `CLUSTER INFO` text.
fn info_field(info: &str, name: &str) -> Option<String> {
    info.lines().find_map(|line| Some(line.strip_prefix(name)?.strip_prefix(':')?.trim().to_string()))
}

fn bytes_of(value: &RespValue) -> Vec<u8> {
    match value {
        RespValue::Simple(s) => s.as_bytes().to_vec(),
        RespValue::Error(e) => e.as_bytes().to_vec(),
        RespValue::Integer(n) => n.to_string().into_bytes(),
        RespValue::Bulk(b) => b.clone(),
        RespValue::Array(items) => items.iter().map(bytes_of).collect::<Vec<_>>().join(&b' '),
        RespValue::Nil => Vec::new(),
    }
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
