#!/usr/bin/env python3
"""The broadcast baseline (issue 15): how verl and OpenRLHF update a separate inference GPU, in torch.

Trainer rank 0 holds the full BF16 parameters on its GPU (what FSDP's full_tensor() gives it) and
broadcasts them one tensor at a time over NCCL to the inference ranks, one process per GPU from
--inference-gpu on; each inference rank receives a tensor into a scratch buffer and loads it
into its parameters as an engine's load_weights does (perf/colocated_baseline.py: q/k/v and
w1/w3 fused, its experts quantized to FP8 e4m3 with 128x128 scales in eager torch ops, the rest
copied). One process per GPU: NCCL refuses two ranks on one GPU, so this needs 1 + EP GPUs.

  broadcast_baseline.py [--model DIR] [--ep N] [--steps N] [--layers N] [--inference-gpu G]

Prints "baseline: X GB/s" (trainer bytes per second, best step after the first). NVLink
multicast stays off (NCCL_NVLS_ENABLE=0).
"""
import argparse
import json
import os
import sys
import time

os.environ.setdefault("NCCL_NVLS_ENABLE", "0")

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from colocated_baseline import engine_params, expand, load_weight  # noqa: E402


def worker(rank, world, a, params, port):
    os.environ["NCCL_NVLS_ENABLE"] = "0"
    gpu = 0 if rank == 0 else a.inference_gpu + rank - 1
    torch.cuda.set_device(gpu)
    dev = torch.device("cuda", gpu)
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world, device_id=dev)
    shape = dict(params)
    ep = world - 1
    if rank == 0:
        torch.manual_seed(0)
        weights = [(torch.rand(*s, device=dev, dtype=torch.float32) * 4 - 2).to(torch.bfloat16)
                   for _, s in params]
        total = sum(w.numel() * 2 for w in weights)
        print(f"baseline: {len(weights)} tensors, {total / 1e9:.2f} GB of BF16, per-tensor NCCL "
              f"broadcast from GPU 0 to EP{ep} on GPU(s) {a.inference_gpu}.."
              f"{a.inference_gpu + ep - 1}", flush=True)
    else:
        dest = engine_params(params, ep, dev)
        most = max(s[0] * (s[1] if len(s) > 1 else 1) * (s[2] if len(s) > 2 else 1)
                   for _, s in params)
        scratch = torch.empty(most, dtype=torch.bfloat16, device=dev)
    best = 0.0
    for step in range(1, a.steps + 1):
        dist.barrier()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for k, (name, shp) in enumerate(params):
            if rank == 0:
                dist.broadcast(weights[k], src=0)
            else:
                n = 1
                for d in shp:
                    n *= d
                w = scratch[:n].view(*shp)
                dist.broadcast(w, src=0)
                load_weight(dest, shape, rank - 1, ep, name, shp, w)
        torch.cuda.synchronize()
        dist.barrier()
        dt = time.perf_counter() - t0
        if rank == 0:
            gbps = total / dt / 1e9
            print(f"baseline step {step}: {dt:.3f} s, {gbps:.1f} GB/s", flush=True)
            if step > 1 or a.steps == 1:
                best = max(best, gbps)
    if rank == 0:
        print(f"baseline: {best:.1f} GB/s", flush=True)
    dist.destroy_process_group()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("--model", default=os.path.join(here, "..", "configs", "qwen3-30b-a3b"))
    ap.add_argument("--ep", type=int, default=1)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--layers", type=int, default=-1)
    ap.add_argument("--inference-gpu", type=int, default=1)
    ap.add_argument("--port", type=int, default=29517)
    a = ap.parse_args()
    need = a.inference_gpu + a.ep
    if torch.cuda.device_count() < max(need, 2):
        print(f"broadcast_baseline: skipped: needs {max(need, 2)} GPUs, this machine has "
              f"{torch.cuda.device_count()}")
        sys.exit(77)
    params = expand(json.load(open(os.path.join(a.model, "trainer.json"))), a.layers)
    mp.spawn(worker, args=(1 + a.ep, a, params, a.port), nprocs=1 + a.ep, join=True)


if __name__ == "__main__":
    main()
