// Training checkpoints: everything a killed run needs to continue as if it had never stopped.
//
// Layout of one checkpoint (a directory; `dir` holds several and a `latest` pointer):
//   dir/step-00000120/
//     config.json + model.safetensors (or shards + index)   the parameters, HF names (loadable by HF)
//     optimizer.safetensors  (world 1)  |  optimizer-rank<r>-of-<W>.safetensors   AdamW m, v, f32 master
//     state.json   { version, step, optimizerStep, sampler, rng, world, meta }   written last
//   dir/latest     "step-00000120"
//
// Atomicity: everything is written into dir/.tmp-step-00000120, every file fsynced (safetensors does
// it; state.json here), then the directory is fsynced and renamed to step-00000120 — a crash at any
// point leaves either the complete checkpoint or none (the temp directory is removed on the next save).
// Only then does `latest` move (temp file + rename) and are checkpoints beyond the last `keep` deleted.
// Resuming takes `latest`, or the highest complete step-* directory when `latest` is missing or stale.
//
// With a process group (data/sequence parallel, ZeRO-1): parameters are replicated, so rank 0 writes
// them; every rank writes its own optimizer shard; barriers order the steps.
import * as fs from 'fs';
import * as path from 'path';
import { ArgumentError, MegabeamError } from '../errors';
import { show } from '../guard';
import * as safetensors from '../safetensors';
import type { Tensor } from '../tensor';
import type { Group } from '../dist/types';
import type { Model } from '../model/mistral';
import type { AdamW } from '../optim';

export const CHECKPOINT_VERSION = 1;

export interface CheckpointState {
  version: number;
  /** Training steps completed. */
  step: number;
  optimizerStep: number;
  /** The data source's state (Sampler.state() or a batch source's), JSON. */
  sampler: unknown;
  /** The training loop's RNG state (4 uint32). */
  rng: number[];
  world: number;
  /** Anything else the caller wants back (CLI arguments, schedule parameters). */
  meta?: unknown;
  time: string;
}

const STEP_RE = /^step-(\d{8,})$/;
const stepName = (step: number) => `step-${String(step).padStart(8, '0')}`;

function optimizerFile(rank: number, world: number): string {
  return world > 1 ? `optimizer-rank${rank}-of-${world}.safetensors` : 'optimizer.safetensors';
}

function fsyncPath(p: string): void {
  // Directories too (Linux): makes the entries (new files, a rename) durable.
  let fd: number | undefined;
  try {
    fd = fs.openSync(p, 'r');
    fs.fsyncSync(fd);
  } catch {
    // Some filesystems refuse fsync on directories; the rename is still atomic.
  } finally {
    if (fd !== undefined) fs.closeSync(fd);
  }
}

