#!/usr/bin/env bash
# The main job end to end on a local emulator: creates a demo database and change stream,
# runs screamer while rows are written, and prints its NDJSON on stdout (logs on stderr).
# Usage: scripts/demo.sh [SECONDS]   (default 10)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
require_emulator
cargo build --quiet -p screamer --bin screamer
cargo build --quiet -p screamer-tests --bin screamer-demo
exec target/debug/screamer-demo "${1:-10}"
