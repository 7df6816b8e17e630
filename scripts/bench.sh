#!/usr/bin/env bash
# scripts/bench.sh — forwarding benchmark: wrk → {nothing | tokengate | nginx} → upstream.
#
# Not a test and not part of CI (scripts/test.sh never calls it). Prints a table of
# requests/s and latency percentiles, the median of BENCH_REPEATS runs per leg, and what
# each proxy costs against wrk straight at the upstream. bench/README.md explains the legs,
# the CPU placement and the caveats, and keeps the figures of past runs.
#
#   sudo bash scripts/bench.sh            # as root on Debian: installs wrk and nginx if missing
#
# Two upstreams, each measured with the same legs:
#   mock    commerce-mock (release build), the real emulator: it takes a std Mutex and
#           looks the token up on every request, so it may be the bottleneck.
#   static  nginx serving fixed answers (bench/upstream.conf.template), so the proxies are
#           what is measured.
# Legs: baseline (wrk straight at the upstream, with a valid Bearer), tokengate (release,
# cookie of a guest session), tokengate-rotating (the same over BENCH_SESSIONS sessions, a
# different cookie on every request), tokengate-redis (one of three replicas on the Redis store,
# with their local session caches), tokengate with the leak guard off (static upstream), nginx
# (proxy_pass with keep-alive and a fixed Authorization header), and nginx-gzip (the same
# with gzip on, for the "-gz" payloads).
#
# Every process it starts is pinned with taskset and stopped by PID on exit. All traffic
# is on 127.0.0.1; every wrk run is bounded by -d and by `timeout`.
#
# Environment (defaults in brackets):
#   BENCH_DURATION [5s]  BENCH_WARMUP [2s]  BENCH_REPEATS [3]  BENCH_CONNECTIONS [32]
#   BENCH_THREADS [1]    BENCH_BIG_BYTES [1048576]
#   BENCH_LOAD_CPUS [0]  BENCH_PROXY_CPUS [1]  BENCH_UPSTREAM_CPUS [0]   (taskset lists)
#   BENCH_UPSTREAMS ["mock static"]   BENCH_PAYLOADS ["json big json-gz big-gz"]
#                        (a "-gz" payload is the same call with Accept-Encoding: gzip; nginx-gzip,
#                        nginx with gzip on, is its comparison leg)
#   BENCH_SESSIONS [100000]  sessions of the tokengate-rotating leg (each request carries the
#                        next one's cookie; 0 leaves the leg out); minted through tokengate first
#   BENCH_REDIS [1]      the tokengate-redis leg (e): three replicas on one redis-server, the
#                        first one measured with one session's cookie
#   BENCH_REDIS_SESSIONS [30000]  sessions minted into Redis first, a third through each replica
#   BENCH_SKIP_BUILD=1   use the existing target/release binaries
#   BENCH_PERF=1         also `perf stat` tokengate and nginx during one extra JSON run (the
#                        rotating leg with its script, rotating)
#   BENCH_PERF_RECORD=1  also `perf record -g` each leg's proxy during one extra JSON run (with the
#                        leg's script: the rotating leg rotates); perf-LEG.data in the work
#                        directory (kept), read with `perf report -i ... --no-children`;
#                        BENCH_PERF_CALLGRAPH=dwarf unwinds through code without frame pointers (libc)
#                        on the static upstream (needs perf; prints task-clock etc.)
#   BENCH_KEEP=1         keep the work directory (raw wrk outputs, logs, configs)
#   BENCH_NICE=N         niceness for everything this script starts [0]; e.g. -10 (as root) on a
#                        shared machine gives other work less of our cores' time (it does not
#                        make the machine idle: the 'other %' column tells how busy it was)
#   BENCH_WAIT_IDLE=N    wait up to N s for the machine to be under 10% busy before starting
#   BENCH_MAX_OTHER [5] BENCH_MAX_STEAL [10] BENCH_RETRY_BUDGET [12]   a run during which
#                        processes not started here used more than MAX_OTHER % of the machine,
#                        or the hypervisor stole more than MAX_STEAL % of its time, is measured
#                        again, at most RETRY_BUDGET extra runs in all (the table shows what remained)
#   BENCH_TOGETHER=N     after the rounds, N runs of nginx and tokengate at once (static
#                        upstream, JSON): two wrk, one a proxy, both proxies on the proxy
#                        core at the same instants, so a machine whose speed drifts moves
#                        both alike; each one's CPU per request is the figure (each gets
#                        what the scheduler gives it of the core, so req/s follows the split);
#                        BENCH_TOGETHER_DURATION [BENCH_DURATION] each
#   BENCH_LEGS ["" = all]  only these legs (and the baseline), e.g. "nginx tokengate" for a
#                        head-to-head of (b) and (c) with many rounds
#
# A round runs every leg once, in the order baseline, nginx-gzip, nginx, tokengate,
# tokengate-rotating, tokengate-redis, tokengate-noguard, and the next round in the reverse
# order: the legs compared (nginx and tokengate, tokengate and its rotating leg) run back to
# back, and a machine whose speed drifts within a round favours neither of a pair over the
# rounds.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DURATION="${BENCH_DURATION:-5s}"
WARMUP="${BENCH_WARMUP:-2s}"
REPEATS="${BENCH_REPEATS:-3}"
CONNS="${BENCH_CONNECTIONS:-32}"
THREADS="${BENCH_THREADS:-1}"
BIG_BYTES="${BENCH_BIG_BYTES:-1048576}"
LOAD_CPUS="${BENCH_LOAD_CPUS:-0}"
PROXY_CPUS="${BENCH_PROXY_CPUS:-1}"
UPSTREAM_CPUS="${BENCH_UPSTREAM_CPUS:-0}"
UPSTREAMS="${BENCH_UPSTREAMS:-mock static}"
MAX_OTHER="${BENCH_MAX_OTHER:-5}"
MAX_STEAL="${BENCH_MAX_STEAL:-10}"
RETRY_BUDGET="${BENCH_RETRY_BUDGET:-12}"
PAYLOADS="${BENCH_PAYLOADS:-json big json-gz big-gz}"
CLIENT_ID="demo-api-key"
CLIENT_SECRET="demo-secret"

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# ---------------------------------------------------------------- processes and cleanup
PIDS=()
WORK=""
cleanup() {
  local status=$?
  trap - EXIT INT TERM
  local i pid
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
    pid="${PIDS[$i]}"
    if kill -0 "$pid" 2>/dev/null; then kill -TERM "$pid" 2>/dev/null || true; fi
  done
  for pid in "${PIDS[@]}"; do
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid" 2>/dev/null || true; fi
    wait "$pid" 2>/dev/null || true
  done
  if [[ -n "$WORK" && -d "$WORK" ]]; then
    if [[ "${BENCH_KEEP:-0}" == 1 || "${KEEP_WORK:-0}" == 1 ]]; then log "kept $WORK"; else rm -rf "$WORK"; fi
  fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Stops one process this script started (by PID) and forgets it.
stop_pid() {
  local pid="$1" i
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid" 2>/dev/null || true; fi
  fi
  wait "$pid" 2>/dev/null || true
  for i in "${!PIDS[@]}"; do [[ "${PIDS[$i]}" == "$pid" ]] && unset 'PIDS[i]'; done
  PIDS=("${PIDS[@]}")
}

# Waits (bounded) for a line matching $2 in file $1; prints the first match.
wait_for_line() {
  local file="$1" pattern="$2" pid="$3" what="$4"
  for _ in $(seq 200); do
    if [[ -s "$file" ]] && grep -qE "$pattern" "$file"; then grep -oE "$pattern" "$file" | head -n1; return 0; fi
    kill -0 "$pid" 2>/dev/null || die "$what exited early: $(tail -n5 "$file" "${file%.out}.err" 2>/dev/null)"
    sleep 0.05
  done
  die "$what did not announce itself in 10 s"
}

# Waits (bounded) until http://$1 accepts TCP connections.
wait_for_port() {
  local hostport="$1" pid="$2" what="$3"
  for _ in $(seq 200); do
    if (exec 3<>"/dev/tcp/${hostport%:*}/${hostport##*:}") 2>/dev/null; then return 0; fi
    kill -0 "$pid" 2>/dev/null || die "$what exited early"
    sleep 0.05
  done
  die "$what is not listening on $hostport after 10 s"
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

# ---------------------------------------------------------------- tools
install_tools() {
  local missing=()
  command -v wrk >/dev/null || missing+=(wrk)
  command -v nginx >/dev/null || [[ -x /usr/sbin/nginx ]] || missing+=(nginx-light)
  command -v curl >/dev/null || missing+=(curl)
  command -v taskset >/dev/null || missing+=(util-linux)
  [[ ${#missing[@]} -eq 0 ]] && return 0
  [[ $(id -u) -eq 0 ]] || die "missing ${missing[*]}: run as root (or install them)"
  command -v apt-get >/dev/null || die "missing ${missing[*]} and no apt-get"
  log "installing ${missing[*]}"
  # Never let the package start nginx's own service on port 80.
  local made_policy=0
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d && made_policy=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  if [[ $made_policy -eq 1 ]]; then rm -f /usr/sbin/policy-rc.d; fi
}

install_tools
NICE="${BENCH_NICE:-0}"
if [[ "$NICE" != 0 ]]; then renice -n "$NICE" -p $$ >/dev/null || die "renice $NICE failed"; fi
NGINX="$(command -v nginx || echo /usr/sbin/nginx)"
[[ "$(uname -s)" == Linux ]] || die "Linux only (taskset, /proc)"
CLK_TCK="$(getconf CLK_TCK)"

if [[ "${BENCH_SKIP_BUILD:-0}" != 1 ]]; then
  log "cargo build --release --bin tokengate --bin commerce-mock"
  (cd "$ROOT" && cargo build --release --bin tokengate --bin commerce-mock 2>&1 | tail -n 2 >&2)
fi
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
TOKENGATE="$TARGET_DIR/release/tokengate"
MOCK="$TARGET_DIR/release/commerce-mock"
[[ -x "$TOKENGATE" && -x "$MOCK" ]] || die "no release binaries in $TARGET_DIR/release"

WORK="$(mktemp -d /tmp/tokengate-bench.XXXXXX)"
chmod 755 "$WORK"   # nginx workers run as nobody and must read www/
mkdir -p "$WORK/tmp" "$WORK/www" "$WORK/runs"
chmod 1777 "$WORK/tmp"
# The large body is JSON (a list of shopper-shaped items, padded to exactly BIG_BYTES), so
# a "-gz" run compresses it in both proxies, as an API's large answers would be.
awk -v n="$BIG_BYTES" 'BEGIN {
  item = "{\"uri\":\"https://api.digitalriver.com/v1/shoppers/me\",\"id\":\"4343434343\",\"locale\":\"en_US\",\"currency\":\"USD\"},"
  printf "{\"items\":["; used = 10
  while (used + length(item) + 4 <= n) { printf "%s", item; used += length(item) }
  printf "{}"; used += 2
  while (used < n - 2) { printf " "; used++ }
  printf "]}" }' >"$WORK/www/bytes"
[[ "$(wc -c <"$WORK/www/bytes")" == "$BIG_BYTES" ]] || die "the large body is not $BIG_BYTES bytes"
chmod 644 "$WORK/www/bytes"
cd "$WORK"   # nothing this script runs writes into the work tree
RESULTS="$WORK/results.tsv"
UPSTREAM_PIDS=""
: >"$RESULTS"

count_cpus() { # "0" → 1, "0,1" → 2, "0-3" → 4
  local total=0 part
  IFS=, read -ra parts <<<"$1"
  for part in "${parts[@]}"; do
    if [[ "$part" == *-* ]]; then total=$((total + ${part#*-} - ${part%-*} + 1)); else total=$((total + 1)); fi
  done
  echo "$total"
}
PROXY_WORKERS="$(count_cpus "$PROXY_CPUS")"

render() { # template out KEY=VALUE...
  local template="$1" out="$2" text key value
  shift 2
  text="$(cat "$template")"
  for pair in "$@"; do
    key="${pair%%=*}"; value="${pair#*=}"
    text="${text//@${key}@/$value}"
  done
  grep -q '@[A-Z_]*@' <<<"$text" && die "unfilled placeholder in $out: $(grep -o '@[A-Z_]*@' <<<"$text" | head -n1)"
  printf '%s\n' "$text" >"$out"
}

# ---------------------------------------------------------------- servers
# The worker PIDs of the nginx master $1 (its children), once $2 of them exist.
nginx_workers() {
  local workers=""
  for _ in $(seq 100); do
    workers="$(pgrep -P "$1" | tr '\n' ' ')"
    [[ $(wc -w <<<"$workers") -ge "$2" ]] && break
    sleep 0.05
  done
  echo "$workers"
}

# Each start_* sets a global with the base URL and the PID(s) whose CPU time is counted.
start_mock() {
  local out="$WORK/mock.out"
  RUST_LOG=warn taskset -c "$UPSTREAM_CPUS" "$MOCK" --listen 127.0.0.1:0 \
    --client-id "$CLIENT_ID" --client-secret "$CLIENT_SECRET" >"$out" 2>"$WORK/mock.err" </dev/null &
  MOCK_PID=$!
  PIDS+=("$MOCK_PID")
  UPSTREAM_URL="$(wait_for_line "$out" 'http://127\.0\.0\.1:[0-9]+' "$MOCK_PID" commerce-mock)"
  UPSTREAM_PIDS="$MOCK_PID"
  UPSTREAM_PID="$MOCK_PID"
}

start_static_upstream() {
  local port
  port="$(free_port)"
  STATIC_ACCESS="$(head -c 80 /dev/urandom | od -An -tx1 | tr -d ' \n')"
  STATIC_REFRESH="$(head -c 88 /dev/urandom | od -An -tx1 | tr -d ' \n')"
  render "$ROOT/bench/upstream.conf.template" "$WORK/upstream.conf" \
    "WORKDIR=$WORK" "PORT=$port" "BIG_BYTES=$BIG_BYTES" \
    "ACCESS_TOKEN=$STATIC_ACCESS" "REFRESH_TOKEN=$STATIC_REFRESH"
  taskset -c "$UPSTREAM_CPUS" "$NGINX" -p "$WORK" -c "$WORK/upstream.conf" -g 'daemon off;' \
    >"$WORK/upstream.out" 2>&1 </dev/null &
  UPSTREAM_PID=$!
  PIDS+=("$UPSTREAM_PID")
  wait_for_port "127.0.0.1:$port" "$UPSTREAM_PID" "static upstream nginx"
  UPSTREAM_URL="http://127.0.0.1:$port"
  UPSTREAM_PIDS="$UPSTREAM_PID $(nginx_workers "$UPSTREAM_PID" 1)"
}

# A real access token for the baseline and nginx legs.
upstream_token() {
  if [[ "$1" == static ]]; then echo "$STATIC_ACCESS"; return; fi
  curl -fsS -u "$CLIENT_ID:$CLIENT_SECRET" -d grant_type=password "$UPSTREAM_URL/oauth20/token" |
    grep -oE '"access_token":"[0-9a-f]+"' | cut -d'"' -f4
}

# Every leg is one way to reach the upstream: LEG_BASE (the URL prefix /v1 or /api),
# LEG_HEADER (one request header, or none) and LEG_PIDS (whose CPU time is the proxy's).
declare -A LEG_BASE LEG_HEADER LEG_PIDS LEG_SCRIPT
LEGS=()

add_baseline_leg() { # token
  LEGS+=(baseline)
  LEG_BASE[baseline]="$UPSTREAM_URL/v1"
  LEG_HEADER[baseline]="Authorization: Bearer $1"
  LEG_PIDS[baseline]=""
}

# Whether leg $1 is one BENCH_LEGS asks for (all when it is empty).
wanted_leg() { [[ -z "${BENCH_LEGS:-}" || " $BENCH_LEGS " == *" $1 "* ]]; }

# The legs of round $1 in the order they run (see the header).
round_order() {
  local order=(baseline nginx-gzip nginx tokengate tokengate-rotating tokengate-redis tokengate-noguard)
  local leg i present=()
  for leg in "${order[@]}"; do
    [[ " ${LEGS[*]} " == *" $leg "* ]] && present+=("$leg")
  done
  if (($1 % 2 == 0)); then
    for ((i = ${#present[@]} - 1; i >= 0; i--)); do printf '%s\n' "${present[i]}"; done
  else
    printf '%s\n' "${present[@]}"
  fi
}

start_tokengate() { # leg [env assignments...]
  local leg="$1" out="$WORK/$1.out" pid addr jar="$WORK/$1.cookies" value
  shift
  render "$ROOT/bench/tokengate.toml.template" "$WORK/tokengate.toml" "UPSTREAM_URL=$UPSTREAM_URL"
  env -u RUST_LOG TOKENGATE_CLIENT_SECRET="$CLIENT_SECRET" "$@" \
    taskset -c "$PROXY_CPUS" "$TOKENGATE" --config "$WORK/tokengate.toml" \
    >"$out" 2>>"$WORK/$leg.err" </dev/null &
  pid=$!
  PIDS+=("$pid")
  addr="$(wait_for_line "$out" 'http://127\.0\.0\.1:[0-9]+' "$pid" "$leg")"
  # One guest session: the cookie every request of the load carries.
  rm -f "$jar"
  curl -fsS -o /dev/null -c "$jar" -X POST -H 'X-CSRF: 1' "$addr/session/guest" ||
    die "POST /session/guest through $leg failed"
  value="$(awk '$6 == "tg" { print $7 }' "$jar")"
  [[ -n "$value" ]] || die "$leg set no cookie"
  LEGS+=("$leg")
  LEG_BASE[$leg]="$addr/api"
  LEG_HEADER[$leg]="Cookie: tg=$value"
  LEG_PIDS[$leg]="$pid"
}

# Mints guest sessions through tokengate at $1 until the file $3 holds $2 cookies (wrk with
# bench/mint-sessions.lua, which stops writing at $2; wrk itself is stopped here, by PID,
# once the file is full, since its run length cannot be known in advance). Bounded: 300 s.
mint_sessions() { # addr total cookies log
  local addr="$1" total="$2" cookies="$3" out="$4" pid deadline=$((SECONDS + 300))
  COOKIES="$cookies" SESSIONS="$((total - $(wc -l <"$cookies")))" taskset -c "$LOAD_CPUS" \
    wrk -t1 -c16 -d300s -s "$ROOT/bench/mint-sessions.lua" "$addr/session/guest" >"$out" 2>&1 &
  pid=$!
  while [[ "$(wc -l <"$cookies")" -lt "$total" ]]; do
    kill -0 "$pid" 2>/dev/null || break
    [[ $SECONDS -lt $deadline ]] || break
    sleep 0.2
  done
  stop_pid "$pid"
  [[ "$(wc -l <"$cookies")" -ge "$total" ]] || die "minting through $addr: only $(wc -l <"$cookies") of $total sessions ($(tail -n 3 "$out"))"
}

# tokengate with SESSIONS guest sessions, each request of the load carrying the next one's
# cookie (leg d of issue 11: the store and the needle cache under many sessions). The
# sessions are minted through tokengate itself by wrk (POST /session/guest; rate limits
# raised for this process only), their cookies written to a file the load script cycles.
start_tokengate_rotating() { # leg sessions
  local leg="$1" sessions="$2" out="$WORK/$1.out" pid addr cookies="$WORK/$1.cookies"
  render "$ROOT/bench/tokengate.toml.template" "$WORK/$leg.toml" "UPSTREAM_URL=$UPSTREAM_URL"
  env -u RUST_LOG TOKENGATE_CLIENT_SECRET="$CLIENT_SECRET" \
    TOKENGATE_SESSION_MAX_SESSIONS=$((sessions + 1000)) \
    TOKENGATE_RATE_LIMIT_NEW_SESSIONS_PER_MINUTE=100000000 TOKENGATE_RATE_LIMIT_NEW_SESSIONS_BURST=100000000 \
    taskset -c "$PROXY_CPUS" "$TOKENGATE" --config "$WORK/$leg.toml" \
    >"$out" 2>>"$WORK/$leg.err" </dev/null &
  pid=$!
  PIDS+=("$pid")
  addr="$(wait_for_line "$out" 'http://127\.0\.0\.1:[0-9]+' "$pid" "$leg")"
  : >"$cookies"
  log "$leg: minting $sessions guest sessions"
  mint_sessions "$addr" "$sessions" "$cookies" "$WORK/$leg-mint.txt"
  [[ "$(wc -l <"$cookies")" -ge "$sessions" ]] || die "$leg: only $(wc -l <"$cookies") of $sessions sessions minted"
  LEGS+=("$leg")
  LEG_BASE[$leg]="$addr/api"
  LEG_HEADER[$leg]="Cookie: tg=$(head -n1 "$cookies")"   # for the one curl check
  LEG_SCRIPT[$leg]="$ROOT/bench/rotate-sessions.lua"
  export COOKIES_FILE="$cookies"
  LEG_PIDS[$leg]="$pid"
}

# tokengate on the Redis store (leg e of issue 11): one redis-server and three replicas
# sharing it; REDIS_SESSIONS guest sessions are minted, a third through each replica
# (three replicas' worth of sessions in Redis, each replica's local cache and client tracking
# live), then the load goes to the first replica with one session's cookie, as leg (c).
# The two other replicas and redis-server run on the upstream's CPUs.
start_tokengate_redis() { # leg sessions
  local leg="$1" sessions="$2" port rpid i pid out addr first="" cookies="$WORK/$1.cookies" value
  command -v redis-server >/dev/null || die "redis-server is needed for the $leg leg (apt-get install redis-server)"
  port="$(free_port)"
  taskset -c "$UPSTREAM_CPUS" redis-server --bind 127.0.0.1 --port "$port" --save '' --appendonly no \
    >"$WORK/$leg-redis.out" 2>&1 </dev/null &
  rpid=$!
  PIDS+=("$rpid")
  wait_for_port "127.0.0.1:$port" "$rpid" "redis-server"
  render "$ROOT/bench/tokengate.toml.template" "$WORK/$leg.toml" "UPSTREAM_URL=$UPSTREAM_URL"
  : >"$cookies"
  for i in 1 2 3; do
    out="$WORK/$leg-$i.out"
    env -u RUST_LOG TOKENGATE_CLIENT_SECRET="$CLIENT_SECRET" \
      TOKENGATE_STORE_KIND=redis TOKENGATE_STORE_URL_ENV=BENCH_REDIS_URL BENCH_REDIS_URL="redis://127.0.0.1:$port" \
      TOKENGATE_STORE_ENCRYPTION_KEY_ENV=BENCH_STORE_KEY BENCH_STORE_KEY="o0X/68jjhbQk/te414M3as0nTJLanIhTgdvdXiKejrs=" \
      TOKENGATE_RATE_LIMIT_NEW_SESSIONS_PER_MINUTE=100000000 TOKENGATE_RATE_LIMIT_NEW_SESSIONS_BURST=100000000 \
      taskset -c "$([[ $i == 1 ]] && echo "$PROXY_CPUS" || echo "$UPSTREAM_CPUS")" "$TOKENGATE" --config "$WORK/$leg.toml" \
      >"$out" 2>>"$WORK/$leg.err" </dev/null &
    pid=$!
    PIDS+=("$pid")
    addr="$(wait_for_line "$out" 'http://127\.0\.0\.1:[0-9]+' "$pid" "$leg replica $i")"
    [[ -n "$first" ]] || { first="$addr"; LEG_PIDS[$leg]="$pid"; }
    if [[ "$sessions" -gt 0 ]]; then
      log "$leg: minting $((sessions / 3)) guest sessions through replica $i"
      mint_sessions "$addr" "$((sessions * i / 3))" "$cookies" "$WORK/$leg-mint-$i.txt"
    fi
  done
  log "$leg: $(wc -l <"$cookies") sessions in Redis (DBSIZE $(redis-cli -p "$port" dbsize 2>/dev/null || echo '?'))"
  rm -f "$WORK/$leg.jar"
  curl -fsS -o /dev/null -c "$WORK/$leg.jar" -X POST -H 'X-CSRF: 1' "$first/session/guest" ||
    die "POST /session/guest through $leg failed"
  value="$(awk '$6 == "tg" { print $7 }' "$WORK/$leg.jar")"
  [[ -n "$value" ]] || die "$leg set no cookie"
  LEGS+=("$leg")
  LEG_BASE[$leg]="$first/api"
  LEG_HEADER[$leg]="Cookie: tg=$value"
}

start_nginx_proxy() { # leg token [gzip]
  local leg="$1" port pid gzip="gzip off;"
  port="$(free_port)"
  # The same policy as tokengate's: JSON and text, level 5, not under 256 bytes.
  if [[ "${3:-}" == gzip ]]; then
    gzip="gzip on; gzip_proxied any; gzip_comp_level 5; gzip_min_length 256; gzip_vary on; gzip_types application/json text/plain;"
  fi
  render "$ROOT/bench/nginx.conf.template" "$WORK/$leg.conf" \
    "WORKDIR=$WORK" "PORT=$port" "UPSTREAM=${UPSTREAM_URL#http://}" \
    "ACCESS_TOKEN=$2" "WORKERS=$PROXY_WORKERS" "GZIP=$gzip"
  taskset -c "$PROXY_CPUS" "$NGINX" -p "$WORK" -c "$WORK/$leg.conf" -g 'daemon off;' \
    >"$WORK/$leg.out" 2>&1 </dev/null &
  pid=$!
  PIDS+=("$pid")
  wait_for_port "127.0.0.1:$port" "$pid" "$leg"
  LEGS+=("$leg")
  LEG_BASE[$leg]="http://127.0.0.1:$port/api"
  LEG_HEADER[$leg]=""
  LEG_PIDS[$leg]="$pid $(nginx_workers "$pid" "$PROXY_WORKERS")"
}

# ---------------------------------------------------------------- measuring
cpu_ticks() { # pids... → utime+stime summed, in clock ticks
  local total=0 pid t
  for pid in "$@"; do
    t="$(awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$pid/stat" 2>/dev/null || echo 0)"
    total=$((total + t))
  done
  echo "$total"
}

# What the rest of the machine did during a run, in clock ticks: the user+system time of
# all CPUs (/proc/stat; interrupts and softirqs left out, since our own loopback traffic
# lands there) less the time of the servers started here and of this shell's children
# (wrk, curl, awk). What remains is other people's builds, tests, fuzzers…
machine_ticks() { awk '/^cpu / { print $2 + $3 + $4 }' /proc/stat; }
# Steal and total ticks of all CPUs: time the hypervisor gave to other guests.
steal_ticks() { awk '/^cpu / { print $9, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9 }' /proc/stat; }
our_ticks() {
  local -a pids
  mapfile -t pids < <(printf '%s\n' "${PIDS[@]}" "${LEG_PIDS[@]}" "$UPSTREAM_PIDS" | tr ' ' '\n' | grep -v '^$' | sort -u)
  cpu_ticks "${pids[@]}"
}
children_ticks() { # → CHILDREN_TICKS; `times` must run in this shell, not in a $(…) subshell
  times >"$WORK/times.txt"   # the second line: user and system time of waited-for children
  CHILDREN_TICKS="$(awk -v hz="$CLK_TCK" 'NR == 2 { t = 0; for (i = 1; i <= 2; i++) { v = $i; sub(/s$/, "", v); split(v, p, "m"); t += p[1] * 60 + p[2] }
    printf "%.0f\n", t * hz }' "$WORK/times.txt")"
}

# Busy share (%) of all CPUs over $1 seconds, from /proc/stat.
machine_busy() {
  local a b
  a="$(awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9, $5 + $6 }' /proc/stat)"
  sleep "$1"
  b="$(awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9, $5 + $6 }' /proc/stat)"
  awk -v a="$a" -v b="$b" 'BEGIN { split(a, x, " "); split(b, y, " "); busy = y[1] - x[1]; idle = y[2] - x[2]
    total = busy + idle; printf "%.0f", (total ? 100 * busy / total : 0) }'
}

cpu_sys_ticks() { # pids... → stime summed, in clock ticks (the kernel's share)
  local total=0 pid t
  for pid in "$@"; do
    t="$(awk '{ sub(/^.*\) /, ""); print $13 }' "/proc/$pid/stat" 2>/dev/null || echo 0)"
    total=$((total + t))
  done
  echo "$total"
}

to_ms() { # "457.00us" | "2.36ms" | "1.02s" → milliseconds
  awk -v v="$1" 'BEGIN {
    if (v ~ /us$/) { sub(/us$/, "", v); printf "%.3f", v / 1000 }
    else if (v ~ /ms$/) { sub(/ms$/, "", v); printf "%.3f", v }
    else if (v ~ /m$/) { sub(/m$/, "", v); printf "%.3f", v * 60000 }
    else if (v ~ /s$/) { sub(/s$/, "", v); printf "%.3f", v * 1000 }
    else { printf "nan" } }'
}

seconds_of() { # "5s" | "2m" → seconds
  case "$1" in *m) echo $((${1%m} * 60)) ;; *s) echo "${1%s}" ;; *) echo "$1" ;; esac
}

# One request with the leg's headers: it must answer 200 with the payload (the JSON's
# size varies a little with the Host the upstream saw), or the leg would measure error pages.
check_once() { # url payload headers...
  local url="$1" payload="$2" got body="$WORK/check-body" decode=()
  shift 2
  # A "-gz" payload: curl decodes what comes back (the check reads the JSON, not gzip).
  if [[ "$payload" == *-gz ]]; then decode=(--compressed); fi
  got="$(curl -sS "${decode[@]}" -o "$body" -w '%{http_code} %{size_download}' "$@" "$url")" || die "curl $url failed"
  case "${payload%-gz}" in
    json) if [[ "${got%% *}" != 200 ]] || ! grep -q '"shopper"' "$body"; then
      die "$url answered '$got': $(head -c 300 "$body")"
    fi ;;
    big) got="${got%% *} $(wc -c <"$body")" # decoded size (a -gz run transfers fewer bytes)
      [[ "$got" == "200 $BIG_BYTES" ]] || die "$url answered '$got', expected '200 $BIG_BYTES'" ;;
  esac
}

# The wrk/curl header arguments of a leg.
leg_headers() { # leg [payload] → sets HEADERS (a "-gz" payload adds Accept-Encoding: gzip)
  HEADERS=()
  if [[ -n "${LEG_HEADER[$1]}" ]]; then HEADERS=(-H "${LEG_HEADER[$1]}"); fi
  if [[ "${2:-}" == *-gz ]]; then HEADERS+=(-H "Accept-Encoding: gzip"); fi
  # wrk only: a leg with a Lua script (the rotating-sessions leg picks its cookie there).
  WRK_EXTRA=()
  if [[ -n "${LEG_SCRIPT[$1]:-}" ]]; then WRK_EXTRA=(-s "${LEG_SCRIPT[$1]}"); fi
}

# Checks a leg once and warms it up (connections, pools, caches).
warm_leg() { # upstream leg payload
  local upstream="$1" leg="$2" payload="$3" url
  url="${LEG_BASE[$leg]}/$(path_of "$payload")"
  leg_headers "$leg" "$payload"
  check_once "$url" "$payload" "${HEADERS[@]}"
  timeout 120 taskset -c "$LOAD_CPUS" wrk "-t$THREADS" "-c$CONNS" "-d$WARMUP" "${HEADERS[@]}" "${WRK_EXTRA[@]}" "$url" \
    >"$WORK/runs/$upstream-$leg-$payload-warmup.txt" 2>&1 || die "wrk warm-up failed for $upstream/$leg/$payload"
}

# One measured run of a leg: sets LAST_ROW (a row for $RESULTS) and LAST_OTHER.
measure_run() { # upstream leg payload run
  local upstream="$1" leg="$2" payload="$3" run="$4" url file proxy_pids
  url="${LEG_BASE[$leg]}/$(path_of "$payload")"
  file="$WORK/runs/$upstream-$leg-$payload-$run.txt"
  proxy_pids="${LEG_PIDS[$leg]}"
  leg_headers "$leg" "$payload"
  local p0 s0 u0 p1 s1 u1 other rps p50 p90 p99 requests bad errors secs
  secs="$(seconds_of "$DURATION")"
  local m0 o0 c0 m1 o1 c1
  local st0 st1 steal
  children_ticks; c0="$CHILDREN_TICKS"; m0="$(machine_ticks)"; o0="$(our_ticks)"; st0="$(steal_ticks)"
  # shellcheck disable=SC2086 # PID lists split on purpose
  { p0="$(cpu_ticks $proxy_pids)"; s0="$(cpu_sys_ticks $proxy_pids)"; u0="$(cpu_ticks $UPSTREAM_PIDS)"; }
  timeout 120 taskset -c "$LOAD_CPUS" wrk "-t$THREADS" "-c$CONNS" "-d$DURATION" --latency "${HEADERS[@]}" "${WRK_EXTRA[@]}" "$url" \
    >"$file" 2>&1 || die "wrk failed: $(cat "$file")"
  # shellcheck disable=SC2086 # PID lists split on purpose
  { p1="$(cpu_ticks $proxy_pids)"; s1="$(cpu_sys_ticks $proxy_pids)"; u1="$(cpu_ticks $UPSTREAM_PIDS)"; }
  st1="$(steal_ticks)"; m1="$(machine_ticks)"; o1="$(our_ticks)"; children_ticks; c1="$CHILDREN_TICKS"
  steal="$(awk -v a="$st0" -v b="$st1" 'BEGIN { split(a, x, " "); split(b, y, " "); d = y[2] - x[2]; printf "%.0f", (d ? 100 * (y[1] - x[1]) / d : 0) }')"
  rps="$(awk '/^Requests\/sec:/ { print $2 }' "$file")"
  requests="$(awk '/requests in/ { print $1 }' "$file")"
  p50="$(to_ms "$(awk '$1 == "50%" { print $2 }' "$file")")"
  p90="$(to_ms "$(awk '$1 == "90%" { print $2 }' "$file")")"
  p99="$(to_ms "$(awk '$1 == "99%" { print $2 }' "$file")")"
  bad="$(awk '/Non-2xx or 3xx responses:/ { print $NF }' "$file")"
  errors="$(awk '/Socket errors:/ { gsub(/,/, ""); print $4 + $6 + $8 + $10 }' "$file")"
  bad="${bad:-0}"; errors="${errors:-0}"
  [[ -n "$rps" && -n "$requests" ]] || die "cannot read wrk output: $(cat "$file")"
  # The run's real length ("N requests in 5.01s"), for the CPU shares.
  secs="$(awk '/requests in/ { v = $4; sub(/,$/, "", v); if (v ~ /ms$/) { sub(/ms$/, "", v); v /= 1000 } else if (v ~ /m$/) { sub(/m$/, "", v); v *= 60 } else sub(/s$/, "", v); print v }' "$file")"
  # CPU: the proxy's µs per request (and the kernel's part), the share of its cores it
  # used, the upstream's share of its cores, and what everything else on the machine used.
  local proxy_us="-" proxy_sys_us="-" proxy_util="-" up_util
  if [[ -n "$proxy_pids" ]]; then
    proxy_us="$(awk -v t=$((p1 - p0)) -v hz="$CLK_TCK" -v n="$requests" 'BEGIN { printf "%.1f", t / hz * 1e6 / n }')"
    proxy_sys_us="$(awk -v t=$((s1 - s0)) -v hz="$CLK_TCK" -v n="$requests" 'BEGIN { printf "%.1f", t / hz * 1e6 / n }')"
    proxy_util="$(awk -v t=$((p1 - p0)) -v hz="$CLK_TCK" -v s="$secs" -v c="$PROXY_WORKERS" 'BEGIN { printf "%.0f", 100 * t / hz / s / c }')"
  fi
  other="$(awk -v t=$(((m1 - m0) - (o1 - o0) - (c1 - c0))) -v hz="$CLK_TCK" -v s="$secs" -v c="$(nproc)" 'BEGIN { if (t < 0) t = 0; printf "%.0f", 100 * t / hz / s / c }')"
  up_util="$(awk -v t=$((u1 - u0)) -v hz="$CLK_TCK" -v s="$secs" -v c="$(count_cpus "$UPSTREAM_CPUS")" 'BEGIN { printf "%.0f", 100 * t / hz / s / c }')"
  LAST_OTHER="$other"
  LAST_STEAL="$steal"
  LAST_ROW="$(printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s' "$upstream" "$leg" "$payload" "$run" \
    "$rps" "$p50" "$p90" "$p99" "$((bad + errors))" "$proxy_us" "$proxy_util" "$up_util" "$other" "$proxy_sys_us" "$steal")"
  log "$(printf '%-7s %-18s %-5s run %s: %10s req/s  p50 %7s ms  p99 %7s ms  proxy %5s µs/req (sys %5s) %4s%%  upstream %3s%%  other %3s%%  steal %2s%%  errors %s' \
    "$upstream" "$leg" "$payload" "$run" "$rps" "$p50" "$p99" "$proxy_us" "$proxy_sys_us" "$proxy_util" "$up_util" "$other" "$steal" "$((bad + errors))")"
}

# nginx and tokengate loaded at once, each by its own wrk with the usual connections: one
# row each (run $1) in $WORK/together.tsv: leg, req/s, p99, proxy µs per request (all, and
# the kernel's part).
measure_together() { # run
  local run="$1" leg file secs sys pid requests rps p99
  local -A before after sys_before sys_after files
  local wrk_pids=()
  for leg in nginx tokengate; do
    file="$WORK/runs/together-$leg-$run.txt"
    files[$leg]="$file"
    # shellcheck disable=SC2086 # PID lists split on purpose
    before[$leg]="$(cpu_ticks ${LEG_PIDS[$leg]})"
    # shellcheck disable=SC2086 # PID lists split on purpose
    sys_before[$leg]="$(cpu_sys_ticks ${LEG_PIDS[$leg]})"
  done
  for leg in nginx tokengate; do
    leg_headers "$leg" json
    timeout 120 taskset -c "$LOAD_CPUS" wrk "-t$THREADS" "-c$CONNS" "-d${BENCH_TOGETHER_DURATION:-$DURATION}" --latency "${HEADERS[@]}" \
      "${LEG_BASE[$leg]}/$(path_of json)" >"${files[$leg]}" 2>&1 &
    wrk_pids+=($!)
  done
  for pid in "${wrk_pids[@]}"; do wait "$pid" || die "wrk failed (together, run $run)"; done
  for leg in nginx tokengate; do
    # shellcheck disable=SC2086 # PID lists split on purpose
    after[$leg]="$(cpu_ticks ${LEG_PIDS[$leg]})"
    # shellcheck disable=SC2086 # PID lists split on purpose
    sys_after[$leg]="$(cpu_sys_ticks ${LEG_PIDS[$leg]})"
  done
  for leg in nginx tokengate; do
    file="${files[$leg]}"
    rps="$(awk '/^Requests\/sec:/ { print $2 }' "$file")"
    requests="$(awk '/requests in/ { print $1 }' "$file")"
    p99="$(to_ms "$(awk '$1 == "99%" { print $2 }' "$file")")"
    [[ -n "$rps" && -n "$requests" ]] || die "cannot read wrk output: $(cat "$file")"
    secs="$(awk -v t=$((after[$leg] - before[$leg])) -v hz="$CLK_TCK" -v n="$requests" 'BEGIN { printf "%.2f", t / hz * 1e6 / n }')"
    sys="$(awk -v t=$((sys_after[$leg] - sys_before[$leg])) -v hz="$CLK_TCK" -v n="$requests" 'BEGIN { printf "%.2f", t / hz * 1e6 / n }')"
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$run" "$leg" "$rps" "$p99" "$secs" "$sys" >>"$WORK/together.tsv"
    log "$(printf 'together run %s: %-9s %10s req/s  p99 %7s ms  proxy %5s µs/req (sys %5s)' "$run" "$leg" "$rps" "$p99" "$secs" "$sys")"
  done
}

# Which legs run with which payload: nginx with gzip on only the "-gz" payloads, plain
# nginx only the others; every tokengate leg runs every payload (the leak guard scans every
# body, of any type, as it streams; with gzip asked for, tokengate compresses JSON).
leg_runs_payload() { # leg payload
  case "$1" in
    nginx-gzip) [[ "$2" == *-gz ]] ;;
    nginx) [[ "$2" != *-gz ]] ;;
    *) true ;;
  esac
}

