#!/usr/bin/env bash
# Installs what the tests need on a fresh Debian machine and runs every stage:
#   1. packages (apt: curl, ca-certificates, redis-server for the Redis tests, which start
#      their own servers; the Docker engine comes in stage 7), and `npm ci` in tests/oidc: the
#      OpenID Connect tests start a real provider, oidc-provider from npm (Node.js >= 20 needed)
#   2. cargo fmt --check and cargo clippy --all-targets -D warnings
#   3. unit and integration tests (cargo nextest: real tokengate + commerce-mock processes)
#   4. a real browser (Debian's headless Chromium) drives the demo storefront end to end
#   5. Kubernetes manifests (scripts/k8s-check.sh): every kustomize overlay rendered, validated
#      against the Kubernetes schemas and checkov, its tokengate config through check-config
#   6. cargo deny: licenses, bans and sources of every dependency
#   7. docker compose smoke test: build the image, start the stack, call it, tear it down
#   8. several replicas: the compose "replicas" profile (Redis, two replicas, a load balancer)
#      and a browser journey through it across an access-token refresh (reuses stage 7's image)
# SKIP_COMPOSE=1 skips stages 7 and 8, SKIP_BROWSER=1 stage 4 and SKIP_K8S=1 stage 5 (for a
# quick local loop).
set -euo pipefail
cd "$(dirname "$0")/.."
T0=$SECONDS
stage() { printf '\n== [%4ss] %s\n' "$((SECONDS - T0))" "$*"; }

# A dockerd that stages 7 and 8 start (none answered before) is stopped at the end, by the
# PID scripts/docker-bases.sh records; one that was already running is left alone.
TOKENGATE_DOCKERD_PIDFILE=$(mktemp)
export TOKENGATE_DOCKERD_PIDFILE
stop_started_dockerd() {
  local pid; pid=$(cat "$TOKENGATE_DOCKERD_PIDFILE" 2>/dev/null || true)
  rm -f "$TOKENGATE_DOCKERD_PIDFILE"
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 0
  echo "stopping the dockerd these tests started (pid $pid)"
  kill "$pid"
  for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.5; done
  echo "dockerd (pid $pid) still running after 30 s" >&2
}
trap stop_started_dockerd EXIT

stage "1. packages"
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  need=()
  for p in curl ca-certificates redis-server; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || need+=("$p"); done
  if [ ${#need[@]} -gt 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
    # Where the package starts the system's redis (no policy-rc.d), stop it: the tests
    # start their own servers on free ports.
    if [[ " ${need[*]} " == *" redis-server "* ]] && service redis-server status >/dev/null 2>&1; then
      service redis-server stop >/dev/null
    fi
  fi
fi
if ! cargo nextest --version >/dev/null 2>&1; then
  cargo install --locked cargo-nextest
fi
command -v node >/dev/null && command -v npm >/dev/null \
  || { echo "test.sh: node and npm are needed (Node.js >= 20) for the OpenID provider in tests/oidc" >&2; exit 1; }
timeout 300 npm ci --prefix tests/oidc --no-audit --no-fund --loglevel=error

stage "2. fmt and clippy"
cargo fmt --check
cargo clippy --locked --all-targets -- -D warnings

stage "3. tests (nextest)"
cargo nextest run --locked --profile ci

if [ "${SKIP_BROWSER:-0}" != 1 ]; then
  stage "4. browser end-to-end test"
  bash scripts/e2e.sh
fi

if [ "${SKIP_K8S:-0}" != 1 ]; then
  stage "5. Kubernetes manifests"
  # The debug tokengate stage 3 built: its check-config is the release one's.
  K8S_PROFILE=debug bash scripts/k8s-check.sh
fi

stage "6. cargo deny"
bash scripts/deny.sh

if [ "${SKIP_COMPOSE:-0}" != 1 ]; then
  stage "7. docker compose smoke test"
  bash scripts/compose-smoke.sh

  stage "8. several replicas behind a load balancer (browser journey)"
  bash scripts/replicas-e2e.sh
fi
stage "all green"
