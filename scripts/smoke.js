#!/usr/bin/env node
// Smoke test of an addon on any platform (used under qemu-aarch64 for the linux-arm64 prebuild):
// tensors, the RNG, RoPE, CPU attention and matmul against small float64 references computed here.
// Prints one line "smoke ok <json>" where json holds randn bits, so a caller can compare platforms
// (the generator gives the same bits everywhere). Exit 1 on any mismatch.
//   MEGABEAM_ADDON=prebuilds/linux-arm64/megabeam.node node scripts/smoke.js   (needs dist/: npm run build:ts)
'use strict';
const mb = require('../dist/index.js');

function fail(msg) {
  console.error(`smoke FAILED: ${msg}`);
  process.exit(1);
}

async function main() {
  const t = mb.tensor([1, 2, 3, -0.5], { dtype: 'bf16' });
  const a = await t.toArray();
  if (Array.from(a).join() !== '1,2,3,-0.5') fail(`bf16 round trip gave ${Array.from(a)}`);

  const r = mb.randn([4096], { seed: 7 });
  const rv = await r.toArray();
  let mean = 0, sq = 0;
  for (const v of rv) { mean += v; sq += v * v; }
  mean /= rv.length;
  const std = Math.sqrt(sq / rv.length - mean * mean);
  if (!(Math.abs(mean) < 0.1 && Math.abs(std - 1) < 0.1)) fail(`randn mean ${mean} std ${std}`);
  const bits = Array.from(new Uint32Array(Float32Array.from(rv.subarray(0, 4)).buffer), (u) => u.toString(16));

  // RoPE (neox halves) on [1, S, H, D] f32 against float64.
  const S = 16, H = 2, D = 8, base = 10000;
  const x = mb.randn([1, S, H, D], { seed: 3 });
  const xv = await x.toArray();
  const y = await mb.rope.apply(x, { base }).toArray();
  let worst = 0;
  for (let s = 0; s < S; s++) for (let h = 0; h < H; h++) for (let i = 0; i < D / 2; i++) {
    const th = s * Math.pow(base, (-2 * i) / D), c = Math.cos(th), sn = Math.sin(th);
    const o = (s * H + h) * D, x1 = xv[o + i], x2 = xv[o + i + D / 2];
    worst = Math.max(worst, Math.abs(y[o + i] - (x1 * c - x2 * sn)), Math.abs(y[o + i + D / 2] - (x2 * c + x1 * sn)));
  }
  if (!(worst < 1e-5)) fail(`rope error ${worst}`);

  // Causal attention forward, f32, [1, 24, 2, 16] with 1 kv head, against float64.
  const L = 24, hq = 2, d = 16;
  const q = mb.randn([1, L, hq, d], { seed: 11 }), k = mb.randn([1, L, 1, d], { seed: 12 }), v = mb.randn([1, L, 1, d], { seed: 13 });
  const [Q, K, V] = await Promise.all([q.toArray(), k.toArray(), v.toArray()]);
  const { out, lse } = mb.attention.forward(q, k, v, { causal: true });
  const O = await out.toArray();
  let aw = 0;
  for (let i = 0; i < L; i++) for (let h = 0; h < hq; h++) {
    const sc = [];
    for (let j = 0; j <= i; j++) { let acc = 0; for (let c = 0; c < d; c++) acc += Q[(i * hq + h) * d + c] * K[j * d + c]; sc.push(acc / Math.sqrt(d)); }
    const m = Math.max(...sc); const e = sc.map((s) => Math.exp(s - m)); const z = e.reduce((p, c) => p + c, 0);
    for (let c = 0; c < d; c++) {
      let ref = 0;
      for (let j = 0; j <= i; j++) ref += (e[j] / z) * V[j * d + c];
      aw = Math.max(aw, Math.abs(O[(i * hq + h) * d + c] - ref));
    }
  }
  if (!(aw < 1e-5)) fail(`attention error ${aw}`);
  const dout = mb.randn(out.shape, { seed: 14 });
  const g = mb.attention.backward(dout, q, k, v, out, lse, { causal: true });
  for (const [name, tt] of Object.entries(g)) {
    const arr = await tt.toArray();
    if (!arr.every(Number.isFinite)) fail(`backward ${name} not finite`);
  }
  // CPU GEMM (blocked; the AVX2 micro-kernel is x86-only, so arm64 runs the portable path), f32 [17x33]·[33x9].
  let gw = 0;
  if (typeof mb.matmul === 'function') {
    const M = 17, K = 33, N = 9;
    const A = mb.randn([M, K], { seed: 21 }), Bm = mb.randn([K, N], { seed: 22 });
    const [Av, Bv] = await Promise.all([A.toArray(), Bm.toArray()]);
    const C = await mb.matmul(A, Bm).toArray();
    for (let i = 0; i < M; i++) for (let j = 0; j < N; j++) {
      let ref = 0;
      for (let k = 0; k < K; k++) ref += Av[i * K + k] * Bv[k * N + j];
      gw = Math.max(gw, Math.abs(C[i * N + j] - ref));
    }
    if (!(gw < 1e-4)) fail(`matmul error ${gw}`);
  }
  console.log(`smoke ok ${JSON.stringify({ arch: process.arch, cudaBuilt: mb.cuda.isBuilt(), randnBits: bits, ropeErr: worst, attnErr: aw, gemmErr: gw })}`);
}
main().catch((e) => fail(e && e.message ? e.message : String(e)));
