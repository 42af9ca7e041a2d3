#!/usr/bin/env bash
# The replica end to end: a local emulator and a throwaway PostgreSQL, screamer running
# examples/replica.toml (filter, e-mails hashed) into it while rows are written, then the
# replica's table, compared with Spanner.
# Usage: scripts/demo-replica.sh [SECONDS]   (default 10)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
require_toolchain
require_emulator
require_postgres
build_plugins
cargo build --quiet -p screamer --bin screamer
cargo build --quiet -p screamer-tests --bin screamer-demo
exec target/debug/screamer-demo --replica "${1:-10}"
