// Independent float64 reference for attention (no native code, no lib/ imports): the textbook
// formulas, one query row at a time, with the exact softmax (no online rescaling, no tiling).
// Layout as in the library: q [b, sq, hq, d], k/v [b, sk, hkv, d], out like q, lse [b, hq, sq].
// GQA: q head h reads kv head floor(h / (hq / hkv)). Causal: query i sees key j iff
// kOffset + j <= qOffset + i. A row that sees no key has out = 0, lse = -Infinity and no gradient.

export interface AttnDims {
  batch: number;
  seqQ: number;
  seqK: number;
  headsQ: number;
  headsKv: number;
  headDim: number;
}

export interface AttnRefOptions {
  causal?: boolean;
  scale?: number;      // default 1 / sqrt(headDim)
  qOffset?: number;
  kOffset?: number;
}

interface Resolved extends AttnDims {
  causal: boolean;
  scale: number;
  qOffset: number;
  kOffset: number;
  group: number;
}

function resolve(dims: AttnDims, o: AttnRefOptions): Resolved {
  const { batch, seqQ, seqK, headsQ, headsKv, headDim } = dims;
  for (const [k, v] of Object.entries({ batch, seqQ, seqK, headsQ, headsKv, headDim })) {
    if (!Number.isSafeInteger(v) || v < 0) throw new Error(`ref attention: ${k} must be a non-negative integer`);
  }
  if (headsKv < 1 || headsQ % headsKv !== 0) throw new Error('ref attention: headsQ must be a multiple of headsKv >= 1');
  return {
    batch, seqQ, seqK, headsQ, headsKv, headDim,
    causal: o.causal ?? false,
    scale: o.scale ?? 1 / Math.sqrt(headDim),
    qOffset: o.qOffset ?? 0,
    kOffset: o.kOffset ?? 0,
    group: headsQ / headsKv,
  };
}

function checkLength(name: string, a: ArrayLike<number>, n: number): void {
  if (a.length !== n) throw new Error(`ref attention: ${name} has ${a.length} elements, expected ${n}`);
}

// Index of element x of row s, head h, batch b in a [b, s, h, d] array.
const at = (b: number, s: number, h: number, x: number, S: number, H: number, D: number): number =>
  ((b * S + s) * H + h) * D + x;

/** Softmax probabilities of query row (b, h, i) over all keys (0 where masked), and its lse. */
function rowProbs(q: ArrayLike<number>, k: ArrayLike<number>, r: Resolved, b: number, h: number, i: number):
    { p: Float64Array; lse: number } {
  const { seqQ, seqK, headsQ, headsKv, headDim: D } = r;
  const hk = Math.floor(h / r.group);
  const s = new Float64Array(seqK);
  const visible: boolean[] = new Array(seqK);
  let m = -Infinity;
  for (let j = 0; j < seqK; j++) {
    visible[j] = !r.causal || r.kOffset + j <= r.qOffset + i;
    if (!visible[j]) continue;
    let dot = 0;
    for (let x = 0; x < D; x++) dot += q[at(b, i, h, x, seqQ, headsQ, D)] * k[at(b, j, hk, x, seqK, headsKv, D)];
    s[j] = r.scale * dot;
    if (s[j] > m) m = s[j];
  }
  const p = new Float64Array(seqK);
  if (m === -Infinity) return { p, lse: -Infinity };
  let sum = 0;
  for (let j = 0; j < seqK; j++) if (visible[j]) sum += Math.exp(s[j] - m);
  const lse = m + Math.log(sum);
  for (let j = 0; j < seqK; j++) if (visible[j]) p[j] = Math.exp(s[j] - lse);
  return { p, lse };
}

