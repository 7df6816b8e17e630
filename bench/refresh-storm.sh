#!/usr/bin/env bash
# bench/refresh-storm.sh — 10,000 sessions whose access tokens all expire at one instant
# while load runs over all of them: one tokengate on the memory store, then three
# tokengate replicas sharing one redis-server.
#
# Not a test and not part of CI (scripts/test.sh never calls it). For each leg it prints
# the refresh calls the mock counted (must be exactly one per session), the failed
# requests (non-2xx answers and socket errors: must be 0), the steady p99 (before the
# instant) beside the storm p99 (from one second before it until every session has been
# called after it, when each had its refresh; at least STORM_WINDOW seconds),
# requests per second, a per-second timeline, and PASS/FAIL per condition. bench/README.md
# explains it and keeps the figures.
#
#   bash bench/refresh-storm.sh
#
# How the storm is made: commerce-mock runs with --access-expires-at <instant>, so every
# access token minted before the instant expires exactly at it (`expires_in` counts down
# to it; tokens minted after it live the usual day). tokengate runs with
# `oauth.refresh_ahead = "0s"`, so it refreshes a session at its first call from the
# instant on, and calls already under way meet expired tokens at the mock (401, then one
# refresh and one replay). The load (examples/storm_load.rs, STORM_CONNECTIONS closed-loop
# keep-alive connections spread over the replicas, the cookie rotating over every session,
# each session handed out STORM_BURST times in a row so that many of its calls are in
# flight together, on different connections and replicas) runs until STORM_AFTER seconds
# past the instant and until every session was called after it. Concurrent calls of one
# session are what single-flight refresh must coalesce: without them, one refresh per
# session would prove nothing. Each replica's /metrics (admin listener) gives its refresh
# calls and the requests that waited for another request's refresh in that process.
#
# Every process it starts is stopped by PID on exit (trap); every wait is bounded; all
# traffic is on 127.0.0.1. Needs redis-server for the redis leg (Debian: redis-server).
#
# Environment (defaults in brackets):
#   STORM_SESSIONS [10000]   STORM_CONNECTIONS [64]   STORM_LEGS ["memory redis"]
#   STORM_BURST [3]          calls of one session handed out in a row (in flight together)
#   STORM_LEAD [30]          seconds from the mock's start to the instant (session creation
#                            and the steady load happen in it; at least 3 s of steady load)
#   STORM_AFTER [10]         seconds of load after the instant (more if a session was not
#                            yet called after it; at most 60)
#   STORM_WINDOW [1]         least seconds after the instant counted as the storm
#   STORM_REPLICAS [3]       tokengate replicas of the redis leg
#   STORM_REFRESH_AHEAD [0s] tokengate's oauth.refresh_ahead
#   STORM_LOG_LEVEL [warn]   tokengate's log.level (its logs are in the work directory)
#   STORM_SKIP_BUILD=1       use the existing release binaries
#   STORM_KEEP=1             keep the work directory (configs, logs)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SESSIONS="${STORM_SESSIONS:-10000}"
CONNECTIONS="${STORM_CONNECTIONS:-64}"
BURST="${STORM_BURST:-3}"
LEGS="${STORM_LEGS:-memory redis}"
LEAD="${STORM_LEAD:-30}"
AFTER="${STORM_AFTER:-10}"
WINDOW="${STORM_WINDOW:-1}"
REPLICAS="${STORM_REPLICAS:-3}"
REFRESH_AHEAD="${STORM_REFRESH_AHEAD:-0s}"
LOG_LEVEL="${STORM_LOG_LEVEL:-warn}"
CLIENT_ID="demo-api-key"
CLIENT_SECRET="demo-secret"

