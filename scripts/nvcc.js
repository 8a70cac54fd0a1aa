#!/usr/bin/env node
// gyp rule action: compiles one .cu file into an object that node-gyp links into the addon.
'use strict';
const path = require('path');
const { spawnSync } = require('child_process');
const { cudaHome, gencodeFlags } = require('./cuda');

const [src, out] = process.argv.slice(2);
const home = cudaHome();
if (!home) {
  console.error('nvcc.js: no CUDA toolkit found');
  process.exit(1);
}
const root = path.join(__dirname, '..');
const args = [
  '-c', src, '-o', out,
  '-std=c++17', '-O3', '--threads', '0', '-DMEGABEAM_CUDA', '--expt-relaxed-constexpr',
  '-Xcompiler', '-fPIC', '-Xcompiler', '-ffp-contract=off', '-I', path.join(root, 'csrc'),
  ...gencodeFlags(),
];
const r = spawnSync(path.join(home, 'bin', 'nvcc'), args, { stdio: 'inherit' });
process.exit(r.status === null ? 1 : r.status);
