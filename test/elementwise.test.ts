import t from 'tap';
import { add, scale, randn, tensor, empty, zeros } from '../lib/index';
import { native } from '../lib/native';
import { throwsCode } from './helpers/assert';
import { testDevices } from './helpers/devices';
import { roundBf16 } from '../lib/dtype';


for (const device of testDevices) {
  t.test(`axpby vs float64 reference (${device})`, async (t) => {
    const n = 10007;
    const a = randn([n], { seed: 11, device });
    const b = randn([n], { seed: 12, dtype: 'bf16', device });
    const [av, bv] = [await a.toArray(), await b.toArray()];
    const out = empty([n], { dtype: 'bf16', device }).fill_(12345);  // poisoned
    add(a, b, { alpha: 0.5, beta: -3, out });
    const got = await out.toArray();
    let bad = 0;
    for (let i = 0; i < n; i++) {
      const want = roundBf16(Math.fround(Math.fround(0.5 * av[i]) + Math.fround(-3 * bv[i])));
      if (got[i] !== want) bad++;
    }
    t.equal(bad, 0, 'every element is the once-rounded fp32 result');
    // in place into a (f32 accumulator), and a new tensor with a dtype
    add(a, b, { out: a });
    const acc = await a.toArray();
    t.ok(acc.every((x, i) => x === Math.fround(av[i] + bv[i])), 'a += b in place');
    const s = scale(b, 2, { dtype: 'f32' });
    t.equal(s.dtype, 'f32');
    const sv = await s.toArray();
    t.ok(sv.every((x, i) => x === 2 * bv[i]), 'scale into a new f32 tensor');
    for (const x of [a, b, out, s]) x.dispose();
  });
}

t.test('axpby errors come from the native check', async (t) => {
  const a = randn([8], { seed: 1 });
  const i = zeros([8], { dtype: 'i32' });
  throwsCode(t, () => add(a, randn([9], { seed: 2 })), 'ERR_SHAPE', 'element counts differ');
  throwsCode(t, () => add(a, i), 'ERR_DTYPE', 'i32 refused');
  throwsCode(t, () => add(a, a, { alpha: Infinity }), 'ERR_ARG', 'alpha must be finite');
  const big = randn([16], { seed: 3 });
  const partial = big.narrow(0, 4, 8);
  const first = big.narrow(0, 0, 8);
  throwsCode(t, () => add(first, a, { out: partial }), 'ERR_ARG', 'partial overlap refused');
  // the baton rejects unknown keys and missing tensors on its own (called untyped, as plain JS would)
  const raw = native().axpby as (o: unknown) => unknown;
  t.throws(() => raw({ a: a.handle(), alhpa: 2 }), /ERR_ARG: axpby: unknown option 'alhpa'/);
  t.throws(() => raw({}), /ERR_ARG: axpby: a must be a tensor/);
  t.throws(() => raw(1), /ERR_ARG: axpby: expects one options object/);
  for (const x of [a, i, big, partial, first]) x.dispose();
});
