#!/usr/bin/env node
// npm `install` hook. Loads the prebuilt addon from prebuilds/ when one matches this platform (the
// normal case: nothing is compiled), else builds from source with node-gyp and says so first, since a
// source build needs Python 3, make and a C++17 compiler (and takes minutes; with nvcc, longer). If the
// build fails, megabeam's own message says what to do, and the install fails (exit 1): a package whose
// addon cannot load would only fail later, at the first require().
//   npm_config_build_from_source=true (npm install --build-from-source) skips the prebuild.
'use strict';
const fs = require('fs');
const path = require('path');
const { spawnSync } = require('child_process');

const root = path.join(__dirname, '..');
const where = `${process.platform}-${process.arch}`;
const say = (s) => process.stderr.write(`megabeam: ${s}\n`);

function tryLoad() {
  try {
    const file = require('node-gyp-build').resolve(root);
    require(file);
    return file;
  } catch (e) {
    return null;
  }
}

const fromSource = process.env.npm_config_build_from_source === 'true';
if (!fromSource) {
  const file = tryLoad();
  if (file) {
    say(`using ${path.relative(root, file)}`);
    process.exit(0);
  }
}

const prebuilt = fs.existsSync(path.join(root, 'prebuilds'))
  ? fs.readdirSync(path.join(root, 'prebuilds')).join(', ') || 'none'
  : 'none';
say(fromSource
  ? 'building the native addon from source (--build-from-source)'
  : `no prebuilt addon for ${where} (this package has: ${prebuilt}); building from source with node-gyp.`);
say('this needs Python 3, make and a C++17 compiler; with a CUDA toolkit (nvcc) the GPU kernels are compiled');
say('too, which takes several minutes (MEGABEAM_CUDA_ARCHS=90a builds one architecture, MEGABEAM_CUDA=0 none).');

let cmd = 'node-gyp';
let args = ['rebuild'];
try {
  // npm puts its bundled node-gyp on PATH for install scripts; a local one (git checkout) comes first.
  const pkg = require('node-gyp/package.json');
  const bin = typeof pkg.bin === 'string' ? pkg.bin : pkg.bin['node-gyp'];
  cmd = process.execPath;
  args = [path.join(path.dirname(require.resolve('node-gyp/package.json')), bin), 'rebuild'];
} catch { /* use node-gyp from PATH */ }
const r = spawnSync(cmd, args, { cwd: root, stdio: 'inherit', shell: cmd === 'node-gyp' });
const built = r.status === 0 && tryLoad();
if (built) {
  say(`built ${path.relative(root, built)}`);
  process.exit(0);
}

const lines = [
  '',
  `megabeam: the native addon could not be installed on ${where} (node ${process.version}).`,
  r.error ? `  node-gyp could not be started: ${r.error.message}` : '  The source build failed (node-gyp output above).',
  '  What to do:',
  '  - Prebuilt addons exist for linux-x64 (CUDA + CPU) and linux-arm64 (CPU only): Node >= 20, glibc >= 2.32 and',
  '    libstdc++ of GCC >= 12 (Debian 12+, Ubuntu 22.04+, Fedora 36+); on those platforms reinstall normally.',
  '  - Elsewhere install the build tools, then `npm rebuild megabeam --foreground-scripts`',
  '    (npm >= 11 runs it only once allowed: `npm install-scripts approve megabeam`):',
  '      Debian/Ubuntu: apt-get install python3 make g++      RHEL/Fedora: dnf install python3 make gcc-c++',
  '    (and a CUDA toolkit with nvcc, or CUDA_HOME, for the GPU kernels).',
  '  - Or point MEGABEAM_ADDON at a megabeam.node built elsewhere.',
  '  Details: README.md, "Install".',
  '',
];
process.stderr.write(lines.join('\n'));
process.exit(1);
