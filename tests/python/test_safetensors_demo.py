"""Weights in the ecosystem's format, checked with independent tools: numpy writes the demo
model's full trainer weights as safetensors, `weightcast demo --weights --dump` pushes them
(scaled per step) through FSDP -> EP resharding, fused qkv / gate_up and FP8 quantization, and
numpy reads what each inference rank dumped and checks it against the file."""
import itertools
import json
import os
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = os.environ.get("WEIGHTCAST_BIN", str(ROOT / "build" / "weightcast"))


def expand(entry):
    ranges = entry.get("for", {})
    keys = list(ranges)
    for combo in itertools.product(*(range(*ranges[k]) for k in keys)):
        env = dict(zip(keys, combo))
        yield entry["name"].format(**env)


def write_safetensors(path, tensors):
    header, offset, blobs = {}, 0, []
    for name, (dtype, arr) in tensors.items():
        raw = arr.tobytes()
        header[name] = {"dtype": dtype, "shape": list(arr.shape), "data_offsets": [offset, offset + len(raw)]}
        offset += len(raw)
        blobs.append(raw)
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    path.write_bytes(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def read_safetensors(path):
    data = path.read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    body = data[8 + n:]
    np_dtype = {"BF16": np.uint16, "F32": np.float32, "F8_E4M3": np.uint8}
    out = {}
    for name, e in header.items():
        if name == "__metadata__":
            continue
        b, end = e["data_offsets"]
        out[name] = (e["dtype"], np.frombuffer(body[b:end], dtype=np_dtype[e["dtype"]]).reshape(e["shape"]))
    return out, header.get("__metadata__", {})


def bf16_to_f32(u):
    return (u.astype(np.uint32) << 16).view(np.float32)


def f32_to_bf16(f):
    u = f.astype(np.float32).view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def fp8e4m3_to_f32(q):
    q = q.astype(np.int32)
    sign = np.where(q & 0x80, -1.0, 1.0)
    e = (q >> 3) & 0xF
    m = q & 0x7
    mag = np.where(e == 0, m / 8.0 * 2.0 ** -6, (1 + m / 8.0) * 2.0 ** (e - 7))
    return (sign * mag).astype(np.float32)


@pytest.mark.skipif(not Path(BIN).exists(), reason="weightcast not built")
def test_weights_in_dump_out(tmp_path):
    spec = json.loads((ROOT / "configs" / "demo-moe" / "trainer.json").read_text())
    dims = spec["dims"]
    rng = np.random.default_rng(7)
    full = {}
    for entry in spec["params"]:
        shape = [dims[d] if isinstance(d, str) else d for d in entry["shape"]]
        for name in expand(entry):
            full[name] = f32_to_bf16(rng.standard_normal(shape).astype(np.float32))
    weights = tmp_path / "model.safetensors"
    write_safetensors(weights, {k: ("BF16", v) for k, v in full.items()})
    dump = tmp_path / "dump"
    run = subprocess.run([BIN, "demo", "--steps", "2", "--weights", str(weights), "--dump", str(dump)],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "demo OK" in run.stdout
    factor = np.float32(1 + 1 / 8)  # step 2
    scaled = {k: f32_to_bf16(bf16_to_f32(v) * factor) for k, v in full.items()}
    for rank in (0, 1):
        got, meta = read_safetensors(dump / f"replica0-rank{rank}.safetensors")
        assert meta["step"] == "2"
        # Replicated and fused: each rank holds the whole qkv = concat(q, k, v).
        for i in range(2):
            pre = f"model.layers.{i}.self_attn."
            want = np.concatenate([scaled[pre + n + ".weight"] for n in ("q_proj", "k_proj", "v_proj")])
            np.testing.assert_array_equal(got[pre + "qkv_proj.weight"][1], want)
        # Attention data parallel (vLLM DP2, TP1): every rank holds the whole lm_head.
        np.testing.assert_array_equal(got["lm_head.weight"][1], scaled["lm_head.weight"])
        # FusedMoE over EP2: experts 4r..4r+3 stacked here as w13 = [w1; w3] per expert, FP8
        # with 128x128 block scales: dequantize and compare.
        for i in range(2):
            pre = f"model.layers.{i}.mlp.experts."
            q = got[pre + "w13_weight"][1]
            s = got[pre + "w13_weight_scale_inv"][1]
            assert q.shape == (4, 512, 256) and s.shape == (4, 4, 2)
            for k, e in enumerate(range(4 * rank, 4 * rank + 4)):
                deq = fp8e4m3_to_f32(q[k]) * np.kron(s[k], np.ones((128, 128), dtype=np.float32))
                want = bf16_to_f32(np.concatenate([scaled[pre + "w1"][e], scaled[pre + "w3"][e]]))
                blockmax = np.abs(want).reshape(4, 128, 2, 128).max(axis=(1, 3))
                # within e4m3's step at each magnitude
                assert np.all(np.abs(deq - want) <= np.kron(blockmax, np.ones((128, 128))) / 448 * 16 + 1e-6)
                assert np.allclose(s[k], blockmax / 448, rtol=1e-6)


@pytest.mark.skipif(not Path(BIN).exists(), reason="weightcast not built")
def test_weights_missing_a_tensor_is_refused(tmp_path):
    weights = tmp_path / "partial.safetensors"
    write_safetensors(weights, {"lm_head.weight": ("BF16", np.zeros((1024, 256), dtype=np.uint16))})
    run = subprocess.run([BIN, "demo", "--steps", "1", "--weights", str(weights)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    assert "no tensors for trainer params model.embed_tokens.weight" in run.stderr
