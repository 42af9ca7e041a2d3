#!/usr/bin/env bash
# The plugin runtime benchmark (BENCHMARKS.md): release build, real plugin components, one
# core. Environment: BENCH_RECORDS, BENCH_REPEATS.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
require_toolchain
build_plugins
cargo build --quiet --release -p screamer-tests --bin screamer-plugin-bench
exec target/release/screamer-plugin-bench