log() { printf '[storm %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# ---------------------------------------------------------------- processes and cleanup
PIDS=()
WORK=""
cleanup() {
  local status=$?
  trap - EXIT INT TERM
  local pid
  for pid in "${PIDS[@]}"; do stop_pid "$pid"; done
  if [[ -n "$WORK" && -d "$WORK" ]]; then
    if [[ "${STORM_KEEP:-0}" == 1 ]]; then log "kept $WORK"; else rm -rf "$WORK"; fi
  fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Stops one process this script started, by PID: TERM, up to 5 s, then KILL.
stop_pid() {
  local pid="$1"
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid" 2>/dev/null || true; fi
  fi
  wait "$pid" 2>/dev/null || true
}

stop_all() {
  local pid
  for pid in "${PIDS[@]}"; do stop_pid "$pid"; done
  PIDS=()
}

# Waits (bounded: 10 s) for a line matching $2 in file $1; prints the first match.
wait_for_line() {
  local file="$1" pattern="$2" pid="$3" what="$4"
  for _ in $(seq 200); do
    if [[ -s "$file" ]] && grep -qE "$pattern" "$file"; then grep -oE "$pattern" "$file" | head -n1; return 0; fi
    kill -0 "$pid" 2>/dev/null || die "$what exited early: $(tail -n5 "$file" "${file%.out}.err" 2>/dev/null)"
    sleep 0.05
  done
  die "$what did not announce itself in 10 s"
}

# A TCP port on 127.0.0.1 nobody listens on (small race with other programs: acceptable here).
free_port() {
  local port
  for _ in $(seq 100); do
    # Below the kernel's ephemeral range (32768 up): a port one of the run's own outgoing
    # connections holds answers no connect here but cannot be bound (redis-server exited).
    port=$((20000 + RANDOM % 12000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then echo "$port"; return 0; fi
  done
  die "no free port found"
}

# ---------------------------------------------------------------- build
command -v curl >/dev/null || die "curl is missing"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
if [[ "${STORM_SKIP_BUILD:-0}" != 1 ]]; then
  # Two builds: an example takes the dev-dependencies' features (tokio's `process`, whose
  # driver looks for orphans at every park), and built together with it the binaries would
  # take them too, and replace the product's build that scripts/bench.sh measures.
  log "cargo build --release --bin tokengate --bin commerce-mock; cargo build --release --example storm_load"
  (cd "$ROOT" && nice -n 10 cargo build --release --bin tokengate --bin commerce-mock 2>&1 | tail -n 2 >&2)
  (cd "$ROOT" && nice -n 10 cargo build --release --example storm_load 2>&1 | tail -n 2 >&2)
fi
TOKENGATE="$TARGET_DIR/release/tokengate"
MOCK="$TARGET_DIR/release/commerce-mock"
LOAD="$TARGET_DIR/release/examples/storm_load"
[[ -x "$TOKENGATE" && -x "$MOCK" && -x "$LOAD" ]] || die "no release binaries in $TARGET_DIR/release"

WORK="$(mktemp -d /tmp/tokengate-storm.XXXXXX)"
cd "$WORK"

# ---------------------------------------------------------------- servers
start_mock() { # instant
  local out="$WORK/mock.out"
  RUST_LOG=warn "$MOCK" --listen 127.0.0.1:0 --client-id "$CLIENT_ID" --client-secret "$CLIENT_SECRET" \
    --access-expires-at "$1" >"$out" 2>"$WORK/mock.err" </dev/null &
  MOCK_PID=$!
  PIDS+=("$MOCK_PID")
  MOCK_URL="$(wait_for_line "$out" 'http://127\.0\.0\.1:[0-9]+' "$MOCK_PID" commerce-mock)"
}

start_redis() {
  local port pong="" attempt
  # A port free when picked can be taken by one of the load's outgoing connections before
  # redis-server binds it (the previous leg leaves thousands): a new port, up to 5 times.
  for attempt in 1 2 3 4 5; do
    port="$(free_port)"
    redis-server --bind 127.0.0.1 --port "$port" --save "" --appendonly no --dir "$WORK" \
      --daemonize no --protected-mode yes >"$WORK/redis.log" 2>&1 </dev/null &
    REDIS_PID=$!
    PIDS+=("$REDIS_PID")
    for _ in $(seq 100); do
      pong="$(redis-cli -h 127.0.0.1 -p "$port" ping 2>/dev/null || true)"
      [[ "$pong" == PONG ]] && break
      kill -0 "$REDIS_PID" 2>/dev/null || break
      sleep 0.1
    done
    [[ "$pong" == PONG ]] && break
    if kill -0 "$REDIS_PID" 2>/dev/null; then die "redis-server did not answer PING in 10 s"; fi
    grep -q "Address already in use" "$WORK/redis.log" || die "redis-server exited: $(tail -n5 "$WORK/redis.log")"
    log "port $port was taken before redis-server bound it (attempt $attempt); another"
  done
  [[ "$pong" == PONG ]] || die "redis-server found no free port in 5 attempts"
  REDIS_URL="redis://127.0.0.1:$port"
}

write_config() { # file store-kind
  local store='kind = "memory"'
  if [[ "$2" == redis ]]; then
    store=$'kind = "redis"\nurl_env = "TOKENGATE_REDIS_URL"\nencryption_key_env = "TOKENGATE_STORE_KEY"'
  fi
  cat >"$1" <<EOF
# Written by bench/refresh-storm.sh.
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
public_origin = "http://127.0.0.1"
shutdown_timeout = "2s"

[upstream]
base_url = "$MOCK_URL"
connect_timeout = "1s"
request_timeout = "10s"

[oauth]
client_id = "$CLIENT_ID"
client_secret_env = "TOKENGATE_CLIENT_SECRET"
refresh_ahead = "$REFRESH_AHEAD"

[session]
cookie_name = "tg"
cookie_secure = false

[store]
$store

# Every session of the benchmark comes from 127.0.0.1.
[rate_limit]
new_sessions_per_minute = 1000000
new_sessions_burst = 1000000

[log]
level = "$LOG_LEVEL"

[[route]]
prefix = "/api/"
upstream_prefix = "/v1/"
session = "required"
EOF
}

TARGETS=""
ADMINS=()
start_tokengate() { # name config
  local out="$WORK/$1.out" pid addr
  env -u RUST_LOG TOKENGATE_CLIENT_SECRET="$CLIENT_SECRET" TOKENGATE_REDIS_URL="${REDIS_URL:-}" \
    TOKENGATE_STORE_KEY="$STORE_KEY" "$TOKENGATE" --config "$2" >"$out" 2>"$WORK/$1.err" </dev/null &
  pid=$!
  PIDS+=("$pid")
  addr="$(wait_for_line "$out" 'listening on http://127\.0\.0\.1:[0-9]+' "$pid" "$1")"
  TARGETS="${TARGETS:+$TARGETS,}${addr#listening on }"
  addr="$(wait_for_line "$out" 'admin http://127\.0\.0\.1:[0-9]+' "$pid" "$1")"
  ADMINS+=("${addr#admin }")
}

# The sum over the replicas of one counter line of /metrics (exact name and labels).
metric_sum() {
  local admin total=0 value
  for admin in "${ADMINS[@]}"; do
    value="$(curl -fsS --max-time 5 "$admin/metrics" | awk -v name="$1" '$1 == name { print $2 }' | head -n1)"
    total=$((total + ${value:-0}))
  done
  echo "$total"
}

# ---------------------------------------------------------------- legs
STORE_KEY="$(head -c 32 /dev/urandom | base64)"
SUMMARY=()
OVERALL=0

check() { # leg condition-text ok(0/1)
  if [[ "$3" == 1 ]]; then SUMMARY+=("PASS  $1: $2"); else SUMMARY+=("FAIL  $1: $2"); OVERALL=1; fi
}

run_leg() { # memory | redis
  local leg="$1" instant replicas=1 i output value
  TARGETS=""
  ADMINS=()
  REDIS_URL=""
  instant=$(( $(date +%s) + LEAD ))
  start_mock "$instant"
  if [[ "$leg" == redis ]]; then
    command -v redis-server >/dev/null || die "redis-server is missing (apt-get install redis-server)"
    start_redis
    replicas="$REPLICAS"
  fi
  write_config "$WORK/$leg.toml" "$leg"
  for ((i = 1; i <= replicas; i++)); do start_tokengate "$leg-$i" "$WORK/$leg.toml"; done
  log "$leg: $replicas tokengate(s) at $TARGETS, mock $MOCK_URL, every access token expires at $instant ($(date -d "@$instant" +%H:%M:%S))"
  output="$(timeout $((LEAD + 120)) "$LOAD" --targets "$TARGETS" --mock "$MOCK_URL" --sessions "$SESSIONS" \
    --connections "$CONNECTIONS" --burst "$BURST" --storm-at "$instant" --after "$AFTER" --storm-window "$WINDOW" \
    2>"$WORK/$leg.load.err")" || die "$leg: the load generator failed: $(tail -n3 "$WORK/$leg.load.err")"
  echo
  echo "=== $leg: $replicas tokengate replica(s), store $leg, $SESSIONS sessions, $CONNECTIONS connections, burst $BURST"
  grep -v '^[A-Z_]*=' <<<"$output"
  value() { grep -oE "^$1=.*" <<<"$output" | cut -d= -f2; }
  local stats mints expired refresh_end refresh_before failed covered sessions
  stats="$(curl -fsS --max-time 5 "$MOCK_URL/__mock/stats" || echo '{}')"
  mints="$(grep -oE '"anonymous":[0-9]+' <<<"$stats" | cut -d: -f2 || echo '?')"
  expired="$(grep -oE '"resource_401":[0-9]+' <<<"$stats" | cut -d: -f2 || echo '?')"
  sessions="$(value SESSIONS)"; failed="$(value FAILED)"; covered="$(value COVERED)"
  refresh_before="$(value REFRESH_BEFORE)"; refresh_end="$(value REFRESH_AFTER)"
  local own_refreshes coalesced
  own_refreshes="$(metric_sum 'tokengate_token_calls_total{op="refresh",result="ok"}')"
  coalesced="$(metric_sum 'tokengate_refresh_coalesced_total')"
  echo "refresh calls the replicas made (their metrics): $own_refreshes; requests that used another request's refresh in the same process: $coalesced"
  echo "guest mints at the mock: $mints; resource calls it refused with 401 (expired token, then refreshed and replayed): $expired"
  # tokengate dates a token's expiry from the whole second its request started, so a session
  # whose creation straddled a second boundary is refreshed up to a second early (a
  # full-lifetime token from the mock: still one refresh for that session).
  echo "refresh calls counted 0.2 s before the instant: $refresh_before (early by tokengate's whole-second rounding; still one refresh each)"
  echo "steady p99 $(value STEADY_P99_MS) ms | storm p99 $(value STORM_P99_MS) ms (storm: $(value STORM_SECS) s after the instant) | $(value RPS) req/s over the run"
  check "$leg" "every session called after the instant ($covered of $sessions)" "$([[ "$covered" == "$sessions" ]] && echo 1 || echo 0)"
  check "$leg" "exactly $sessions refresh calls at the mock ($refresh_end)" "$([[ "$refresh_end" == "$sessions" ]] && echo 1 || echo 0)"
  check "$leg" "no failed request ($failed)" "$([[ "$failed" == 0 ]] && echo 1 || echo 0)"
  check "$leg" "steady p99 $(value STEADY_P99_MS) ms, storm p99 $(value STORM_P99_MS) ms (printed, not judged)" 1
  stop_all
}

for leg in $LEGS; do
  case "$leg" in
    memory | redis) run_leg "$leg" ;;
    *) die "unknown leg $leg (memory, redis)" ;;
  esac
done

echo
printf '%s\n' "${SUMMARY[@]}"
if [[ $OVERALL == 0 ]]; then echo "ALL PASS"; else echo "SOME FAILED"; fi
exit "$OVERALL"
