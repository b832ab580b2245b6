"""Plan a training run on a TPU slice before renting it: compile the trainer's real step (loss,
gradients, clipping, optimisers, EMA, the non-finite guard; ``Trainer.lower_step``) for the
slice's topology on this machine and read the executable's memory and cost analyses.

Nothing is allocated: the model is built shape-first (``Trainer(materialize=False)``), the
batch is the task's ``batch_spec``. Figures are per device (= per chip) as XLA reports them for
the SPMD program. The projected step time is ``FLOPs per chip / (peak bf16 rate x MFU)`` at a
stated MFU (an assumption, printed beside it); XLA's own cost-model time is reported too.
"""

from __future__ import annotations

import copy
import math
import re
import time
from typing import Any, Sequence

import jax
import numpy as np

from vasa_jax.plan.chips import (Chip, GiB, PlanError, libtpu_version, topology_devices,
                                  tpu_compiles)

DEFAULT_MFU = 0.35

_OOM = re.compile(r"memory required for HLO temporaries \(([\d.]+)([KMGT]?)\) exceeds "
                  r"available HBM \(([\d.]+)([KMGT]?)\)")
_UNITS = {"": 1, "K": 1024, "M": 1024 ** 2, "G": 1024 ** 3, "T": 1024 ** 4}
_COLLECTIVE = re.compile(r"=\s*(\(?[^=]*?\)?)\s+(all-reduce|all-gather|reduce-scatter|all-to-all|"
                         r"collective-permute)(-start)?\(")
_SHAPE = re.compile(r"\b(pred|s8|u8|s16|u16|s32|u32|s64|u64|bf16|f16|f32|f64)\[([\d,]*)\]")
_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "bf16": 2, "f16": 2, "s32": 4,
          "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8}


