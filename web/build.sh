#!/usr/bin/env bash
# Builds the browser demo's wasm package into web/pkg/ (wgtune_web.js + wgtune_web_bg.wasm):
# the wgtune-web crate for wasm32-unknown-unknown, then the wasm-bindgen CLI of exactly the
# version in Cargo.lock (installed into ~/.cargo/bin on first use). Skips the work when
# web/pkg is newer than every source file.
#   bash web/build.sh [--force] [--optimize]
# --force rebuilds anyway. --optimize also runs binaryen's `wasm-opt -Oz` (npm `binaryen`, pinned,
# installed into ~/.cache/wgtune-binaryen on first use; Debian's binaryen 108 cannot read rustc's
# output): 43 MB -> 19 MB, for serving the page to others. It takes minutes (13.6 on the CI
# machine, sharing its two cores), so the tests and `web/serve.sh` do without it.
set -euo pipefail
cd "$(dirname "$0")/.."

force=false optimize=false
for arg in "$@"; do
  case $arg in
    --force) force=true ;;
    --optimize) optimize=true force=true ;;
    *) echo "web/build.sh: unknown option $arg (expected --force or --optimize)" >&2; exit 2 ;;
  esac
done

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/wgtune-target}"
pkg=web/pkg
wasm="$CARGO_TARGET_DIR/wasm32-unknown-unknown/web/wgtune_web.wasm"

if [[ -f $pkg/wgtune_web_bg.wasm && $force == false ]] &&
  [[ -z $(find src shaders web/src Cargo.toml Cargo.lock web/Cargo.toml -newer "$pkg/wgtune_web_bg.wasm" -print -quit) ]]; then
  echo "web/pkg is up to date"
  exit 0
fi

rustup target list --installed | grep -qx wasm32-unknown-unknown || rustup target add wasm32-unknown-unknown
version=$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/"/, "", $3); print $3; exit }' Cargo.lock)
if [[ "$(wasm-bindgen --version 2>/dev/null | awk '{print $2}')" != "$version" ]]; then
  echo "installing wasm-bindgen-cli $version"
  # Not --locked: one of its locked dependencies is missing from the registry (DESIGN.md §5).
  cargo install -q wasm-bindgen-cli --version "$version"
fi

# The `web` profile: release at O1 (Cargo.toml says why).
cargo build --profile web --locked --target wasm32-unknown-unknown -p wgtune-web
rm -rf "$pkg.tmp"
wasm-bindgen --target web --no-typescript --out-dir "$pkg.tmp" "$wasm"
if $optimize; then
  binaryen="$HOME/.cache/wgtune-binaryen"
  if [[ ! -x $binaryen/node_modules/binaryen/bin/wasm-opt ]]; then
    echo "installing binaryen 132.0.0 (npm) into $binaryen"
    mkdir -p "$binaryen"
    npm install --prefix "$binaryen" --no-audit --no-fund --silent binaryen@132.0.0
  fi
  echo "wasm-opt -Oz (minutes)"
  "$binaryen/node_modules/binaryen/bin/wasm-opt" -Oz "$pkg.tmp/wgtune_web_bg.wasm" -o "$pkg.tmp/opt.wasm"
  mv "$pkg.tmp/opt.wasm" "$pkg.tmp/wgtune_web_bg.wasm"
fi
rm -rf "$pkg"
mv "$pkg.tmp" "$pkg"
echo "built $pkg ($(du -h "$pkg/wgtune_web_bg.wasm" | cut -f1))"
