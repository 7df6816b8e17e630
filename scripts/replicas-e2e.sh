#!/usr/bin/env bash
# Real-browser journey through several replicas: starts `docker compose --profile replicas`
# (Redis, two tokengate replicas on the Redis store, commerce-mock with 20 s access tokens,
# haproxy in front, all host networking on 127.0.0.1), runs e2e/replicas.test.mjs in headless
# Chromium against the load balancer, tears the stack down, and exits with the test's status.
#   1. packages: Debian's chromium if missing, Node.js >= 20, npm ci in e2e/ if not done yet
#   2. a Docker engine and the base images, real ones first (scripts/docker-bases.sh)
#   3. images: tokengate:local and tokengate-mock:local (the compose smoke stage builds them just before this one in
#      scripts/test.sh; here `compose build tokengate` is then a cache hit of a few seconds,
#      and it makes sure the tag holds this checkout, not another one's) and the haproxy image
#   4. up the replicas profile's services only (not the default pair), wait for the load
#      balancer to report both replicas healthy
#   5. the browser test; then `down` (also on failure or interrupt)
# Ports: LB_PORT (18090), REPLICA_A_PORT/REPLICA_B_PORT (18091/18092), their admin ports
# REPLICA_A_ADMIN_PORT/REPLICA_B_ADMIN_PORT (19091/19092), REPLICAS_MOCK_PORT (18089),
# REDIS_PORT (16379); REPLICAS_ACCESS_TTL (20) is the mock's access-token lifetime in seconds.
# Every wait is bounded. Screenshots and the stack's log land in e2e/artifacts/replicas/ (git-ignored).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
T0=$SECONDS
stage() { printf '\n== [%4ss] %s\n' "$((SECONDS - T0))" "$*"; }
die() { echo "replicas-e2e.sh: $*" >&2; exit 1; }

export LB_PORT=${LB_PORT:-18090} REPLICAS_MOCK_PORT=${REPLICAS_MOCK_PORT:-18089}
export REPLICA_A_PORT=${REPLICA_A_PORT:-18091} REPLICA_B_PORT=${REPLICA_B_PORT:-18092}
export REPLICA_A_ADMIN_PORT=${REPLICA_A_ADMIN_PORT:-19091} REPLICA_B_ADMIN_PORT=${REPLICA_B_ADMIN_PORT:-19092}
export REDIS_PORT=${REDIS_PORT:-16379} REPLICAS_ACCESS_TTL=${REPLICAS_ACCESS_TTL:-20}
SERVICES=(replicas-redis replicas-mock tokengate-a tokengate-b replicas-lb)
ARTIFACTS=$ROOT/e2e/artifacts/replicas
CHROMIUM=/usr/bin/chromium

stage "1. packages"
if [ ! -x "$CHROMIUM" ]; then
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    die "$CHROMIUM is missing: install Debian's chromium package (as root: apt-get install chromium)"
  fi
  export DEBIAN_FRONTEND=noninteractive
  timeout 600 apt-get update -qq
  timeout 900 apt-get install -y -qq --no-install-recommends chromium >/dev/null
fi
command -v node >/dev/null || die "node is needed (Node.js >= 20)"
node -e 'process.exit(Number(process.versions.node.split(".")[0]) >= 20 ? 0 : 1)' \
  || die "Node.js >= 20 is needed, found $(node --version)"
if [ ! -f e2e/node_modules/playwright-core/package.json ]; then
  (cd e2e && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 timeout 300 npm ci --no-audit --no-fund --loglevel=error)
fi

stage "2. docker engine and base images"
# shellcheck source=scripts/docker-bases.sh
source scripts/docker-bases.sh
if docker compose version >/dev/null 2>&1; then DC=(docker compose); else DC=(docker-compose); fi
DC+=(--profile replicas)
rm -rf "$ARTIFACTS" && mkdir -p "$ARTIFACTS"

down() {
  "${DC[@]}" logs --no-color "${SERVICES[@]}" >"$ARTIFACTS/replicas-stack.log" 2>&1 || true
  timeout 60 "${DC[@]}" down -v --remove-orphans -t 5 >/dev/null 2>&1 || true
}
trap down EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

stage "3. images: tokengate:local and tokengate-mock:local (cached) and the load balancer"
# One at a time (see compose-smoke.sh): the second target finds the shared stage cached.
for service in commerce-mock tokengate replicas-lb; do timeout 1800 "${DC[@]}" build "$service"; done

stage "4. start the replicas stack"
timeout 120 "${DC[@]}" up -d "${SERVICES[@]}"
# The load balancer answers 200 on /__lb/health once haproxy sees both replicas ready
# (tokengate's /readyz: serving, and Redis answers).
deadline=$((SECONDS + 90))
until curl -fsS -m 2 "http://127.0.0.1:$LB_PORT/__lb/health" >/dev/null 2>&1; do
  if [ $SECONDS -ge $deadline ]; then
    "${DC[@]}" ps; "${DC[@]}" logs --tail 30 "${SERVICES[@]}"
    die "the load balancer did not report both replicas healthy within 90s"
  fi
  sleep 0.5
done
"${DC[@]}" ps
for port in "$REPLICA_A_ADMIN_PORT" "$REPLICA_B_ADMIN_PORT"; do
  curl -fsS -m 2 "http://127.0.0.1:$port/readyz" >/dev/null || die "the replica with admin port $port is not ready"
done

stage "5. browser test (headless Chromium) through the load balancer"
set +e
(cd e2e && TOKENGATE_URL=http://127.0.0.1:$LB_PORT MOCK_URL=http://127.0.0.1:$REPLICAS_MOCK_PORT \
  CHROMIUM=$CHROMIUM E2E_ARTIFACTS=$ARTIFACTS timeout -k 10 180 node replicas.test.mjs)
rc=$?
set -e
[ $rc -eq 124 ] && echo "replicas-e2e.sh: the browser test did not finish within 180s" >&2
if [ $rc -ne 0 ]; then
  echo "--- last lines of the stack's logs" >&2
  "${DC[@]}" logs --no-color --tail 20 "${SERVICES[@]}" >&2 || true
fi

stage "6. stop the stack"
down
trap - EXIT
stage "replicas e2e $([ $rc -eq 0 ] && echo passed || echo "FAILED (exit $rc)")"
exit $rc
