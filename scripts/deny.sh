#!/usr/bin/env bash
# Supply-chain checks with cargo-deny (configuration: deny.toml): licenses, bans and sources.
#
# The advisory database cannot be fetched from this workplace, so `advisories` is not run,
# and cargo-deny runs with --offline so that no check tries to fetch anything: `cargo fetch`
# first brings the crates' manifests from crates.io (the one registry we use).
# Installs its pinned cargo-deny when missing (about 2.5 minutes of compiling on 2 cores).
# Extra arguments go to `cargo deny check` (e.g. `-s` for statistics).
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_DENY_VERSION=0.20.2 # builds with Rust >= 1.88

if [ "$(cargo deny --version 2>/dev/null)" != "cargo-deny $CARGO_DENY_VERSION" ]; then
  cargo install --locked cargo-deny --version "$CARGO_DENY_VERSION"
fi
cargo fetch --locked
cargo deny --offline --locked --color never check "$@" licenses bans sources
