// `megabeam doctor`: what is installed and what it can use — package version, which addon file was loaded
// (prebuild, local build or MEGABEAM_ADDON) and what it was built with, CUDA driver/runtime, GPUs, and
// the optional libraries. Never throws for a missing addon or GPU: it reports them and exits 1 when the
// addon cannot be loaded.
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import type { Command } from '../cli';
import { version } from '../cli';
import { native } from '../native';
import { CliIO, FlagValues } from './args';
import { JSON_FLAG } from './common';

/** What an optional-library probe (native().ncclInfo / gemmInfo) returns. */
export interface LibraryProbe { found: boolean; path?: string; version?: string; error?: string; backend?: string }

interface BuildInfo {
  cuda: boolean; cudaArchs: string[]; cudaCompiledVersion?: number; cudaRuntimeVersion?: number;
  cudaDriverVersion?: number; libcudaFound?: boolean; deviceCountError?: string; napiVersion: number; compiler: string; arch: string;
}

export interface DoctorReport {
  version: string;
  node: string;
  platform: string;
  addon: { loaded: boolean; kind: 'prebuild' | 'local build' | 'MEGABEAM_ADDON' | 'unknown'; path: string | null; error?: string };
  build: BuildInfo | null;
  cuda: {
    built: boolean; usable: boolean; status: string;
    driverVersion: string | null; runtimeVersion: string | null; compiledWith: string | null; architectures: string[];
  } | null;
  gpus: { index: number; name: string; memoryGiB: number }[];
  cpuThreads: number | null;
  libraries: Record<string, LibraryProbe | 'not checked (this build has no probe)'>;
}

const root = path.join(__dirname, '..', '..');

/** The file the loader picks (lib/native.ts): MEGABEAM_ADDON, else node-gyp-build's choice. */
function addonPath(): { kind: DoctorReport['addon']['kind']; path: string | null; error?: string } {
  const override = process.env.MEGABEAM_ADDON;
  if (override) return { kind: 'MEGABEAM_ADDON', path: path.resolve(override) };
  try {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const p: string = require('node-gyp-build').resolve(root);
    const rel = path.relative(root, p).split(path.sep);
    return { kind: rel[0] === 'prebuilds' ? 'prebuild' : rel[0] === 'build' ? 'local build' : 'unknown', path: p };
  } catch (e) {
    return { kind: 'unknown', path: null, error: (e as Error).message.split('\n')[0] };
  }
}

/** 13000 -> "13.0"; 0 or absent -> null. */
function cudaVersion(v: number | undefined): string | null {
  return v ? `${Math.floor(v / 1000)}.${Math.floor((v % 1000) / 10)}` : null;
}

function libcudaOnDisk(): boolean {
  // Only a hint for CPU-only builds (a CUDA build asks dlopen itself).
  return ['/usr/lib/x86_64-linux-gnu', '/usr/lib/aarch64-linux-gnu', '/usr/lib64', '/usr/lib/wsl/lib']
    .some((d) => fs.existsSync(path.join(d, 'libcuda.so.1')));
}

/**
 * Why CUDA is or is not usable, in words. cudaErrorInsufficientDriver means "driver older than the
 * runtime" only when a driver exists: with no libcuda.so.1 (driver version 0) it means "no driver".
 */
export function cudaStatus(b: BuildInfo, available: boolean, reason: string, count: number): string {
  if (!b.cuda) return `this addon is CPU-only (built without nvcc)${libcudaOnDisk() ? '; an NVIDIA driver is installed: a CUDA build would use it' : ''}`;
  if (available) return `usable: ${count} device(s)`;
  if (b.libcudaFound === false || b.cudaDriverVersion === 0) return 'no NVIDIA driver installed (libcuda.so.1 not found): CPU only';
  if (b.deviceCountError === 'cudaErrorInsufficientDriver') {
    return `the NVIDIA driver (CUDA ${cudaVersion(b.cudaDriverVersion)}) is older than this addon's CUDA runtime ` +
      `(${cudaVersion(b.cudaRuntimeVersion)}): update the driver`;
  }
  if (b.deviceCountError === 'cudaErrorNoDevice' || count === 0) return 'driver present but no CUDA device visible (check CUDA_VISIBLE_DEVICES)';
  return reason || 'CUDA not usable';
}

