#!/usr/bin/env bash
# bench/memory.sh — resident bytes per session, beyond the token bytes.
#
# Not a test and not part of CI (scripts/test.sh never calls it). bench/README.md explains
# it and keeps the figures. The budget (issue 11) is 512 bytes per session beyond the
# token bytes, at 1,000,000 sessions.
#
#   bash bench/memory.sh
#
# 1. The store alone (examples/session_memory.rs): MEMORY_SESSIONS sessions inserted into
#    a MemoryStore as the proxy inserts them, for each token shape:
#      dr      Digital River's sizes: access 160 hex characters, refresh 176
#      jwt     1 KiB JWTs: access 1024 bytes, refresh 1024 bytes
#      issue   two 400-character tokens (the shape of the issue's "today" figure)
#    It prints VmRSS before and after (and after malloc_trim), glibc's own count of bytes
#    in use, bytes per session and the overhead beyond the token bytes.
# 2. The running proxy (MEMORY_E2E=1, the default): commerce-mock and tokengate (release,
#    memory store, rate limits raised), MEMORY_E2E_SESSIONS guest sessions created over
#    HTTP (POST /session/guest, DR-sized tokens from the mock), tokengate's VmRSS read
#    from /proc/<pid>/status before and after.
#
# Environment (defaults in brackets):
#   MEMORY_SESSIONS [1000000]  MEMORY_SHAPES ["dr jwt issue"]
#   MEMORY_E2E [1]  MEMORY_E2E_SESSIONS [1000000]   (about 2 minutes of session creation)
#   MEMORY_BUDGET [512]        bytes per session beyond the tokens
#   MEMORY_SKIP_BUILD=1        use the existing release binaries
#
# Every process it starts is stopped by PID on exit (trap); every wait is bounded; all
# traffic is on 127.0.0.1.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SESSIONS="${MEMORY_SESSIONS:-1000000}"
SHAPES="${MEMORY_SHAPES:-dr jwt issue}"
E2E="${MEMORY_E2E:-1}"
E2E_SESSIONS="${MEMORY_E2E_SESSIONS:-1000000}"
BUDGET="${MEMORY_BUDGET:-512}"
CLIENT_ID="demo-api-key"
CLIENT_SECRET="demo-secret"

log() { printf '[memory %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

PIDS=()
WORK=""
stop_pid() {
  local pid="$1"
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid" 2>/dev/null || true; fi
  fi
  wait "$pid" 2>/dev/null || true
}
cleanup() {
  local status=$? pid
  trap - EXIT INT TERM
  for pid in "${PIDS[@]}"; do stop_pid "$pid"; done
  if [[ -n "$WORK" && -d "$WORK" ]]; then rm -rf "$WORK"; fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

wait_for_line() { # file pattern pid what — bounded: 10 s
  local file="$1" pattern="$2" pid="$3" what="$4"
  for _ in $(seq 200); do
    if [[ -s "$file" ]] && grep -qE "$pattern" "$file"; then grep -oE "$pattern" "$file" | head -n1; return 0; fi
    kill -0 "$pid" 2>/dev/null || die "$what exited early: $(tail -n5 "$file" "${file%.out}.err" 2>/dev/null)"
    sleep 0.05
  done
  die "$what did not announce itself in 10 s"
}

rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }

TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
if [[ "${MEMORY_SKIP_BUILD:-0}" != 1 ]]; then
  # Two builds, so that the binaries are the product's (see bench/refresh-storm.sh).
  log "cargo build --release --bin tokengate --bin commerce-mock; cargo build --release --example session_memory --example storm_load"
  (cd "$ROOT" && nice -n 10 cargo build --release --bin tokengate --bin commerce-mock 2>&1 | tail -n 2 >&2)
  (cd "$ROOT" && nice -n 10 cargo build --release --example session_memory --example storm_load 2>&1 | tail -n 2 >&2)
fi
STORE_BENCH="$TARGET_DIR/release/examples/session_memory"
LOAD="$TARGET_DIR/release/examples/storm_load"
TOKENGATE="$TARGET_DIR/release/tokengate"
MOCK="$TARGET_DIR/release/commerce-mock"
[[ -x "$STORE_BENCH" ]] || die "no $STORE_BENCH"
WORK="$(mktemp -d /tmp/tokengate-memory.XXXXXX)"
cd "$WORK"

SUMMARY=()
verdict() { # what overhead
  if (($2 <= BUDGET)); then SUMMARY+=("PASS  $1: $2 B beyond the tokens (budget $BUDGET)")
  else SUMMARY+=("FAIL  $1: $2 B beyond the tokens (budget $BUDGET)"); fi
}

# ---------------------------------------------------------------- 1. the store alone
for shape in $SHAPES; do
  case "$shape" in
    dr) access=160 refresh=176 ;;
    jwt) access=1024 refresh=1024 ;;
    issue) access=400 refresh=400 ;;
    *) die "unknown shape $shape (dr, jwt, issue)" ;;
  esac
  echo "=== store alone, $shape tokens, $SESSIONS sessions"
  output="$(timeout 600 "$STORE_BENCH" --sessions "$SESSIONS" --access "$access" --refresh "$refresh")" ||
    die "session_memory failed"
  grep -v '^OVERHEAD_BYTES=' <<<"$output"
  verdict "store alone, $shape ($access + $refresh B), $SESSIONS sessions" \
    "$(grep -oE '^OVERHEAD_BYTES=-?[0-9]+' <<<"$output" | cut -d= -f2)"
  echo
