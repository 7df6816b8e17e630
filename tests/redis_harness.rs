//! The Redis test harness itself (`tests/common/redis.rs`): real `redis-server`
//! processes start, answer, keep or lose their data across restarts, are seen whole by
//! `dump_all`, form a cluster, and are gone after drop. Independent of the session store.

mod common;

use std::collections::BTreeSet;
use std::net::TcpStream;
use std::path::Path;

use common::redis::{RedisCluster, RedisServer, RespValue};

fn bulk(s: &str) -> RespValue {
    RespValue::Bulk(s.as_bytes().to_vec())
}

fn process_exists(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

#[test]
fn a_server_starts_on_its_own_port_and_round_trips_a_key() {
    let redis = RedisServer::start();
    assert_eq!(redis.url(), format!("redis://127.0.0.1:{}", redis.port()));
    let pid = redis.pid().expect("a running server has a PID");

    assert_eq!(redis.command(&["PING"]), RespValue::Simple("PONG".into()));
    assert!(redis.command(&["SET", "k", "v"]).is_ok());
    assert_eq!(redis.command(&["GET", "k"]), bulk("v"));
    assert_eq!(redis.command(&["GET", "missing"]), RespValue::Nil);
    assert_eq!(redis.command(&["INCR", "n"]), RespValue::Integer(1));
    assert!(redis.command(&["INCR", "k"]).error().is_some_and(|e| e.starts_with("ERR")));
    assert_eq!(redis.command(&["RPUSH", "l", "a", "b"]), RespValue::Integer(2));
    assert_eq!(redis.command(&["LRANGE", "l", "0", "-1"]), RespValue::Array(vec![bulk("a"), bulk("b")]));

    // It is the server we started, configured as the harness says.
    let info = redis.command(&["INFO", "server"]).as_string().unwrap();
    assert!(info.contains(&format!("process_id:{pid}")), "{info}");
    assert!(info.contains(&format!("tcp_port:{}", redis.port())), "{info}");
    let save = redis.command(&["CONFIG", "GET", "save"]);
    assert_eq!(save, RespValue::Array(vec![bulk("save"), bulk("")]));
    let appendonly = redis.command(&["CONFIG", "GET", "appendonly"]);
    assert_eq!(appendonly, RespValue::Array(vec![bulk("appendonly"), bulk("no")]));
    let dir = redis.command(&["CONFIG", "GET", "dir"]);
    let dir = dir.as_array().unwrap()[1].as_string().unwrap();
    assert_eq!(Path::new(&dir).canonicalize().unwrap(), redis.dir().canonicalize().unwrap());
    assert!(redis.log().contains("Ready to accept connections"), "{}", redis.log());
}

#[test]
fn binary_values_and_ttls() {
    let redis = RedisServer::start();
    let value: Vec<u8> = (0..=255u8).chain(b"\r\n$-1\r\n".iter().copied()).collect();
    assert!(redis.command(&[b"SET".as_slice(), b"bin", &value]).is_ok());
    assert_eq!(redis.command(&["GET", "bin"]), RespValue::Bulk(value));

    assert_eq!(redis.pttl("bin"), -1, "no expiry");
    assert_eq!(redis.pttl("missing"), -2, "no key");
    assert!(redis.command(&["SET", "t", "v", "PX", "600000"]).is_ok());
    let pttl = redis.pttl("t");
    assert!(pttl > 590_000 && pttl <= 600_000, "{pttl}");
}

#[test]
fn restart_keeping_data_keeps_keys_and_ttls_on_the_same_port() {
    let mut redis = RedisServer::start();
    let (port, old_pid) = (redis.port(), redis.pid().unwrap());
    assert!(redis.command(&["SET", "kept", "v1"]).is_ok());
    assert!(redis.command(&["SET", "expiring", "v2", "PX", "600000"]).is_ok());
    assert_eq!(redis.command(&["HSET", "h", "f", "x"]), RespValue::Integer(1));

    redis.restart_keeping_data();

    assert_eq!(redis.port(), port);
    let new_pid = redis.pid().unwrap();
    assert_ne!(new_pid, old_pid, "a new process");
    assert!(!process_exists(old_pid), "the old process is gone");
    assert_eq!(redis.command(&["GET", "kept"]), bulk("v1"));
    assert_eq!(redis.command(&["HGET", "h", "f"]), bulk("x"));
    let pttl = redis.pttl("expiring");
    assert!(pttl > 0 && pttl <= 600_000, "the TTL survives: {pttl}");
    assert_eq!(redis.keys(), ["expiring", "h", "kept"]);
}

#[test]
fn restart_empty_loses_keys_even_after_an_earlier_save() {
    let mut redis = RedisServer::start();
    let port = redis.port();
    assert!(redis.command(&["SET", "k", "v"]).is_ok());
    redis.restart_keeping_data(); // dump.rdb now holds k
    assert_eq!(redis.command(&["GET", "k"]), bulk("v"));

    redis.restart_empty();

    assert_eq!(redis.port(), port);
    assert_eq!(redis.command(&["GET", "k"]), RespValue::Nil);
    assert!(redis.keys().is_empty());
    assert_eq!(redis.command(&["DBSIZE"]), RespValue::Integer(0));
}

#[test]
fn a_killed_server_comes_back_with_what_was_last_saved() {
    let mut redis = RedisServer::start();
    assert!(redis.command(&["SET", "saved", "1"]).is_ok());
    redis.restart_keeping_data();
    assert!(redis.command(&["SET", "unsaved", "2"]).is_ok());

    let pid = redis.pid().unwrap();
    redis.kill();
    assert_eq!(redis.pid(), None);
    assert!(!process_exists(pid));
    assert!(TcpStream::connect(redis.addr()).is_err(), "nothing listens after kill");

    redis.restart_keeping_data(); // not running: starts it on the last dump
    assert_eq!(redis.command(&["GET", "saved"]), bulk("1"));
    assert_eq!(redis.command(&["GET", "unsaved"]), RespValue::Nil);
}

#[test]
fn stop_then_drop_leave_no_process_and_no_listener() {
    let mut redis = RedisServer::start();
    let pid = redis.pid().unwrap();
    redis.stop();
    assert!(!redis.is_running());
    assert!(!process_exists(pid));
    assert!(TcpStream::connect(redis.addr()).is_err(), "nothing listens after stop");
    assert!(redis.log().contains("User requested shutdown"), "SIGTERM, not SIGKILL:\n{}", redis.log());
    redis.stop(); // idempotent

    let redis = RedisServer::start();
    let (pid, addr, dir) = (redis.pid().unwrap(), redis.addr(), redis.dir().to_path_buf());
    drop(redis);
    assert!(!process_exists(pid), "drop stops the server by PID");
    assert!(TcpStream::connect(addr).is_err(), "nothing listens after drop");
    assert!(!dir.exists(), "drop removes the temporary directory");
}

#[test]
fn servers_started_together_get_distinct_ports_and_dirs() {
    let servers: Vec<RedisServer> = std::thread::scope(|s| {
        (0..4)
            .map(|_| s.spawn(RedisServer::start))
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| h.join().unwrap())
            .collect()
    });
    let ports: BTreeSet<u16> = servers.iter().map(RedisServer::port).collect();
    let dirs: BTreeSet<_> = servers.iter().map(|s| s.dir().to_path_buf()).collect();
    assert_eq!(ports.len(), 4);
    assert_eq!(dirs.len(), 4);
    for (i, server) in servers.iter().enumerate() {
        assert!(server.command(&["SET", "who", &i.to_string()]).is_ok());
    }
    for (i, server) in servers.iter().enumerate() {
        assert_eq!(server.command(&["GET", "who"]), bulk(&i.to_string()));
    }
}

