#!/usr/bin/env bash
# bench/callgrind.sh — user-space instructions per forwarded request, under valgrind's
# callgrind, for nginx `proxy_pass` (leg b) and tokengate with one session (leg c), in front
# of the same static upstream (bench/upstream.conf.template). The figure does not move with
# the machine's noise, so it is the one to compare across changes.
#
#   bash bench/callgrind.sh                 # release build of tokengate first (cargo)
#   CALLGRIND_SKIP_BUILD=1 bash bench/callgrind.sh
#
# Method: each proxy runs under callgrind (nginx as one process: master_process off, one
# worker's work in the master); a client on one keep-alive connection sends WARMUP requests,
# the counters are zeroed (callgrind_control -z), then REQUESTS more are sent and the counters
# dumped (callgrind_control -d, into NAME.out.1): instructions of all threads / REQUESTS. Startup, the guest
# session's creation and the warm-up are not counted. The payload is the small JSON call
# (GET /api/shoppers/me, 179 bytes). tokengate runs twice: leak guard on and off.
# Rotating sessions (issue 11 (d)): CALLGRIND_SESSIONS=N (N > 1) mints N guest sessions in each
# tokengate leg before the warm-up (one keep-alive connection, not counted) and then sends every
# request with the next session's cookie, round the N: with N well above the requests counted,
# each measured request is the first of its session since the warm-up, so the leak guard's
# needle cache holds nearly none of them (what 100,000 sessions look like to a 16,384-slot
# cache). nginx has no sessions and is measured as usual.
# CALLGRIND_HEADERS=browser sends, with every request of every leg, the eleven headers a
# Chromium fetch() from the storefront adds (sec-ch-ua*, User-Agent, Accept, Sec-Fetch-*,
# Referer, Accept-Language, Connection; Accept-Encoding stays identity, as without it), so
# that the heads are a browser's size and not only the three python's http.client sends.
# Environment: CALLGRIND_REQUESTS [2000], CALLGRIND_WARMUP [200], CALLGRIND_CACHE_SIM=yes also
# simulates the caches (events D1mr, DLmr, ...: which code misses the last-level cache, as a
# rotating-sessions run does), CALLGRIND_DUMP_INSTR=yes records costs per instruction (for `callgrind_annotate` or
# `objdump`/`addr2line` of hot addresses), CALLGRIND_KEEP=1 keeps the
# work directory (callgrind.out files: open them with callgrind_annotate --inclusive=yes).
# All traffic is on 127.0.0.1; every process started here is stopped by its PID.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
REQUESTS="${CALLGRIND_REQUESTS:-2000}"
SESSIONS="${CALLGRIND_SESSIONS:-1}"
[[ "$SESSIONS" =~ ^[1-9][0-9]*$ ]] || { echo "CALLGRIND_SESSIONS must be a positive number" >&2; exit 2; }
WARMUP="${CALLGRIND_WARMUP:-200}"
log() { printf '[callgrind %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

for tool in valgrind callgrind_control python3 curl; do
  command -v "$tool" >/dev/null || die "$tool is needed (valgrind: apt-get install valgrind)"
done
NGINX="$(command -v nginx || echo /usr/sbin/nginx)"
[[ -x "$NGINX" ]] || die "nginx is needed (apt-get install nginx-light)"

if [[ "${CALLGRIND_SKIP_BUILD:-0}" != 1 ]]; then
  log "cargo build --release --bin tokengate"
  (cd "$ROOT" && cargo build --release --locked --bin tokengate 2>&1 | tail -n 1 >&2)
fi
TOKENGATE="${CARGO_TARGET_DIR:-$ROOT/target}/release/tokengate"
[[ -x "$TOKENGATE" ]] || die "no $TOKENGATE"

WORK="$(mktemp -d /tmp/tokengate-callgrind.XXXXXX)"
chmod 755 "$WORK"
mkdir -p "$WORK/tmp" "$WORK/www" && chmod 1777 "$WORK/tmp"
echo '{}' >"$WORK/www/bytes" && chmod 644 "$WORK/www/bytes"
PIDS=()
cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  if [[ "${CALLGRIND_KEEP:-0}" == 1 ]]; then log "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_http() { # url pid what: until it answers (any status), bounded
  local deadline=$((SECONDS + 120))
  until curl -s -o /dev/null -m 2 "$1"; do
    kill -0 "$2" 2>/dev/null || die "$3 exited"
    [[ $SECONDS -lt $deadline ]] || die "$3 did not answer within 120 s"
    sleep 0.2
  done
}
render() { # template out KEY=VALUE...
  local text pair
  text="$(cat "$1")"; local out="$2"; shift 2
  for pair in "$@"; do text="${text//@${pair%%=*}@/${pair#*=}}"; done
  printf '%s\n' "$text" >"$out"
}

