#!/usr/bin/env bash
# Checks the package a user gets: a plain `npm pack` (its prepack makes the prebuilds: scripts/prepack.sh),
# then, in an empty project with no C/C++/CUDA compiler, Python or make on PATH:
#   1. the tarball holds what it must (prebuilds, dist, docs the README links to, LICENSE, CHANGELOG) and
#      nothing it must not (tests, logs, bench results);
#   2. `npm install <tarball>` builds nothing and loads the prebuild (CommonJS and ESM), with and without
#      its install script (npm 11 skips it unless allowed); `megabeam doctor` says "prebuild"; CLI commands
#      write no files into the project;
#   3. with the prebuilds removed: the first use throws ERR_NATIVE with instructions, and the install
#      script (`npm rebuild megabeam`) fails with megabeam's own message.
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
host="$(node -p "process.platform + '-' + process.arch")"

if [ -n "${CHECK_PACK_TGZ:-}" ]; then
  # For iterating on this script: check an existing tarball instead of packing again.
  cp "$CHECK_PACK_TGZ" "$work/megabeam-check.tgz"
else
  echo "check-pack: npm pack (prepack builds the prebuilds; log in $work/pack.log)"
  npm pack --pack-destination "$work" >"$work/pack.log" 2>&1 || { tail -60 "$work/pack.log"; exit 1; }
  grep '^megabeam prepack:' "$work/pack.log" || true
fi
tgz=$(ls "$work"/megabeam-*.tgz)
[ -z "${KEEP_TGZ:-}" ] || cp "$tgz" "$KEEP_TGZ"
tar tzf "$tgz" | sed 's|^package/||' | sort >"$work/files.txt"
need=("prebuilds/$host/" dist/index.js dist/index.mjs dist/cli.js bin/megabeam.js scripts/install.js binding.gyp
      README.md LICENSE CHANGELOG.md package.json)
# Every relative .md link of the README must be in the tarball.
while read -r doc; do need+=("$doc"); done < <(grep -oE '\]\(([A-Za-z0-9_./-]+\.md)\)' README.md | sed -E 's/^\]\(|\)$//g' | sort -u)
for f in "${need[@]}"; do grep -q "^$f" "$work/files.txt" || { echo "check-pack: the tarball lacks $f"; exit 1; }; done
if grep -E '^(test/|\.ci/|bench/results/|.*\.log$|.*\.tgz$)' "$work/files.txt"; then echo 'check-pack: the tarball holds files it must not'; exit 1; fi
if [ "${MEGABEAM_PREBUILD_ARM64:-}" = 1 ]; then grep -q '^prebuilds/linux-arm64/.*\.node$' "$work/files.txt" || { echo 'check-pack: no linux-arm64 prebuild'; exit 1; }; fi
echo "check-pack: tarball $(basename "$tgz"): $(wc -l <"$work/files.txt") files; prebuilds: $(grep -oE '^prebuilds/[^/]+/' "$work/files.txt" | sort -u | tr '\n' ' ')"

# A PATH with node and npm only: no python, make, cc, g++, nvcc.
mkdir -p "$work/bin" "$work/app"
ln -s "$(command -v node)" "$work/bin/node"
ln -s "$(command -v npm)" "$work/bin/npm"
ln -s "$(command -v sh)" "$work/bin/sh"
cd "$work/app"
echo '{"name":"app","version":"1.0.0","private":true}' > package.json
clean() { env -i HOME="$HOME" PATH="$work/bin" CC=false CXX=false npm_config_nodedir=/nonexistent "$@"; }
# npm >= 11 runs a dependency's install script only when allowed (allowScripts): the prebuild must load
# without it (node-gyp-build at require time), and with it allowed the script must report the prebuild.
clean npm install --no-audit --no-fund "$tgz" >install.log 2>&1 || { cat install.log; exit 1; }
test ! -d node_modules/megabeam/build || { echo 'check-pack: a source build ran'; exit 1; }
# npm >= 11: approve megabeam's install script in the project (allowScripts in package.json).
if clean npm help install-scripts >/dev/null 2>&1; then clean npm install-scripts approve megabeam >/dev/null 2>&1 || true; fi
clean npm rebuild megabeam --foreground-scripts >install-script.log 2>&1 || { cat install-script.log; exit 1; }
grep -q "megabeam: using prebuilds/$host/" install-script.log || { cat install-script.log; echo 'check-pack: the install script did not report the prebuild'; exit 1; }
test ! -d node_modules/megabeam/build || { echo 'check-pack: a source build ran'; exit 1; }
clean node -e "
  const mb = require('megabeam');
  const x = mb.tensor([1, 2, 3], { dtype: 'bf16' });
  x.toArray().then((a) => {
    if (a.join() !== '1,2,3') process.exit(1);
    console.log('check-pack: the installed tarball loads its prebuild; cuda built:', mb.cuda.isBuilt());
  });"
cat > esm.mjs <<'JS'
import { randn, theta } from 'megabeam';
const t = randn([4], { seed: 1 });
console.log('check-pack: ESM import works:', (await t.toArray()).length === 4, typeof theta);
JS
clean node esm.mjs
before=$(ls -A | sort)
clean node_modules/.bin/megabeam --version
clean node_modules/.bin/megabeam doctor | tee "$work/doctor.txt"
grep -qE "addon +prebuild: .*/prebuilds/$host/" "$work/doctor.txt" || { echo 'check-pack: doctor does not report the prebuild'; exit 1; }
clean node_modules/.bin/megabeam theta --context 4k --head-dim 64 --base 1e5 >/dev/null
clean node_modules/.bin/megabeam bench rope --device cpu --tokens 256 --heads 2 --kv-heads 1 --head-dim 64 --reps 1 >/dev/null 2>&1
after=$(ls -A | sort)
[ "$before" = "$after" ] || { echo "check-pack: CLI commands wrote into the project: $(comm -13 <(echo "$before") <(echo "$after"))"; exit 1; }

# No matching prebuild and no compilers. Without the install script (npm's default for dependencies)
# the first use throws ERR_NATIVE with instructions; with it, the install fails with megabeam's message.
rm -rf node_modules/megabeam/prebuilds
clean node -e "
  const mb = require('megabeam');
  try { mb.zeros([1]); console.error('check-pack: the addon loaded without a prebuild?'); process.exit(1); }
  catch (e) {
    if (e.code !== 'ERR_NATIVE' || !/npm rebuild megabeam/.test(e.message) || e.message.includes('\\n')) { console.error(e); process.exit(1); }
    console.log('check-pack: without a prebuild, first use throws', e.code + ':', e.message.slice(0, 160) + '...');
  }"
if clean npm rebuild megabeam --foreground-scripts >rebuild.log 2>&1; then cat rebuild.log; echo 'check-pack: rebuild without prebuild or compilers succeeded?'; exit 1; fi
grep -q 'megabeam: the native addon could not be installed' rebuild.log || { cat rebuild.log; echo "check-pack: megabeam's message is missing"; exit 1; }
grep -q 'megabeam: no prebuilt addon for' rebuild.log || { cat rebuild.log; echo 'check-pack: no notice before the source build'; exit 1; }
echo "check-pack: without a prebuild and compilers the install fails with megabeam's message:"
grep -A9 'megabeam: the native addon could not be installed' rebuild.log | sed 's/^/  | /'
echo 'check-pack: OK'
