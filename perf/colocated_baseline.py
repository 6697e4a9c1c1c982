#!/usr/bin/env python3
"""The colocated baseline: how RL frameworks that share a host move weights today, in torch.

The trainer holds the model's BF16 parameters on the GPU. Every step it packs them, tensor by
tensor, into one of two CUDA buckets (2 GB each, double-buffered) and shares each bucket with the
inference ranks through CUDA IPC (torch.multiprocessing, as verl's and SGLang's
update_weights_from_tensor do). Each inference rank (one process per EP rank, the layout
perf/samehost_bench.cpp generates) copies the tensors it owns out of the bucket into its
parameters: q/k/v fused into qkv_proj, its experts' w1/w3 fused into w13_weight and w2 into
w2_weight, quantized to FP8 e4m3 with 128x128 block scales in eager torch ops, the rest copied. A bucket is refilled once every rank
said it is done with it.

  colocated_baseline.py [--model DIR] [--ep N] [--steps N] [--layers N] [--bucket-gb G]

Prints "baseline: X GB/s" (trainer bytes per second, best step after the first).
"""
import argparse
import json
import os
import re
import time

import torch
import torch.multiprocessing as mp

BLOCK = 128


def expand(spec, layers):
    """(name, shape) of every parameter of a weightcast spec, its `for` loops unrolled."""
    dims = spec.get("dims", {})

    def dim(d):
        if isinstance(d, int):
            return d
        if d in dims:
            return dims[d]
        m = re.fullmatch(r"(\d+)\*(\w+)", d)
        return int(m.group(1)) * dims[m.group(2)]

    out = []
    for p in spec["params"]:
        loops = dict(p.get("for", {}))
        if layers >= 0 and "i" in loops:
            loops["i"] = [0, layers]
        names = [({}, p["name"])]
        for var, (lo, hi) in loops.items():
            names = [({**env, var: v}, n) for env, n in names for v in range(lo, hi)]
        for env, n in names:
            for var, v in env.items():
                n = n.replace("{" + var + "}", str(v))
            out.append((n, [dim(d) for d in p["shape"]]))
    return out


