#!/usr/bin/env bash
# Makes the prebuild, packs the package, installs the tarball into an empty folder with no C/C++/CUDA
# compiler on PATH, and checks that node-gyp-build loads the prebuilt addon (and builds nothing).
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf prebuilds
npm run prebuild >/tmp/megabeam-prebuild.log 2>&1 || { tail -40 /tmp/megabeam-prebuild.log; exit 1; }
ls prebuilds/*/
tgz=$(npm pack --silent | tail -1)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# A PATH with node and npm only: a fallback source build would fail loudly.
mkdir -p "$work/bin" "$work/app"
ln -s "$(command -v node)" "$work/bin/node"
ln -s "$(command -v npm)" "$work/bin/npm"
ln -s "$(command -v sh)" "$work/bin/sh"
cp "$tgz" "$work/"
rm -f "$tgz"
(
  cd "$work/app"
  echo '{"name":"app","version":"1.0.0","private":true}' > package.json
  env -i HOME="$HOME" PATH="$work/bin" CC=false CXX=false npm_config_nodedir=/nonexistent \
    npm install --no-audit --no-fund "../$(basename "$tgz")" >install.log 2>&1 || { cat install.log; exit 1; }
  test ! -d node_modules/megabeam/build || { echo 'a source build ran'; exit 1; }
  env -i PATH="$work/bin" node -e "
    const mb = require('megabeam');
    const p = require.resolve('megabeam');
    const x = mb.tensor([1, 2, 3], { dtype: 'bf16' });
    x.toArray().then((a) => {
      if (a.join() !== '1,2,3') process.exit(1);
      console.log('installed tarball loads its prebuild; cuda built:', mb.cuda.isBuilt());
    });"
  cat > esm.mjs <<'JS'
import { randn, theta } from 'megabeam';
const t = randn([4], { seed: 1 });
console.log('ESM import works:', (await t.toArray()).length === 4, typeof theta);
JS
  env -i PATH="$work/bin" node esm.mjs
)