done

# ---------------------------------------------------------------- 2. the running proxy
if [[ "$E2E" == 1 ]]; then
  [[ -x "$TOKENGATE" && -x "$MOCK" && -x "$LOAD" ]] || die "no release tokengate, commerce-mock or storm_load"
  RUST_LOG=warn "$MOCK" --listen 127.0.0.1:0 --client-id "$CLIENT_ID" --client-secret "$CLIENT_SECRET" \
    >"$WORK/mock.out" 2>"$WORK/mock.err" </dev/null &
  mock_pid=$!
  PIDS+=("$mock_pid")
  mock_url="$(wait_for_line "$WORK/mock.out" 'http://127\.0\.0\.1:[0-9]+' "$mock_pid" commerce-mock)"
  cat >"$WORK/tokengate.toml" <<EOF
[server]
listen = "127.0.0.1:0"
admin_listen = "off"
public_origin = "http://127.0.0.1"
shutdown_timeout = "2s"

[upstream]
base_url = "$mock_url"

[oauth]
client_id = "$CLIENT_ID"
client_secret_env = "TOKENGATE_CLIENT_SECRET"

[session]
cookie_name = "tg"
cookie_secure = false
max_sessions = $((E2E_SESSIONS + 1000))

[rate_limit]
new_sessions_per_minute = 100000000
new_sessions_burst = 100000000

[log]
level = "warn"

[[route]]
prefix = "/api/"
upstream_prefix = "/v1/"
session = "required"
EOF
  env -u RUST_LOG TOKENGATE_CLIENT_SECRET="$CLIENT_SECRET" "$TOKENGATE" --config "$WORK/tokengate.toml" \
    >"$WORK/tokengate.out" 2>"$WORK/tokengate.err" </dev/null &
  tg_pid=$!
  PIDS+=("$tg_pid")
  tg_url="$(wait_for_line "$WORK/tokengate.out" 'http://127\.0\.0\.1:[0-9]+' "$tg_pid" tokengate)"
  # A first thousand sessions warm the connection pools, buffers and caches up.
  timeout 120 "$LOAD" --targets "$tg_url" --sessions 1000 --create-only >/dev/null || die "warm-up failed"
  before="$(rss_kib "$tg_pid")"
  echo "=== the running proxy, $E2E_SESSIONS guest sessions over HTTP (DR-sized tokens: 160 + 176 B)"
  timeout 1200 "$LOAD" --targets "$tg_url" --sessions "$E2E_SESSIONS" --create-only | grep -v '^CREATED=' ||
    die "session creation failed"
  after="$(rss_kib "$tg_pid")"
  per=$(( (after - before) * 1024 / E2E_SESSIONS ))
  echo "tokengate VmRSS      ${before} KiB after 1000 warm-up sessions, ${after} KiB after $E2E_SESSIONS more"
  echo "per session          $per B, overhead beyond tokens $((per - 336)) B"
  verdict "running proxy, dr (160 + 176 B), $E2E_SESSIONS sessions" "$((per - 336))"
  echo
fi

printf '%s\n' "${SUMMARY[@]}"
