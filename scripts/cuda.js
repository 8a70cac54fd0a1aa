#!/usr/bin/env node
// Finds the CUDA toolkit for the native build and turns MEGABEAM_CUDA_ARCHS into nvcc flags.
//   MEGABEAM_CUDA=0            build the CPU-only addon even when nvcc exists
//   MEGABEAM_CUDA_ARCHS=90a    only sm_90a (fast iteration); default: 80,86,89,90a + compute_90 PTX
//   CUDA_HOME / CUDA_PATH      toolkit location (else nvcc on PATH, else /usr/local/cuda)
'use strict';
const fs = require('fs');
const path = require('path');
const { execFileSync } = require('child_process');

const DEFAULT_ARCHS = '80,86,89,90a';

function cudaHome() {
  if (process.env.MEGABEAM_CUDA === '0') return null;
  const cands = [process.env.CUDA_HOME, process.env.CUDA_PATH];
  try {
    const nvcc = execFileSync('sh', ['-c', 'command -v nvcc'], { encoding: 'utf8' }).trim();
    if (nvcc) cands.push(path.dirname(path.dirname(fs.realpathSync(nvcc))));
  } catch { /* not on PATH */ }
  cands.push('/usr/local/cuda');
  for (const c of cands) {
    if (c && fs.existsSync(path.join(c, 'bin', 'nvcc')) && fs.existsSync(path.join(c, 'lib64', 'libcudart_static.a')))
      return c;
  }
  return null;
}

function archs() {
  return (process.env.MEGABEAM_CUDA_ARCHS || DEFAULT_ARCHS).split(/[,; ]+/).filter(Boolean);
}

/** The compiled targets as a bare comma list (sm_80,...,compute_90) for the MB_CUDA_ARCHS define (doctor). */
function archsDefine() {
  const list = archs().map((a) => `sm_${a.replace(/[^0-9a-z]/g, '')}`);
  if (!process.env.MEGABEAM_CUDA_ARCHS) list.push('compute_90');
  return list.join(',');
}

function gencodeFlags() {
  const list = archs();
  const flags = [];
  for (const a of list) {
    const num = a.replace(/[^0-9a-z]/g, '');
    flags.push(`-gencode=arch=compute_${num},code=sm_${num}`);
  }
  // PTX for the newest plain (non "a") arch, so later GPUs can still JIT the kernels.
  if (!process.env.MEGABEAM_CUDA_ARCHS) flags.push('-gencode=arch=compute_90,code=compute_90');
  return flags;
}

module.exports = { cudaHome, archs, archsDefine, gencodeFlags };
if (require.main === module) {
  const what = process.argv[2];
  const home = cudaHome();
  if (what === 'enabled') process.stdout.write(home ? '1' : '0');
  else if (what === 'home') process.stdout.write(home || '/nonexistent');
  else if (what === 'archs-define') process.stdout.write(archsDefine());
  else if (what === 'cmake-archs') process.stdout.write(archs().map((a) => `${a}-real`).join(';') + (process.env.MEGABEAM_CUDA_ARCHS ? '' : ';90-virtual'));
  else process.stdout.write(gencodeFlags().join(' '));
}
