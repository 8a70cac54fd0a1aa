#!/usr/bin/env python3
"""PyTorch yardstick for megabeam's GEMM (dev/bench only; needs a CUDA GPU).

torch.matmul TFLOP/s at the Mistral-7B projection shapes, laid out exactly as `megabeam bench gemm`
runs them (bf16 in, bf16 out), for each token count T and linear layer W [out, in]:
  fwd  y  = x @ W.t()      x [T, in]          M=T,   N=out, K=in
  dx   dX = dY @ W         dY [T, out]        M=T,   N=in,  K=out
  dw   dW = dY.t() @ X     dY [T, out], X [T, in]   M=out, N=in, K=T
`megabeam bench gemm --torch` runs this after its own measurements and prints both side by side.

usage: torch_gemm.py [--tokens 16384,65536] [--shapes qkv,o,gateup,down] [--passes fwd,dx,dw]
                     [--reps 10] [--json OUT.json]
Timing: one warm-up, then --reps calls back to back between two CUDA events (mean per call). Uses torch and the standard library.
"""

import argparse
import json
import sys

SHAPES = {
    "qkv": (4096, 6144),
    "o": (4096, 4096),
    "gateup": (4096, 28672),
    "gate": (4096, 14336),
    "down": (14336, 4096),
}


def size(s):
    s = s.strip().lower()
    mult = 1024 if s.endswith("k") else 1024 * 1024 if s.endswith("m") else 1
    return int(s.rstrip("km")) * mult


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", default="16384,65536")
    ap.add_argument("--shapes", default="qkv,o,gateup,down")
    ap.add_argument("--passes", default="fwd,dx,dw")
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--json")
    args = ap.parse_args()
    import torch

    if not torch.cuda.is_available():
        print("torch_gemm.py: no CUDA GPU", file=sys.stderr)
        return 1
    dev = torch.device("cuda")
    env = {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "device": torch.cuda.get_device_name(0),
        "cublas_workspace": "default",
    }
    print(f"torch_gemm.py — torch {env['torch']} (CUDA {env['cuda']}) on {env['device']}, bf16, torch.matmul", flush=True)
    torch.manual_seed(0)
    rows = []
    passes = args.passes.split(",")
    for T in [size(t) for t in args.tokens.split(",")]:
        for name in args.shapes.split(","):
            fin, fout = SHAPES[name]
            for p in passes:
                if p == "fwd":
                    a = torch.randn(T, fin, device=dev, dtype=torch.bfloat16)
                    w = torch.randn(fout, fin, device=dev, dtype=torch.bfloat16)
                    fn = lambda a=a, w=w: torch.matmul(a, w.t())
                    m, n, k = T, fout, fin
                elif p == "dx":
                    a = torch.randn(T, fout, device=dev, dtype=torch.bfloat16)
                    w = torch.randn(fout, fin, device=dev, dtype=torch.bfloat16)
                    fn = lambda a=a, w=w: torch.matmul(a, w)
                    m, n, k = T, fin, fout
                elif p == "dw":
                    a = torch.randn(T, fout, device=dev, dtype=torch.bfloat16)
                    w = torch.randn(T, fin, device=dev, dtype=torch.bfloat16)
                    fn = lambda a=a, w=w: torch.matmul(a.t(), w)
                    m, n, k = fout, fin, T
                else:
                    raise SystemExit(f"unknown pass {p}")
                y = fn()  # warm-up (heuristics, workspace)
                del y
                torch.cuda.synchronize()
                # All repetitions back to back between two events (as megabeam's bench: one sync).
                s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                s.record()
                for _ in range(args.reps):
                    y = fn()
                e.record()
                torch.cuda.synchronize()
                del y
                t = s.elapsed_time(e) / 1e3 / args.reps
                tf = 2.0 * m * n * k / t / 1e12
                rows.append({"tokens": T, "shape": name, "pass": p, "m": m, "n": n, "k": k, "ms": t * 1e3, "tflops": tf})
                print(f"  T={T:>6} {name:>6} {p:>3}  {m} x {n} x {k}  {t * 1e3:8.3f} ms  {tf:7.1f} TFLOP/s", flush=True)
                del a, w
                torch.cuda.empty_cache()
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"env": env, "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
