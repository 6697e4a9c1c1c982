"""Specs read off live torch models.

trainer_spec(model, mesh) describes what every trainer rank holds: one entry per parameter of
model.named_parameters(), with its global shape, dtype and DTensor placements (FSDP2's
Shard(dim=0), TP's Shard / Replicate, _StridedShard where FSDP2 shards a TP-sharded dim).
Sender.register_module(model) then registers each rank's local shards by the same names.
"""
import json


_DTYPES = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32", "float8_e4m3fn": "fp8_e4m3",
           "float8_e5m2": "fp8_e5m2", "int8": "int8"}


def _dtype(name, t):
    s = str(t.dtype).replace("torch.", "")
    if s not in _DTYPES:
        raise ValueError(f"parameter '{name}': dtype {t.dtype} has no weightcast dtype "
                         f"(expected one of {', '.join('torch.' + k for k in _DTYPES)})")
    return _DTYPES[s]


def _placement(name, pl):
    kind = type(pl).__name__
    if hasattr(pl, "split_factor"):  # _StridedShard: FSDP2 over a TP-sharded dim
        return f"_StridedShard(dim={pl.dim}, sf={pl.split_factor})"
    if kind == "Shard":
        return f"Shard(dim={pl.dim})"
    if kind == "Replicate":
        return "Replicate()"
    raise ValueError(f"parameter '{name}': placement {pl!r} cannot be sent (a Partial tensor is "
                     "not a weight yet: reduce it first)")


def _axes(mesh):
    if isinstance(mesh, dict):
        return [(str(k), int(v)) for k, v in mesh.items()]
    names = mesh.mesh_dim_names or tuple(f"dim{k}" for k in range(mesh.ndim))
    return list(zip(names, mesh.shape))


def _ranks(mesh):
    if isinstance(mesh, dict):
        n = 1
        for v in mesh.values():
            n *= int(v)
        return list(range(n))
    return [int(r) for r in mesh.mesh.flatten().tolist()]


def trainer_spec(model, mesh=None, *, host="trn{h}", gpus_per_host=8, model_name=None):
    """The weightcast trainer spec (a dict; json.dump it) of `model` as this job shards it.

    model: an nn.Module whose parameters are DTensors (FSDP2 fully_shard, parallelize_module)
        or plain tensors (replicated on every rank).
    mesh: the job's DeviceMesh (torch.distributed.device_mesh); every parameter's mesh must be it
        or named dims of it. Default: the one mesh all DTensor parameters share. A dict of axis
        name -> size ({"dp": 4}) stands for ranks 0..N-1 in row-major order, for models whose
        parameters are plain tensors (replicated on every rank).
    host, gpus_per_host: where global rank g runs: host `host` with {h} = g // gpus_per_host,
        GPU g % gpus_per_host (the compact form of docs/spec-format.md).
    Raises ValueError naming the parameter for what a spec cannot say (Partial placements,
    unknown dtypes, a parameter on a mesh dim the job mesh lacks).
    """
    params = list(model.named_parameters())
    if not params:
        raise ValueError("trainer_spec: the module has no parameters")
    meshes = [p.device_mesh for _, p in params if hasattr(p, "device_mesh")]
    if mesh is None:
        if not meshes:
            raise ValueError("trainer_spec: no DTensor parameters; pass mesh= to say how many "
                             "ranks replicate the model")
        mesh = meshes[0]
        for m in meshes:
            if m != mesh:
                raise ValueError("trainer_spec: parameters live on different device meshes; pass "
                                 "the job's mesh= (whose named dims cover them all)")
    axes = _axes(mesh)
    if not axes or any(size < 1 for _, size in axes):
        raise ValueError(f"trainer_spec: mesh {axes} needs at least one axis, each of size >= 1")
    axis_names = [a for a, _ in axes]
    entries = []
    for name, p in params:
        entry = {"name": name, "shape": list(p.shape), "dtype": _dtype(name, p)}
        if hasattr(p, "device_mesh"):
            pm = p.device_mesh
            dims = axis_names if pm is mesh or (not isinstance(mesh, dict) and pm == mesh) \
                else list(pm.mesh_dim_names or [])
            if len(dims) != pm.ndim:
                raise ValueError(f"parameter '{name}': its device mesh has unnamed dims; name "
                                 "them (init_device_mesh(..., mesh_dim_names=...))")
            placement = {}
            for axis, pl in zip(dims, p.placements):
                if axis not in axis_names:
                    raise ValueError(f"parameter '{name}': mesh dim '{axis}' is not a dim of the "
                                     f"job mesh {axis_names}")
                if type(pl).__name__ != "Replicate":
                    placement[axis] = _placement(name, pl)
            if placement:
                entry["placement"] = placement
        entries.append(entry)
    ranks = _ranks(mesh)
    if ranks == list(range(len(ranks))):
        devices = {"host": host, "gpus_per_host": gpus_per_host}
    else:
        devices = [{"host": host.replace("{h}", str(g // gpus_per_host)), "gpu": g % gpus_per_host}
                   for g in ranks]
    return {"format": "weightcast.spec/v1", "role": "trainer",
            "model": model_name or type(model).__name__,
            "mesh": {"axes": [{"name": a, "size": int(s)} for a, s in axes], "devices": devices},
            "params": entries}


def write_trainer_spec(path, model, mesh=None, **kw):
    """trainer_spec(model, mesh, **kw) written to `path` as JSON (whole or not at all: written
    beside it, then renamed, so a process waiting for the file never reads half of it); returns
    the spec."""
    import os
    spec = trainer_spec(model, mesh, **kw)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(spec, f, indent=1)
    os.replace(tmp, path)
    return spec
