#!/usr/bin/env bash
# bench/redis-cache.sh — a quick figure, not a benchmark of record: wrk -t2 -c64 -d10s
# (after a 3 s warm-up) through one tokengate on the Redis store with one guest session,
# `store.local_cache` on, then off. Needs redis-server, redis-cli, wrk, curl and release
# builds (TG and MOCK override the binaries). 127.0.0.1 only; every process it starts is
# stopped by PID; every wait is bounded.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
TG=${TG:-$TARGET/release/tokengate}; MOCK=${MOCK:-$TARGET/release/commerce-mock}
W=$(mktemp -d); PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$W"; }
trap cleanup EXIT
port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
wait_line() { for _ in $(seq 1 200); do l=$(grep -oE 'http://127\.0\.0\.1:[0-9]+' "$1" | head -1 || true); [[ -n "$l" ]] && { echo "$l"; return; }; sleep 0.05; done; echo "no address in $1" >&2; exit 1; }
RP=$(port)
redis-server --port "$RP" --bind 127.0.0.1 --save '' --appendonly no --dir "$W" >"$W/redis.log" 2>&1 & PIDS+=($!)
for _ in $(seq 1 100); do redis-cli -p "$RP" ping >/dev/null 2>&1 && break; sleep 0.05; done
RUST_LOG=warn "$MOCK" --listen 127.0.0.1:0 --client-id demo-api-key --client-secret demo-secret >"$W/mock.out" 2>"$W/mock.err" </dev/null & PIDS+=($!)
UP=$(wait_line "$W/mock.out")
sed "s#@UPSTREAM_URL@#$UP#" "$ROOT/bench/tokengate.toml.template" > "$W/tg.toml"
for cache in true false; do
  env -u RUST_LOG TOKENGATE_CLIENT_SECRET=demo-secret TOKENGATE_STORE_KIND=redis TOKENGATE_REDIS_URL="redis://127.0.0.1:$RP" \
    TOKENGATE_STORE_ENCRYPTION_KEY_ENV=RKEY RKEY=AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8= TOKENGATE_STORE_LOCAL_CACHE=$cache \
    "$TG" --config "$W/tg.toml" >"$W/tg-$cache.out" 2>"$W/tg-$cache.err" </dev/null & pid=$!; PIDS+=($pid)
  addr=$(wait_line "$W/tg-$cache.out")
  curl -fsS -o /dev/null -c "$W/jar-$cache" -X POST -H 'X-CSRF: 1' "$addr/session/guest"
  cookie=$(awk '$6 == "tg" { print $7 }' "$W/jar-$cache")
  curl -fsS -o /dev/null -H "Cookie: tg=$cookie" "$addr/api/shoppers/me?format=json"
  timeout 30 wrk -t2 -c64 -d3s -H "Cookie: tg=$cookie" "$addr/api/shoppers/me?format=json" >/dev/null
  echo "local_cache=$cache:"; timeout 60 wrk -t2 -c64 -d10s --latency -H "Cookie: tg=$cookie" "$addr/api/shoppers/me?format=json" | grep -E "Requests/sec|Non-2xx|50%|99%|requests in"
  kill "$pid"; wait "$pid" 2>/dev/null || true
done
