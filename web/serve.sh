#!/usr/bin/env bash
# Builds the browser demo if needed and serves it with a default model on 127.0.0.1:
#   bash web/serve.sh [wgtune serve-web options, e.g. --port 8080 --model path/to/model.gguf]
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/wgtune-target}"
bash web/build.sh
cargo build --release --locked --bin wgtune
exec "$CARGO_TARGET_DIR/release/wgtune" serve-web --dir web "$@"
