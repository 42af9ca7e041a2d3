#!/usr/bin/env bash
# The whole test suite: unit tests (the plugins' included, natively through the SDK), and
# end-to-end tests against real Spanner emulators (each test starts its own on free ports),
# real plugin components, plugin projects from `plugin new` in every language (C's
# toolchain is Debian's), and real destinations (the Pub/Sub emulator, nats-server and the
# Kafka-protocol broker tansu, PostgreSQL, each started per test). Extra arguments go to
# `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
require_toolchain
require_emulator
require_destination_servers
require_tansu
require_postgres
require_c_toolchain
# The end-to-end tests spawn the screamer binary next to them in target/debug, and load the
# plugins from target/plugins (Rust ones for wasm32-wasip2, the Python one via componentize-py).
build_plugins
cargo build --quiet -p screamer --bin screamer
cargo test --workspace "$@"