export async function doctor(): Promise<DoctorReport> {
  const where = addonPath();
  const report: DoctorReport = {
    version: version(), node: process.version, platform: `${process.platform}-${process.arch} (${os.release()})`,
    addon: { loaded: false, ...where }, build: null, cuda: null, gpus: [], cpuThreads: null, libraries: {},
  };
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  let m: any;
  try {
    m = native();
    report.addon.loaded = true;
    delete report.addon.error;
  } catch (e) {
    report.addon.error = (e as Error).message.split('\n')[0];
    return report;
  }
  const b: BuildInfo | null = typeof m.buildInfo === 'function' ? m.buildInfo() : null;
  report.build = b;
  const ci = m.cudaInfo() as { built: boolean; available: boolean; count: number; reason: string; devices: { index: number; name: string; totalMemory: number }[]; cpuThreads: number };
  report.cpuThreads = ci.cpuThreads;
  report.gpus = ci.devices.map((d) => ({ index: d.index, name: d.name, memoryGiB: Number((d.totalMemory / 2 ** 30).toFixed(1)) }));
  report.cuda = {
    built: ci.built, usable: ci.available,
    status: b ? cudaStatus(b, ci.available, ci.reason, ci.count) : (ci.reason || `usable: ${ci.count} device(s)`),
    driverVersion: cudaVersion(b?.cudaDriverVersion), runtimeVersion: cudaVersion(b?.cudaRuntimeVersion),
    compiledWith: cudaVersion(b?.cudaCompiledVersion), architectures: b?.cudaArchs ?? [],
  };
  for (const [name, fn] of [['nccl', 'ncclInfo'], ['cublasLt (gemm)', 'gemmInfo']] as const) {
    if (typeof m[fn] !== 'function') { report.libraries[name] = 'not checked (this build has no probe)'; continue; }
    try {
      report.libraries[name] = m[fn]() as LibraryProbe;
    } catch (e) {
      report.libraries[name] = { found: false, error: (e as Error).message.split('\n')[0] };
    }
  }
  return report;
}

function lib(p: LibraryProbe | string): string {
  if (typeof p === 'string') return p;
  const using = p.backend ? `; in use: ${p.backend}` : '';
  if (!p.found) return `not found${p.error ? `: ${p.error}` : ''}${using}`;
  return `found${p.version ? ` ${p.version}` : ''}${p.path ? ` (${p.path})` : ''}${using}`;
}

export const command: Command = {
  usage: 'megabeam doctor [--json]',
  description: `Package version, the addon file in use (prebuild or local build) and what it was built with,
CUDA driver and runtime versions, GPUs and memory, and the optional libraries found. Exit 1 when the
addon cannot be loaded.`,
  flags: { json: JSON_FLAG },
  async run(opts: FlagValues, io: CliIO): Promise<number> {
    const r = await doctor();
    if (opts.json) {
      io.json!(r);
      return r.addon.loaded ? 0 : 1;
    }
    const rows: [string, string][] = [
      ['megabeam', r.version],
      ['node', `${r.node} on ${r.platform}`],
      ['addon', r.addon.loaded ? `${r.addon.kind}: ${r.addon.path}` : `NOT LOADED: ${r.addon.error}`],
    ];
    if (r.build) rows.push(['built with', `${r.build.compiler}, N-API ${r.build.napiVersion}, ${r.build.arch}${r.build.cuda ? `, CUDA ${r.cuda?.compiledWith}` : ', no CUDA'}`]);
    else if (r.addon.loaded) rows.push(['built with', 'unknown (this addon has no buildInfo(); rebuild it)']);
    if (r.cuda) {
      if (r.cuda.built) rows.push(['CUDA architectures', r.cuda.architectures.join(' ') || 'unknown']);
      rows.push(['CUDA', r.cuda.status]);
      if (r.cuda.built) {
        rows.push(['CUDA driver', r.cuda.driverVersion ?? 'none']);
        rows.push(['CUDA runtime', `${r.cuda.runtimeVersion ?? 'unknown'} (linked statically)`]);
      }
      for (const g of r.gpus) rows.push([`GPU ${g.index}`, `${g.name}, ${g.memoryGiB} GiB`]);
      rows.push(['CPU threads', String(r.cpuThreads)]);
      for (const [k, v] of Object.entries(r.libraries)) rows.push([k, lib(v)]);
    }
    const w = Math.max(...rows.map((x) => x[0].length));
    for (const [k, v] of rows) io.out(`  ${k.padEnd(w)}  ${v}`);
    if (!r.addon.loaded) {
      io.out('');
      io.out('The native addon did not load. Reinstall megabeam (`npm install megabeam`): linux-x64 and linux-arm64 ship');
      io.out('prebuilds; other platforms build from source and need Python 3, make and a C++17 compiler (README: Install).');
      if (r.addon.kind === 'MEGABEAM_ADDON') io.out('MEGABEAM_ADDON is set: unset it to use the installed addon.');
    }
    return r.addon.loaded ? 0 : 1;
  },
};
