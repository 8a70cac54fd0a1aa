#!/usr/bin/env python3
"""PyTorch yardstick for megabeam's flash attention (dev/bench only; needs a CUDA GPU).

Modes
-----
check DIR [--json OUT.json] [--chunk-rows N] [--max-mask-elems N]
    Correctness on the inputs megabeam's Node bench wrote to DIR (meta.json, q/k/v/dout.bin,
    megabeam's out/lse/dq/dk/dv.bin). Builds a float64 reference for a subset of heads
    (kv heads {0, hkv-1} and every q head mapped to them, all batches) and compares megabeam
    and PyTorch SDPA (FLASH_ATTENTION, CUDNN_ATTENTION; bf16) against it: relative L2 error
    of out, lse (finite reference rows only), dq, dk, dv; max abs error of out; NaN counts.

time --seqs 16384,65536,131072,524288 [--heads-q 32 --heads-kv 8 --head-dim 128 --batch 1
     --reps N --json OUT.json]
    Causal fwd/bwd timing of SDPA FLASH_ATTENTION and CUDNN_ATTENTION on random bf16 inputs
    in [b, h, s, d] layout, K/V expanded to hq heads with repeat_interleave.

Uses only torch, numpy and the standard library. Exit code 0 unless the script itself crashes.
"""

import argparse
import gc
import json
import math
import os
import statistics
import sys
import time
import traceback

import numpy as np

try:
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel
except Exception as _e:  # pragma: no cover - reported at run time
    torch = None
    _TORCH_IMPORT_ERROR = repr(_e)
else:
    _TORCH_IMPORT_ERROR = None

GIB = float(1 << 30)


def log(*a):
    print(*a, flush=True)


def backends():
    return [("flash", SDPBackend.FLASH_ATTENTION), ("cudnn", SDPBackend.CUDNN_ATTENTION)]


def free_cuda():
    gc.collect()
    if torch is not None and torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


def short_err(e, limit=600):
    s = "%s: %s" % (type(e).__name__, str(e).strip().replace("\n", " | "))
    return s if len(s) <= limit else s[:limit] + " ..."


# ----------------------------------------------------------------------------- check mode


def load_bf16(path, shape, head_axis, heads):
    """Reads a raw little-endian bf16 file of `shape`, keeps `heads` along `head_axis`,
    returns a CPU torch.bfloat16 tensor (contiguous), plus full-tensor NaN/Inf counts."""
    n = int(np.prod(shape))
    size = os.path.getsize(path)
    if size != n * 2:
        raise ValueError("%s: %d bytes, expected %d (shape %s, bf16)" % (path, size, n * 2, shape))
    mm = np.memmap(path, dtype="<i2", mode="r", shape=tuple(shape))
    # full-tensor non-finite counts (bf16: exponent all ones; mantissa != 0 -> NaN, == 0 -> Inf)
    nan_full = 0
    inf_full = 0
    flat = mm.reshape(-1)
    step = 1 << 26
    for s in range(0, n, step):
        a = flat[s:s + step].view(np.uint16) & np.uint16(0x7FFF)
        nan_full += int(np.count_nonzero(a > 0x7F80))
        inf_full += int(np.count_nonzero(a == 0x7F80))
    sel = np.ascontiguousarray(np.take(mm, heads, axis=head_axis))
    del mm
    t = torch.from_numpy(sel).view(torch.bfloat16)
    return t, nan_full, inf_full


def load_f32(path, shape, head_axis, heads):
    n = int(np.prod(shape))
    size = os.path.getsize(path)
    if size != n * 4:
        raise ValueError("%s: %d bytes, expected %d (shape %s, f32)" % (path, size, n * 4, shape))
    mm = np.memmap(path, dtype="<f4", mode="r", shape=tuple(shape))
    nan_full = int(np.count_nonzero(np.isnan(mm)))
    sel = np.ascontiguousarray(np.take(mm, heads, axis=head_axis)).astype(np.float32)
    del mm
    return torch.from_numpy(sel), nan_full


