#!/usr/bin/env python3
"""PyTorch reference for megabeam's Mistral model (dev/bench only; pure torch + numpy, no transformers).

The decoder is written out with Hugging Face tensor names and Hugging Face semantics
(modeling_mistral.py): RMSNorm in fp32 then cast back (weight * hidden.to(dtype)), rotate_half RoPE
with cos/sin computed in fp32 and cast to the activation dtype, repeat_kv GQA, causal softmax
attention, SwiGLU MLP, LM head, mean cross-entropy over labels != -100. Labels are ALIGNED with
positions (label i is the target at position i; no shift inside), as megabeam's forwardBackward takes.

make DIR [--hidden 512 --heads 4 --kv-heads 2 --head-dim 128 --inter 1408 --layers 3 --vocab 1000
          --seq 512 --batch 2 --seed 0 --tie]
    Writes DIR/config.json, DIR/model.safetensors (bf16 weights), DIR/inputs.safetensors (ids, labels
    as I32), and DIR/ref.safetensors with, for every parameter name, the gradient (F32) of
      "fp64."  a float64 run of the same bf16 weights (the truth), and
      "bf16."  the HF-faithful bf16 run (what PyTorch itself achieves),
    plus "fp64.loss", "bf16.loss" (F32 [1]) and "fp64.logits", "bf16.logits" (F32 [B*S, V]).
    Then: node bin/megabeam.js bench model check DIR   (megabeam on CUDA bf16 vs these, a table).

Also imported by bench/torch_layer.py (MistralLayer / layer_flops).
"""

import argparse
import json
import math
import os
import struct
import sys

import numpy as np

import torch
import torch.nn.functional as F

# ---------------------------------------------------------------------------------------------
# safetensors, written and read by hand (the `safetensors` package may not be installed)

_ST = {torch.bfloat16: "BF16", torch.float16: "F16", torch.float32: "F32", torch.int32: "I32", torch.float64: "F64"}
_ST_INV = {v: k for k, v in _ST.items()}


def st_save(path, tensors, metadata=None):
    header, off, blobs = {}, 0, []
    if metadata:
        header["__metadata__"] = metadata
    for name, t in tensors.items():
        t = t.detach().contiguous().cpu()
        b = t.view(torch.uint8).numpy().tobytes() if t.numel() else b""
        header[name] = {"dtype": _ST[t.dtype], "shape": list(t.shape), "data_offsets": [off, off + len(b)]}
        off += len(b)
        blobs.append(b)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - (8 + len(h)) % 8) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)
    os.replace(tmp, path)


def st_load(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        b, e = info["data_offsets"]
        dt = _ST_INV[info["dtype"]]
        arr = torch.frombuffer(bytearray(data[b:e]), dtype=torch.uint8) if e > b else torch.empty(0, dtype=torch.uint8)
        out[name] = arr.view(dt).reshape(info["shape"])
    return out


# ---------------------------------------------------------------------------------------------
# the model, HF semantics


def rms_norm(x, w, eps):
    dt = x.dtype
    h = x.to(torch.float32) if dt != torch.float64 else x
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return w * h.to(dt)


def rotate_half(x):
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2:]
    return torch.cat((-x2, x1), dim=-1)


def rope_cos_sin(inv_freq, seq, dtype, device):
    # HF: freqs = inv_freq ⊗ positions in fp32 (autocast off), emb = cat(freqs, freqs), cos/sin -> dtype.
    # The float64 run keeps float64 angles (the truth megabeam's exact RoPE aims at).
    ft = torch.float64 if dtype == torch.float64 else torch.float32
    pos = torch.arange(seq, device=device, dtype=ft)
    freqs = torch.outer(pos, inv_freq.to(device=device, dtype=ft))
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def repeat_kv(x, n):
    # x [b, hkv, s, d] -> [b, hkv*n, s, d]
    if n == 1:
        return x
    b, h, s, d = x.shape
    return x[:, :, None].expand(b, h, n, s, d).reshape(b, h * n, s, d)


