#!/usr/bin/env bash
# The snapshot benchmark (BENCHMARKS.md, "Snapshot"): release builds, an emulator table of
# BENCH_ROWS rows (default 100,000) read by `screamer --snapshot only` beside bare reads and
# Google's Python client (installed from PyPI into target/bench-venv). BENCH_REPEATS rounds.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
require_toolchain
require_emulator
venv=target/bench-venv
if ! "$venv/bin/python" -c "import google.cloud.spanner" 2>/dev/null; then
  echo "installing google-cloud-spanner into $venv" >&2
  python3 -m venv "$venv" >&2
  "$venv/bin/pip" install --quiet "google-cloud-spanner==3.71.0" >&2
fi
cargo build --quiet --release -p screamer --bin screamer
cargo build --quiet --release -p screamer-tests --bin screamer-snapshot-bench
BENCH_PYTHON="$venv/bin/python" SCREAMER_BIN=target/release/screamer \
  exec target/release/screamer-snapshot-bench
