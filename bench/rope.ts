// Dev script: `npx tsx bench/rope.ts --angles` prints the angle-error table of docs/rope.md (CPU, no GPU
// needed); any other arguments go to the shipped benchmark (`megabeam bench rope`, lib/bench/rope.ts).
import { rope } from '../lib/rope';
import { tensor } from '../lib/tensor';
import { IO, table } from '../lib/bench/util';
import { benchRope } from '../lib/bench/rope';
import * as ref from '../test/ref/rope';

/**
 * Max angle error over the 64 pairs (d=128) and the 256 positions ending at each listed position.
 * exact: measured through rope.apply on the CPU (f32 unit vectors in, atan2 of (cos, sin) out,
 * against the BigInt-exact angle). fp32 / bf16: the error of the angle each mode feeds to sin/cos,
 * computed exactly; and, in brackets, measured through rope.apply like exact (bf16 adds the
 * quantisation of its bf16 cos/sin table).
 */
export async function angleTable(io: IO): Promise<void> {
  const positions = [1023, 32767, 131071, 524287, 1048575, 4194303, 16777215, 2147483647];
  const W = 256, D = 128;
  for (const base of [1e6, 75e6]) {
    const invFreq = ref.invFreqFromBase(base, D);
    const rows: string[][] = [];
    for (const P of positions) {
      // one head; each row holds (1, 0) in every pair (neox: first half 1, second half 0)
      const v = new Float32Array(W * D);
      for (let s = 0; s < W; s++) for (let i = 0; i < D / 2; i++) v[s * D + i] = 1;
      const x = tensor(v, { shape: [1, W, 1, D], dtype: 'f32' });
      const measured: Record<string, number> = {};
      for (const precision of ['exact', 'fp32', 'bf16'] as const) {
        const y = rope.apply(x, { invFreq, positionOffset: P - W + 1, precision });
        const out = await y.toArray();
        y.dispose();
        let m = 0;
        for (let s = 0; s < W; s++) {
          for (let i = 0; i < D / 2; i++) {
            const got = Math.atan2(out[s * D + i + D / 2], out[s * D + i]);
            m = Math.max(m, Math.abs(wrap(got - ref.exactAngle(P - W + 1 + s, invFreq[i]))));
          }
        }
        measured[precision] = m;
      }
      x.dispose();
      let f = 0, b = 0;
      for (let p = P - W + 1; p <= P; p++) {
        for (let i = 0; i < D / 2; i++) {
          f = Math.max(f, ref.angleError('fp32', p, invFreq[i]));
          b = Math.max(b, ref.angleError('bf16', p, invFreq[i]));
        }
      }
      rows.push([String(P), measured.exact.toExponential(1), `${f.toExponential(1)} (${measured.fp32.toExponential(1)})`,
        `${b.toExponential(1)} (${measured.bf16.toExponential(1)})`]);
    }
    io.out(`\nbase ${base.toExponential(0)}, d=${D}: max |angle error| in rad over 64 pairs x ${W} positions ending at`);
    io.out(table(['position', 'exact', 'fp32: angle (through rope)', 'bf16: angle (through rope)'], rows));
  }
}

function wrap(a: number): number {
  return a - 2 * Math.PI * Math.round(a / (2 * Math.PI));
}

if (require.main === module) {
  const io: IO = { out: (s) => console.log(s), err: (s) => console.error(s) };
  (process.argv.includes('--angles') ? angleTable(io).then(() => 0) : benchRope(process.argv.slice(2), io))
    .then((rc) => { process.exitCode = rc; })
    .catch((e) => { console.error(e); process.exitCode = 1; });
}
