# Shared by the scripts: find or install what they need.

# The Spanner emulator: the harness finds gateway_main/emulator_main by itself; this only
# fails early, with the way to get it, when it is nowhere.
require_emulator() {
  if [ -n "${SPANNER_EMULATOR_DIR:-}" ] || command -v gateway_main >/dev/null 2>&1 \
    || [ -x /usr/lib/google-cloud-sdk/bin/cloud_spanner_emulator/gateway_main ] \
    || dpkg -L google-cloud-cli-spanner-emulator 2>/dev/null | grep -q '/gateway_main$'; then
    return 0
  fi
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "installing the Spanner emulator (google-cloud-cli-spanner-emulator)" >&2
    apt-get install -y google-cloud-cli-spanner-emulator >&2 && return 0
  fi
  echo "error: the Spanner emulator is not installed: install the Debian package" \
    "google-cloud-cli-spanner-emulator, or run 'gcloud components install cloud-spanner-emulator'" \
    "and set SPANNER_EMULATOR_DIR to the directory holding gateway_main and emulator_main" >&2
  return 1
}