#[test]
fn dump_all_sees_every_type_in_every_database() {
    let redis = RedisServer::start();
    assert!(redis.command(&["SET", "s", "string-secret"]).is_ok());
    assert_eq!(redis.command(&["HSET", "h", "token", "hash-secret", "a", "1"]), RespValue::Integer(2));
    assert_eq!(redis.command(&["RPUSH", "l", "x", "list-secret"]), RespValue::Integer(2));
    assert_eq!(redis.command(&["SADD", "set", "set-secret"]), RespValue::Integer(1));
    assert_eq!(redis.command(&["ZADD", "z", "2", "zset-secret"]), RespValue::Integer(1));
    assert!(redis.command(&["XADD", "st", "1-1", "f", "stream-secret"]).as_string().is_some());
    let mut other_db = redis.client();
    other_db.select(3);
    assert!(other_db.command(&["SET", "elsewhere", "db3-secret"]).is_ok());

    let dump = redis.dump_all();
    let text = |key: &str| {
        let (_, value) = dump.iter().find(|(k, _)| k == key).unwrap_or_else(|| panic!("{key} in {dump:?}"));
        String::from_utf8_lossy(value).into_owned()
    };
    let keys: Vec<&str> = dump.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["db3:elsewhere", "h", "l", "s", "set", "st", "z"]);
    assert_eq!(text("s"), "string-secret");
    assert_eq!(text("h"), "a: 1\ntoken: hash-secret\n");
    assert_eq!(text("l"), "x\nlist-secret\n");
    assert_eq!(text("set"), "set-secret\n");
    assert_eq!(text("z"), "zset-secret 2\n");
    assert_eq!(text("st"), "1-1 f: stream-secret\n");
    assert_eq!(text("db3:elsewhere"), "db3-secret");
    // Each planted secret is found by a plain substring search over the dump.
    for secret in ["string", "hash", "list", "set", "zset", "stream", "db3"] {
        let needle = format!("{secret}-secret");
        assert!(
            dump.iter().any(|(_, v)| v.windows(needle.len()).any(|w| w == needle.as_bytes())),
            "{needle}"
        );
    }

    // keys() is database 0 only, and sees many keys through several SCAN rounds.
    for i in 0..250 {
        assert!(redis.command(&["SET", &format!("bulk:{i}"), "v"]).is_ok());
    }
    assert_eq!(redis.keys().len(), 6 + 250);
    redis.flushall();
    assert!(redis.dump_all().is_empty());
}