class Cfg:
    def __init__(self, c):
        self.H = c["hidden_size"]
        self.I = c["intermediate_size"]
        self.L = c["num_hidden_layers"]
        self.hq = c["num_attention_heads"]
        self.hkv = c.get("num_key_value_heads") or self.hq
        self.D = c.get("head_dim") or self.H // self.hq
        self.V = c["vocab_size"]
        self.eps = c.get("rms_norm_eps", 1e-6)
        self.theta = c.get("rope_theta", 10000.0)
        self.tie = c.get("tie_word_embeddings", False)
        self.inv_freq = 1.0 / (self.theta ** (torch.arange(0, self.D, 2, dtype=torch.int64).to(torch.float64) / self.D))


def param_shapes(cfg):
    H, I, D = cfg.H, cfg.I, cfg.D
    out = [("model.embed_tokens.weight", (cfg.V, H))]
    for l in range(cfg.L):
        p = f"model.layers.{l}."
        out += [
            (p + "self_attn.q_proj.weight", (cfg.hq * D, H)),
            (p + "self_attn.k_proj.weight", (cfg.hkv * D, H)),
            (p + "self_attn.v_proj.weight", (cfg.hkv * D, H)),
            (p + "self_attn.o_proj.weight", (H, cfg.hq * D)),
            (p + "mlp.gate_proj.weight", (I, H)),
            (p + "mlp.up_proj.weight", (I, H)),
            (p + "mlp.down_proj.weight", (H, I)),
            (p + "input_layernorm.weight", (H,)),
            (p + "post_attention_layernorm.weight", (H,)),
        ]
    out.append(("model.norm.weight", (H,)))
    if not cfg.tie:
        out.append(("lm_head.weight", (cfg.V, H)))
    return out


def attention(q, k, v, backend=None):
    # q [b, s, hq, d], k/v [b, s, hkv, d] -> [b, s, hq, d]
    q, k, v = (x.transpose(1, 2) for x in (q, k, v))
    n = q.shape[1] // k.shape[1]
    if q.dtype == torch.float64 or backend is None:
        k, v = repeat_kv(k, n), repeat_kv(v, n)
        if q.dtype == torch.float64:
            s = q.shape[2]
            scores = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
            mask = torch.ones(s, s, dtype=torch.bool, device=q.device).triu(1)
            scores = scores.masked_fill(mask, float("-inf"))
            o = scores.softmax(-1) @ v
        else:
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    else:
        from torch.nn.attention import sdpa_kernel
        k, v = repeat_kv(k, n), repeat_kv(v, n)
        with sdpa_kernel([backend]):
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    return o.transpose(1, 2)


def layer_forward(P, p, x, cfg, cos, sin, backend=None):
    b, s, H = x.shape
    y = rms_norm(x, P[p + "input_layernorm.weight"], cfg.eps)
    q = F.linear(y, P[p + "self_attn.q_proj.weight"]).view(b, s, cfg.hq, cfg.D)
    k = F.linear(y, P[p + "self_attn.k_proj.weight"]).view(b, s, cfg.hkv, cfg.D)
    v = F.linear(y, P[p + "self_attn.v_proj.weight"]).view(b, s, cfg.hkv, cfg.D)
    c, sn = cos[None, :, None, :], sin[None, :, None, :]
    q = q * c + rotate_half(q) * sn
    k = k * c + rotate_half(k) * sn
    a = attention(q, k, v, backend).reshape(b, s, cfg.hq * cfg.D)
    h = x + F.linear(a, P[p + "self_attn.o_proj.weight"])
    y2 = rms_norm(h, P[p + "post_attention_layernorm.weight"], cfg.eps)
    m = F.linear(F.silu(F.linear(y2, P[p + "mlp.gate_proj.weight"])) * F.linear(y2, P[p + "mlp.up_proj.weight"]),
                 P[p + "mlp.down_proj.weight"])
    return h + m


def model_loss(P, cfg, ids, labels):
    b, s = ids.shape
    dt = P["model.embed_tokens.weight"].dtype
    cos, sin = rope_cos_sin(cfg.inv_freq, s, dt, ids.device)
    x = F.embedding(ids.long(), P["model.embed_tokens.weight"])
    for l in range(cfg.L):
        x = layer_forward(P, f"model.layers.{l}.", x, cfg, cos, sin)
    y = rms_norm(x, P["model.norm.weight"], cfg.eps)
    logits = F.linear(y, P["model.embed_tokens.weight" if cfg.tie else "lm_head.weight"]).reshape(b * s, cfg.V)
    lf = logits if logits.dtype == torch.float64 else logits.float()
    loss = F.cross_entropy(lf, labels.reshape(-1).long(), ignore_index=-100)
    return loss, logits


