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

from vasa_jax.plan.chips import Chip, GiB, PlanError, topology_devices

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


def _leaf_table(abstract_state: Any, n: int = 5) -> list[dict[str, Any]]:
    """The ``n`` largest per-device arrays of a sharded abstract state."""
    rows = []
    for path, x in jax.tree_util.tree_flatten_with_path(abstract_state)[0]:
        name = "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))))
                        for k in path)
        shard = x.sharding.shard_shape(x.shape)
        rows.append({"name": name.replace("/value", ""), "shape": list(x.shape),
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
    except ValueError as e:  # e.g. a width the mesh does not divide
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
        "chip": chip.generation if chip else None, "devices": len(devices),
        "mesh": mesh_shape, "global_batch": b, "per_device_batch": b / shards,
        "dtype": str(config.model.get("dtype", "float32")), "params": trainer.num_params(),
        "state_bytes_total": state_bytes, "largest_state_arrays": _leaf_table(trainer.state)}
    t0 = time.time()
    try:
        compiled = trainer.lower_step(task.batch_spec(b)).compile()
    except Exception as e:  # noqa: BLE001 - XLA raises JaxRuntimeError for an HBM overflow
        m = _OOM.search(str(e))
        if "RESOURCE_EXHAUSTED" not in str(e) or not m:
            raise
        report.update(fits=False, compile_seconds=time.time() - t0,
                      temp_bytes=float(m.group(1)) * _UNITS[m.group(2)],
                      hbm_available_bytes=float(m.group(3)) * _UNITS[m.group(4)],
                      xla_error=str(e).splitlines()[0][:300])
        report["advice"] = advice(report)
        return report
    report["compile_seconds"] = time.time() - t0
    mem = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    peak = (mem.argument_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes
            + mem.temp_size_in_bytes + mem.generated_code_size_in_bytes)
    capacity = chip.hbm_bytes if chip else None
    flops = float(cost.get("flops", 0.0))
    report.update(
        argument_bytes=mem.argument_size_in_bytes, output_bytes=mem.output_size_in_bytes,
        alias_bytes=mem.alias_size_in_bytes, temp_bytes=mem.temp_size_in_bytes,
        code_bytes=mem.generated_code_size_in_bytes, peak_bytes=peak,
        hbm_capacity_bytes=capacity, fits=capacity is None or peak <= capacity,
        flops_per_device=flops, bytes_accessed_per_device=float(cost.get("bytes accessed", 0)),
        xla_optimal_seconds=max(float(cost.get("optimal_seconds", 0.0)), 0.0) or None,
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
    else:
        lines.append(f"activations dominate at {report['per_device_batch']:g} examples per "
                     f"device: lower the global batch (see the largest batch that fits with "
                     f"--batch max)")
    return "; ".join(lines)


def largest_batch(config, slice_name: str, *, mesh: Sequence[int] | None = None,
                  mfu: float = DEFAULT_MFU, limit: int = 1 << 16, refine: int = 4
                  ) -> dict[str, Any]:
    """The plan at the largest global batch up to ``limit`` that fits (a multiple of the batch
    shards). The temporaries grow about linearly with the batch: a line through the compiles
    at 1 and 2 examples per device predicts the largest batch; a prediction that overflows
    re-fits the line through XLA's reported need and tries again (at most ``refine`` more
    compiles).
    ``searched`` lists every compile's batch, whether it fit and its temporaries."""
    from vasa_jax.parallel import resolve_mesh_shape

    chip, devices = topology_devices(slice_name)
    d, f, _ = resolve_mesh_shape(tuple(mesh) if mesh else (-1, 1, 1), len(devices))
    shards = d * f
    searched = []

    def at(per_device: int) -> dict[str, Any]:
        r = plan_config(config, slice_name, batch=per_device * shards, mesh=mesh, mfu=mfu,
                        devices=devices, chip=chip)
        searched.append({"global_batch": per_device * shards, "fits": r["fits"],
                         "temp_bytes": r.get("temp_bytes")})
        return r

    def done(r, limited_by):
        r.update(searched=searched, limited_by=limited_by)
        return r

    best = at(1)
    if not best["fits"]:
        return done(best, "HBM: does not fit at one example per device")
    top = max(1, limit // shards)
    if top == 1:
        return done(best, "the batch limit")
    r = at(2)
    if not r["fits"]:
        return done(best, f"HBM ({chip.hbm_bytes / GiB:.0f} GiB per chip) at 2 per device")
    best, lo = r, r
    usable = 0.97 * chip.hbm_bytes
    hi = None  # the smallest per-device batch known not to fit
    for _ in range(refine):
        per_example = max((lo["temp_bytes"] - searched[0]["temp_bytes"])
                          / max(lo["per_device_batch"] - 1, 1), 1.0)
        guess = int(lo["per_device_batch"] + (usable - lo["peak_bytes"]) // per_example)
        guess = min(guess, top, (hi or top + 1) - 1)
        if guess <= best["per_device_batch"]:
            break
        r = at(guess)
        if r["fits"]:
            best = lo = r
            if guess == top:
                break
        else:
            hi = guess
            # the overflow's reported need re-fits the line's slope
            slope = (r["temp_bytes"] - searched[0]["temp_bytes"]) / max(guess - 1, 1)
            lo = dict(best, temp_bytes=searched[0]["temp_bytes"] + slope * (
                best["per_device_batch"] - 1))
    limited = ("the batch limit" if best["per_device_batch"] >= top else
               f"HBM ({chip.hbm_bytes / GiB:.0f} GiB per chip)")
    return done(best, limited)
