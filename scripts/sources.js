#!/usr/bin/env node
// The one list of native sources, used by binding.gyp and CMakeLists.txt alike:
// every .cpp (kind "cpp") or .cu (kind "cu") file under csrc/. Prints one path per line
// (gyp) or a CMake list with --cmake.
'use strict';
const fs = require('fs');
const path = require('path');
const root = path.join(__dirname, '..');

function walk(dir, ext, out) {
  for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) walk(p, ext, out);
    else if (e.name.endsWith(ext)) out.push(path.relative(root, p).split(path.sep).join('/'));
  }
  return out;
}

function sources(kind) {
  // MEGABEAM_SOURCES_EXCLUDE (a regex) leaves files out: for work in progress, never for releases.
  const ex = process.env.MEGABEAM_SOURCES_EXCLUDE ? new RegExp(process.env.MEGABEAM_SOURCES_EXCLUDE) : null;
  return walk(path.join(root, 'csrc'), kind === 'cu' ? '.cu' : '.cpp', [])
    .filter((f) => !ex || !ex.test(f))
    .sort();
}

module.exports = { sources };
if (require.main === module) {
  const kind = process.argv[2] || 'cpp';
  const list = sources(kind);
  process.stdout.write(process.argv.includes('--cmake') ? list.join(';') : list.join('\n') + '\n');
}