path_of() { # payload → path under /v1 (or /api); a "-gz" payload is the same call asking for gzip
  case "${1%-gz}" in
    json) echo "shoppers/me?format=json" ;; # the mock answers XML unless JSON is asked for
    big) echo "debug/bytes?n=$BIG_BYTES" ;;
    *) die "unknown payload $1" ;;
  esac
}

perf_run() { # leg: perf stat on the leg's proxy during one extra JSON run
  command -v perf >/dev/null || { log "perf not installed: skipping BENCH_PERF"; return 0; }
  local label="$1" file="$WORK/perf-$1.txt" pids n clock switches syscalls events
  pids="$(tr -s ' ' ',' <<<"${LEG_PIDS[$label]}" | sed 's/^,*//; s/,*$//')"
  leg_headers "$label"
  events=task-clock,context-switches
  # Syscall counts need the raw_syscalls tracepoint (root, tracefs); without it, CPU only.
  perf stat -e raw_syscalls:sys_enter -o /dev/null -- true 2>/dev/null && events="$events,raw_syscalls:sys_enter"
  perf stat -e "$events" -p "$pids" -o "$file" -- \
    timeout 60 taskset -c "$LOAD_CPUS" wrk "-t$THREADS" "-c$CONNS" "-d$DURATION" "${HEADERS[@]}" "${WRK_EXTRA[@]}" \
    "${LEG_BASE[$label]}/$(path_of json)" \
    >"$WORK/perf-$label-wrk.txt" 2>&1 || { log "perf stat failed: $(tail -n3 "$file")"; return 0; }
  n="$(awk '/requests in/ { print $1 }' "$WORK/perf-$label-wrk.txt")"
  clock="$(awk '/task-clock/ { gsub(/,/, "", $1); print $1 }' "$file")"
  switches="$(awk '/context-switches/ { gsub(/,/, "", $1); print $1 }' "$file")"
  syscalls="$(awk '/sys_enter/ { gsub(/,/, "", $1); print $1 }' "$file")"
  PERF_LINES+=("$(awk -v l="$label" -v n="$n" -v c="$clock" -v s="$switches" -v y="${syscalls:-nan}" 'BEGIN {
    printf "perf stat %-17s %8d requests  %6.1f µs CPU/req  %.3f context switches/req  %s syscalls/req",
      l, n, c * 1000 / n, s / n, (y == "nan" ? "?" : sprintf("%.2f", y / n)) }')")
  log "${PERF_LINES[-1]}"
}
PERF_LINES=()