#[test]
fn a_three_node_cluster_starts_and_spreads_keys_by_hash_tag() {
    let cluster = RedisCluster::start(3);
    let ports: Vec<u16> = cluster.nodes().iter().map(RedisServer::port).collect();
    assert_eq!(ports.iter().collect::<BTreeSet<_>>().len(), 3);
    assert_eq!(
        cluster.url(),
        format!(
            "redis-cluster://127.0.0.1:{}?node=127.0.0.1:{}&node=127.0.0.1:{}",
            ports[0], ports[1], ports[2]
        )
    );
    for node in cluster.nodes() {
        let info = node.command(&["CLUSTER", "INFO"]).as_string().unwrap();
        assert!(info.contains("cluster_state:ok"), "{info}");
        assert!(info.contains("cluster_known_nodes:3"), "{info}");
        assert!(node.dir().join(format!("nodes-{}.conf", node.port())).exists());
    }

    // Tags until three land on three different nodes.
    let mut tag_for_node: Vec<Option<String>> = vec![None; 3];
    for i in 0..1000 {
        let tag = format!("t{i}");
        let node = cluster.node_for_key(&format!("{{{tag}}}"));
        let index = ports.iter().position(|p| *p == node.port()).unwrap();
        tag_for_node[index].get_or_insert(tag);
        if tag_for_node.iter().all(Option::is_some) {
            break;
        }
    }
    let tags: Vec<String> = tag_for_node.into_iter().map(|t| t.expect("a tag for every node")).collect();

    // Writes through the first node follow MOVED to the owner.
    for tag in &tags {
        for field in ["session", "refresh", "meta"] {
            let key = format!("{{{tag}}}:{field}");
            assert!(cluster.command(&["SET", &key, &format!("{tag}-{field}")]).is_ok(), "SET {key}");
        }
    }
    let moved = cluster.nodes()[0].command(&["GET", &format!("{{{}}}:session", tags[1])]);
    assert!(moved.error().is_some_and(|e| e.starts_with("MOVED")), "{moved:?}");

    for (index, tag) in tags.iter().enumerate() {
        let node = &cluster.nodes()[index];
        let slot = cluster.keyslot(&format!("{{{tag}}}:session"));
        assert_eq!(cluster.keyslot(&format!("{{{tag}}}:meta")), slot, "one tag, one slot");
        let count = node.command(&["CLUSTER", "COUNTKEYSINSLOT", &slot.to_string()]);
        assert_eq!(count, RespValue::Integer(3), "node {index} holds the three {tag} keys");
        let expected: Vec<String> =
            ["meta", "refresh", "session"].iter().map(|f| format!("{{{tag}}}:{f}")).collect();
        assert_eq!(node.keys(), expected, "node {index} holds only the {tag} keys");
        assert_eq!(cluster.command(&["GET", &expected[2]]), bulk(&format!("{tag}-session")));
    }

    let dump = cluster.dump_all();
    assert_eq!(dump.len(), 9);
    assert_eq!(cluster.keys().len(), 9);
    assert!(cluster.command(&["SET", "ttl", "v", "PX", "600000"]).is_ok());
    assert!(cluster.pttl("ttl") > 0);
    cluster.flushall();
    assert!(cluster.dump_all().is_empty());
}

#[test]
fn dropping_a_cluster_stops_every_node() {
    let cluster = RedisCluster::start(3);
    let pids: Vec<u32> = cluster.nodes().iter().map(|n| n.pid().unwrap()).collect();
    let addrs: Vec<_> = cluster.nodes().iter().map(RedisServer::addr).collect();
    drop(cluster);
    for (pid, addr) in pids.into_iter().zip(addrs) {
        assert!(!process_exists(pid), "node {pid} is gone");
        assert!(TcpStream::connect(addr).is_err(), "nothing listens on {addr}");
    }
}

#[test]
#[should_panic(expected = "Bad directive or wrong number of arguments")]
fn a_start_that_fails_panics_with_the_tail_of_the_server_log() {
    RedisServer::start_with(&["--no-such-directive", "x"]);
}