def reference_fp64(q, k, v, dout, group, causal, scale, q_off, k_off, chunk_rows):
    """q, dout: [b, hs, sq, d] (any float dtype, cuda); k, v: [b, gs, sk, d].
    q head i of the selection belongs to kv head i // group of the selection.
    Returns fp64 out [b,hs,sq,d], lse [b,hs,sq], dq [b,hs,sq,d], dk, dv [b,gs,sk,d]."""
    b, hs, sq, d = q.shape
    gs, sk = k.shape[1], k.shape[2]
    dev = q.device
    f64 = torch.float64
    out = torch.zeros((b, hs, sq, d), dtype=f64, device=dev)
    lse = torch.full((b, hs, sq), float("-inf"), dtype=f64, device=dev)
    dq = torch.zeros((b, hs, sq, d), dtype=f64, device=dev)
    dk = torch.zeros((b, gs, sk, d), dtype=f64, device=dev)
    dv = torch.zeros((b, gs, sk, d), dtype=f64, device=dev)
    if chunk_rows <= 0:
        # keep one [rows, sk] fp64 matrix at about 1 GiB
        chunk_rows = max(64, min(2048, (1 << 30) // (8 * max(1, sk))))
    for bi in range(b):
        for gi in range(gs):
            K = k[bi, gi].to(f64)
            V = v[bi, gi].to(f64)
            for hi in range(gi * group, (gi + 1) * group):
                Q = q[bi, hi].to(f64)
                DO = dout[bi, hi].to(f64)
                for r0 in range(0, sq, chunk_rows):
                    r1 = min(sq, r0 + chunk_rows)
                    if causal:
                        kend = max(0, min(sk, q_off + r1 - k_off))  # keys j <= q_off + (r1-1) - k_off
                    else:
                        kend = sk
                    if kend == 0:
                        continue  # every row fully masked: out 0, lse -inf, dq 0
                    Qc = Q[r0:r1]
                    DOc = DO[r0:r1]
                    Kc = K[:kend]
                    Vc = V[:kend]
                    S = torch.matmul(Qc, Kc.t())
                    S.mul_(scale)
                    if causal:
                        rows = torch.arange(r0, r1, device=dev, dtype=torch.int64) + (q_off - k_off)
                        cols = torch.arange(kend, device=dev, dtype=torch.int64)
                        masked = cols.unsqueeze(0) > rows.unsqueeze(1)
                        S.masked_fill_(masked, float("-inf"))
                        del masked, rows, cols
                    m = S.amax(dim=1)
                    m_safe = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
                    S.sub_(m_safe.unsqueeze(1))
                    S.exp_()
                    l = S.sum(dim=1)
                    lse[bi, hi, r0:r1] = m_safe + torch.log(l)  # log(0) = -inf for masked rows
                    l_safe = torch.where(l > 0, l, torch.ones_like(l))
                    S.div_(l_safe.unsqueeze(1))  # S is now P
                    P = S
                    del m, m_safe, l, l_safe
                    O = torch.matmul(P, Vc)
                    out[bi, hi, r0:r1] = O
                    Drow = (DOc * O).sum(dim=1)
                    dP = torch.matmul(DOc, Vc.t())
                    dP.sub_(Drow.unsqueeze(1))
                    dP.mul_(P)  # dS
                    dS = dP
                    dq[bi, hi, r0:r1] = torch.matmul(dS, Kc) * scale
                    dk[bi, gi, :kend].addmm_(dS.t(), Qc, alpha=scale)
                    dv[bi, gi, :kend].addmm_(P.t(), DOc)
                    del S, P, dP, dS, O, Drow
                del Q, DO
            del K, V
    return out, lse, dq, dk, dv


def rel_l2(x, ref, mask=None):
    """||x - ref|| / ||ref|| in fp64, done in slices to bound memory. Returns (rel, maxabs)."""
    if x is None:
        return None, None
    if tuple(x.shape) != tuple(ref.shape):
        raise ValueError("shape mismatch %s vs %s" % (tuple(x.shape), tuple(ref.shape)))
    num = 0.0
    den = 0.0
    mx = 0.0
    xs = x.reshape(-1, x.shape[-1]) if x.dim() > 1 else x.reshape(1, -1)
    rs = ref.reshape(-1, ref.shape[-1]) if ref.dim() > 1 else ref.reshape(1, -1)
    ms = None
    if mask is not None:
        ms = mask.reshape(xs.shape)
    step = max(1, (1 << 26) // max(1, xs.shape[1]))
    for s in range(0, xs.shape[0], step):
        a = xs[s:s + step].to(device=rs.device, dtype=torch.float64)
        r = rs[s:s + step].to(torch.float64)
        if ms is not None:
            mk = ms[s:s + step]
            a = a[mk]
            r = r[mk]
        if a.numel() == 0:
            continue
        diff = a - r
        num += float(torch.sum(diff * diff).item())
        den += float(torch.sum(r * r).item())
        dmax = float(diff.abs().max().item())
        if math.isnan(dmax):
            mx = float("nan")
        elif not math.isnan(mx) and dmax > mx:
            mx = dmax
        del a, r, diff
    rel = math.sqrt(num) / math.sqrt(den) if den > 0 else float("nan")
    return rel, mx


def count_nan(x):
    if x is None:
        return None
    return int(torch.isnan(x).sum().item())


def compare(name, res, ref, out_row_mask=None):
    """res: dict with out, lse (may be None), dq, dk, dv in the reference layouts.
    out_row_mask: optional bool [b, h, sq]; when given, out is compared on those rows only."""
    row = {"name": name}
    for key in ("out", "dq", "dk", "dv"):
        x = res.get(key)
        m = None
        if key == "out" and out_row_mask is not None and x is not None:
            m = out_row_mask.unsqueeze(-1).expand(tuple(x.shape))
        rel, mx = rel_l2(x, ref[key], mask=m) if x is not None else (None, None)
        row[key + "_rel"] = rel
        if key == "out":
            row["out_maxabs"] = mx
        row[key + "_nan"] = count_nan(x)
    x = res.get("lse")
    if x is not None:
        x = x.to(torch.float64)
        fin = torch.isfinite(ref["lse"])
        rel, mx = rel_l2(x, ref["lse"], mask=fin)
        row["lse_rel"] = rel
        row["lse_maxabs"] = mx
        row["lse_nan"] = count_nan(x)
        masked_rows = ~fin
        nmasked = int(masked_rows.sum().item())
        row["lse_masked_rows"] = nmasked
        if nmasked:
            # fully masked rows should have lse == -inf
            bad = masked_rows & ~(torch.isinf(x) & (x < 0))
            row["lse_masked_rows_not_neginf"] = int(bad.sum().item())
        if rel is not None and rel > 1e-2:
            # cuDNN stats could in principle be base-2; say so if that fits much better
            alt, _ = rel_l2(x * math.log(2.0), ref["lse"], mask=fin)
            if alt is not None and alt < rel * 0.01:
                row["lse_note"] = "matches if read as log2 (x*ln2): rel %.3e" % alt
    else:
        row["lse_rel"] = None
        row["lse_nan"] = None
    return row


def torch_backend_run(bname, backend, q, k, v, dout, group, mask, is_causal, scale, want_lse):
    """q, dout: [b, hs, sq, d] bf16 cuda; k, v: [b, gs, sk, d] bf16 cuda. Returns dict of results
    in reference layouts (out/dq [b,hs,sq,d], dk/dv [b,gs,sk,d], lse [b,hs,sq] or None)."""
    qt = q.detach().clone().requires_grad_(True)
    kt = k.detach().clone().requires_grad_(True)
    vt = v.detach().clone().requires_grad_(True)
    res = {}
    with sdpa_kernel(backend):
        ke = kt.repeat_interleave(group, dim=1)
        ve = vt.repeat_interleave(group, dim=1)
        out = F.scaled_dot_product_attention(qt, ke, ve, attn_mask=mask, dropout_p=0.0,
                                             is_causal=is_causal, scale=scale)
        out.backward(dout)
    torch.cuda.synchronize()
    res["out"] = out.detach()
    res["dq"] = qt.grad.detach()
    res["dk"] = kt.grad.detach()
    res["dv"] = vt.grad.detach()
    del out, ke, ve
    res["lse"] = None
    res["lse_error"] = None
    if want_lse:
        # SDPA's public API returns no lse; the private aten ops behind it do. Best effort only.
        try:
            with torch.no_grad():
                ke = k.repeat_interleave(group, dim=1)
                ve = v.repeat_interleave(group, dim=1)
                if bname == "flash":
                    r = torch.ops.aten._scaled_dot_product_flash_attention(
                        q, ke, ve, 0.0, is_causal, False, scale=scale)
                else:
                    r = torch.ops.aten._scaled_dot_product_cudnn_attention(
                        q, ke, ve, None, True, 0.0, is_causal, False, scale=scale)
                lse = r[1]
                del r, ke, ve
                b, hs, sq = q.shape[0], q.shape[1], q.shape[2]
                lse = lse.reshape(b, hs, -1)[:, :, :sq].float()
                res["lse"] = lse
        except Exception as e:
            res["lse_error"] = short_err(e, 300)
    return res


def fmt(x, w=10):
    if x is None:
        return "-".rjust(w)
    if isinstance(x, int):
        return str(x).rjust(w)
    if isinstance(x, float) and (math.isnan(x) or math.isinf(x)):
        return str(x).rjust(w)
    return ("%.3e" % x).rjust(w)


def cmd_check(args):
    t_all = time.time()
    d = args.dir
    with open(os.path.join(d, "meta.json")) as f:
        meta = json.load(f)
    b = int(meta["batch"])
    sq = int(meta["seqQ"])
    sk = int(meta["seqK"])
    hq = int(meta["headsQ"])
    hkv = int(meta["headsKV"])
    hd = int(meta["headDim"])
    causal = bool(meta.get("causal", False))
    scale = float(meta.get("scale", 1.0 / math.sqrt(hd)))
    q_off = int(meta.get("qOffset", 0))
    k_off = int(meta.get("kOffset", 0))
    dtype = str(meta.get("dtype", "bf16")).lower()
    if dtype not in ("bf16", "bfloat16"):
        raise ValueError("only bf16 supported, meta.dtype = %r" % dtype)
    if hkv <= 0 or hq % hkv != 0:
        raise ValueError("headsQ %d not a multiple of headsKV %d" % (hq, hkv))
    group = hq // hkv
    kv_sel = sorted(set([0, hkv - 1]))
    q_sel = [h for g in kv_sel for h in range(g * group, (g + 1) * group)]
    notes = []
    log("[check] %s: b=%d sq=%d sk=%d hq=%d hkv=%d d=%d causal=%s scale=%g qOffset=%d kOffset=%d"
        % (d, b, sq, sk, hq, hkv, hd, causal, scale, q_off, k_off))
    log("[check] selected kv heads %s, q heads %s" % (kv_sel, q_sel))
    if not torch.cuda.is_available():
        raise RuntimeError("CUDA not available")
    dev = torch.device("cuda")

    qshape = (b, sq, hq, hd)
    kshape = (b, sk, hkv, hd)
    t0 = time.time()
    q, _, _ = load_bf16(os.path.join(d, "q.bin"), qshape, 2, q_sel)
    k, _, _ = load_bf16(os.path.join(d, "k.bin"), kshape, 2, kv_sel)
    v, _, _ = load_bf16(os.path.join(d, "v.bin"), kshape, 2, kv_sel)
    dout, _, _ = load_bf16(os.path.join(d, "dout.bin"), qshape, 2, q_sel)
    # -> cuda, [b, h, s, d]
    q = q.to(dev).permute(0, 2, 1, 3).contiguous()
    k = k.to(dev).permute(0, 2, 1, 3).contiguous()
    v = v.to(dev).permute(0, 2, 1, 3).contiguous()
    dout = dout.to(dev).permute(0, 2, 1, 3).contiguous()

    mb = {}
    mb_full = {}
    mb_missing = []
    for key, fname, shape in (("out", "out.bin", qshape), ("dq", "dq.bin", qshape),
                              ("dk", "dk.bin", kshape), ("dv", "dv.bin", kshape)):
        path = os.path.join(d, fname)
        if not os.path.exists(path):
            mb_missing.append(fname)
            continue
        heads = q_sel if shape is qshape else kv_sel
        t, nan_full, inf_full = load_bf16(path, shape, 2, heads)
        mb[key] = t.to(dev).permute(0, 2, 1, 3).contiguous()
        mb_full[key + "_nan_all_heads"] = nan_full
        mb_full[key + "_inf_all_heads"] = inf_full
    lpath = os.path.join(d, "lse.bin")
    if os.path.exists(lpath):
        t, nan_full = load_f32(lpath, (b, hq, sq), 1, q_sel)
        mb["lse"] = t.to(dev)
        mb_full["lse_nan_all_heads"] = nan_full
    else:
        mb_missing.append("lse.bin")
    if mb_missing:
        notes.append("megabeam files missing: %s" % ", ".join(mb_missing))
    log("[check] loaded in %.1f s" % (time.time() - t0))

    # a) float64 reference
    t0 = time.time()
    r_out, r_lse, r_dq, r_dk, r_dv = reference_fp64(q, k, v, dout, group, causal, scale, q_off, k_off,
                                                    args.chunk_rows)
    torch.cuda.synchronize()
    ref_s = time.time() - t0
    ref = {"out": r_out, "lse": r_lse, "dq": r_dq, "dk": r_dk, "dv": r_dv}
    n_masked = int((~torch.isfinite(r_lse)).sum().item())
    log("[check] fp64 reference in %.1f s (%d fully masked rows in selection)" % (ref_s, n_masked))
    free_cuda()

    rows = []
    row = compare("megabeam", mb, ref)
    row.update(mb_full)
    rows.append(row)
    free_cuda()

    # b) torch SDPA bf16
    mask = None
    is_causal = False
    run_torch = True
    if causal:
        if q_off == k_off and sq == sk:
            is_causal = True  # kOffset + j <= qOffset + i  <=>  j <= i : torch's top-left causal
        else:
            if sq * sk <= args.max_mask_elems:
                ii = torch.arange(sq, device=dev).unsqueeze(1) + q_off
                jj = torch.arange(sk, device=dev).unsqueeze(0) + k_off
                mask = (jj <= ii).view(1, 1, sq, sk)  # True = attend
                del ii, jj
                notes.append("torch: explicit boolean attn_mask [%d x %d]" % (sq, sk))
            else:
                run_torch = False
                notes.append("torch skipped: causal with offsets/unequal lengths needs a %d x %d mask "
                             "(> --max-mask-elems %d)" % (sq, sk, args.max_mask_elems))
    want_lse = mask is None
    # torch's convention for a row with no visible key (an explicit mask) differs from
    # "out = 0"; zero dout on those rows (their reference gradient contribution is 0 anyway)
    # and compare torch's out on the other rows only.
    row_masked = ~torch.isfinite(r_lse)
    t_dout = dout
    out_rows = None
    if mask is not None and n_masked > 0:
        t_dout = dout.masked_fill(row_masked.unsqueeze(-1), 0)
        out_rows = ~row_masked
        notes.append("torch: %d fully masked rows: dout zeroed there, out compared on the other rows; "
                     "torch_*.out_masked_rows_nonzero counts masked rows where torch's out != 0" % n_masked)
    if run_torch:
        for bname, backend in backends():
            name = "torch_" + bname
            t0 = time.time()
            try:
                res = torch_backend_run(bname, backend, q, k, v, t_dout, group, mask, is_causal, scale,
                                        want_lse)
                row = compare(name, res, ref, out_row_mask=out_rows)
                if out_rows is not None:
                    nz = (res["out"] != 0).any(dim=-1) & row_masked
                    row["out_masked_rows_nonzero"] = int(nz.sum().item())
                    del nz
                if res.get("lse_error"):
                    row["lse_error"] = res["lse_error"]
                elif not want_lse:
                    row["lse_error"] = "not computed with an explicit mask"
                row["seconds"] = round(time.time() - t0, 3)
                del res
            except Exception as e:
                row = {"name": name, "error": short_err(e)}
            log("[check] %s done (%.1f s)%s" % (name, time.time() - t0,
                                               (": " + row["error"]) if "error" in row else ""))
            rows.append(row)
            free_cuda()
    del mask, t_dout

    # c) report
    cols = [("out_rel", "out"), ("out_maxabs", "out_maxabs"), ("lse_rel", "lse"), ("dq_rel", "dq"),
            ("dk_rel", "dk"), ("dv_rel", "dv")]
    log("")
    log("relative L2 error vs float64 reference (heads q %s, kv %s)" % (q_sel, kv_sel))
    log("%-14s" % "impl" + "".join(c[1].rjust(11) for c in cols) + "   NaN(out,lse,dq,dk,dv)")
    for r in rows:
        if "error" in r:
            log("%-14s  ERROR %s" % (r["name"], r["error"]))
            continue
        nans = ",".join("-" if r.get(k + "_nan") is None else str(r.get(k + "_nan"))
                        for k in ("out", "lse", "dq", "dk", "dv"))
        log("%-14s" % r["name"] + "".join(" " + fmt(r.get(c[0])) for c in cols) + "   " + nans)
        for extra in ("lse_error", "lse_note", "out_masked_rows_nonzero"):
            if r.get(extra) is not None:
                log("%-14s  %s: %s" % ("", extra, r[extra]))
        if r["name"] == "megabeam":
            log("%-14s  NaN over all heads: %s" % ("", ", ".join(
                "%s=%d" % (k.replace("_nan_all_heads", ""), r[k]) for k in sorted(r)
                if k.endswith("_nan_all_heads"))))
    for n in notes:
        log("note: " + n)
    log("[check] total %.1f s" % (time.time() - t_all))

    if args.json:
        doc = {"mode": "check", "dir": os.path.abspath(d), "meta": meta,
               "device": torch.cuda.get_device_name(0), "torch": torch.__version__,
               "selected_q_heads": q_sel, "selected_kv_heads": kv_sel,
               "fully_masked_rows": n_masked, "ref_seconds": round(ref_s, 3),
               "torch_causal_mode": ("is_causal" if is_causal else ("mask" if causal and run_torch else
                                                                     ("skipped" if causal else "none"))),
               "results": rows, "notes": notes}
        write_json(args.json, doc)
    return 0


# ----------------------------------------------------------------------------- time mode


def time_one(backend, b, hq, hkv, d, s, reps, warmup):
    """Returns dict with fwd_s, bwd_s (medians), peak_gib."""
    group = hq // hkv
    dev = torch.device("cuda")
    torch.cuda.reset_peak_memory_stats()
    q = torch.randn(b, hq, s, d, device=dev, dtype=torch.bfloat16).requires_grad_(True)
    k = torch.randn(b, hkv, s, d, device=dev, dtype=torch.bfloat16).requires_grad_(True)
    v = torch.randn(b, hkv, s, d, device=dev, dtype=torch.bfloat16).requires_grad_(True)
    dout = torch.randn(b, hq, s, d, device=dev, dtype=torch.bfloat16)

    def fwd():
        ke = k.repeat_interleave(group, dim=1)
        ve = v.repeat_interleave(group, dim=1)
        return F.scaled_dot_product_attention(q, ke, ve, is_causal=True)

    fwd_t = []
    bwd_t = []
    with sdpa_kernel(backend):
        for it in range(warmup + reps):
            q.grad = None
            k.grad = None
            v.grad = None
            e0 = torch.cuda.Event(enable_timing=True)
            e1 = torch.cuda.Event(enable_timing=True)
            e2 = torch.cuda.Event(enable_timing=True)
            e3 = torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            e0.record()
            out = fwd()
            e1.record()
            torch.cuda.synchronize()
            e2.record()
            out.backward(dout)
            e3.record()
            torch.cuda.synchronize()
            del out
            if it >= warmup:
                fwd_t.append(e0.elapsed_time(e1) / 1e3)
                bwd_t.append(e2.elapsed_time(e3) / 1e3)
    peak = torch.cuda.max_memory_allocated() / GIB
    del q, k, v, dout
    return {"fwd_s": statistics.median(fwd_t), "bwd_s": statistics.median(bwd_t), "peak_gib": peak,
            "fwd_all_s": fwd_t, "bwd_all_s": bwd_t}


def cmd_time(args):
    if not torch.cuda.is_available():
        raise RuntimeError("CUDA not available")
    seqs = [int(x) for x in args.seqs.split(",") if x.strip()]
    b, hq, hkv, d = args.batch, args.heads_q, args.heads_kv, args.head_dim
    if hkv <= 0 or hq % hkv != 0:
        raise ValueError("heads-q %d not a multiple of heads-kv %d" % (hq, hkv))
    dev_name = torch.cuda.get_device_name(0)
    log("[time] %s, torch %s; b=%d hq=%d hkv=%d d=%d causal bf16, layout [b,h,s,d]" % (
        dev_name, torch.__version__, b, hq, hkv, d))
    log("[time] note: K/V are expanded from %d to %d heads with repeat_interleave inside the timed forward "
        "(autograd sums dK/dV back in the timed backward); the expanded copies count in peak memory" % (hkv, hq))
    results = []
    t_all = time.time()
    for s in seqs:
        reps = args.reps if args.reps else (3 if s <= 131072 else 1)
        warmup = 0 if s >= 524288 else 1
        fwd_flops = 4.0 * s * s * d * hq * b / 2.0
        bwd_flops = 2.5 * fwd_flops
        for bname, backend in backends():
            rec = {"backend": bname, "seq": s, "fwd_s": None, "bwd_s": None, "fwd_tflops": None,
                   "bwd_tflops": None, "peak_gib": None, "reps": reps, "warmup": warmup}
            free_cuda()
            t0 = time.time()
            try:
                r = time_one(backend, b, hq, hkv, d, s, reps, warmup)
                rec["fwd_s"] = r["fwd_s"]
                rec["bwd_s"] = r["bwd_s"]
                rec["fwd_tflops"] = fwd_flops / r["fwd_s"] / 1e12 if r["fwd_s"] > 0 else None
                rec["bwd_tflops"] = bwd_flops / r["bwd_s"] / 1e12 if r["bwd_s"] > 0 else None
                rec["peak_gib"] = r["peak_gib"]
                rec["fwd_all_s"] = r["fwd_all_s"]
                rec["bwd_all_s"] = r["bwd_all_s"]
                del r
                log("[time] %-5s s=%-7d fwd %.4f s (%.1f TFLOP/s)  bwd %.4f s (%.1f TFLOP/s)  peak %.2f GiB"
                    "  [reps %d, warm-up %d, wall %.1f s]" % (
                        bname, s, rec["fwd_s"], rec["fwd_tflops"] or 0, rec["bwd_s"], rec["bwd_tflops"] or 0,
                        rec["peak_gib"], reps, warmup, time.time() - t0))
            except Exception as e:
                rec["error"] = short_err(e)
                log("[time] %-5s s=%-7d FAILED: %s" % (bname, s, rec["error"]))
            results.append(rec)
            free_cuda()
    log("")
    log("causal bf16 SDPA, b=%d hq=%d hkv=%d (K/V repeat_interleave'd) d=%d" % (b, hq, hkv, d))
    log("%-6s %8s %10s %9s %10s %9s %9s" % ("impl", "seq", "fwd_s", "fwd_TF", "bwd_s", "bwd_TF", "peak_GiB"))
    for r in results:
        if r.get("error"):
            log("%-6s %8d  ERROR %s" % (r["backend"], r["seq"], r["error"][:120]))
        else:
            log("%-6s %8d %10.4f %9.1f %10.4f %9.1f %9.2f" % (
                r["backend"], r["seq"], r["fwd_s"], r["fwd_tflops"] or 0, r["bwd_s"], r["bwd_tflops"] or 0,
                r["peak_gib"]))
    log("[time] total %.1f s; no warm-up at seq >= 524288 (first-call overhead included there)"
        % (time.time() - t_all))
    if args.json:
        doc = {"device": dev_name, "torch": torch.__version__,
               "config": {"batch": b, "heads_q": hq, "heads_kv": hkv, "head_dim": d, "causal": True,
                          "dtype": "bf16", "layout": "bhsd",
                          "gqa": "K/V repeat_interleave'd to heads_q inside the timed forward",
                          "fwd_flops": "4*S^2*d*hq*b/2", "bwd_flops": "2.5*fwd"},
               "results": results}
        write_json(args.json, doc)
    return 0


# ----------------------------------------------------------------------------- main


def write_json(path, doc):
    def clean(o):
        if isinstance(o, float) and (math.isnan(o) or math.isinf(o)):
            return str(o)
        if isinstance(o, dict):
            return {k: clean(v) for k, v in o.items()}
        if isinstance(o, (list, tuple)):
            return [clean(v) for v in o]
        return o
    dirn = os.path.dirname(os.path.abspath(path))
    if dirn and not os.path.isdir(dirn):
        os.makedirs(dirn, exist_ok=True)
    with open(path, "w") as f:
        json.dump(clean(doc), f, indent=1)
    log("[json] wrote %s" % path)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="mode")
    pc = sub.add_parser("check", help="correctness vs a float64 reference on megabeam's inputs")
    pc.add_argument("dir")
    pc.add_argument("--json", default=None)
    pc.add_argument("--chunk-rows", type=int, default=0,
                    help="q rows per fp64 chunk (0: auto, ~1 GiB per [rows x seqK] matrix, at most 2048)")
    pc.add_argument("--max-mask-elems", type=int, default=1 << 30,
                    help="largest seqQ*seqK for which an explicit boolean mask is built for torch")
    pt = sub.add_parser("time", help="SDPA flash / cuDNN timing yardstick (causal, bf16)")
    pt.add_argument("--seqs", default="16384,65536,131072,524288")
    pt.add_argument("--heads-q", type=int, default=32)
    pt.add_argument("--heads-kv", type=int, default=8)
    pt.add_argument("--head-dim", type=int, default=128)
    pt.add_argument("--batch", type=int, default=1)
    pt.add_argument("--reps", type=int, default=0,
                    help="timed reps per size (0: 3 for seq <= 131072, else 1)")
    pt.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if args.mode not in ("check", "time"):
        p.print_help()
        return 1
    if torch is None:
        log("torch import failed: %s" % _TORCH_IMPORT_ERROR)
        return 1
    try:
        if args.mode == "check":
            return cmd_check(args)
        return cmd_time(args)
    except Exception:
        traceback.print_exc()
        sys.stdout.flush()
        return 1


if __name__ == "__main__":
    sys.exit(main())
