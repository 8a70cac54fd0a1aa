#!/usr/bin/env python3
"""PyTorch yardstick for `megabeam bench model`: one Mistral-7B decoder layer, bf16, batch 1, fwd+bwd.

    python3 bench/torch_layer.py [--seqs 16384,65536,131072] [--reps 3] [--json OUT.json]

PyTorch eager with HF semantics (bench/torch_model.py's layer_forward: fp32 RMSNorm, rotate_half RoPE,
repeat_kv GQA), SDPA with the flash and the cuDNN backends. Weights and the input require grad (bf16
grads, as an eager bf16 model has); the output gradient is random. Time is the median of --reps after
one warm-up; TFLOP/s uses model FLOPs (6·N·linear params + 7·N²·heads·head_dim); peak is
torch.cuda.max_memory_allocated over one fwd+bwd (weights, input and grads included).
"""

import argparse
import gc
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_model import Cfg, layer_flops, layer_forward, param_shapes, rope_cos_sin  # noqa: E402

MISTRAL_7B = {
    "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 1, "num_attention_heads": 32,
    "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 32768, "rms_norm_eps": 1e-5, "rope_theta": 1e6,
}
GIB = float(1 << 30)


def run(seq, backend, reps):
    from torch.nn.attention import SDPBackend
    be = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION}[backend]
    cfg = Cfg(MISTRAL_7B)
    dev = "cuda"
    g = torch.Generator(device=dev).manual_seed(0)
    P = {}
    for name, shape in param_shapes(cfg):
        if not name.startswith("model.layers.0."):
            continue
        t = torch.ones(shape, device=dev) if len(shape) == 1 else torch.randn(shape, device=dev, generator=g) * 0.02
        P[name] = t.to(torch.bfloat16).requires_grad_(True)
    x = torch.randn(1, seq, cfg.H, device=dev, generator=g, dtype=torch.bfloat16).requires_grad_(True)
    dy = torch.randn(1, seq, cfg.H, device=dev, generator=g, dtype=torch.bfloat16)
    cos, sin = rope_cos_sin(cfg.inv_freq, seq, torch.bfloat16, dev)

    def step():
        for p in P.values():
            p.grad = None
        x.grad = None
        y = layer_forward(P, "model.layers.0.", x, cfg, cos, sin, be)
        y.backward(dy)

    step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(reps):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        step()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated() / GIB
    t = statistics.median(times)
    fl = layer_flops(seq, cfg.H, cfg.I, cfg.hq, cfg.hkv, cfg.D)
    del P, x, dy
    gc.collect()
    torch.cuda.empty_cache()
    return {"seq": seq, "backend": backend, "seconds": t, "tflops": fl / t / 1e12, "peakGiB": peak}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seqs", default="16384,65536,131072")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--backends", default="cudnn,flash")
    ap.add_argument("--json")
    a = ap.parse_args()
    if not torch.cuda.is_available():
        print("needs a CUDA GPU", file=sys.stderr)
        return 2
    rows = []
    print(f"{'tokens':>8}  {'backend':>7}  {'time':>10}  {'TFLOP/s':>8}  {'peak GiB':>8}", flush=True)
    for s in [int(v) for v in a.seqs.split(",")]:
        for b in a.backends.split(","):
            try:
                r = run(s, b, a.reps)
            except torch.cuda.OutOfMemoryError:
                r = {"seq": s, "backend": b, "error": "OOM"}
                gc.collect()
                torch.cuda.empty_cache()
            except RuntimeError as e:  # a backend that refuses the shape
                r = {"seq": s, "backend": b, "error": str(e).splitlines()[0][:120]}
            rows.append(r)
            if "error" in r:
                print(f"{s:>8}  {b:>7}  {r['error']}", flush=True)
            else:
                print(f"{s:>8}  {b:>7}  {r['seconds'] * 1e3:>8.1f}ms  {r['tflops']:>8.1f}  {r['peakGiB']:>8.2f}", flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"torch": torch.__version__, "device": torch.cuda.get_device_name(), "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