perf_record() { # leg: perf record (call graphs) of the leg's proxy during one extra JSON run
  command -v perf >/dev/null || { log "perf not installed: skipping BENCH_PERF_RECORD"; return 0; }
  local label="$1" pids
  pids="$(tr -s ' ' ',' <<<"${LEG_PIDS[$label]}" | sed 's/^,*//; s/,*$//')"
  leg_headers "$label"
  perf record -q --call-graph "${BENCH_PERF_CALLGRAPH:-fp}" -F 2999 -p "$pids" -o "$WORK/perf-$label.data" -- \
    timeout 60 taskset -c "$LOAD_CPUS" wrk "-t$THREADS" "-c$CONNS" "-d$DURATION" "${HEADERS[@]}" "${WRK_EXTRA[@]}" \
    "${LEG_BASE[$label]}/$(path_of json)" >"$WORK/perf-$label-record-wrk.txt" 2>&1 \
    || { log "perf record failed for $label"; return 0; }
  log "perf record $label: $(awk '/Requests\/sec/ { print $2 }' "$WORK/perf-$label-record-wrk.txt") requests/s while sampled; $WORK/perf-$label.data"
  KEEP_WORK=1
}

# ---------------------------------------------------------------- the legs
log "work dir $WORK; wrk -t$THREADS -c$CONNS -d$DURATION (warm-up $WARMUP), $REPEATS runs per leg"
log "niceness $NICE for this script and everything it starts"
log "CPUs: load generator on $LOAD_CPUS, proxy on $PROXY_CPUS ($PROXY_WORKERS nginx worker(s); tokio sizes its pool from the affinity), upstream on $UPSTREAM_CPUS"
log "machine: $(nproc) CPUs online; $(uname -r); $(wrk -v 2>&1 | head -n1 | cut -c1-40); $("$NGINX" -v 2>&1)"

