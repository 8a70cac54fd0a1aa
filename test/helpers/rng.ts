// A seeded JS random source for test inputs (independent of the library's Philox generator).
export function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
/** Fresh seed per run, printed by the test so failures can be replayed with TEST_SEED. */
export function testSeed(): number {
  const env = process.env.TEST_SEED;
  return env ? Number(env) : (Math.random() * 2 ** 31) >>> 0;
}
export function randomNormal(n: number, r: () => number): Float64Array {
  const out = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    const u = 1 - r(), v = r();
    out[i] = Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * v);
  }
  return out;
}
