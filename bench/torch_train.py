#!/usr/bin/env python3
"""PyTorch eager yardstick for `megabeam bench train`: one training step of a Mistral-7B-shaped model.

    python3 bench/torch_train.py [--seqs 16k,32k,64k,128k] [--layers 4] [--full] [--reps 3] [--mode amp|bf16] [--json OUT]

The same step as megabeam's: embedding -> N x decoder layer (fp32 RMSNorm, rotate_half RoPE, GQA via SDPA
with the causal flash backend, SwiGLU MLP) -> norm -> LM head + cross-entropy (in 8K-token chunks, each
checkpointed, so [tokens, vocab] logits never exist whole, as megabeam's chunked lmHeadLoss), per-layer
activation checkpointing (torch.utils.checkpoint, use_reentrant=False), global-norm clip 1.0, fused AdamW.
  --mode amp  (default): fp32 parameters (= master weights), bf16 autocast, fp32 grads, fused AdamW on fp32
              -- what megabeam does (bf16 weights + fp32 master, moments; fp32 grads).
  --mode bf16: bf16 parameters, grads and AdamW moments (no master weights): less memory, less accuracy.
Time: median of --reps steps after one warm-up; tokens/s = seq / time; MFU with model FLOPs per token
6*(params - embedding) + 6*layers*heads*head_dim*seq (causal attention; as lib/train/train.ts) over
989 TFLOP/s; peak = torch.cuda.max_memory_allocated (weights, grads, optimizer state included).
--full: the 32-layer Mistral-7B (default seqs 16k,32k,64k); out-of-memory is reported as a row.
"""

import argparse
import json
import math
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

H, I, HQ, HKV, D, V, EPS, THETA = 4096, 14336, 32, 8, 128, 32768, 1e-5, 1e6
PEAK = 989e12
GIB = float(1 << 30)


def size(s):
    s = s.strip().lower()
    m = {"k": 1 << 10, "m": 1 << 20}.get(s[-1:], 1)
    return int(s[:-1] if s[-1:] in "km" else s) * m


class RMSNorm(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(H))

    def forward(self, x):
        xf = x.float()
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + EPS)
        return self.weight * y.to(x.dtype) if self.weight.dtype == x.dtype else (self.weight.float() * y).to(x.dtype)


def rotate_half(x):
    a, b = x.chunk(2, dim=-1)
    return torch.cat((-b, a), dim=-1)


_GQA = [True]


def attend(q, k, v):
    # Only the O(S) memory kernels (flash, cuDNN): a silent fallback to the math backend would be an
    # O(S^2) OOM that reads like a memory result. SDPA's native GQA when they take it, else HF's repeat_kv.
    from torch.nn.attention import SDPBackend, sdpa_kernel
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.CUDNN_ATTENTION]):
        if _GQA[0]:
            try:
                return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
            except torch.cuda.OutOfMemoryError:
                raise
            except (RuntimeError, TypeError):
                _GQA[0] = False
        r = HQ // HKV
        return F.scaled_dot_product_attention(q, k.repeat_interleave(r, dim=1), v.repeat_interleave(r, dim=1), is_causal=True)


class Layer(nn.Module):
    def __init__(self):
        super().__init__()
        self.input_layernorm, self.post_attention_layernorm = RMSNorm(), RMSNorm()
        self.q_proj = nn.Linear(H, HQ * D, bias=False)
        self.k_proj = nn.Linear(H, HKV * D, bias=False)
        self.v_proj = nn.Linear(H, HKV * D, bias=False)
        self.o_proj = nn.Linear(HQ * D, H, bias=False)
        self.gate_proj = nn.Linear(H, I, bias=False)
        self.up_proj = nn.Linear(H, I, bias=False)
        self.down_proj = nn.Linear(I, H, bias=False)

    def forward(self, x, cos, sin):
        B, S, _ = x.shape
        y = self.input_layernorm(x)
        q = self.q_proj(y).view(B, S, HQ, D).transpose(1, 2)
        k = self.k_proj(y).view(B, S, HKV, D).transpose(1, 2)
        v = self.v_proj(y).view(B, S, HKV, D).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        a = attend(q, k, v)
        h = x + self.o_proj(a.transpose(1, 2).reshape(B, S, HQ * D))
        y2 = self.post_attention_layernorm(h)
        return h + self.down_proj(F.silu(self.gate_proj(y2)) * self.up_proj(y2))