IDLE_BEFORE="$(machine_busy 2)"
if [[ "$IDLE_BEFORE" -gt 10 && "${BENCH_WAIT_IDLE:-0}" -gt 0 ]]; then
  log "the machine is ${IDLE_BEFORE}% busy before starting; waiting up to ${BENCH_WAIT_IDLE} s for it to calm down"
  deadline=$((SECONDS + BENCH_WAIT_IDLE))
  while [[ "$IDLE_BEFORE" -gt 10 && $SECONDS -lt $deadline ]]; do IDLE_BEFORE="$(machine_busy 5)"; done
fi
log "machine busy before the benchmark: ${IDLE_BEFORE}% of all CPUs"
[[ "$IDLE_BEFORE" -le 10 ]] || log "WARNING: the machine is not idle (${IDLE_BEFORE}% busy): figures will be disturbed (BENCH_WAIT_IDLE=SECONDS waits)"

for upstream in $UPSTREAMS; do
  case "$upstream" in
    mock) start_mock ;;
    static) start_static_upstream ;;
    *) die "unknown upstream $upstream" ;;
  esac
  token="$(upstream_token "$upstream")"
  [[ -n "$token" ]] || die "no access token from the $upstream upstream"
  log "upstream $upstream at $UPSTREAM_URL"
  LEGS=()
  add_baseline_leg "$token"
  if wanted_leg tokengate; then start_tokengate tokengate; fi
  if [[ "${BENCH_SESSIONS:-100000}" != 0 ]] && wanted_leg tokengate-rotating; then
    start_tokengate_rotating tokengate-rotating "${BENCH_SESSIONS:-100000}"
  fi
  if [[ "${BENCH_REDIS:-1}" == 1 ]] && wanted_leg tokengate-redis; then
    start_tokengate_redis tokengate-redis "${BENCH_REDIS_SESSIONS:-30000}"
  fi
  if [[ "$upstream" == static ]] && wanted_leg tokengate-noguard; then
    start_tokengate tokengate-noguard TOKENGATE_LEAK_GUARD_ENABLED=false
  fi
  if wanted_leg nginx; then start_nginx_proxy nginx "$token"; fi
  if [[ " $PAYLOADS " == *-gz* ]] && wanted_leg nginx-gzip; then start_nginx_proxy nginx-gzip "$token" gzip; fi
  log "legs: ${LEGS[*]} (all running; idle ones cost nothing)"

  for payload in $PAYLOADS; do
    for leg in "${LEGS[@]}"; do
      leg_runs_payload "$leg" "$payload" || continue
      warm_leg "$upstream" "$leg" "$payload"
    done
  done
  # Runs are interleaved (run 1 of every leg, then run 2, …) so that a change in what
  # else the machine is doing lands on every leg alike, not on the last one measured.
  for run in $(seq "$REPEATS"); do
    for payload in $PAYLOADS; do
      for leg in $(round_order "$run"); do
        leg_runs_payload "$leg" "$payload" || continue
        measure_run "$upstream" "$leg" "$payload" "$run"
        # A run during which other processes took a noticeable share of the machine is
        # measured again, within a fixed budget of extra runs; the row says what it saw.
        while [[ ("$LAST_OTHER" -gt "$MAX_OTHER" || "$LAST_STEAL" -gt "$MAX_STEAL") && "$RETRY_BUDGET" -gt 0 ]]; do
          RETRY_BUDGET=$((RETRY_BUDGET - 1))
          log "  disturbed (other processes ${LAST_OTHER}%, steal ${LAST_STEAL}%): measuring again ($RETRY_BUDGET extra runs left)"
          measure_run "$upstream" "$leg" "$payload" "$run"
        done
        printf '%s\n' "$LAST_ROW" >>"$RESULTS"
      done
    done
  done
  if [[ "${BENCH_TOGETHER:-0}" -gt 0 && "$upstream" == static && -n "${LEG_PIDS[nginx]:-}" && -n "${LEG_PIDS[tokengate]:-}" ]]; then
    for run in $(seq "$BENCH_TOGETHER"); do measure_together "$run"; done
  fi
  if [[ "${BENCH_PERF_RECORD:-0}" == 1 && "$upstream" == static ]]; then
    for leg in "${LEGS[@]}"; do
      [[ -n "${LEG_BASE[$leg]:-}" && -n "${LEG_PIDS[$leg]:-}" ]] && perf_record "$leg"
    done
  fi
  if [[ "${BENCH_PERF:-0}" == 1 && "$upstream" == static ]]; then
    for leg in tokengate tokengate-rotating tokengate-redis tokengate-noguard nginx; do
      [[ -n "${LEG_BASE[$leg]:-}" && -n "${LEG_PIDS[$leg]:-}" ]] && perf_run "$leg"
    done
  fi
  for leg in "${LEGS[@]}"; do
    [[ -n "${LEG_PIDS[$leg]}" ]] && stop_pid "${LEG_PIDS[$leg]%% *}"
  done
  stop_pid "$UPSTREAM_PID"
  UPSTREAM_PIDS=""
