#!/usr/bin/env bash
# Real-browser end-to-end test of the demo storefront (e2e/demo.test.mjs), on a fresh Debian
# bookworm machine as root:
#   1. packages: Debian's chromium (/usr/bin/chromium) if missing; Node.js >= 20 must be there
#   2. npm ci in e2e/ (playwright-core only: it never downloads a browser)
#   3. cargo build of tokengate and commerce-mock (debug profile by default, see below)
#   4. tokengate demo on 127.0.0.1:0; its stdout line gives the proxy's and the mock's address
#   5. the browser test against them; then the demo is stopped by its PID (SIGTERM; it stops
#      the mock it started)
#   7. the CORS browser test (e2e/cors.test.mjs): it starts its own tokengate (cors = true,
#      HTTPS with a certificate it makes with openssl), commerce-mock and storefront page server,
#      each on port 0, and stops them by PID. The script fails when either test fails.
# E2E_TESTS="demo cors" (the default) chooses the tests: E2E_TESTS=cors runs only the CORS one.
# E2E_LISTEN=127.0.0.1:PORT makes the demo listen on a fixed port instead of 127.0.0.1:0.
# E2E_PROFILE=release builds and runs the release binaries instead. The debug profile is the
# default because scripts/test.sh (cargo nextest) already compiles every dependency in that
# profile, so in CI this build reuses it and costs seconds, where a release build would compile
# the whole tree again with optimizations (minutes on 2 cores) for a test that makes a dozen calls.
# Logs and screenshots land in e2e/artifacts/ (git-ignored). Every step is bounded in time.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
T0=$SECONDS
stage() { printf '\n== [%4ss] %s\n' "$((SECONDS - T0))" "$*"; }
die() { echo "e2e.sh: $*" >&2; exit 1; }

PROFILE=${E2E_PROFILE:-debug}
case "$PROFILE" in
  debug) profile_flag=() ;;
  release) profile_flag=(--release) ;;
  *) die "E2E_PROFILE must be debug or release, not $PROFILE" ;;
esac
BIN_DIR=${CARGO_TARGET_DIR:-$ROOT/target}/$PROFILE
ARTIFACTS=$ROOT/e2e/artifacts
CHROMIUM=/usr/bin/chromium
LISTEN=${E2E_LISTEN:-127.0.0.1:0} # a free port, picked by the kernel
TESTS=" ${E2E_TESTS:-demo cors} "
for test in $TESTS; do
  case "$test" in demo|cors) ;; *) die "E2E_TESTS lists demo and cors, not $test" ;; esac
done
wants() { [[ $TESTS == *" $1 "* ]]; }
[[ $LISTEN =~ ^127\.0\.0\.1:[0-9]+$ ]] || die "E2E_LISTEN must be 127.0.0.1:PORT, not $LISTEN"

stage "1. packages"
if [ ! -x "$CHROMIUM" ]; then
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    die "$CHROMIUM is missing: install Debian's chromium package (as root: apt-get install chromium)"
  fi
  export DEBIAN_FRONTEND=noninteractive
  timeout 600 apt-get update -qq
  timeout 900 apt-get install -y -qq --no-install-recommends chromium >/dev/null
