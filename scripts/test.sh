#!/usr/bin/env bash
# The whole test suite: unit tests, and end-to-end tests against real Spanner emulators
# (each test starts its own on free ports). Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
require_emulator
# The end-to-end tests spawn the screamer binary next to them in target/debug.
cargo build --quiet -p screamer --bin screamer
cargo test --workspace "$@"
