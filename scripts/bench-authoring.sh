#!/usr/bin/env bash
# Plugin authoring, timed (BENCHMARKS.md, "Plugin authoring"): for each language, from
# `screamer plugin new` to a passing `screamer plugin test` in a fresh directory, with empty
# build, plugin and tool caches, so that `plugin build` installs the pinned guest toolchain
# itself (componentize-py, jco, tsc) and Rust builds the SDK `plugin new` vendored; C's
# toolchain is Debian's (installed first when missing, as the tests do). Then the
# component's size and its first (compile) and cached load times as `plugin check` reports
# them. Package downloads come from this machine's registries (crates.io, PyPI, npm).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
source scripts/lib.sh
require_toolchain
require_c_toolchain
cargo build --quiet --release -p screamer --bin screamer
bin=$root/target/release/screamer
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export SCREAMER_PLUGIN_CACHE="$work/plugin-cache" CARGO_TARGET_DIR="$work/cargo-target" \
  SCREAMER_TOOL_CACHE="$work/tool-cache"
# The projects live outside this repository: Rust builds them with the pinned toolchain too
# (the vendored SDK asks for its rust-version).
RUSTUP_TOOLCHAIN=$(sed -n 's/^channel = "\(.*\)"$/\1/p' rust-toolchain.toml)
export RUSTUP_TOOLCHAIN

now() { date +%s.%N; }
seconds() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }
load_ms() { "$bin" plugin check "$1" | sed -n 's/^ *load: *\([0-9.]*\) ms$/\1/p'; }

printf '%-11s %9s %9s %9s %10s %14s %15s\n' \
  language new_s test_s total_s size_KiB first_load_ms cached_load_ms
for lang in rust python javascript typescript c; do
  name="hello-$lang"
  cd "$work"
  start=$(now)
  "$bin" plugin new "$name" --lang "$lang" >/dev/null
  cd "$name"
  ready=$(now)
  "$bin" plugin test >/dev/null 2>"$work/$lang.log" || { cat "$work/$lang.log" >&2; exit 1; }
  done=$(now)
  size=$(( ($(stat -c %s "$name.wasm") + 1023) / 1024 ))
  rm -rf "$SCREAMER_PLUGIN_CACHE"
  first=$(load_ms "$name.wasm")
  cached=$(load_ms "$name.wasm")
  printf '%-11s %9s %9s %9s %10s %14s %15s\n' "$lang" "$(seconds "$start" "$ready")" \
    "$(seconds "$ready" "$done")" "$(seconds "$start" "$done")" "$size" "$first" "$cached"
done
