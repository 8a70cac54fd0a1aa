// `megabeam bench train` under `megabeam launch` (sequence parallel: zigzag shards, ring attention, ZeRO-1
// AdamW): with CPU ranks over TCP it runs, its first step's loss equals the single-process step's at worlds
// 2 and 3, one peak per rank is reported, only rank 0 prints; a sequence the shards cannot split is refused.
import t from 'tap';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { cli, cliEntry } from './helpers/spawn-ts';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'mb-benchtrain-'));
t.teardown(() => fs.rmSync(tmp, { recursive: true, force: true }));

// A tiny Mistral-shaped model (GQA 4/2) so that the step runs in a second on the CPU.
const config = path.join(tmp, 'tiny.json');
fs.writeFileSync(config, JSON.stringify({
  vocab_size: 64, hidden_size: 32, intermediate_size: 64, num_hidden_layers: 2, num_attention_heads: 4,
  num_key_value_heads: 2, rms_norm_eps: 1e-5, rope_theta: 10000, max_position_embeddings: 4096, tie_word_embeddings: false,
}));
const args = ['bench', 'train', '--device', 'cpu', '--config', config, '--seqs', '48,96', '--reps', '1'];

interface Row {
  seq: number; world: number; status: string; firstLoss: number; tokensPerSecond: number; secondsPerStep: number; fwdBwdSeconds: number;
  peakGiBPerRank?: number[];
}

t.test('world 1, 2, 3: the same first-step loss; times, one peak per rank', async (t) => {
  const one = path.join(tmp, 'w1.json');
  const r1 = await cli([...args, '--out', one]);
  t.equal(r1.code, 0, r1.err.slice(-2000));
  const j1 = JSON.parse(fs.readFileSync(one, 'utf8'));
  t.equal(j1.world, 1);
  const base = j1.rows as Row[];
  t.ok(base.every((r) => r.status === 'ok' && Number.isFinite(r.firstLoss) && r.firstLoss > 0 && r.fwdBwdSeconds > 0), JSON.stringify(base));
  for (const W of [2, 3]) {
    const file = path.join(tmp, `w${W}.json`);
    const r = await cli(['launch', '--nproc', String(W), '--device', 'cpu', cliEntry, ...args, '--out', file]);
    t.equal(r.code, 0, r.err.slice(-2000));
    const j = JSON.parse(fs.readFileSync(file, 'utf8'));
    t.equal(j.world, W);
    const rows = j.rows as Row[];
    t.same(rows.map((x) => [x.seq, x.status]), [[48, 'ok'], [96, 'ok']]);
    for (const [i, row] of rows.entries()) {
      // forwardBackward's loss with a group: the whole sequence's mean loss, as in one process.
      const rel = Math.abs(row.firstLoss - base[i].firstLoss) / base[i].firstLoss;
      t.ok(rel < 1e-5, `W=${W} S=${row.seq}: first-step loss ${row.firstLoss} vs ${base[i].firstLoss} in one process (rel ${rel.toExponential(1)})`);
      t.equal(row.peakGiBPerRank?.length, W, 'one peak per rank');
      t.ok(row.peakGiBPerRank!.every((p) => p > 0) && row.tokensPerSecond > 0, 'peaks and tokens/s');
      // One timed step (--reps 1): its forward+backward on the slowest rank is part of the slowest rank's step.
      t.ok(row.fwdBwdSeconds > 0 && row.fwdBwdSeconds <= row.secondsPerStep, `fwd+bwd ${row.fwdBwdSeconds} s of ${row.secondsPerStep} s`);
    }
    t.match(r.out, /\[rank 0\] 96 /, 'rank 0 prints the table');
    t.notMatch(r.out, /\[rank [12]\] 96 /, 'the other ranks do not');
    t.match(r.out + r.err, /ZeRO-1 over \d ranks on tcp/, 'says how the optimizer is sharded');
  }
});

t.test('--optimizer none at world 2: forward + backward only, the same first-step loss', async (t) => {
  const one = path.join(tmp, 'n1.json'), two = path.join(tmp, 'n2.json');
  const r1 = await cli([...args, '--optimizer', 'none', '--out', one]);
  const r2 = await cli(['launch', '--nproc', '2', '--device', 'cpu', cliEntry, ...args, '--optimizer', 'none', '--out', two]);
  t.equal(r1.code, 0, r1.err.slice(-2000));
  t.equal(r2.code, 0, r2.err.slice(-2000));
  const [j1, j2] = [one, two].map((f) => JSON.parse(fs.readFileSync(f, 'utf8')));
  t.equal(j2.optimizer, 'none');
  t.match(r2.out + r2.err, /gradients all-reduced over 2 ranks/);
  for (const [i, row] of (j2.rows as Row[]).entries()) {
    const rel = Math.abs(row.firstLoss - j1.rows[i].firstLoss) / j1.rows[i].firstLoss;
    t.ok(row.status === 'ok' && rel < 1e-5, `S=${row.seq}: ${row.firstLoss} vs ${j1.rows[i].firstLoss}`);
  }
});

t.test('a sequence the zigzag shards cannot split: ERR_ARG on every rank, the job fails', async (t) => {
  const r = await cli(['launch', '--nproc', '2', '--device', 'cpu', cliEntry, 'bench', 'train', '--device', 'cpu', '--config', config, '--seqs', '50']);
  t.not(r.code, 0);
  t.match(r.out + r.err, /ERR_ARG.*--seqs: 50 is not a multiple of 4 \(zigzag shards over 2 ranks\)/);
});