fi
"$CHROMIUM" --version 2>/dev/null | grep -i chromium || die "$CHROMIUM does not run"
if wants cors && ! command -v openssl >/dev/null; then
  [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null || die "openssl is needed by the CORS test (apt-get install openssl)"
  export DEBIAN_FRONTEND=noninteractive
  timeout 600 apt-get update -qq
  timeout 900 apt-get install -y -qq --no-install-recommends openssl >/dev/null
fi
command -v node >/dev/null || die "node is needed (Node.js >= 20; Debian bookworm's own nodejs is 18)"
command -v npm >/dev/null || die "npm is needed"
node -e 'process.exit(Number(process.versions.node.split(".")[0]) >= 20 ? 0 : 1)' \
  || die "Node.js >= 20 is needed, found $(node --version)"
echo "node $(node --version), npm $(npm --version 2>/dev/null)"

stage "2. npm ci (e2e/)"
(cd e2e && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 timeout 300 npm ci --no-audit --no-fund --loglevel=error)

stage "3. cargo build ($PROFILE): tokengate, commerce-mock"
timeout 3600 cargo build --locked "${profile_flag[@]}" --bin tokengate --bin commerce-mock
for bin in tokengate commerce-mock; do
  [ -x "$BIN_DIR/$bin" ] || die "$BIN_DIR/$bin was not built"
done

rm -rf "$ARTIFACTS" && mkdir -p "$ARTIFACTS"
rc=0
if wants demo; then
stage "4. start tokengate demo"
DEMO_OUT=$ARTIFACTS/demo.stdout
DEMO_LOG=$ARTIFACTS/demo.log # tokengate's and commerce-mock's logs (stderr)
demo_pid=
mock_pids=

# Running and not a zombie.
alive() { [ -r "/proc/$1/stat" ] && [ "$(sed 's/^.*) \(.\).*$/\1/' "/proc/$1/stat" 2>/dev/null)" != Z ]; }

stop_demo() {
  [ -n "$demo_pid" ] || return 0
  local pid=$demo_pid deadline status=0
  demo_pid=
  if alive "$pid"; then
    kill -TERM "$pid" 2>/dev/null || true
    deadline=$((SECONDS + 15))
    while alive "$pid" && [ $SECONDS -lt $deadline ]; do sleep 0.1; done
    if alive "$pid"; then
      echo "e2e.sh: tokengate demo (pid $pid) ignored SIGTERM for 15s; sending SIGKILL" >&2
      kill -KILL "$pid" 2>/dev/null || true
      status=1
    fi
  fi
  wait "$pid" 2>/dev/null || { echo "e2e.sh: tokengate demo exited with status $?" >&2; status=1; }
  # The demo stops the mock it started; if one is still there, end it by its PID and fail.
  local mock
  for mock in $mock_pids; do
    deadline=$((SECONDS + 5))
    while alive "$mock" && [ $SECONDS -lt $deadline ]; do sleep 0.1; done
    if alive "$mock" && [ "$(cat "/proc/$mock/comm" 2>/dev/null)" = commerce-mock ]; then
      echo "e2e.sh: commerce-mock (pid $mock) outlived the demo; killing it" >&2
      kill -KILL "$mock" 2>/dev/null || true
      status=1
    fi
  done
  mock_pids=
  return $status
}
trap 'stop_demo || true' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

NO_COLOR=1 "$BIN_DIR/tokengate" demo --listen "$LISTEN" </dev/null >"$DEMO_OUT" 2>"$DEMO_LOG" &
demo_pid=$!

# Wait for the announcement: "tokengate demo: open http://ADDR/ (commerce-mock at http://MOCK; Ctrl-C stops both)"
line_re='^tokengate demo: open http://(127\.0\.0\.1:[0-9]+)/ \(commerce-mock at (http://127\.0\.0\.1:[0-9]+); Ctrl-C stops both\)$'
deadline=$((SECONDS + 30))
line=
while :; do
  line=$(grep -m1 '^tokengate demo: open ' "$DEMO_OUT" 2>/dev/null || true)
  [ -n "$line" ] && break
  if ! alive "$demo_pid"; then
    tail -n 20 "$DEMO_LOG" >&2 || true
    die "tokengate demo exited before announcing its address"
  fi
  if [ $SECONDS -ge $deadline ]; then
    tail -n 20 "$DEMO_LOG" >&2 || true
    die "tokengate demo did not announce its address within 30s"
  fi
  sleep 0.1
done
[[ $line =~ $line_re ]] || die "unexpected demo output: $line"
TOKENGATE_URL=http://${BASH_REMATCH[1]}
MOCK_URL=${BASH_REMATCH[2]}
mock_pids=$(cat /proc/"$demo_pid"/task/*/children 2>/dev/null | xargs || true)
echo "tokengate demo pid $demo_pid at $TOKENGATE_URL; commerce-mock pid ${mock_pids:-?} at $MOCK_URL"

stage "5. browser test (headless Chromium)"
set +e
(cd e2e && TOKENGATE_URL=$TOKENGATE_URL MOCK_URL=$MOCK_URL CHROMIUM=$CHROMIUM E2E_ARTIFACTS=$ARTIFACTS \
  timeout -k 10 180 node demo.test.mjs)
rc=$?
set -e
[ $rc -eq 124 ] && echo "e2e.sh: the browser test did not finish within 180s" >&2

stage "6. stop the demo"
if stop_demo; then
  echo "demo and commerce-mock stopped"
else
  [ $rc -ne 0 ] || rc=1
fi
if [ $rc -ne 0 ]; then
  echo "--- last lines of $DEMO_LOG" >&2
  tail -n 30 "$DEMO_LOG" >&2 || true
fi
fi # wants demo

if wants cors; then
  stage "7. CORS browser test: a storefront on another origin (headless Chromium)"
  set +e
  (cd e2e && TOKENGATE_BIN=$BIN_DIR/tokengate MOCK_BIN=$BIN_DIR/commerce-mock CHROMIUM=$CHROMIUM \
    E2E_ARTIFACTS=$ARTIFACTS timeout -k 10 150 node cors.test.mjs)
  cors_rc=$?
  set -e
  [ $cors_rc -eq 124 ] && echo "e2e.sh: the CORS browser test did not finish within 150s" >&2
  if [ $cors_rc -ne 0 ]; then
    echo "--- last lines of $ARTIFACTS/cors-tokengate.log" >&2
    tail -n 30 "$ARTIFACTS/cors-tokengate.log" >&2 || true
    [ $rc -ne 0 ] || rc=$cors_rc
  fi
fi
stage "e2e $([ $rc -eq 0 ] && echo passed || echo "FAILED (exit $rc)")"
exit $rc