def quantize_into(w, q, s):
    """FP8 e4m3 with one FP32 scale per 128x128 block, eager torch ops (w: [E, M, N] bf16)."""
    e, m, n = w.shape
    x = w.float().view(e, m // BLOCK, BLOCK, n // BLOCK, BLOCK)
    amax = x.abs().amax(dim=(2, 4), keepdim=True).clamp(min=1e-12)
    scale = amax / 448.0
    q.copy_((x / scale).to(torch.float8_e4m3fn).view(e, m, n))
    s.copy_(scale.view(e, m // BLOCK, n // BLOCK))


def engine_params(params, ep, dev):
    """The inference rank's parameters (vLLM's layout, as perf/samehost_bench.cpp generates it):
    attention, norms, embedding and head replicated in BF16, q/k/v fused into qkv_proj; the
    stacked experts (w1, w3, w2: [E, rows, cols]) split over the EP ranks, w1 and w3 fused into
    w13_weight, both quantized to FP8 with 128x128 scales."""
    dest = {}
    shape = dict(params)
    for name, shp in params:
        if ".q_proj." in name:
            base = name.replace(".q_proj.", ".qkv_proj.")
            rows = shp[0] + 2 * shape[name.replace(".q_proj.", ".k_proj.")][0]
            dest[base] = torch.empty(rows, shp[1], dtype=torch.bfloat16, device=dev)
        elif name.endswith(".experts.w1") or name.endswith(".experts.w2"):
            e, m, n = shp[0] // ep, shp[1], shp[2]
            if name.endswith(".w1"):
                base, m = name[:-len("w1")] + "w13_weight", 2 * m
            else:
                base = name[:-len("w2")] + "w2_weight"
            dest[base] = torch.empty(e, m, n, dtype=torch.float8_e4m3fn, device=dev)
            dest[base + "_scale_inv"] = torch.empty(
                e, m // BLOCK, n // BLOCK, dtype=torch.float32, device=dev)
        elif not any(k in name for k in (".k_proj.", ".v_proj.", ".experts.w3")):
            dest[name] = torch.empty(*shp, dtype=torch.bfloat16, device=dev)
    return dest


def load_weight(dest, shape, rank, ep, name, shp, w):
    """What an engine's load_weights does with one trainer tensor `w` (BF16, shape `shp`): copies
    it into place, fusing q/k/v and w1/w3, and quantizes this rank's experts."""
    if ".q_proj." in name:
        dest[name.replace(".q_proj.", ".qkv_proj.")][:shp[0]].copy_(w)
    elif ".k_proj." in name:
        q = shape[name.replace(".k_proj.", ".q_proj.")][0]
        dest[name.replace(".k_proj.", ".qkv_proj.")][q:q + shp[0]].copy_(w)
    elif ".v_proj." in name:
        q = shape[name.replace(".v_proj.", ".q_proj.")][0]
        dest[name.replace(".v_proj.", ".qkv_proj.")][q + shp[0]:].copy_(w)
    elif ".experts.w" in name:
        e = shp[0] // ep
        mine = w[rank * e:(rank + 1) * e]
        if name.endswith(".w2"):
            base, lo = name[:-len("w2")] + "w2_weight", 0
        else:
            base = name[:-len("w1")] + "w13_weight"
            lo = 0 if name.endswith(".w1") else shp[1]
        hi = lo + shp[1]
        quantize_into(mine, dest[base][:, lo:hi],
                      dest[base + "_scale_inv"][:, lo // BLOCK:hi // BLOCK])
    else:
        dest[name].copy_(w)


def inference_rank(rank, ep, params, pipe_in, pipe_out):
    """One DP-attention rank of the replica (engine_params), taking buckets over CUDA IPC."""
    torch.cuda.set_device(0)
    dev = torch.device("cuda", 0)
    dest = engine_params(params, ep, dev)
    shape = dict(params)
    buckets = {}
    pipe_out.put(("ready", rank))
    while True:
        msg = pipe_in.get()
        if msg is None:
            break
        slot, bucket, metas = msg
        if slot not in buckets:  # opened once (CUDA IPC), reused every step
            buckets[slot] = bucket
        buf = buckets[slot]
        for name, off, shp in metas:
            n = 1
            for d in shp:
                n *= d
            w = buf[off:off + 2 * n].view(torch.bfloat16).view(*shp)
            load_weight(dest, shape, rank, ep, name, shp, w)
        torch.cuda.synchronize()
        pipe_out.put(("done", slot))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("--model", default=os.path.join(here, "..", "configs", "qwen3-30b-a3b"))
    ap.add_argument("--ep", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--layers", type=int, default=-1)
    ap.add_argument("--bucket-gb", type=float, default=2.0)
    a = ap.parse_args()
    spec = json.load(open(os.path.join(a.model, "trainer.json")))
    params = expand(spec, a.layers)
    dev = torch.device("cuda", 0)
    torch.manual_seed(0)
    weights = [(n, (torch.rand(*s, device=dev, dtype=torch.float32) * 4 - 2).to(torch.bfloat16))
               for n, s in params]
    total = sum(w.numel() * 2 for _, w in weights)
    bucket_bytes = int(a.bucket_gb * 1e9) // 256 * 256
    buckets = [torch.empty(bucket_bytes, dtype=torch.uint8, device=dev) for _ in range(2)]
    ctx = mp.get_context("spawn")
    to_ranks = [ctx.Queue() for _ in range(a.ep)]
    back = ctx.Queue()
    procs = [ctx.Process(target=inference_rank, args=(r, a.ep, params, to_ranks[r], back))
             for r in range(a.ep)]
    for p in procs:
        p.start()
    for _ in procs:
        assert back.get()[0] == "ready"
    print(f"baseline: {len(weights)} tensors, {total / 1e9:.2f} GB of BF16, buckets of "
          f"{bucket_bytes / 1e9:.1f} GB x2, EP{a.ep}", flush=True)
    best = 0.0
    busy = [0, 0]  # ranks still reading each bucket
    for step in range(1, a.steps + 1):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        slot, off, metas = 0, 0, []

        def flush(slot, metas):
            torch.cuda.synchronize()  # packed before the ranks read it
            for q in to_ranks:
                q.put((slot, buckets[slot], metas))
            busy[slot] = a.ep

        def wait_free(slot):
            while busy[slot]:
                kind, s = back.get()
                busy[s] -= 1

        wait_free(slot)
        for name, w in weights:
            n = w.numel() * 2
            if off + n > bucket_bytes:
                flush(slot, metas)
                slot, off, metas = 1 - slot, 0, []
                wait_free(slot)
            buckets[slot][off:off + n].copy_(w.view(-1).view(torch.uint8))
            metas.append((name, off, list(w.shape)))
            off += (n + 255) // 256 * 256
        flush(slot, metas)
        wait_free(0)
        wait_free(1)
        dt = time.perf_counter() - t0
        gbps = total / dt / 1e9
        print(f"baseline step {step}: {dt:.3f} s, {gbps:.1f} GB/s", flush=True)
        if step > 1 or a.steps == 1:
            best = max(best, gbps)
    for q in to_ranks:
        q.put(None)
    for p in procs:
        p.join()
    print(f"baseline: {best:.1f} GB/s", flush=True)


if __name__ == "__main__":
    main()
