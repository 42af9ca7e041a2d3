# Shared by the scripts: find or install what they need.

# The pinned Rust toolchain (rust-toolchain.toml: channel, the wasm32-wasip2 target,
# rustfmt, clippy). rustup does not fetch a pinned toolchain by itself where
# RUSTUP_AUTO_INSTALL=0, so it is installed here; a second run only checks (a second).
require_toolchain() {
  if ! command -v rustup >/dev/null 2>&1; then
    echo "error: rustup is not installed: see https://rustup.rs, then run this again" >&2
    return 1
  fi
  rustup toolchain install >/dev/null 2>&1 || rustup toolchain install >&2
}

# The Spanner emulator: the harness finds emulator_main by itself; this only
# fails early, with the way to get it, when it is nowhere.
require_emulator() {
  if [ -n "${SPANNER_EMULATOR_DIR:-}" ] || command -v emulator_main >/dev/null 2>&1 \
    || [ -x /usr/lib/google-cloud-sdk/bin/cloud_spanner_emulator/emulator_main ] \
    || dpkg -L google-cloud-cli-spanner-emulator 2>/dev/null | grep -q '/emulator_main$'; then
    return 0
  fi
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "installing the Spanner emulator (google-cloud-cli-spanner-emulator)" >&2
    apt-get install -y google-cloud-cli-spanner-emulator >&2 && return 0
  fi
  echo "error: the Spanner emulator is not installed: install the Debian package" \
    "google-cloud-cli-spanner-emulator, or run 'gcloud components install cloud-spanner-emulator'" \
    "and set SPANNER_EMULATOR_DIR to the directory holding emulator_main" >&2
  return 1
}

