#!/usr/bin/env bash
# The main job end to end on a local emulator: creates a demo database and change stream,
# builds the example plugins, runs screamer with the plugin chain of examples/pipeline.toml
# while rows are written, and prints its NDJSON on stdout (logs on stderr).
# Usage: scripts/demo.sh [SECONDS]   (default 10)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
require_toolchain
require_emulator
build_plugins
cargo build --quiet -p screamer --bin screamer
cargo build --quiet -p screamer-tests --bin screamer-demo
exec target/debug/screamer-demo "${1:-10}"
