// `megabeam bench ring-dist` (ring attention across launched ranks): under `megabeam launch` with CPU ranks
// over TCP it runs ring and all-gather, passes its own check, reports per-rank memory, hidden communication and
// the 1-device speedup; its windowed check catches a wrong result; bad flags give one coded line.
import t from 'tap';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { attention } from '../lib/attention';
import { windowErrors } from '../lib/bench/ringdist';
import { randn, scale } from '../lib';
import { cli, cliEntry } from './helpers/spawn-ts';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'mb-ringdist-'));
t.teardown(() => fs.rmSync(tmp, { recursive: true, force: true }));


const small = ['--device', 'cpu', '--seq', '384', '--heads', '4', '--kv-heads', '2', '--head-dim', '16', '--reps', '1'];

for (const W of [2, 3]) {
  t.test(`launch --nproc ${W} (TCP CPU ranks): ring and all-gather pass the check; memory, hidden share and speedup reported`, async (t) => {
    const file = path.join(tmp, `rd${W}.json`);
    const r = await cli(['launch', '--nproc', String(W), '--device', 'cpu', cliEntry, 'bench', 'ring-dist', ...small, '--baseline', '--out', file]);
    t.equal(r.code, 0, r.err.slice(-2000));
    const j = JSON.parse(fs.readFileSync(file, 'utf8'));
    t.equal(j.world, W);
    t.equal(j.backend, 'tcp');
    t.same(j.rows.map((x: { algorithm: string }) => x.algorithm), ['ring', 'allgather']);
    for (const row of j.rows) {
      t.ok(row.check.pass && row.check.out < 1e-4 && row.check.dq < 1e-4 && row.check.lse < 1e-4, `${row.algorithm}: check ${JSON.stringify(row.check)}`);
      t.equal(row.peak_gib_per_rank.length, W, 'one peak per rank');
      const inputs = (384 / W) * (2 * 4 + 2 * 2) * 16 * 4 / 2 ** 30;  // q, dout, k, v of one rank (f32)
      t.ok(row.peak_gib_per_rank.every((p: number) => p > inputs && p < 50 * inputs), `peaks above the inputs (${inputs} GiB): ${row.peak_gib_per_rank}`);
      t.ok(row.fwd_s > 0 && row.bwd_s > 0 && row.speedup_fwd > 0 && row.speedup_bwd > 0, 'times and speedups');
    }
    const ring = j.rows[0];
    t.ok(ring.hidden_fwd >= 0 && ring.hidden_fwd <= 1 && ring.hidden_bwd >= 0 && ring.hidden_bwd <= 1, `hidden ${ring.hidden_fwd} / ${ring.hidden_bwd}`);
    t.ok(ring.compute_fwd_s > 0 && ring.comm_fwd_s > 0 && ring.comm_bwd_s > 0, 'compute alone and exchange alone timed');
    t.ok(j.single.fwd_s > 0, 'single-device yardstick on rank 0');
    t.match(r.out, /\[rank 0\] ring /, 'rank 0 prints the table');
    t.notMatch(r.out, /\[rank 1\] ring /, 'the other ranks do not');
  });
}

t.test('the windowed check catches a wrong output, lse or dq (one rank, against the same single-device path)', async (t) => {
  const S = 256, o = { causal: true };
  const q = randn([1, S, 4, 16], { seed: 1 }), k = randn([1, S, 2, 16], { seed: 2 }), v = randn([1, S, 2, 16], { seed: 3 });
  const dout = randn([1, S, 4, 16], { seed: 4 });
  const f = attention.forward(q, k, v, o);
  const g = attention.backward(dout, q, k, v, f.out, f.lse, o);
  const base = { q, dout, kFull: k, vFull: v, S, rank: 0, world: 1, layout: 'zigzag' as const, causal: true };
  const good = await windowErrors({ ...base, out: f.out, lse: f.lse, dq: g.dq });
  t.ok(good.out < 1e-6 && good.dq < 1e-6 && good.lse < 1e-6, `the right results pass: ${JSON.stringify(good)}`);
  const bad = [scale(f.out, 1.01), scale(f.lse, 1.01), scale(g.dq, 1.01)];
  t.ok((await windowErrors({ ...base, out: bad[0], lse: f.lse, dq: g.dq })).out > 5e-3, 'out off by 1 %');
  t.ok((await windowErrors({ ...base, out: f.out, lse: bad[1], dq: g.dq })).lse > 1e-3, 'lse off by 1 %');
  t.ok((await windowErrors({ ...base, out: f.out, lse: f.lse, dq: bad[2] })).dq > 5e-3, 'dq off by 1 %');
  for (const x of [q, k, v, dout, f.out, f.lse, g.dq, g.dk, g.dv, ...bad]) x.dispose();
});

t.test('bad flags: one coded line, exit 2', async (t) => {
  for (const [args, what] of [[['--seq', '7'], /--seq 7 must be a multiple of 2/], [['--algorithms', 'ring,nope'], /--algorithms: "nope"/]] as const) {
    const r = await cli(['bench', 'ring-dist', '--device', 'cpu', ...args]);
    t.equal(r.code, 2);
    const lines = r.err.trim().split('\n');
    t.equal(lines.length, 1, r.err);
    t.match(lines[0], /ERR_ARG/);
    t.match(lines[0], what);
  }
  const h = await cli(['bench', 'ring-dist', '--help']);
  t.equal(h.code, 0);
  t.match(h.out, /^usage: megabeam bench ring-dist .*megabeam launch --nproc W megabeam bench ring-dist/);
});