# The destinations' servers the tests start: the Pub/Sub emulator (Debian package, Java
# included) and nats-server (JetStream). Installed with apt-get when missing and root.
require_destination_servers() {
  local missing=()
  command -v nats-server >/dev/null 2>&1 || missing+=(nats-server)
  [ -x /usr/lib/google-cloud-sdk/platform/pubsub-emulator/bin/cloud-pubsub-emulator ] \
    || [ -n "${PUBSUB_EMULATOR_DIR:-}" ] || command -v cloud-pubsub-emulator >/dev/null 2>&1 \
    || missing+=(google-cloud-cli-pubsub-emulator)
  [ ${#missing[@]} -eq 0 ] || install_debian_packages "${missing[@]}"
}

# Installs the Debian packages named, when root and apt-get is there (updating the package
# lists once if the first try fails); else one line naming them, and failure.
install_debian_packages() {
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "installing $*" >&2
    apt-get install -y "$@" >&2 || { apt-get update >&2 && apt-get install -y "$@" >&2; } \
      && return 0
  fi
  echo "error: missing $*: install the Debian packages of those names" >&2
  return 1
}

# The C toolchain for WebAssembly that `plugin new --lang c` projects build with (the
# authoring tests build one): clang-14, wasm-ld, wasi-libc and its compiler runtime, all
# Debian packages; wasm-component-ld comes with the Rust toolchain. Installed with apt-get
# when missing and root.
require_c_toolchain() {
  local packages=(clang-14 lld-14 wasi-libc libclang-rt-14-dev-wasm32) missing=() p
  for p in "${packages[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] || install_debian_packages "${missing[@]}"
}

# PostgreSQL, which the replica tests start (a private server each, as the postgres user
# when root): Debian's postgresql, installed with apt-get when missing and root.
require_postgres() {
  if [ -n "${PG_BIN:-}" ] || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    return 0
  fi
  install_debian_packages postgresql \
    || { echo "error: or set PG_BIN to the directory holding initdb and pg_ctl" >&2; return 1; }
}

# tansu, the Kafka-protocol broker the Kafka tests start (in memory): not packaged by
# Debian, so built from crates.io once into ~/.cargo/bin (about 8 minutes on 2 cores) and
# kept there.
TANSU_VERSION=0.6.0
require_tansu() {
  local bin="${TANSU_BIN:-$(command -v tansu || echo "$HOME/.cargo/bin/tansu")}"
  if [ -x "$bin" ] && "$bin" --version 2>/dev/null | grep -q "$TANSU_VERSION"; then
    return 0
  fi
  echo "installing tansu $TANSU_VERSION (the Kafka tests' broker) with cargo install" >&2
  cargo install --quiet --locked tansu --version "$TANSU_VERSION" --features dynostore >&2
}

# The example and test plugins, as components in target/plugins/: the Rust ones with the
# `plugin` profile for wasm32-wasip2, the Python one with componentize-py (from PyPI, in a
# venv under target/). Rebuilds only what changed. The toolchains' versions are the ones
# the `plugin new` templates pin (host/templates/), so authors and the tests build alike.
COMPONENTIZE_PY_VERSION=$(sed -n 's/.*"componentize-py==\([0-9.]*\)".*/\1/p' host/templates/python/pyproject.toml)
build_plugins() {
  cargo build --quiet --profile plugin --target wasm32-wasip2 \
    -p filter -p redact -p fanout -p enrich -p chaos -p identity -p wrong-world
  mkdir -p target/plugins
  local p
  for p in filter redact fanout enrich chaos identity wrong-world; do
    cp -p "target/wasm32-wasip2/plugin/$p.wasm" "target/plugins/${p//-/_}.wasm"
  done
  local venv=target/py-venv
  if ! "$venv/bin/componentize-py" --version 2>/dev/null | grep -q "$COMPONENTIZE_PY_VERSION"; then
    echo "installing componentize-py $COMPONENTIZE_PY_VERSION into $venv" >&2
    python3 -m venv "$venv" >&2
    "$venv/bin/pip" install --quiet "componentize-py==$COMPONENTIZE_PY_VERSION" >&2
  fi
  build_js_plugins
  local dir out
  for dir in plugins/drop-columns tests/plugins/py-raise; do
    out="target/plugins/$(basename "$dir" | tr - _).wasm"
    if [ ! -f "$out" ] || [ "$dir/app.py" -nt "$out" ] || [ wit/plugin.wit -nt "$out" ]; then
      "$venv/bin/componentize-py" -d wit -w plugin componentize -p "$dir" app -o "$out" >/dev/null
    fi
  done
}

# The JavaScript plugin, with the Bytecode Alliance toolchain from npm (pinned, installed
# under target/) and its QuickJS backend: seconds to build, 1.6 MB. The default
# StarlingMonkey backend imports wasi:http, which the host does not link.
JCO_VERSION=$(sed -n 's|.*"@bytecodealliance/jco": "\(.*\)".*|\1|p' host/templates/javascript/package.json)
COMPONENTIZE_JS_VERSION=$(sed -n 's|.*"@bytecodealliance/componentize-js": "\(.*\)".*|\1|p' host/templates/javascript/package.json)
build_js_plugins() {
  local tools=target/js-tools
  local jco="$tools/node_modules/.bin/jco"
  if ! "$jco" --version 2>/dev/null | grep -q "$JCO_VERSION"; then
    echo "installing jco $JCO_VERSION and componentize-js $COMPONENTIZE_JS_VERSION into $tools" >&2
    mkdir -p "$tools"
    npm install --prefix "$tools" --silent --no-audit --no-fund \
      "@bytecodealliance/jco@$JCO_VERSION" \
      "@bytecodealliance/componentize-js@$COMPONENTIZE_JS_VERSION" >&2
  fi
  local dir out
  for dir in plugins/tag-table tests/plugins/js-throw; do
    out="target/plugins/$(basename "$dir" | tr - _).wasm"
    if [ ! -f "$out" ] || [ "$dir/app.js" -nt "$out" ] || [ wit/plugin.wit -nt "$out" ]; then
      # jco resolves relative paths against the source's directory: absolute paths.
      "$jco" componentize "$PWD/$dir/app.js" --wit "$PWD/wit/plugin.wit" --world-name plugin \
        --backend quickjs --backend-qjs-disable-async -o "$PWD/$out" >/dev/null
    fi
  done
}

