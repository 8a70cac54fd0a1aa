// Shared pieces of the benchmarks and the demo: timing with device sync, tables, a progress bar, args.
import { performance } from 'perf_hooks';
import { DeviceLike } from '../device';
import type { Group } from '../dist/types';
import { empty, synchronize, tensor } from '../tensor';

// Flags are parsed by lib/cli/args.ts (one parser for every command).
export type { CliIO as IO } from '../cli/args';

/** Wall time of `fn` including the device work it enqueued (synchronize before and after). */
export async function timed(device: DeviceLike, fn: () => void | Promise<void>): Promise<number> {
  await synchronize(device);
  const t0 = performance.now();
  await fn();
  await synchronize(device);
  return (performance.now() - t0) / 1e3;
}


/**
 * Seconds per call of `fn` over one batch of `inner` calls between device syncs: the host enqueues ahead, as in
 * a training step, so what a call costs on the host hides behind the device work.
 */
export async function batched(device: DeviceLike, inner: number, fn: () => void): Promise<number> {
  await synchronize(device);
  const t0 = performance.now();
  for (let i = 0; i < inner; i++) fn();
  await synchronize(device);
  return (performance.now() - t0) / 1e3 / inner;
}

/** Seconds per call of `fn`: median over rounds of `inner` calls bracketed by device syncs. */
export async function perCall(device: DeviceLike, reps: number, inner: number, fn: () => void): Promise<number> {
  fn(); fn();
  const ts: number[] = [];
  for (let r = 0; r < reps; r++) ts.push(await batched(device, inner, fn));
  return median(ts);
}

export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

export function table(headers: string[], rows: (string | number)[][]): string {
  const cells = rows.map((r) => r.map((c) => (typeof c === 'number' ? fmt(c) : c)));
  const w = headers.map((h, i) => Math.max(h.length, ...cells.map((r) => r[i].length)));
  const line = (r: string[]) => r.map((c, i) => (i === 0 ? c.padEnd(w[i]) : c.padStart(w[i]))).join('  ');
  return [line(headers), w.map((x) => '-'.repeat(x)).join('  '), ...cells.map(line)].join('\n');
}

export function fmt(x: number): string {
  if (!Number.isFinite(x)) return String(x);
  if (x === 0) return '0';
  const a = Math.abs(x);
  if (a >= 1000) return x.toFixed(0);
  if (a >= 10) return x.toFixed(1);
  if (a >= 0.01) return x.toFixed(3);
  return x.toExponential(2);
}

export const GiB = 2 ** 30;

/** ||a - b|| / ||b|| (b the reference). */
export function relL2(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let num = 0, den = 0;
  for (let i = 0; i < a.length; i++) { num += (a[i] - b[i]) ** 2; den += b[i] ** 2; }
  return Math.sqrt(num / (den || 1e-300));
}

/**
 * A progress bar on stderr for work that takes seconds: the event loop stays free while the device
 * works, so a timer redraws the bar against the expected duration.
 */
export async function withProgress<T>(label: string, expectedS: number, work: () => Promise<T>): Promise<T> {
  const tty = process.stderr.isTTY;
  if (!(expectedS > 1.5)) return work();
  const t0 = Date.now();
  const draw = (done: boolean) => {
    const el = (Date.now() - t0) / 1e3;
    const frac = done ? 1 : Math.min(0.99, el / expectedS);
    const n = 30, k = Math.round(frac * n);
    const bar = `[${'='.repeat(k)}${k < n ? '>' : ''}${' '.repeat(Math.max(0, n - k - 1))}] ${label} ${el.toFixed(1)}s`;
    process.stderr.write(tty ? `\r${bar}` : `${bar}\n`);
  };
  const timer = setInterval(() => draw(false), tty ? 200 : 5000);
  try {
    return await work();
  } finally {
    clearInterval(timer);
    draw(true);
    if (tty) process.stderr.write('\n');
  }
}

/** Wall time of `fn` including its device work, on the slowest rank of `group` (syncs and barriers around it). */
export async function slowestRank(dev: DeviceLike, group: Group | undefined, fn: () => Promise<void>): Promise<number> {
  await synchronize(dev);
  if (group) await group.barrier();
  const t0 = performance.now();
  await fn();
  await synchronize(dev);
  if (group) await group.barrier();  // the slowest rank's time
  return (performance.now() - t0) / 1e3;
}

/** Every rank's numbers, in rank order, on every rank. */
export async function gatherNumbers(group: Group | undefined, dev: DeviceLike, xs: number[]): Promise<number[][]> {
  if (!group) return [xs];
  const mine = tensor(Float32Array.from(xs), { device: dev });
  const all = empty([group.worldSize * xs.length], { device: dev });
  try {
    await group.allGather(all, mine);
    const a = Array.from(await all.toArray());
    return Array.from({ length: group.worldSize }, (_, r) => a.slice(r * xs.length, (r + 1) * xs.length));
  } finally {
    mine.dispose();
    all.dispose();
  }
}