# The static upstream, natively (it is not measured).
UP_PORT="$(free_port)"
# The tokens are fixed (random-looking hex of Digital River's sizes, the same every run): how
# often the leak guard's filters pass a position by chance depends on the token bytes, and a
# fresh pair each run moved the figure by a few hundred instructions. CALLGRIND_RANDOM_TOKENS=1
# draws a fresh pair instead (to see that spread).
if [[ "${CALLGRIND_RANDOM_TOKENS:-0}" == 1 ]]; then
  ACCESS="$(head -c 80 /dev/urandom | od -An -tx1 | tr -d ' \n')"   # 160 hex, DR's size
  REFRESH="$(head -c 88 /dev/urandom | od -An -tx1 | tr -d ' \n')"  # 176 hex
else
  ACCESS="$(python3 -c 'import hashlib; print("".join(hashlib.sha256(b"access%d" % i).hexdigest() for i in range(5))[:160])')"
  REFRESH="$(python3 -c 'import hashlib; print("".join(hashlib.sha256(b"refresh%d" % i).hexdigest() for i in range(6))[:176])')"
fi
render "$ROOT/bench/upstream.conf.template" "$WORK/upstream.conf" "WORKDIR=$WORK" "PORT=$UP_PORT" \
  "BIG_BYTES=3" "ACCESS_TOKEN=$ACCESS" "REFRESH_TOKEN=$REFRESH"
"$NGINX" -p "$WORK" -c "$WORK/upstream.conf" -g 'daemon off;' >"$WORK/upstream.out" 2>&1 </dev/null &
PIDS+=($!)
wait_http "http://127.0.0.1:$UP_PORT/" "${PIDS[-1]}" "the static upstream"

# The client: URL, HEADER ("Name: value", or "@FILE" of cookie values) and a count of
# requests on one keep-alive connection.
cat >"$WORK/client.py" <<'EOF'
import http.client, os, sys, urllib.parse
url, header, n = urllib.parse.urlsplit(sys.argv[1]), sys.argv[2], int(sys.argv[3])
# "@FILE": one cookie value a line, a different one each request, going on where the last
# run stopped (the position is kept in FILE.at).
cookies, at, headers = None, 0, {}
# CALLGRIND_HEADERS=browser: the headers a browser's fetch() from the storefront sends too.
base = {} if os.environ.get("CALLGRIND_HEADERS", "") != "browser" else {
    "Connection": "keep-alive",
    "sec-ch-ua": '"Chromium";v="131", "Not_A Brand";v="24"',
    "sec-ch-ua-mobile": "?0",
    "sec-ch-ua-platform": '"Linux"',
    "User-Agent": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
    "Accept": "application/json",
    "Sec-Fetch-Site": "same-origin",
    "Sec-Fetch-Mode": "cors",
    "Sec-Fetch-Dest": "empty",
    "Referer": "https://shop.example/cart",
    "Accept-Language": "en-US,en;q=0.9",
}
if header.startswith("@"):
    cookies = open(header[1:]).read().split()
    at = int(open(header[1:] + ".at").read()) if os.path.exists(header[1:] + ".at") else 0
elif header:
    headers = dict([header.split(": ", 1)])
c = http.client.HTTPConnection(url.hostname, url.port, timeout=120)
for _ in range(n):
    if cookies is not None:
        headers = {"Cookie": "tg=" + cookies[at % len(cookies)]}; at += 1
    c.request("GET", url.path, headers={**base, **headers}); r = c.getresponse(); r.read()
    assert r.status == 200, r.status
if cookies is not None:
    open(header[1:] + ".at", "w").write(str(at))
EOF

# measure NAME URL [HEADER]: prints instructions per request of the process in PIDS[-1].
measure() {
  local name="$1" url="$2" header="${3:-}" pid="${PIDS[-1]}" out
  python3 "$WORK/client.py" "$url" "$header" "$WARMUP"
  callgrind_control -z "$pid" >/dev/null
  python3 "$WORK/client.py" "$url" "$header" "$REQUESTS"
  callgrind_control -d "$pid" >/dev/null
  # The dump is written by the process itself: wait for it, bounded.
  for _ in $(seq 100); do
    out="$WORK/$name.out.1"   # callgrind numbers the dumps of --callgrind-out-file
    [[ -s "$out" ]] && grep -q '^totals:' "$out" 2>/dev/null && break
    sleep 0.2
  done
  grep -q '^totals:' "$out" 2>/dev/null || die "no callgrind dump for $name"
  awk -v n="$REQUESTS" -v name="$name" '/^totals:/ { printf "%-22s %10.0f instructions per request\n", name, $2 / n }' "$out"
}

under_callgrind() { # name cmd...: starts cmd under callgrind, dumps into $WORK/name.out.N
  local name="$1"; shift
  valgrind --tool=callgrind --callgrind-out-file="$WORK/$name.out" --dump-instr="${CALLGRIND_DUMP_INSTR:-no}" --cache-sim="${CALLGRIND_CACHE_SIM:-no}" \
    --collect-atstart=yes "$@" >"$WORK/$name.stdout" 2>"$WORK/$name.valgrind" </dev/null &
  PIDS+=($!)
}

