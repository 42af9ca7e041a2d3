#!/usr/bin/env bash
# Plugin authoring, timed (BENCHMARKS.md, "Plugin authoring"): for each language, from
# `screamer plugin new` to a passing `screamer plugin test` in a fresh directory, with the
# toolchain set up as the project's README says (rustup target, a venv with
# componentize-py, `npm install`) and empty build and plugin caches; then the component's
# size and its first (compile) and cached load times as `plugin check` reports them.
# Package downloads come from this machine's registries (crates.io, PyPI, npm).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
cargo build --quiet --release -p screamer --bin screamer
bin=$root/target/release/screamer
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export SCREAMER_PLUGIN_CACHE="$work/plugin-cache" CARGO_TARGET_DIR="$work/cargo-target"

now() { date +%s.%N; }
seconds() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }
load_ms() { "$bin" plugin check "$1" | sed -n 's/^ *load: *\([0-9.]*\) ms$/\1/p'; }

printf '%-11s %9s %9s %9s %10s %14s %15s\n' \
  language setup_s test_s total_s size_KiB first_load_ms cached_load_ms
for lang in rust python javascript; do
  name="hello-$lang"
  cd "$work"
  start=$(now)
  case $lang in
    rust)
      "$bin" plugin new "$name" --lang rust --sdk "$root/plugin-sdk" >/dev/null
      cd "$name"
      rustup target add wasm32-wasip2 >/dev/null 2>&1 ;;
    python)
      "$bin" plugin new "$name" --lang python >/dev/null
      cd "$name"
      python3 -m venv .venv
      .venv/bin/pip install --quiet componentize-py==0.25.1 ;;
    javascript)
      "$bin" plugin new "$name" --lang javascript >/dev/null
      cd "$name"
      npm install --silent --no-audit --no-fund >/dev/null ;;
  esac
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
