// `megabeam launch --nproc W megabeam train ...`: W processes over the TCP backend train one sequence in
// sequence parallel (zigzag shards, ring attention, ZeRO-1) and log the loss curve of the one-process run;
// rank 0 alone logs and writes the model, every rank writes its optimizer shard; a W=2 checkpoint resumes
// at W=2.
import t from 'tap';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { trainCli } from '../lib/cli/train';
import { parseLaunchArgs, MEGABEAM_BIN } from '../lib/cli/launch';
import { latestCheckpoint } from '../lib/train/checkpoint';
import { cli, cliEntry } from './helpers/spawn-ts';
import { TINY, io, losses, writeTokens } from './helpers/train-run';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'mb-train-launch-'));
t.teardown(() => fs.rmSync(tmp, { recursive: true, force: true }));


t.test('launch resolves the word megabeam to this package\'s CLI', async (t) => {
  const o = await parseLaunchArgs(['--nproc', '2', 'megabeam', 'train', '--steps', '1']);
  t.ok(typeof o === 'object' && o.script === MEGABEAM_BIN && fs.existsSync(MEGABEAM_BIN), String(typeof o === 'object' ? o.script : o));
  t.same(typeof o === 'object' && o.args, ['train', '--steps', '1']);
  const p = await parseLaunchArgs(['--nproc', '2', 'x.js']);
  t.equal(typeof p === 'object' && p.script, 'x.js', 'other scripts are untouched');
});

t.test('megabeam train at world 2 (launch, TCP) = world 1: loss curve, gradient norms, parameters; shards; resume', async (t) => {
  const cfg = path.join(tmp, 'config.json'), tok = path.join(tmp, 'tok.bin');
  fs.writeFileSync(cfg, JSON.stringify(TINY));
  writeTokens(tok, 8192);
  const base = ['--config', cfg, '--data', tok, '--seq=64', '--lr', '2e-3', '--warmup', '2', '--batch-accum', '2', '--device', 'cpu', '--quiet',
    '--weight-decay', '0.1', '--max-grad-norm', '0.5', '--seed', '4'];
  const log1 = path.join(tmp, 'w1.jsonl'), log2 = path.join(tmp, 'w2.jsonl'), ck = path.join(tmp, 'ck2');
  const c = io();
  t.equal(await trainCli([...base, '--steps', '4', '--log', log1, '--save', path.join(tmp, 'm1')], c.io), 0, c.err.join('\n'));
  const r = await cli(['launch', '--nproc', '2', '--device', 'cpu', cliEntry, 'train', ...base, '--steps', '4', '--log', log2,
    '--ckpt-dir', ck, '--ckpt-every', '2', '--save', path.join(tmp, 'm2')]);
  t.equal(r.code, 0, `launch exit code (stderr: ${r.err.slice(-3000)})`);
  t.match(r.out, /\[rank 0\] done at step 4\/4: loss [\d.]+/, 'rank 0 reports');
  t.notMatch(r.out + r.err, /\[rank 1\]/, 'rank 1 prints nothing');
  t.match(r.err, /rank 0 of 2, sequence parallel over tcp/);
  const a = losses(log1), b = losses(log2);
  t.same(b.map((x) => x.step), [1, 2, 3, 4], 'one log, written once (by rank 0)');
  for (let i = 0; i < a.length; i++) {
    t.ok(Math.abs(a[i].loss - b[i].loss) <= 1e-5 * Math.max(1, a[i].loss), `step ${i + 1}: loss ${b[i].loss} vs ${a[i].loss}`);
    t.ok(Math.abs(a[i].gradNorm - b[i].gradNorm) <= 1e-4 * a[i].gradNorm, `step ${i + 1}: gradient norm ${b[i].gradNorm} vs ${a[i].gradNorm}`);
  }
  t.ok(a[3].loss < a[0].loss, 'and it learns');
  // The saved models agree (the parameters after 4 ZeRO-1 steps equal the world-1 ones).
  const { load } = await import('../lib/safetensors');
  const m1 = await load(path.join(tmp, 'm1', 'model.safetensors')), m2 = await load(path.join(tmp, 'm2', 'model.safetensors'));
  let worst = 0;
  for (const [name, x] of m1) {
    const p = await x.toArray(), q = await m2.get(name)!.toArray();
    for (let j = 0; j < p.length; j++) worst = Math.max(worst, Math.abs(p[j] - q[j]));
  }
  for (const x of [...m1.values(), ...m2.values()]) x.dispose();
  t.ok(worst < 1e-4, `parameters match world 1 (max diff ${worst})`);
  const last = latestCheckpoint(ck)!;
  t.ok(['optimizer-rank0-of-2.safetensors', 'optimizer-rank1-of-2.safetensors', 'model.safetensors'].every((f) => fs.existsSync(path.join(last, f))),
    'every rank wrote its optimizer shard');
  // Resume at world 2: steps 5-6 continue the same log.
  const r2 = await cli(['launch', '--nproc', '2', '--device', 'cpu', cliEntry, 'train', ...base, '--steps', '6', '--log', log2, '--ckpt-dir', ck, '--resume']);
  t.equal(r2.code, 0, r2.err.slice(-3000));
  t.match(r2.err, /\[rank 0\] megabeam train: resuming from .*step-00000004/);
  t.same(losses(log2).map((x) => x.step), [1, 2, 3, 4, 5, 6]);
  // A sequence the zigzag cannot cut evenly is refused on every rank, before anything is loaded.
  const r3 = await cli(['launch', '--nproc', '2', '--device', 'cpu', cliEntry, 'train', ...base.filter((x) => x !== '--seq=64'), '--seq', '66', '--steps', '1']);
  t.not(r3.code, 0);
  t.match(r3.err, /ERR_ARG: --seq 66 must be a multiple of 2·world size \(4\)/);
});
