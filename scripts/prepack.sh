#!/usr/bin/env bash
# npm `prepack` (runs on `npm pack` and `npm publish`): the tarball carries prebuilt addons made here.
#   prebuilds/linux-x64/    this host's addon, N-API: the CUDA kernels for MEGABEAM_CUDA_ARCHS (default the
#                           release fatbin: sm_80/86/89/90a + compute_90 PTX; CI sets 90a) when a CUDA toolkit
#                           is found, else CPU-only (with a warning; MEGABEAM_REQUIRE_CUDA=1 makes it an error)
#   prebuilds/linux-arm64/  CPU-only, cross-compiled by scripts/prebuild-arm64.sh when aarch64-linux-gnu-g++
#                           exists (MEGABEAM_PREBUILD_ARM64=0 skips it, =1 requires it; MEGABEAM_ARM64_SMOKE=1
#                           also tests it under qemu). Without the toolchain an existing one is re-used.
set -euo pipefail
cd "$(dirname "$0")/.."
host="$(node -p "process.platform + '-' + process.arch")"
archs="$(node scripts/cuda.js archs-define)"
if [ "$(node scripts/cuda.js enabled)" = 1 ]; then
  echo "megabeam prepack: building the $host prebuild with CUDA ($archs); the full fatbin takes a while"
else
  [ "${MEGABEAM_REQUIRE_CUDA:-0}" = 1 ] && { echo "megabeam prepack: no CUDA toolkit found and MEGABEAM_REQUIRE_CUDA=1" >&2; exit 1; }
  echo "megabeam prepack: WARNING: no CUDA toolkit found: the $host prebuild is CPU-only"
fi
rm -rf "prebuilds/$host"
# Outside npm's environment a configured nodedir still avoids a header download.
if [ -z "${npm_config_nodedir:-}" ]; then
  nd=$(npm config get nodedir 2>/dev/null || true)
  if [ -n "$nd" ] && [ "$nd" != undefined ] && [ "$nd" != null ]; then export npm_config_nodedir=$nd; fi
fi
log=${TMPDIR:-/tmp}/megabeam-prebuild-$host.log
node_modules/.bin/prebuildify --napi --strip --target "node@$(node -p process.versions.node)" >"$log" 2>&1 ||
  { tail -40 "$log"; echo "megabeam prepack: the $host prebuild failed (full log: $log)" >&2; exit 1; }
echo "megabeam prepack: $(ls prebuilds/"$host"/)"

if [ "$host" = linux-x64 ] && [ "${MEGABEAM_PREBUILD_ARM64:-}" != 0 ]; then
  if command -v aarch64-linux-gnu-g++ >/dev/null; then
    bash scripts/prebuild-arm64.sh >"${TMPDIR:-/tmp}/megabeam-prebuild-arm64.log" 2>&1 ||
      { tail -40 "${TMPDIR:-/tmp}/megabeam-prebuild-arm64.log"; echo "megabeam prepack: the linux-arm64 prebuild failed" >&2; exit 1; }
    grep -E '^prebuild-arm64: (wrote|smoke)|^  (arm64|host):' "${TMPDIR:-/tmp}/megabeam-prebuild-arm64.log" | sed 's/^/megabeam prepack: /'
  elif [ "${MEGABEAM_PREBUILD_ARM64:-}" = 1 ]; then
    echo "megabeam prepack: MEGABEAM_PREBUILD_ARM64=1 but aarch64-linux-gnu-g++ is missing (apt-get install g++-aarch64-linux-gnu)" >&2
    exit 1
  elif ls prebuilds/linux-arm64/*.node >/dev/null 2>&1; then
    echo "megabeam prepack: keeping the existing prebuilds/linux-arm64 (no cross toolchain here to rebuild it)"
  else
    echo "megabeam prepack: WARNING: no linux-arm64 prebuild (apt-get install g++-aarch64-linux-gnu to make one)"
  fi
fi
