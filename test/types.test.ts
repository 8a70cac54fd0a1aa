// Compile-time checks of the public typings (tsc runs over test/): Tensor is generic over its dtype,
// so toArray() has the right array type. The runtime part only confirms the values agree.
import t from 'tap';
import { Tensor, randn, tensor, zeros } from '../lib/index';

type Equals<A, B> = (<T>() => T extends A ? 1 : 2) extends (<T>() => T extends B ? 1 : 2) ? true : false;
const assertType = <T extends true>(): T => true as T;

t.test('toArray is typed by dtype', async (t) => {
  const f = randn([3], { seed: 1 });
  const h = zeros([2], { dtype: 'bf16' });
  const i = tensor(new Int32Array([1, 2]));
  const j = tensor([1, 2], { dtype: 'i32' });
  const n = tensor([1.5, 2]);
  const a = await f.toArray();
  const b = await h.toArray();
  const c = await i.toArray();
  const d = await j.toArray();
  const e = await n.toArray();
  assertType<Equals<typeof a, Float32Array>>();
  assertType<Equals<typeof b, Float32Array>>();
  assertType<Equals<typeof c, Int32Array>>();
  assertType<Equals<typeof d, Int32Array>>();
  assertType<Equals<typeof e, Float32Array>>();
  const any: Tensor = f;  // every Tensor<D> is a Tensor
  assertType<Equals<Awaited<ReturnType<typeof any.toArray>>, Float32Array | Int32Array>>();
  t.ok(a instanceof Float32Array && b instanceof Float32Array && e instanceof Float32Array, 'float dtypes read as Float32Array');
  t.ok(c instanceof Int32Array && d instanceof Int32Array, 'i32 reads as Int32Array');
  for (const x of [f, h, i, j, n]) x.dispose();
});