def layer_flops(n, H, I, hq, hkv, D):
    """Model FLOPs of one decoder layer fwd+bwd: 6·N·(linear params) + 3.5 · 2·N²·hq·D (causal attention)."""
    p = H * hq * D * 2 + H * hkv * D * 2 + 3 * H * I
    return 6.0 * n * p + 7.0 * n * n * hq * D


# ---------------------------------------------------------------------------------------------


def make(args):
    os.makedirs(args.dir, exist_ok=True)
    dev = "cuda"
    torch.manual_seed(args.seed)
    config = {
        "architectures": ["MistralForCausalLM"], "model_type": "mistral", "hidden_size": args.hidden,
        "intermediate_size": args.inter, "num_hidden_layers": args.layers, "num_attention_heads": args.heads,
        "num_key_value_heads": args.kv_heads, "head_dim": args.head_dim, "hidden_act": "silu",
        "max_position_embeddings": 32768, "rms_norm_eps": 1e-5, "rope_theta": args.theta, "sliding_window": None,
        "tie_word_embeddings": args.tie, "vocab_size": args.vocab, "initializer_range": 0.02,
        "attention_dropout": 0.0, "torch_dtype": "bfloat16",
    }
    cfg = Cfg(config)
    P = {}
    for name, shape in param_shapes(cfg):
        if len(shape) == 1:
            # not exactly 1, so the norm weights' gradients and their use are both exercised
            t = 1.0 + 0.1 * torch.randn(shape, device=dev)
        else:
            t = torch.randn(shape, device=dev) * args.std
        P[name] = t.to(torch.bfloat16)
    ids = torch.randint(0, cfg.V, (args.batch, args.seq), device=dev, dtype=torch.int32)
    labels = torch.randint(0, cfg.V, (args.batch, args.seq), device=dev, dtype=torch.int32)
    labels[:, :3] = -100  # some ignored positions
    with open(os.path.join(args.dir, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    st_save(os.path.join(args.dir, "model.safetensors"), P, {"format": "pt"})
    st_save(os.path.join(args.dir, "inputs.safetensors"), {"ids": ids, "labels": labels})
    ref = {}
    for tag, dt in (("fp64", torch.float64), ("bf16", torch.bfloat16)):
        Q = {k: v.to(dt).requires_grad_(True) for k, v in P.items()}
        loss, logits = model_loss(Q, cfg, ids, labels)
        loss.backward()
        ref[f"{tag}.loss"] = loss.detach().float().reshape(1)
        ref[f"{tag}.logits"] = logits.detach().float()
        for k, v in Q.items():
            ref[f"{tag}.{k}"] = v.grad.float()
        print(f"{tag}: loss {loss.item():.6f}", flush=True)
        del Q, loss, logits
    st_save(os.path.join(args.dir, "ref.safetensors"), ref)
    # how far PyTorch's own bf16 run is from float64, per parameter (the yardstick the check uses)
    worst = 0.0
    for name, _ in param_shapes(cfg):
        a, b = ref[f"bf16.{name}"].double(), ref[f"fp64.{name}"].double()
        e = ((a - b).norm() / b.norm().clamp_min(1e-30)).item()
        worst = max(worst, e)
    print(f"PyTorch bf16 vs float64: worst per-parameter gradient relative L2 error {worst:.3e}")
    print(f"wrote {args.dir}: config.json model.safetensors inputs.safetensors ref.safetensors")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="mode", required=True)
    m = sub.add_parser("make")
    m.add_argument("dir")
    m.add_argument("--hidden", type=int, default=512)
    m.add_argument("--heads", type=int, default=4)
    m.add_argument("--kv-heads", type=int, default=2)
    m.add_argument("--head-dim", type=int, default=128)
    m.add_argument("--inter", type=int, default=1408)
    m.add_argument("--layers", type=int, default=3)
    m.add_argument("--vocab", type=int, default=1000)
    m.add_argument("--seq", type=int, default=512)
    m.add_argument("--batch", type=int, default=2)
    m.add_argument("--theta", type=float, default=1000000.0)
    m.add_argument("--std", type=float, default=0.02)
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--tie", action="store_true")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("needs a CUDA GPU", file=sys.stderr)
        return 2
    if args.mode == "make":
        make(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