done

# ---------------------------------------------------------------- the table
median() { sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) print "nan"; else if (NR % 2) print v[(NR + 1) / 2]; else printf "%.3f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
column_of() { # upstream leg payload column → values, one per line
  awk -F'\t' -v u="$1" -v l="$2" -v p="$3" -v c="$4" '$1 == u && $2 == l && $3 == p { print $c }' "$RESULTS"
}
# Paired by round: leg A's req/s over leg B's in the same round (run), one a line. The
# legs of a round run within a minute of each other, so a machine whose speed drifts
# between rounds (a VM's neighbours, its clock) moves both alike; the median of these
# is steadier than the ratio of the two medians, and both are printed.
round_ratios() { # upstream payload legA legB [column: 5 req/s, 10 CPU per request]
  awk -F'\t' -v u="$1" -v p="$2" -v a="$3" -v b="$4" -v c="${5:-5}" '
    $1 == u && $3 == p && $2 == a { A[$4] = $c }
    $1 == u && $3 == p && $2 == b { B[$4] = $c }
    END { for (r = 1; r <= 1000; r++) if ((r in A) && (r in B) && B[r] > 0) printf "%.3f\n", A[r] / B[r] }' "$RESULTS"
}
# The first and third quartiles of numbers one a line, as "q1–q3" (nearest rank): half
# the rounds fall between them, a spread that one wild round does not widen.
quartiles() {
  sort -g | awk '{ v[NR] = $1 } END {
    if (NR == 0) { print "-"; exit }
    lo = int((NR + 3) / 4); hi = int((3 * NR + 3) / 4); if (hi < 1) hi = 1
    printf "%.2f–%.2f", v[lo], v[hi] }'
}
spread() { # [label] < ratios one a line → "Mx[ label], middle half q1–q3 (r1 r2 …)", or "-"
  local ratios
  ratios="$(cat)"
  [[ -n "$ratios" ]] || { echo "-"; return; }
  printf '%sx%s, middle half %s (%s)' "$(printf '%s\n' "$ratios" | median | awk '{ printf "%.2f", $1 }')" "${1:-}" \
    "$(printf '%s\n' "$ratios" | quartiles)" \
    "$(printf '%s\n' "$ratios" | awk '{ printf "%s%.2f", (NR > 1 ? " " : ""), $1 }')"
}
paired() { # upstream payload legA legB [column] → the spread of round_ratios
  round_ratios "$@" | spread " by round"
}