def collective_bytes(hlo_text: str) -> dict[str, int]:
    """Bytes each kind of collective produces per device in one run of the optimised HLO
    module ``hlo_text`` (result shapes; async ``-start`` ops counted once). A loop body's
    collectives count once."""
    out: dict[str, int] = {}
    hlo_text = re.sub(r"/\*.*?\*/", "", hlo_text)  # long tuples carry /*index=5*/ comments
    for m in _COLLECTIVE.finditer(hlo_text):
        kind = m.group(2)
        shapes = _SHAPE.findall(m.group(1))
        if m.group(3) and len(shapes) > 1:  # async start: (operand, result) -> the result
            shapes = shapes[len(shapes) // 2:]
        n = sum(_BYTES[t] * math.prod(int(d) for d in dims.split(",") if d)
                for t, dims in shapes)
        out[kind] = out.get(kind, 0) + n
    return out


def overflow(error: BaseException) -> tuple[float, float] | None:
    """(temporaries needed, HBM available) in bytes from XLA's compile-time HBM overflow
    error, or None for any other error."""
    m = _OOM.search(str(error))
    if "RESOURCE_EXHAUSTED" not in str(error) or not m:
        return None
    return float(m.group(1)) * _UNITS[m.group(2)], float(m.group(3)) * _UNITS[m.group(4)]


def compiled_figures(compiled) -> dict[str, Any]:
    """Per-device memory and cost of a compiled executable: arguments, outputs, donated
    (aliased), temporaries, code and their peak in bytes; FLOPs, bytes accessed and XLA's
    cost-model seconds (None when it gives none)."""
    mem = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return {"argument_bytes": mem.argument_size_in_bytes,
            "output_bytes": mem.output_size_in_bytes, "alias_bytes": mem.alias_size_in_bytes,
            "temp_bytes": mem.temp_size_in_bytes, "code_bytes": mem.generated_code_size_in_bytes,
            "peak_bytes": (mem.argument_size_in_bytes + mem.output_size_in_bytes
                           - mem.alias_size_in_bytes + mem.temp_size_in_bytes
                           + mem.generated_code_size_in_bytes),
            "flops": float(cost.get("flops", 0.0)),
            "bytes_accessed": float(cost.get("bytes accessed", 0.0)),
            "optimal_seconds": max(float(cost.get("optimal_seconds", 0.0)), 0.0) or None}


def _leaf_table(abstract_state: Any, n: int = 5) -> list[dict[str, Any]]:
    """The ``n`` largest per-device arrays of a sharded abstract state."""
    from vasa_jax.parallel import path_name

    rows = []
    for path, x in jax.tree_util.tree_flatten_with_path(abstract_state)[0]:
        shard = x.sharding.shard_shape(x.shape)
        rows.append({"name": path_name(path), "shape": list(x.shape),
                     "per_device_bytes": int(math.prod(shard) * np.dtype(x.dtype).itemsize),
                     "spec": str(x.sharding.spec)})
    rows.sort(key=lambda r: -r["per_device_bytes"])
    return rows[:n]


def _trainer(config, devices):
    from vasa_jax.train.tasks import make_task
    from vasa_jax.train.trainer import Trainer

    task = make_task(config)
    return task, Trainer(task, config, None, prepare=False, devices=devices,
                         materialize=False)


def plan_config(config, slice_name: str, *, batch: int | None = None,
                mesh: Sequence[int] | None = None, mfu: float = DEFAULT_MFU,
                devices: Sequence[Any] | None = None, chip: Chip | None = None
                ) -> dict[str, Any]:
    """Compile ``config``'s train step for TPU slice ``slice_name`` (global batch ``batch``,
    default ``data.batch_size``; ``mesh`` (data, fsdp, tensor) with one -1, default all data
    parallel) and report: ``fits``, per-device memory (arguments, outputs, temporaries, aliased
    = donated, peak, capacity), FLOPs and bytes per device per step, collective bytes, compile
    seconds, projected step time and examples/s at ``mfu``, the largest per-device state arrays;
    when it does not fit, XLA's figures and ``advice``."""
    if devices is None:
        chip, devices = topology_devices(slice_name)
    config = copy.deepcopy(config)
    config.num_devices = 0
    config.mesh_shape = tuple(mesh) if mesh else (-1, 1, 1)
    if batch:
        config.data.batch_size = int(batch)
    try:
        task, trainer = _trainer(config, devices)
    except ValueError as e:  # e.g. a mesh shape that does not fit the slice
        raise PlanError(str(e)) from None
    mesh_shape = dict(trainer.mesh.shape)
    shards = mesh_shape["data"] * mesh_shape["fsdp"]
    b = int(config.data.batch_size)
    if b % shards:
        raise PlanError(f"Global batch {b} does not split over the {shards} batch shards "
                        f"(data x fsdp) of mesh {mesh_shape}; use a multiple of {shards}.")
    state_bytes = sum(int(math.prod(x.shape) * np.dtype(x.dtype).itemsize)
                      for x in jax.tree.leaves(trainer.state))
    report: dict[str, Any] = {
        "config": f"{config.task}:{config.variant}", "slice": slice_name,
        "chip": chip.generation if chip else None, "libtpu": libtpu_version(),
        "devices": len(devices),
        "mesh": mesh_shape, "global_batch": b, "per_device_batch": b / shards,
        "dtype": str(config.model.get("dtype", "float32")), "params": trainer.num_params(),
        "state_bytes_total": state_bytes, "largest_state_arrays": _leaf_table(trainer.state),
        "replicated_instead": {  # rules the mesh could not apply (a dimension not divisible)
            "arrays": len(trainer.replicated_instead),
            "bytes": sum(b for _, _, b in trainer.replicated_instead),
            "largest": [{"name": n, "shape": list(sh), "bytes": b}
                        for n, sh, b in trainer.replicated_instead[:3]]}}
    t0 = time.time()
    try:
        with tpu_compiles():
            compiled = trainer.lower_step(task.batch_spec(b)).compile()
    except Exception as e:  # noqa: BLE001 - XLA raises JaxRuntimeError for an HBM overflow
        need = overflow(e)
        if need is None:
            raise
        report.update(fits=False, compile_seconds=time.time() - t0, temp_bytes=need[0],
                      hbm_available_bytes=need[1], xla_error=str(e).splitlines()[0][:300])
        report["advice"] = advice(report)
        return report
    report["compile_seconds"] = time.time() - t0
    fig = compiled_figures(compiled)
    flops = fig.pop("flops")
    accessed, optimal = fig.pop("bytes_accessed"), fig.pop("optimal_seconds")
    capacity = chip.hbm_bytes if chip else None
    report.update(fig)  # the memory figures
    report.update(
        hbm_capacity_bytes=capacity, fits=capacity is None or fig["peak_bytes"] <= capacity,
        flops_per_device=flops, bytes_accessed_per_device=accessed,
        xla_optimal_seconds=optimal,
        collective_bytes_per_device=collective_bytes(compiled.as_text()))
    if chip:
        step = flops / (chip.peak_bf16_flops * mfu)
        report.update(mfu_assumed=mfu, projected_step_seconds=step,
                      projected_examples_per_second=b / step if step else None)
    if not report["fits"]:
        report["advice"] = advice(report)
    return report


def advice(report: dict[str, Any]) -> str:
    """What to change when a plan does not fit: the per-device state against the temporaries."""
    cap = report.get("hbm_capacity_bytes") or report.get("hbm_available_bytes") or 0
    largest = report["largest_state_arrays"][0] if report["largest_state_arrays"] else None
    mesh = report["mesh"]
    state_dev = report["state_bytes_total"] / max(1, mesh["fsdp"] * mesh["tensor"])
    lines = [f"needs {report['temp_bytes'] / GiB:.2f} GiB of temporaries per device "
             f"(capacity {cap / GiB:.2f} GiB); the train state (params, optimiser, EMA) is "
             f"about {state_dev / GiB:.2f} GiB per device"]
    if largest:
        lines.append(f"largest state array {largest['name']} {largest['shape']} "
                     f"({largest['per_device_bytes'] / 2 ** 20:.1f} MiB per device, "
                     f"{largest['spec']})")
    if cap and state_dev > 0.5 * cap:
        lines.append("the state dominates: shard it over more devices with FSDP, e.g. "
                     f"--mesh 1,{report['devices']},1")
    elif report["per_device_batch"] > 1:
        lines.append(f"activations dominate at {report['per_device_batch']:g} examples per "
                     f"device: lower the global batch (see the largest batch that fits with "
                     f"--batch max), or recompute blocks in the backward pass "
                     f"(--set model.remat=True)")
    else:
        lines.append("activations dominate at one example per device: recompute blocks in the "
                     "backward pass (--set model.remat=True) or split activations over chips "
                     "with tensor parallelism (e.g. --mesh 1,-1,4)")
    return "; ".join(lines)


def limit_label(searched: list[dict[str, Any]], best_per_device: float, top: int,
                available: float) -> str:
    """What stopped ``largest_batch``: the batch limit, the HBM (an overflow was seen, or the
    best batch's temporaries are within 10 % of the ``available`` bytes), or the search."""
    if best_per_device >= top:
        return "the batch limit"
    best = max((x for x in searched if x["fits"]), key=lambda x: x["per_device"])
    if any(not x["fits"] for x in searched) or best["temp_bytes"] >= 0.9 * available:
        return f"HBM ({available / GiB:.2f} GiB available per chip)"
    return "the search (more compiles would find a larger batch)"


def largest_batch(config, slice_name: str, *, mesh: Sequence[int] | None = None,
                  mfu: float = DEFAULT_MFU, limit: int = 1 << 16, refine: int = 3
                  ) -> dict[str, Any]:
    """The plan at the largest global batch up to ``limit`` that fits (a multiple of the batch
    shards). The temporaries grow about linearly with the batch: compile at 1 example per
    device, then at a far probe (64 per device, or the limit); every compile, fitting or
    overflowing (XLA reports the overflow's need), gives a point, and the line through the
    first and the farthest point predicts the largest batch whose temporaries fit in the HBM
    XLA says is available; up to ``refine`` predictions are compiled. ``searched`` lists every
    compile's batch, whether it fit and its temporaries."""
    from vasa_jax.parallel import resolve_mesh_shape

    chip, devices = topology_devices(slice_name)
    d, f, _ = resolve_mesh_shape(tuple(mesh) if mesh else (-1, 1, 1), len(devices))
    shards = d * f
    top = max(1, limit // shards)
    searched: list[dict[str, Any]] = []
    available = [0.94 * chip.hbm_bytes]  # until an overflow tells XLA's own figure

    def at(per_device: int) -> dict[str, Any]:
        r = plan_config(config, slice_name, batch=per_device * shards, mesh=mesh, mfu=mfu,
                        devices=devices, chip=chip)
        searched.append({"per_device": per_device, "global_batch": per_device * shards,
                         "fits": r["fits"], "temp_bytes": r.get("temp_bytes")})
        if r.get("hbm_available_bytes"):
            available[0] = r["hbm_available_bytes"]
        return r

    def done(r, limited_by):
        r.update(searched=searched, limited_by=limited_by)
        if hi <= top:
            r["smallest_overflow_global_batch"] = hi * shards
        return r

    hi = top + 1  # the smallest per-device batch known not to fit
    best = at(1)
    if not best["fits"]:
        return done(best, "HBM: does not fit at one example per device")
    guess = min(64, top)
    for _ in range(refine + 1):
        if guess <= best["per_device_batch"] or guess >= hi:
            break
        r = at(guess)
        if r["fits"]:
            best = r
        else:
            hi = guess
        far = max(searched[1:], key=lambda x: x["per_device"])
        t1 = searched[0]["temp_bytes"]
        slope = max((far["temp_bytes"] - t1) / max(far["per_device"] - 1, 1), 1.0)
        guess = min(1 + int((0.98 * available[0] - t1) // slope), top, hi - 1)
    limited = limit_label(searched, best["per_device_batch"], top, available[0])
    return done(best, limited)