class Model(nn.Module):
    def __init__(self, layers):
        super().__init__()
        self.embed_tokens = nn.Embedding(V, H)
        self.layers = nn.ModuleList([Layer() for _ in range(layers)])
        self.norm = RMSNorm()
        self.lm_head = nn.Linear(H, V, bias=False)

    def forward(self, ids, labels, cos, sin, chunk=8192):
        x = self.embed_tokens(ids)
        for layer in self.layers:
            x = checkpoint(layer, x, cos, sin, use_reentrant=False)
        x = self.norm(x)[0]
        lab = labels[0]
        n = lab.numel()

        def piece(xc, lc):
            return F.cross_entropy(self.lm_head(xc).float(), lc, reduction="sum")

        loss = 0
        for s in range(0, n, chunk):
            loss = loss + checkpoint(piece, x[s:s + chunk], lab[s:s + chunk], use_reentrant=False)
        return loss / n


def flops_per_token(params, layers, seq):
    return 6 * (params - V * H) + 6 * layers * HQ * D * seq


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seqs")
    ap.add_argument("--layers", type=int)
    ap.add_argument("--full", action="store_true")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--mode", choices=["amp", "bf16"], default="amp")
    ap.add_argument("--json")
    a = ap.parse_args()
    seqs = [size(x) for x in (a.seqs or ("16k,32k,64k" if a.full else "16k,32k,64k,128k")).split(",")]
    layers = a.layers or (32 if a.full else 4)
    dev = "cuda"
    torch.manual_seed(0)
    pdtype = torch.float32 if a.mode == "amp" else torch.bfloat16
    with torch.device("meta"):
        model = Model(layers)
    model = model.to_empty(device=dev).to(pdtype)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.fill_(1)
            else:
                p.normal_(0, 0.02)
    params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, betas=(0.9, 0.95), weight_decay=0.1, fused=True)
    inv = 1.0 / (THETA ** (torch.arange(0, D, 2, device=dev, dtype=torch.float64) / D))
    print(f"torch {torch.__version__}: {params / 1e9:.2f}B parameters ({layers} layers), mode {a.mode}", flush=True)
    rows = []
    for S in seqs:
        try:
            pos = torch.arange(S, device=dev, dtype=torch.float64)
            f = torch.outer(pos, inv)
            emb = torch.cat((f, f), dim=-1)
            cos, sin = emb.cos().to(torch.bfloat16)[None, None], emb.sin().to(torch.bfloat16)[None, None]
            ids = torch.randint(0, V, (1, S), device=dev)
            labels = torch.randint(0, V, (1, S), device=dev)

            def step():
                opt.zero_grad(set_to_none=True)
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=a.mode == "amp"):
                    loss = model(ids, labels, cos, sin)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0, foreach=True)
                opt.step()

            torch.cuda.reset_peak_memory_stats()
            step()
            torch.cuda.synchronize()
            times = []
            for _ in range(a.reps):
                t0 = time.perf_counter()
                step()
                torch.cuda.synchronize()
                times.append(time.perf_counter() - t0)
            t = statistics.median(times)
            tps = S / t
            mfu = tps * flops_per_token(params, layers, S) / PEAK
            peak = torch.cuda.max_memory_allocated() / GIB
            rows.append({"seq": S, "layers": layers, "secondsPerStep": t, "tokensPerSecond": tps, "mfu": mfu, "peakGiB": peak, "status": "ok"})
            print(f"  {S} tokens: {t:.3f} s/step, {tps:.0f} tokens/s, MFU {mfu * 100:.1f}%, peak {peak:.1f} GiB", flush=True)
        except torch.cuda.OutOfMemoryError as e:
            rows.append({"seq": S, "layers": layers, "status": "OOM", "message": str(e).split("\n")[0]})
            print(f"  {S} tokens: out of memory", flush=True)
        finally:
            opt.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()
    print(f"{'seq':>8} {'layers':>6} {'s/step':>8} {'tokens/s':>10} {'MFU %':>6} {'peak GiB':>9}")
    for r in rows:
        if r["status"] == "ok":
            print(f"{r['seq']:>8} {r['layers']:>6} {r['secondsPerStep']:>8.3f} {r['tokensPerSecond']:>10.0f} {r['mfu'] * 100:>6.1f} {r['peakGiB']:>9.1f}")
        else:
            print(f"{r['seq']:>8} {r['layers']:>6} {'OOM':>8}")
    if a.json:
        with open(a.json, "w") as fh:
            json.dump({"bench": "torch_train", "mode": a.mode, "model": "mistral-7b" if a.full else f"mistral-7b-{layers}L", "rows": rows}, fh, indent=2)


if __name__ == "__main__":
    main()