echo
echo "tokengate forwarding benchmark — $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) CPUs, wrk -t$THREADS -c$CONNS -d$DURATION, median of $REPEATS runs"
echo "tokengate $(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo '?'); machine ${IDLE_BEFORE}% busy before the start."
echo "CPUs: wrk on $LOAD_CPUS, proxy on $PROXY_CPUS, upstream on $UPSTREAM_CPUS; niceness $NICE. Latencies in ms. 'vs base' = req/s against the same upstream's baseline."
echo "'proxy µs/req' = the proxy's user+system CPU time per request, '(sys)' the kernel's part of it; 'proxy %'/'up %' = busy share of their cores (100 = saturated);"
echo "'other %' = the most CPU (share of all $(nproc) CPUs) that processes not started here used during a run of the leg: above a few % the figures are disturbed;"
echo "'steal %' = the most time the hypervisor gave to other guests during a run of the leg (a VM's noisy neighbours)."
printf '\n%-7s %-18s %-5s %11s %8s %8s %8s %8s %8s %12s %6s %7s %5s %7s %7s %6s\n' \
  upstream leg payload 'req/s' 'vs base' p50 p90 p99 '+p50' 'proxy µs/req' '(sys)' 'proxy %' 'up %' 'other %' 'steal %' errors
printf '%s\n' "$(printf '%.0s-' $(seq 145))"
for upstream in $UPSTREAMS; do
  for payload in $PAYLOADS; do
    base_rps="$(column_of "$upstream" baseline "$payload" 5 | median)"
    base_p50="$(column_of "$upstream" baseline "$payload" 6 | median)"
    for leg in baseline tokengate tokengate-rotating tokengate-redis tokengate-noguard nginx nginx-gzip; do
      [[ -n "$(column_of "$upstream" "$leg" "$payload" 5)" ]] || continue
      rps="$(column_of "$upstream" "$leg" "$payload" 5 | median)"
      p50="$(column_of "$upstream" "$leg" "$payload" 6 | median)"
      p90="$(column_of "$upstream" "$leg" "$payload" 7 | median)"
      p99="$(column_of "$upstream" "$leg" "$payload" 8 | median)"
      errors="$(column_of "$upstream" "$leg" "$payload" 9 | awk '{ s += $1 } END { print s + 0 }')"
      if [[ "$leg" == baseline ]]; then cpu="-"; sys="-"; util="-"; vs="-"; dp50="-"; else
        cpu="$(column_of "$upstream" "$leg" "$payload" 10 | median)"
        sys="$(column_of "$upstream" "$leg" "$payload" 14 | median)"
        util="$(column_of "$upstream" "$leg" "$payload" 11 | median)"
        vs="$(awk -v r="$rps" -v b="$base_rps" 'BEGIN { printf "%+.1f%%", 100 * (r - b) / b }')"
        dp50="$(awk -v r="$p50" -v b="$base_p50" 'BEGIN { printf "%+.3f", r - b }')"
      fi
      up="$(column_of "$upstream" "$leg" "$payload" 12 | median)"
      other="$(column_of "$upstream" "$leg" "$payload" 13 | sort -g | tail -n1)"
      steal="$(column_of "$upstream" "$leg" "$payload" 15 | sort -g | tail -n1)"
      printf '%-7s %-18s %-5s %11.0f %8s %8.3f %8.3f %8.3f %8s %12s %6s %7s %5s %7s %7s %6s\n' \
        "$upstream" "$leg" "$payload" "$rps" "$vs" "$p50" "$p90" "$p99" "$dp50" "$cpu" "$sys" "$util" "$up" "$other" "$steal" "$errors"
    done
  done
