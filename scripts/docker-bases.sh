# shellcheck shell=bash
# Sourced by scripts/compose-smoke.sh and scripts/replicas-e2e.sh: a Docker engine, and the
# base images the Dockerfiles and docker-compose.yml need, real ones first.
#
#   source scripts/docker-bases.sh
#
# 1. The engine: scripts/docker-local-images.sh installs Docker where it is missing and starts
#    dockerd where none answers (ENGINE_ONLY=1: no stand-in built there). When this call
#    started it, its PID is written to $TOKENGATE_DOCKERD_PIDFILE (if set), so that
#    scripts/test.sh stops it at the end, by that PID.
# 2. Each base image: RUST_IMAGE (rust:1-bookworm, the build stage), REDIS_IMAGE (redis:7,
#    the replicas profile), DEBIAN_IMAGE (debian:bookworm-slim, the load balancer). The
#    runtime images need no base: tokengate and commerce-mock run on `scratch`.
#    - set by the caller: used as it is;
#    - present and real (not a stand-in): used;
#    - else pulled (bounded by DOCKER_PULL_TIMEOUT, 120 s);
#    - else (no registry answers, as on a machine without egress) a stand-in built from
#      Debian's packages under standin.tokengate.invalid/<name>, a name under the reserved
#      .invalid domain that no registry can serve, so it never shadows the real image.
#    A public name that points at a stand-in (older versions of this script made those) is
#    untagged first, so the real image is pulled or the private stand-in used instead.
# Exports RUST_IMAGE, REDIS_IMAGE and DEBIAN_IMAGE for `docker compose build/up`.

docker_bases_main() {
  local root; root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
  local had_engine=0
  docker info >/dev/null 2>&1 && had_engine=1
  ENGINE_ONLY=1 bash "$root/scripts/docker-local-images.sh" || return 1
  if [ "$had_engine" = 0 ] && [ -n "${TOKENGATE_DOCKERD_PIDFILE:-}" ] && [ -s /var/run/docker.pid ]; then
    cp /var/run/docker.pid "$TOKENGATE_DOCKERD_PIDFILE"
  fi
  RUST_IMAGE=$(docker_base "${RUST_IMAGE:-}" rust:1-bookworm) || return 1
  REDIS_IMAGE=$(docker_base "${REDIS_IMAGE:-}" redis:7) || return 1
  DEBIAN_IMAGE=$(docker_base "${DEBIAN_IMAGE:-}" debian:bookworm-slim) || return 1
  export RUST_IMAGE REDIS_IMAGE DEBIAN_IMAGE
  echo "base images: RUST_IMAGE=$RUST_IMAGE REDIS_IMAGE=$REDIS_IMAGE DEBIAN_IMAGE=$DEBIAN_IMAGE"
}

# docker_base CHOSEN DEFAULT: prints the image to use (progress goes to stderr).
docker_base() {
  local chosen=$1 ref=$2 standin="standin.tokengate.invalid/$2"
  local root; root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
  if [ -n "$chosen" ]; then echo "$chosen"; return 0; fi
  if docker image inspect "$ref" >/dev/null 2>&1; then
    if [ -z "$(docker image inspect -f '{{index .Config.Labels "org.local.standin"}}' "$ref")" ]; then
      echo "$ref"; return 0
    fi
    echo "docker-bases: $ref is a stand-in left by an older script; untagging it" >&2
    docker rmi "$ref" >/dev/null
  fi
  if timeout "${DOCKER_PULL_TIMEOUT:-120}" docker pull -q "$ref" >/dev/null 2>&1; then
    echo "docker-bases: pulled $ref" >&2
    echo "$ref"; return 0
  fi
  echo "docker-bases: no registry answered for $ref; using the local stand-in $standin" >&2
  bash "$root/scripts/docker-local-images.sh" "$standin" >&2 || return 1
  echo "$standin"
}

docker_bases_main
