#!/usr/bin/env bash
# bench/coldstart.sh — cold start to ready: from exec of the release tokengate (memory store,
# in front of a running commerce-mock) until its admin listener's /readyz answers 200.
# Prints the median and the worst of RUNS starts. Not a test; figures move with the machine.
#
#   bash bench/coldstart.sh            # RUNS=10; needs target/release/{tokengate,commerce-mock}
#
# The poller is a small Python loop on one core (a fresh TCP connect per try, 1 ms apart), so
# the figure includes up to ~1 ms of polling granularity. All on 127.0.0.1; every process
# started here is stopped by its PID.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RUNS="${RUNS:-10}"
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release"
[[ -x "$BIN/tokengate" && -x "$BIN/commerce-mock" ]] || { echo "build first: cargo build --release --bins" >&2; exit 1; }
WORK="$(mktemp -d /tmp/tokengate-coldstart.XXXXXX)"
MOCK_PID=""
cleanup() { [[ -n "$MOCK_PID" ]] && kill "$MOCK_PID" 2>/dev/null; wait 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT

"$BIN/commerce-mock" --listen 127.0.0.1:0 --client-id k --client-secret s >"$WORK/mock.out" 2>/dev/null &
MOCK_PID=$!
for _ in $(seq 100); do grep -q http "$WORK/mock.out" 2>/dev/null && break; sleep 0.05; done
MOCK_URL="$(grep -o 'http://127\.0\.0\.1:[0-9]*' "$WORK/mock.out" | head -n1)"
[[ -n "$MOCK_URL" ]] || { echo "commerce-mock did not start" >&2; exit 1; }

python3 - "$BIN/tokengate" "$MOCK_URL" "$WORK" "$RUNS" <<'EOF'
import os, socket, subprocess, sys, time
tokengate, mock, work, runs = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close(); return port
def ready(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2) as c:
            c.sendall(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            return c.recv(64).startswith(b"HTTP/1.1 200")
    except OSError:
        return False
times = []
for run in range(runs):
    port, admin = free_port(), free_port()
    config = os.path.join(work, "p.toml")
    open(config, "w").write(f'''
[server]
listen = "127.0.0.1:{port}"
admin_listen = "127.0.0.1:{admin}"
public_origin = "http://127.0.0.1:{port}"
[upstream]
base_url = "{mock}"
[oauth]
client_id = "k"
client_secret_env = "TOKENGATE_CLIENT_SECRET"
[session]
cookie_name = "tg"
cookie_secure = false
[log]
level = "warn"
[[route]]
prefix = "/api/"
upstream_prefix = "/v1/"
''')
    env = dict(os.environ, TOKENGATE_CLIENT_SECRET="s")
    env.pop("RUST_LOG", None)
    started = time.monotonic()
    proc = subprocess.Popen([tokengate, "--config", config], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = started + 10
    while not ready(admin):
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill(); sys.exit(f"run {run}: not ready within 10 s")
        time.sleep(0.001)
    times.append((time.monotonic() - started) * 1000)
    proc.terminate(); proc.wait(timeout=10)
times.sort()
print(f"cold start to /readyz 200 over {runs} starts: median {times[len(times)//2]:.1f} ms, worst {times[-1]:.1f} ms")
EOF