done
echo
if awk -F'\t' -v o="$MAX_OTHER" -v s="$MAX_STEAL" '$13 > o || $15 > s { busy = 1 } END { exit !busy }' "$RESULTS"; then
  echo "WARNING: some runs were disturbed (other processes above $MAX_OTHER% or steal above $MAX_STEAL%, columns 'other %'/'steal %'): rerun on a quiet machine."
fi
if awk -F'\t' '$9 > 0 { bad = 1 } END { exit !bad }' "$RESULTS"; then
  echo "WARNING: some runs had non-2xx answers or socket errors (column 'errors'): those figures are not valid."
fi
for upstream in $UPSTREAMS; do
  for payload in $PAYLOADS; do
    ngx=nginx
    [[ "$payload" == *-gz ]] && ngx=nginx-gzip
    t="$(column_of "$upstream" tokengate "$payload" 5 | median)"
    n="$(column_of "$upstream" "$ngx" "$payload" 5 | median)"
    tc="$(column_of "$upstream" tokengate "$payload" 10 | median)"
    nc="$(column_of "$upstream" "$ngx" "$payload" 10 | median)"
    [[ "$t" != nan && "$n" != nan ]] || continue
    pr="$(paired "$upstream" "$payload" tokengate "$ngx")"
    pc="$(paired "$upstream" "$payload" tokengate "$ngx" 10)"
    awk -v u="$upstream" -v p="$payload" -v g="$ngx" -v t="$t" -v n="$n" -v tc="$tc" -v nc="$nc" -v pr="$pr" -v pc="$pc" 'BEGIN {
      printf "%s/%s: tokengate %.0f req/s vs %s %.0f req/s: tokengate %s (%.2fx; %s); CPU per request %.1f µs vs %.1f µs (%.2fx; %s)\n",
        u, p, t, g, n, (t >= n ? "faster" : "slower"), t / n, pr, tc, nc, (nc > 0 ? tc / nc : 0), pc }'
  done
