#!/usr/bin/env bash
# The browser benchmark and the kernel benchmark on a GPU machine that has neither network nor
# browser (a lent cloud GPU that takes files only in pieces of some tens of MiB):
#
#   here:   web/e2e/gpu-bundle.sh pack [DIR]   everything the runs need, in pieces, into DIR
#   there:  web/e2e/gpu-bundle.sh stash [DIR]  after each carry: keep the pieces that came along
#           web/e2e/gpu-bundle.sh kernels      the kernel check, then bench_kernels on the GPU (needs native.tar.xz)
#           web/e2e/gpu-bundle.sh browser      the page on the GPU's WebGPU next to `wgtune train`
#
# DIR defaults to .dev/gpu (ignored by git). `pack` writes native.tar.xz (wgtune and
# bench_kernels), browser.tar.xz.NN (Chromium, node, Playwright, the wasm package, the model) and
# MANIFEST (sizes, sha256, and which files to carry together: no group passes $CARRY_MIB). The
# repository itself travels with every carry; `stash` checks what came against MANIFEST and
# copies it to $STORE, which outlives the calls while the machine stays up.
#
# The browser is Chromium's headless shell as npm's @sparticuz/chromium ships it: one binary
# with its own NSS, Vulkan loader and SwiftShader, needing glibc 2.25 and nothing else, so it
# runs on an image with no desktop libraries. On the GPU its WebGPU adapter is Dawn's Vulkan
# backend on the driver that VK_DRIVER_FILES names.
#
# Env: STORE (/root/.cache/wgtune-gpu), OUT (logs and screenshot; default $STORE/out),
# CARRY_MIB (60), ALLOW_DIRTY (pack: set to pack uncommitted changes; MANIFEST names the commit
# and the runs print it), WASM_TARGET_DIR (~/.cache/wgtune-wasm-target), MODEL (pack: the model
# to bundle, SmolLM2-135M-Instruct's GGUF; browser: the model to serve, the bundled one),
# STEPS (20), BATCH (4), MAX_LEN (128), KERNEL_RUNS (2), KERNEL_T_RUNS (1, with --transposed),
# KERNEL_ARGS (--dense-limit-mib 2048),
# VK_DRIVER_FILES (NVIDIA's ICD under /usr/local/nvidia when unset), ALLOW_SOFTWARE (set: bench
# the page on SwiftShader when no GPU adapter turns up, to try the script without a GPU).
set -euo pipefail
cd "$(dirname "$0")/../.."

CHROMIUM_PACKAGE=@sparticuz/chromium@153.0.0
STORE=${STORE:-/root/.cache/wgtune-gpu}
OUT=${OUT:-$STORE/out}
CARRY_MIB=${CARRY_MIB:-60}

die() {
  echo "gpu-bundle: $*" >&2
  exit 1
}

unxz_stream() {
  if command -v xz >/dev/null; then
    xz -dc
  else
    python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.stdin.buffer), sys.stdout.buffer)'
  fi
}

# The headless shell and its libraries, brotli-compressed in the npm package.
fetch_chromium() {
  local cache=$HOME/.cache/wgtune-gpu-bundle dest=$1
  mkdir -p "$cache" "$dest/lib"
  if [[ ! -f $cache/package/bin/chromium.br ]]; then
    (cd "$cache" && npm pack --silent "$CHROMIUM_PACKAGE" >/dev/null && tar xzf sparticuz-chromium-*.tgz)
  fi
  local bin=$cache/package/bin
  node -e '
    const zlib = require("zlib"), fs = require("fs");
    for (const [from, to] of [[process.argv[1], process.argv[2]], [process.argv[3], process.argv[4]],
                              [process.argv[5], process.argv[6]], [process.argv[7], process.argv[8]]])
      fs.writeFileSync(to, zlib.brotliDecompressSync(fs.readFileSync(from)));' \
    "$bin/chromium.br" "$dest/chromium" "$bin/al2023.tar.br" "$dest/al2023.tar" \
    "$bin/swiftshader.tar.br" "$dest/swiftshader.tar" "$bin/fonts.tar.br" "$dest/fonts.tar"
  chmod +x "$dest/chromium"
  for t in al2023 swiftshader fonts; do
    tar -xf "$dest/$t.tar" -C "$dest"
    rm "$dest/$t.tar"
  done
  rm -f "$dest/fonts.conf" # it names Lambda's folders; `browser` writes one for where it unpacks
}