function writeFileSynced(file: string, text: string): void {
  const fd = fs.openSync(file, 'w');
  try {
    fs.writeSync(fd, text);
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}

function wrapFs(op: string, e: unknown): MegabeamError {
  if (e instanceof MegabeamError) return e;
  return new ArgumentError(`checkpoint.${op}: ${(e as Error)?.message ?? String(e)}`);
}

function checkPath(op: string, p: unknown): void {
  if (typeof p !== 'string' || p === '') throw new ArgumentError(`${op}: expected a directory path, got ${show(p)}`);
}

/** Complete checkpoints in `dir`, oldest first (by step). */
export function listCheckpoints(dir: string): { step: number; path: string }[] {
  checkPath('listCheckpoints', dir);
  let names: string[];
  try {
    names = fs.readdirSync(dir);
  } catch {
    return [];
  }
  return names
    .map((n) => ({ n, m: STEP_RE.exec(n) }))
    .filter((x) => x.m && fs.existsSync(path.join(dir, x.n, 'state.json')))
    .map((x) => ({ step: Number(x.m![1]), path: path.join(dir, x.n) }))
    .sort((a, b) => a.step - b.step);
}

/** The checkpoint to resume from in `dir` (`latest`, else the highest complete one), or null. */
export function latestCheckpoint(dir: string): string | null {
  checkPath('latestCheckpoint', dir);
  try {
    const name = fs.readFileSync(path.join(dir, 'latest'), 'utf8').trim();
    if (STEP_RE.test(name) && fs.existsSync(path.join(dir, name, 'state.json'))) return path.join(dir, name);
  } catch {
    // no pointer: fall back to scanning
  }
  const all = listCheckpoints(dir);
  return all.length ? all[all.length - 1].path : null;
}

export interface SaveCheckpointArgs {
  dir: string;
  model: Model;
  optimizer: AdamW;
  state: Omit<CheckpointState, 'version' | 'time' | 'world' | 'optimizerStep'>;
  /** Keep this many checkpoints (default 2); older ones are deleted after the new one is in place. */
  keep?: number;
  group?: Group;
}

/** Writes one checkpoint atomically; returns its directory. */
export async function saveCheckpoint(a: SaveCheckpointArgs): Promise<string> {
  if (!a || typeof a !== 'object') throw new ArgumentError(`saveCheckpoint: expected { dir, model, optimizer, state }, got ${show(a)}`);
  checkPath('saveCheckpoint: dir', a.dir);
  if (!a.state || typeof a.state !== 'object') throw new ArgumentError('saveCheckpoint: state must be an object ({ step, ... })');
  if (!a.model || typeof a.model !== 'object' || typeof a.model.save !== 'function') throw new ArgumentError('saveCheckpoint: model must be a megabeam model');
  if (!a.optimizer || typeof a.optimizer !== 'object' || typeof a.optimizer.state !== 'function') throw new ArgumentError('saveCheckpoint: optimizer must be an AdamW');
  const g = a.group && a.group.worldSize > 1 ? a.group : undefined;
  const rank = g?.rank ?? 0, world = g?.worldSize ?? 1;
  const keep = a.keep ?? 2;
  if (!Number.isSafeInteger(keep) || keep < 1) throw new ArgumentError('checkpoint: keep must be an integer >= 1');
  if (!Number.isSafeInteger(a.state.step) || a.state.step < 0) throw new ArgumentError('checkpoint: step must be an integer >= 0');
  const name = stepName(a.state.step);
  const final = path.join(a.dir, name);
  const tmp = path.join(a.dir, `.tmp-${name}`);
  try {
    if (rank === 0) {
      fs.mkdirSync(a.dir, { recursive: true });
      fs.rmSync(tmp, { recursive: true, force: true }); // a crashed earlier attempt
      fs.mkdirSync(tmp);
    }
  } catch (e) {
    throw wrapFs('save', e);
  }
  if (g) await g.barrier();
  const opt = a.optimizer.state();
  await safetensors.save(path.join(tmp, optimizerFile(rank, world)), opt.tensors, {
    metadata: { format: 'megabeam-adamw', step: String(opt.step), rank: String(rank), world: String(world) },
  });
  if (rank === 0) {
    await a.model.save(tmp);
    const st: CheckpointState = {
      version: CHECKPOINT_VERSION, step: a.state.step, optimizerStep: opt.step, sampler: a.state.sampler ?? null,
      rng: [...a.state.rng], world, meta: a.state.meta, time: new Date().toISOString(),
    };
    try {
      writeFileSynced(path.join(tmp, 'state.json'), JSON.stringify(st, null, 2) + '\n');
    } catch (e) {
      throw wrapFs('save', e);
    }
  }
  if (g) await g.barrier();
  if (rank === 0) {
    try {
      // safetensors fsyncs its files; config.json (model.save) and anything else are synced here.
      for (const f of fs.readdirSync(tmp)) fsyncPath(path.join(tmp, f));
      fsyncPath(tmp);
      // Re-saving the same step (a resumed run that stops again at once) replaces it.
      if (fs.existsSync(final)) fs.rmSync(final, { recursive: true, force: true });
      fs.renameSync(tmp, final);
      fsyncPath(a.dir);
      const ptr = path.join(a.dir, '.latest.tmp');
      writeFileSynced(ptr, name + '\n');
      fs.renameSync(ptr, path.join(a.dir, 'latest'));
      fsyncPath(a.dir);
      const all = listCheckpoints(a.dir);
      for (const c of all.slice(0, Math.max(0, all.length - keep))) fs.rmSync(c.path, { recursive: true, force: true });
    } catch (e) {
      throw wrapFs('save', e);
    }
  }
  if (g) await g.barrier();
  return final;
}

/** Reads state.json of a checkpoint directory (checked). */
export function readCheckpointState(ckpt: string): CheckpointState {
  checkPath('readCheckpointState', ckpt);
  let st: CheckpointState;
  try {
    st = JSON.parse(fs.readFileSync(path.join(ckpt, 'state.json'), 'utf8')) as CheckpointState;
  } catch (e) {
    throw new ArgumentError(`checkpoint: ${ckpt}: cannot read state.json (${(e as Error).message})`);
  }
  if (!st || st.version !== CHECKPOINT_VERSION || !Number.isSafeInteger(st.step) || !Array.isArray(st.rng) || st.rng.length !== 4)
    throw new ArgumentError(`checkpoint: ${ckpt}: state.json is not a megabeam checkpoint of version ${CHECKPOINT_VERSION}`);
  return st;
}

/**
 * Loads a checkpoint into an existing model and optimizer (same config, same world size). Returns its
 * state (step, sampler, rng, meta) for the caller to restore the rest.
 */
export async function loadCheckpoint(ckpt: string, model: Model, optimizer: AdamW, group?: Group): Promise<CheckpointState> {
  checkPath('loadCheckpoint', ckpt);
  if (!model || typeof model !== 'object' || typeof model.load !== 'function') throw new ArgumentError('loadCheckpoint: model must be a megabeam model');
  if (!optimizer || typeof optimizer !== 'object' || typeof optimizer.loadState !== 'function') throw new ArgumentError('loadCheckpoint: optimizer must be an AdamW');
  if (group !== undefined && group !== null && (typeof group !== 'object' || !Number.isSafeInteger(group.worldSize)))
    throw new ArgumentError('loadCheckpoint: group must be a process group');
  const g = group && group.worldSize > 1 ? group : undefined;
  const rank = g?.rank ?? 0, world = g?.worldSize ?? 1;
  const st = readCheckpointState(ckpt);
  if (st.world !== world)
    throw new ArgumentError(`checkpoint: ${ckpt} was written by ${st.world} rank(s), this run has ${world} (optimizer shards differ)`);
  await model.load(ckpt);
  const tensors: Map<string, Tensor> = await safetensors.load(path.join(ckpt, optimizerFile(rank, world)), { device: model.device });
  try {
    optimizer.loadState({ step: st.optimizerStep, tensors });
  } finally {
    for (const t of tensors.values()) t.dispose();
  }
  return st;
}
