// Independent float64 reference of the Mistral / Llama decoder forward (no lib/ imports, no native
// code): Hugging Face semantics written out naively — RMSNorm x·rsqrt(mean(x²)+eps)·w, q/k/v = x·Wᵀ,
// rotate_half RoPE with cos/sin of pos·invFreq, grouped-query causal softmax attention, o, residual,
// SwiGLU MLP down(silu(gate(x))·up(x)), residual, final norm, LM head, mean cross-entropy over
// labels != ignoreIndex (labels already aligned with positions: no shift here).

export interface RefConfig {
  hidden: number;
  intermediate: number;
  layers: number;
  heads: number;
  kvHeads: number;
  headDim: number;
  vocab: number;
  eps: number;
  tie: boolean;
  /** θ_i, length headDim/2 (full rotary). */
  invFreq: ArrayLike<number>;
  attentionFactor?: number;
}

export type RefParams = Map<string, Float64Array>;

/** y[n, o] = sum_i x[n, i] · w[o, i] */
function linear(x: Float64Array, w: Float64Array, n: number, inDim: number, outDim: number): Float64Array {
  const y = new Float64Array(n * outDim);
  for (let r = 0; r < n; r++)
    for (let o = 0; o < outDim; o++) {
      let s = 0;
      for (let i = 0; i < inDim; i++) s += x[r * inDim + i] * w[o * inDim + i];
      y[r * outDim + o] = s;
    }
  return y;
}

function rmsNorm(x: Float64Array, w: Float64Array, n: number, h: number, eps: number): Float64Array {
  const y = new Float64Array(n * h);
  for (let r = 0; r < n; r++) {
    let ss = 0;
    for (let i = 0; i < h; i++) ss += x[r * h + i] ** 2;
    const rs = 1 / Math.sqrt(ss / h + eps);
    for (let i = 0; i < h; i++) y[r * h + i] = x[r * h + i] * rs * w[i];
  }
  return y;
}

/** rotate_half RoPE on [B, S, heads, D] in place; position of token s is s. */
function ropeInPlace(x: Float64Array, B: number, S: number, heads: number, D: number, invFreq: ArrayLike<number>, af: number): void {
  const half = D / 2;
  for (let b = 0; b < B; b++)
    for (let s = 0; s < S; s++)
      for (let hh = 0; hh < heads; hh++) {
        const base = ((b * S + s) * heads + hh) * D;
        for (let i = 0; i < half; i++) {
          const ang = s * invFreq[i];
          const c = Math.cos(ang) * af, sn = Math.sin(ang) * af;
          const x1 = x[base + i], x2 = x[base + i + half];
          x[base + i] = x1 * c - x2 * sn;
          x[base + i + half] = x2 * c + x1 * sn;
        }
      }
}

function attention(q: Float64Array, k: Float64Array, v: Float64Array, B: number, S: number, hq: number, hkv: number, D: number): Float64Array {
  const out = new Float64Array(B * S * hq * D);
  const g = hq / hkv, scale = 1 / Math.sqrt(D);
  const p = new Float64Array(S);
  for (let b = 0; b < B; b++)
    for (let h = 0; h < hq; h++) {
      const kh = Math.floor(h / g);
      for (let i = 0; i < S; i++) {
        let m = -Infinity;
        for (let j = 0; j <= i; j++) {
          let s = 0;
          for (let d = 0; d < D; d++) s += q[((b * S + i) * hq + h) * D + d] * k[((b * S + j) * hkv + kh) * D + d];
          p[j] = s * scale;
          if (p[j] > m) m = p[j];
        }
        let z = 0;
        for (let j = 0; j <= i; j++) { p[j] = Math.exp(p[j] - m); z += p[j]; }
        for (let d = 0; d < D; d++) {
          let acc = 0;
          for (let j = 0; j <= i; j++) acc += p[j] * v[((b * S + j) * hkv + kh) * D + d];
          out[((b * S + i) * hq + h) * D + d] = acc / z;
        }
      }
    }
  return out;
}

/** Logits [B·S, vocab] of token ids [B][S]. */
export function refLogits(cfg: RefConfig, P: RefParams, ids: number[][]): Float64Array {
  const B = ids.length, S = ids[0].length, N = B * S, H = cfg.hidden, D = cfg.headDim, I = cfg.intermediate;
  const get = (n: string) => {
    const t = P.get(n);
    if (!t) throw new Error(`ref model: missing ${n}`);
    return t;
  };
  const E = get('model.embed_tokens.weight');
  let x = new Float64Array(N * H);
  for (let t = 0; t < N; t++) {
    const id = ids[Math.floor(t / S)][t % S];
    for (let i = 0; i < H; i++) x[t * H + i] = E[id * H + i];
  }
  for (let l = 0; l < cfg.layers; l++) {
    const p = `model.layers.${l}.`;
    const y = rmsNorm(x, get(`${p}input_layernorm.weight`), N, H, cfg.eps);
    const q = linear(y, get(`${p}self_attn.q_proj.weight`), N, H, cfg.heads * D);
    const k = linear(y, get(`${p}self_attn.k_proj.weight`), N, H, cfg.kvHeads * D);
    const v = linear(y, get(`${p}self_attn.v_proj.weight`), N, H, cfg.kvHeads * D);
    ropeInPlace(q, B, S, cfg.heads, D, cfg.invFreq, cfg.attentionFactor ?? 1);
    ropeInPlace(k, B, S, cfg.kvHeads, D, cfg.invFreq, cfg.attentionFactor ?? 1);
    const a = attention(q, k, v, B, S, cfg.heads, cfg.kvHeads, D);
    const o = linear(a, get(`${p}self_attn.o_proj.weight`), N, cfg.heads * D, H);
    const h = new Float64Array(N * H);
    for (let i = 0; i < N * H; i++) h[i] = x[i] + o[i];
    const y2 = rmsNorm(h, get(`${p}post_attention_layernorm.weight`), N, H, cfg.eps);
    const gt = linear(y2, get(`${p}mlp.gate_proj.weight`), N, H, I);
    const up = linear(y2, get(`${p}mlp.up_proj.weight`), N, H, I);
    for (let i = 0; i < N * I; i++) gt[i] = (gt[i] / (1 + Math.exp(-gt[i]))) * up[i];
    const m = linear(gt, get(`${p}mlp.down_proj.weight`), N, I, H);
    x = new Float64Array(N * H);
    for (let i = 0; i < N * H; i++) x[i] = h[i] + m[i];
  }
  const yf = rmsNorm(x, get('model.norm.weight'), N, H, cfg.eps);
  return linear(yf, get(cfg.tie ? 'model.embed_tokens.weight' : 'lm_head.weight'), N, H, cfg.vocab);
}

/** Mean cross-entropy over labels != ignoreIndex, and the count. */
export function refLoss(cfg: RefConfig, P: RefParams, ids: number[][], labels: number[][], ignoreIndex = -100): { loss: number; count: number } {
  const logits = refLogits(cfg, P, ids);
  const V = cfg.vocab, flat = labels.flat();
  let sum = 0, count = 0;
  flat.forEach((lab, t) => {
    if (lab === ignoreIndex) return;
    let m = -Infinity;
    for (let j = 0; j < V; j++) m = Math.max(m, logits[t * V + j]);
    let z = 0;
    for (let j = 0; j < V; j++) z += Math.exp(logits[t * V + j] - m);
    sum += m + Math.log(z) - logits[t * V + lab];
    count++;
  });
  return { loss: count ? sum / count : 0, count };
}
