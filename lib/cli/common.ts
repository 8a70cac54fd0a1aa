// Flags shared by several commands: one name per concept, so `--kv-heads` means the same everywhere.
import * as fs from 'fs';
import * as path from 'path';
import { cuda, parseDevice, DeviceString } from '../device';
import { ArgumentError } from '../errors';
import { FlagSpec } from './args';

export const JSON_FLAG: FlagSpec = { type: 'bool', help: 'print the result as JSON alone on stdout (tables and progress go to stderr)' };
export const OUT_FLAG: FlagSpec = { type: 'string', metavar: 'FILE', help: 'also write the result as JSON to FILE' };
export const DEVICE_FLAG: FlagSpec = { type: 'string', metavar: 'cpu|cuda|cuda:N', help: 'where to run', default: 'cuda when available, else cpu' };
export const HEADS_FLAG: FlagSpec = { type: 'int', min: 1, max: 4096, help: 'query heads', aliases: ['heads-q'] };
export const KV_HEADS_FLAG: FlagSpec = { type: 'int', min: 1, max: 4096, help: 'key/value heads (GQA; divides --heads)', aliases: ['heads-kv'] };
export const HEAD_DIM_FLAG: FlagSpec = { type: 'int', min: 1, max: 65536, help: 'head dimension' };
export const REPS_FLAG: FlagSpec = { type: 'int', min: 1, max: 100000, help: 'timed repetitions (median)' };

/** --device or the default (cuda:0 when usable, else cpu); a CUDA device that cannot be used is ERR_NO_CUDA. */
export function resolveDevice(v: unknown): DeviceString {
  if (v === undefined) return cuda.isAvailable() ? 'cuda:0' : 'cpu';
  return parseDevice(v, '--device').name;
}

export function checkHeads(heads: number, kvHeads: number): void {
  if (heads % kvHeads !== 0) throw new ArgumentError(`--heads (${heads}) must be a multiple of --kv-heads (${kvHeads})`);
}

/**
 * Checked before the work starts (a benchmark may run for minutes): the folder of an output file exists
 * (created when `create`) and is writable. Throws the fs error (reported as ERR_ARG by the runner).
 */
export function checkOutputPath(file: string, create = true): void {
  const dir = path.dirname(path.resolve(file));
  if (create) fs.mkdirSync(dir, { recursive: true });
  fs.accessSync(dir, fs.constants.W_OK);
}

/** A comma list flag whose items must come from `allowed` (e.g. --passes fwd,dx). */
export function listOf(v: unknown, allowed: readonly string[], flag: string, def: string[]): string[] {
  if (v === undefined) return def;
  const items = String(v).split(',').map((x) => x.trim());
  for (const x of items) {
    if (!allowed.includes(x)) throw new ArgumentError(`${flag}: ${JSON.stringify(x)} is not one of ${allowed.join(', ')}`);
  }
  return items;
}