done
for upstream in $UPSTREAMS; do
  for payload in $PAYLOADS; do
    t="$(column_of "$upstream" tokengate "$payload" 5 | median)"
    r="$(column_of "$upstream" tokengate-rotating "$payload" 5 | median)"
    [[ "$t" != nan && "$r" != nan ]] || continue
    pr="$(paired "$upstream" "$payload" tokengate-rotating tokengate)"
    awk -v u="$upstream" -v p="$payload" -v t="$t" -v r="$r" -v n="${BENCH_SESSIONS:-100000}" -v pr="$pr" 'BEGIN {
      printf "%s/%s: tokengate over %d sessions %.0f req/s vs one session %.0f req/s (%.2fx; %s)\n", u, p, n, r, t, r / t, pr }'
  done
done
for upstream in $UPSTREAMS; do
  for payload in $PAYLOADS; do
    t="$(column_of "$upstream" tokengate "$payload" 5 | median)"
    r="$(column_of "$upstream" tokengate-redis "$payload" 5 | median)"
    [[ "$t" != nan && "$r" != nan ]] || continue
    pr="$(paired "$upstream" "$payload" tokengate-redis tokengate)"
    awk -v u="$upstream" -v p="$payload" -v t="$t" -v r="$r" -v pr="$pr" 'BEGIN {
      printf "%s/%s: tokengate on Redis (one of three replicas) %.0f req/s vs the memory store %.0f req/s (%.2fx; %s; target 0.9x)\n", u, p, r, t, r / t, pr }'
  done
done
if [[ -s "$WORK/together.tsv" ]]; then
  # Per run: tokengate's figure over nginx's, measured over the same seconds.
  together_ratios() { # column: 3 req/s, 5 CPU per request, 6 its kernel part, "user" the rest
    awk -F'\t' -v c="$1" 'function v() { return c == "user" ? $5 - $6 : $c }
      $2 == "tokengate" { T[$1] = v() } $2 == "nginx" { N[$1] = v() }
      END { for (r = 1; r <= 1000; r++) if ((r in T) && (r in N) && N[r] > 0) printf "%.3f\n", T[r] / N[r] }' "$WORK/together.tsv"
  }
  echo "static/json, nginx and tokengate at once ($BENCH_TOGETHER runs, both proxies on CPU $PROXY_CPUS over the same seconds):" \
    "tokengate's CPU per request over nginx's $(together_ratios 5 | spread);" \
    "user space $(together_ratios user | spread); kernel $(together_ratios 6 | spread);" \
    "req/s $(together_ratios 3 | spread) (the scheduler's split of the core)"
fi
for line in "${PERF_LINES[@]}"; do echo "$line"; done