pack() {
  local dir=${1:-.dev/gpu}
  local target=${CARGO_TARGET_DIR:-$HOME/.cache/wgtune-target}
  local model=${MODEL:-${WGTUNE_CACHE:-$HOME/.cache/wgtune}/SmolLM2-135M-Instruct.Q4_1.gguf}
  cargo build --release --locked --bin wgtune --example bench_kernels
  [[ -f $model ]] || "$target/release/wgtune" info >/dev/null # downloads the default model once
  [[ -f $model ]] || die "no model at $model (set MODEL)"
  CARGO_TARGET_DIR=${WASM_TARGET_DIR:-$HOME/.cache/wgtune-wasm-target} bash web/build.sh
  (cd web/e2e && npm ci --no-audit --no-fund --loglevel=error)

  # The results name the commit they measured; uncommitted changes would make that a lie.
  local commit
  commit=$(git describe --always --dirty --abbrev=12)
  [[ $commit != *-dirty || -n ${ALLOW_DIRTY:-} ]] || die "uncommitted changes: commit first (or ALLOW_DIRTY=1)"

  local stage
  stage=$(mktemp -d)
  trap 'rm -rf "$stage"' RETURN
  mkdir -p "$stage/native" "$stage/browser/node" "$stage/browser/model"
  cp "$target/release/wgtune" "$target/release/examples/bench_kernels" "$stage/native/"
  strip "$stage/native/"*
  fetch_chromium "$stage/browser/chromium"
  cp "$(command -v node)" "$stage/browser/node/"
  cp -r web/pkg "$stage/browser/pkg"
  cp -r web/e2e/node_modules "$stage/browser/node_modules"
  cp "$model" "$stage/browser/model/"

  rm -rf "$dir"
  mkdir -p "$dir"
  echo "compressing (xz -9, some minutes)..."
  tar -C "$stage/native" -cf - . | xz -T0 -9 >"$dir/native.tar.xz"
  tar -C "$stage/browser" -cf - . | xz -T0 -9 >"$stage/browser.tar.xz"

  # The first piece rides with native.tar.xz, so it is that much smaller.
  local limit=$((CARRY_MIB << 20)) native first
  native=$(stat -c %s "$dir/native.tar.xz")
  first=$((limit - native))
  ((first > 0)) || die "native.tar.xz alone passes ${CARRY_MIB} MiB"
  head -c "$first" "$stage/browser.tar.xz" >"$dir/browser.tar.xz.00"
  tail -c +$((first + 1)) "$stage/browser.tar.xz" |
    split -b "$limit" -d -a 2 --numeric-suffixes=1 - "$dir/browser.tar.xz."

  (
    cd "$dir"
    echo "# file size sha256 call: carry each call's files with MANIFEST (and .gl for the GPU)" >MANIFEST
    echo "# packed from $commit" >>MANIFEST
    local f call
    for f in native.tar.xz browser.tar.xz.*; do
      call=1
      [[ $f == browser.tar.xz.* ]] && call=$((10#${f##*.} + 1))
      echo "$f $(stat -c %s "$f") $(sha256sum "$f" | cut -d' ' -f1) $call" >>MANIFEST
    done
  )
  echo "packed into $dir:"
  awk '!/^#/ { printf "  call %d: %-20s %6.1f MiB\n", $4, $1, $2 / 1048576 }' "$dir/MANIFEST"
  echo "then: stash after each call; kernels in call 1; browser in the last"
}

stash() {
  local dir=${1:-.dev/gpu}
  [[ -f $dir/MANIFEST ]] || die "no $dir/MANIFEST: carry it with every piece"
  # A new pack starts the store afresh: every piece in it is then one checked against its MANIFEST.
  cmp -s "$dir/MANIFEST" "$STORE/MANIFEST" || rm -rf "$STORE"
  mkdir -p "$STORE"
  cp "$dir/MANIFEST" "$STORE/MANIFEST"
  local f size sum call
  while read -r f size sum call; do
    [[ $f == "#" || ! -f $dir/$f ]] && continue
    [[ $(sha256sum "$dir/$f" | cut -d' ' -f1) == "$sum" ]] || die "$dir/$f: sha256 differs from MANIFEST"
    cp "$dir/$f" "$STORE/$f"
  done <"$dir/MANIFEST"
  status || true # pieces still to come are the rule until the last call
}

# Which pieces are in the store, and which are still to come (`stash` checked their sha256).
status() {
  local f size sum call have=() missing=()
  while read -r f size sum call; do
    [[ $f == "#" ]] && continue
    if [[ -f $STORE/$f ]]; then have+=("$f"); else missing+=("$f (call $call)"); fi
  done <"$STORE/MANIFEST"
  echo "stored: ${have[*]:-nothing}"
  echo "to come: ${missing[*]:-nothing}"
  ((${#missing[@]} == 0))
}

gpu_env() {
  local nvidia=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
  if [[ -z ${VK_DRIVER_FILES:-} && -f $nvidia ]]; then export VK_DRIVER_FILES=$nvidia; fi
  # Vulkan loaders before 1.3.207 (Chromium may bring one) know only the older name.
  if [[ -n ${VK_DRIVER_FILES:-} ]]; then export VK_ICD_FILENAMES=$VK_DRIVER_FILES; fi
  mkdir -p "$OUT"
  { grep '^# packed from' "$STORE/MANIFEST" || echo '# packed from an unnamed commit'; } | tee "$OUT/commit.txt"
  export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-$(mktemp -d)}
}

# Unpacks `native.tar.xz` (or the browser pieces, in MANIFEST order) into $STORE/$1 once.
unpack() {
  local into=$STORE/$1 pieces
  cmp -s "$STORE/MANIFEST" "$into/MANIFEST" && return
  rm -rf "$into"
  mkdir -p "$into"
  mapfile -t pieces < <(awk -v d="$STORE" -v p="$1" '$1 ~ "^" p { print d "/" $1 }' "$STORE/MANIFEST")
  cat "${pieces[@]}" | unxz_stream | tar -x -C "$into"
  cp "$STORE/MANIFEST" "$into/MANIFEST"
}

kernels() {
  [[ -f $STORE/native.tar.xz ]] || die "native.tar.xz is not stashed yet"
  gpu_env
  unpack native
  # Every kernel against exact host products on this GPU's driver first (fails the step if one
  # disagrees: no speed is worth reporting for a wrong kernel).
  echo "== wgtune info --check-kernels"
  "$STORE/native/wgtune" info --check-kernels | tee "$OUT/check-kernels.txt"
  local i
  for ((i = 1; i <= ${KERNEL_RUNS:-2}; i++)); do
    echo "== bench_kernels run $i"
    # shellcheck disable=SC2086 # KERNEL_ARGS is a list of words
    "$STORE/native/bench_kernels" ${KERNEL_ARGS:---dense-limit-mib 2048} | tee "$OUT/kernels-$i.txt"
  done
  # The backward's product too: the tiled GEMM's transposed kernel against dequantize+matmul.
  for ((i = 1; i <= ${KERNEL_T_RUNS:-1}; i++)); do
    echo "== bench_kernels --transposed run $i"
    # shellcheck disable=SC2086
    "$STORE/native/bench_kernels" --transposed ${KERNEL_ARGS:---dense-limit-mib 2048} | tee "$OUT/kernels-t-$i.txt"
  done
}

# Flag sets that route Chromium's WebGPU to the Vulkan driver, most likely first.
GPU_FLAG_SETS=(
  "--use-angle=vulkan --enable-features=Vulkan --disable-vulkan-surface --ignore-gpu-blocklist"
  "--enable-features=Vulkan --ignore-gpu-blocklist --use-webgpu-power-preference=high-performance"
  "--use-vulkan=native --use-angle=vulkan --enable-features=Vulkan,VulkanFromANGLE,DefaultANGLEVulkan --disable-vulkan-surface --ignore-gpu-blocklist --disable-gpu-sandbox"
)

browser() {
  status >/dev/null || {
    status
    die "pieces are missing"
  }
  gpu_env
  local b=$STORE/browser
  unpack native
  unpack browser
  printf '<?xml version="1.0"?>\n<fontconfig><dir>%s</dir><cachedir>%s</cachedir></fontconfig>\n' \
    "$b/chromium/fonts" "$STORE/fonts-cache" >"$b/chromium/fonts.conf"
  export FONTCONFIG_PATH=$b/chromium
  export LD_LIBRARY_PATH=$b/chromium:$b/chromium/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  export CHROMIUM=$b/chromium/chromium WGTUNE=$STORE/native/wgtune
  export MODEL=${MODEL:-$(echo "$b"/model/*)}
  export PATH=$b/node:$PATH
  rm -rf web/pkg web/e2e/node_modules
  cp -r "$b/pkg" web/pkg
  cp -r "$b/node_modules" web/e2e/node_modules

  # Output goes to files, not pipes: a server that outlives a killed node would hold a pipe open.
  # A set gets a second try when it gives no adapter at all (seen once here: the GPU process
  # came up late).
  local flags="" adapter n=0 f try
  for f in "${GPU_FLAG_SETS[@]}"; do
    for try in 1 2; do
      n=$((n + 1))
      CHROMIUM_ARGS=$f DEVICE_ONLY=1 timeout -k 10 120 node web/e2e/bench.mjs >"$OUT/probe-$n.txt" 2>&1 || true
      stop_servers
      adapter=$(grep '^device:' "$OUT/probe-$n.txt" || true)
      echo "flags: $f -> ${adapter:-no answer (see probe-$n.txt)}"
      [[ $adapter == *'"adapter":'* ]] && break
    done
    if [[ $adapter == *'"adapter":'* && $adapter != *swiftshader* ]]; then
      flags=$f
      break
    fi
  done
  if [[ -z $flags && -n ${ALLOW_SOFTWARE:-} ]]; then
    flags=" " # none: Chromium's own SwiftShader
    echo "no GPU adapter; going on with SwiftShader (ALLOW_SOFTWARE)"
  fi
  if [[ -z $flags ]]; then
    echo "no GPU adapter under any flag set; Chromium's log with the first one (chromium.log):"
    CHROMIUM_ARGS="${GPU_FLAG_SETS[0]} --enable-logging=stderr --v=1" DEVICE_ONLY=1 timeout -k 10 120 \
      node web/e2e/bench.mjs >"$OUT/chromium.log" 2>&1 || true
    stop_servers
    grep -i -E 'vulkan|dawn|webgpu|adapter' "$OUT/chromium.log" | tail -40
    die "the page found no GPU"
  fi
  echo "== the page on the GPU (its kernel check, then training), then the same run in wgtune train --device wgpu"
  local rc=0
  CHROMIUM_ARGS=$flags CHECK=1 NATIVE=wgpu STEPS=${STEPS:-20} BATCH=${BATCH:-4} MAX_LEN=${MAX_LEN:-128} \
    SCREENSHOT=$OUT/page-gpu.png timeout -k 10 480 node web/e2e/bench.mjs >"$OUT/browser.txt" 2>&1 || rc=$?
  stop_servers
  cat "$OUT/browser.txt"
  return "$rc"
}

stop_servers() {
  pkill -f 'wgtune serve-web' || true
}

case ${1:-} in
pack) pack "${2:-}" ;;
stash) stash "${2:-}" ;;
kernels) kernels ;;
browser) browser ;;
*) die "usage: web/e2e/gpu-bundle.sh pack [DIR] | stash [DIR] | kernels | browser" ;;
esac