/** out = softmax(scale q k^T + mask) v, lse = log-sum-exp of each row's visible scores. */
export function attentionForwardRef(q: ArrayLike<number>, k: ArrayLike<number>, v: ArrayLike<number>,
    dims: AttnDims, opts: AttnRefOptions = {}): { out: Float64Array; lse: Float64Array } {
  const r = resolve(dims, opts);
  const { batch, seqQ, seqK, headsQ, headsKv, headDim: D } = r;
  checkLength('q', q, batch * seqQ * headsQ * D);
  checkLength('k', k, batch * seqK * headsKv * D);
  checkLength('v', v, batch * seqK * headsKv * D);
  const out = new Float64Array(batch * seqQ * headsQ * D);
  const lse = new Float64Array(batch * headsQ * seqQ);
  for (let b = 0; b < batch; b++) {
    for (let h = 0; h < headsQ; h++) {
      const hk = Math.floor(h / r.group);
      for (let i = 0; i < seqQ; i++) {
        const { p, lse: L } = rowProbs(q, k, r, b, h, i);
        lse[(b * headsQ + h) * seqQ + i] = L;
        for (let j = 0; j < seqK; j++) {
          if (p[j] === 0) continue;
          for (let x = 0; x < D; x++) out[at(b, i, h, x, seqQ, headsQ, D)] += p[j] * v[at(b, j, hk, x, seqK, headsKv, D)];
        }
      }
    }
  }
  return { out, lse };
}

/**
 * Gradients of L = sum(out * dout) with respect to q, k, v:
 *   dv_j += P_ij dout_i,  dP_ij = dout_i . v_j,  dS_ij = P_ij (dP_ij - sum_j' P_ij' dP_ij'),
 *   dq_i += scale dS_ij k_j,  dk_j += scale dS_ij q_i.
 * dk/dv of a kv head sum the contributions of all q heads of its group.
 */
export function attentionBackwardRef(dout: ArrayLike<number>, q: ArrayLike<number>, k: ArrayLike<number>,
    v: ArrayLike<number>, dims: AttnDims, opts: AttnRefOptions = {}): { dq: Float64Array; dk: Float64Array; dv: Float64Array } {
  const r = resolve(dims, opts);
  const { batch, seqQ, seqK, headsQ, headsKv, headDim: D } = r;
  checkLength('dout', dout, batch * seqQ * headsQ * D);
  checkLength('q', q, batch * seqQ * headsQ * D);
  checkLength('k', k, batch * seqK * headsKv * D);
  checkLength('v', v, batch * seqK * headsKv * D);
  const dq = new Float64Array(batch * seqQ * headsQ * D);
  const dk = new Float64Array(batch * seqK * headsKv * D);
  const dv = new Float64Array(batch * seqK * headsKv * D);
  const dP = new Float64Array(seqK);
  for (let b = 0; b < batch; b++) {
    for (let h = 0; h < headsQ; h++) {
      const hk = Math.floor(h / r.group);
      for (let i = 0; i < seqQ; i++) {
        const { p } = rowProbs(q, k, r, b, h, i);
        let rowDot = 0;  // sum_j P_ij dP_ij
        for (let j = 0; j < seqK; j++) {
          dP[j] = 0;
          if (p[j] === 0) continue;
          let dot = 0;
          for (let x = 0; x < D; x++) dot += dout[at(b, i, h, x, seqQ, headsQ, D)] * v[at(b, j, hk, x, seqK, headsKv, D)];
          dP[j] = dot;
          rowDot += p[j] * dot;
        }
        for (let j = 0; j < seqK; j++) {
          if (p[j] === 0) continue;
          const dS = p[j] * (dP[j] - rowDot);
          for (let x = 0; x < D; x++) {
            const qi = at(b, i, h, x, seqQ, headsQ, D), kj = at(b, j, hk, x, seqK, headsKv, D);
            dv[kj] += p[j] * dout[qi];
            dq[qi] += r.scale * dS * k[kj];
            dk[kj] += r.scale * dS * q[qi];
          }
        }
      }
    }
  }
  return { dq, dk, dv };
}