# (b) nginx proxy_pass, one process.
NG_PORT="$(free_port)"
render "$ROOT/bench/nginx.conf.template" "$WORK/nginx.conf" "WORKDIR=$WORK" "PORT=$NG_PORT" \
  "UPSTREAM=127.0.0.1:$UP_PORT" "ACCESS_TOKEN=$ACCESS" "WORKERS=1" "GZIP="
under_callgrind nginx "$NGINX" -p "$WORK" -c "$WORK/nginx.conf" -g 'daemon off; master_process off;'
wait_http "http://127.0.0.1:$NG_PORT/" "${PIDS[-1]}" "nginx under callgrind"
NGINX_LINE="$(measure nginx "http://127.0.0.1:$NG_PORT/api/shoppers/me")"

# mint_sessions PORT FILE: SESSIONS guest sessions, their cookie values one a line in FILE.
mint_sessions() {
  log "minting $SESSIONS guest sessions on :$1"
  python3 - "$1" "$2" "$SESSIONS" <<'EOF'
import http.client, sys, time
port, out, n = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
deadline = time.monotonic() + 1800
c = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
with open(out, "w") as f:
    for _ in range(n):
        assert time.monotonic() < deadline, "minting took over 30 minutes"
        c.request("POST", "/session/guest", headers={"X-CSRF": "1"}); r = c.getresponse(); r.read()
        assert r.status == 200, r.status
        value = next(v.split(";", 1)[0][3:] for k, v in r.getheaders()
                     if k.lower() == "set-cookie" and v.startswith("tg="))
        f.write(value + "\n")
EOF
}

# (c) tokengate, one guest session (or CALLGRIND_SESSIONS rotating); leak guard on, then off.
tokengate_leg() { # name [env...]
  local name="$1" port jar="$WORK/$1.jar" cookie
  shift
  port="$(free_port)"
  render "$ROOT/bench/tokengate.toml.template" "$WORK/$name.toml" "UPSTREAM_URL=http://127.0.0.1:$UP_PORT"
  sed -i "s/^listen = \"127.0.0.1:0\"/listen = \"127.0.0.1:$port\"/" "$WORK/$name.toml"
  # Rotating: room for every session, and no limit on minting them (as scripts/bench.sh).
  env -u RUST_LOG TOKENGATE_CLIENT_SECRET=demo-secret \
    TOKENGATE_SESSION_MAX_SESSIONS=$((SESSIONS + 1000)) \
    TOKENGATE_RATE_LIMIT_NEW_SESSIONS_PER_MINUTE=100000000 TOKENGATE_RATE_LIMIT_NEW_SESSIONS_BURST=100000000 \
    "$@" \
    valgrind --tool=callgrind --callgrind-out-file="$WORK/$name.out" --dump-instr="${CALLGRIND_DUMP_INSTR:-no}" --cache-sim="${CALLGRIND_CACHE_SIM:-no}" \
    "$TOKENGATE" --config "$WORK/$name.toml" >"$WORK/$name.stdout" 2>"$WORK/$name.valgrind" </dev/null &
  PIDS+=($!)
  wait_http "http://127.0.0.1:$port/session" "${PIDS[-1]}" "$name under callgrind"
  # This runs in $(...): the parent's cleanup never sees this PID, so the leg stops its
  # own process when it is measured.
  if [[ "$SESSIONS" -gt 1 ]]; then
    mint_sessions "$port" "$WORK/$name.cookies"
    measure "$name" "http://127.0.0.1:$port/api/shoppers/me" "@$WORK/$name.cookies"
  else
    curl -fsS -o /dev/null -c "$jar" -X POST -H 'X-CSRF: 1' "http://127.0.0.1:$port/session/guest"
    cookie="$(awk '$6 == "tg" { print $7 }' "$jar")"
    [[ -n "$cookie" ]] || die "$name set no cookie"
    measure "$name" "http://127.0.0.1:$port/api/shoppers/me" "Cookie: tg=$cookie"
  fi
  local pid="${PIDS[-1]}"
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
}
TG_LINE="$(tokengate_leg tokengate)"
TG_OFF_LINE="$(tokengate_leg tokengate-guard-off TOKENGATE_LEAK_GUARD_ENABLED=false)"

echo
echo "user-space instructions per request (callgrind; small JSON; $REQUESTS requests after $WARMUP; tokengate over $SESSIONS session(s); headers: ${CALLGRIND_HEADERS:-the three of python http.client})"
printf '%s\n' "$NGINX_LINE" "$TG_LINE" "$TG_OFF_LINE"
awk -v a="$(awk '{print $2}' <<<"$NGINX_LINE")" -v b="$(awk '{print $2}' <<<"$TG_LINE")" \
  'BEGIN { printf "tokengate / nginx: %.2fx\n", b / a }'
