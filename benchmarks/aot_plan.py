"""Pod plans, compiled on this CPU for real TPU topologies (``vasa_jax.plan``, libtpu): both
stages at paper size on each slice and mesh, at the largest global batch that fits, and one
generation window on one chip.

  python benchmarks/aot_plan.py [--out benchmarks/results/aot_plan.json]
      [--stages latent,motion] [--slices v5e-16,v5e-256,v5p-8,v5p-128]
      [--meshes data,fsdp,fsdp_tensor] [--remat latent:v5e-16] [--sampler v5e-1,v5p-8]
  python benchmarks/aot_plan.py --table     # the README's table from the JSON

Meshes: ``data`` = (-1, 1, 1) (pure data parallel: every chip holds the whole train state),
``fsdp`` = (1, -1, 1) (parameters, optimiser state and EMA sharded over every chip),
``fsdp_tensor`` = (1, -1, 4) (FSDP across groups of 4 chips, tensor parallel within them).
``--remat STAGE:SLICE`` adds rows with ``model.remat=True`` (every block recomputed in the
backward pass). Rows are written as they finish (a rerun skips the rows already there).
Projected speeds are ``FLOPs / (peak bf16 x MFU 35 %)``: projections, not measurements.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("JAX_PLATFORMS", "cpu")  # the host; the plans target TPU topologies
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

MESHES = {"data": (-1, 1, 1), "fsdp": (1, -1, 1), "fsdp_tensor": (1, -1, 4)}
KEEP = ("config", "slice", "chip", "libtpu", "devices", "mesh", "global_batch", "per_device_batch",
        "dtype", "params", "fits", "compile_seconds", "argument_bytes", "temp_bytes",
        "peak_bytes", "hbm_capacity_bytes", "hbm_available_bytes", "flops_per_device",
        "collective_bytes_per_device", "xla_optimal_seconds", "mfu_assumed",
        "projected_step_seconds", "projected_examples_per_second", "limited_by", "searched",
        "smallest_overflow_global_batch", "replicated_instead",
        "advice", "xla_error")


def _load(path):
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    return {"train": {}, "sampler": {}}


def _save(path, results):
    """Merge ``results`` into the file (several sweeps may write it at once: a lock file)."""
    import fcntl

    from vasa_jax.atomic import write_json

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        merged = _load(path)
        for part in ("train", "sampler"):
            merged.setdefault(part, {}).update(results.get(part, {}))
        merged["note"] = results.get("note", merged.get("note"))
        merged["updated"] = datetime.datetime.now(datetime.timezone.utc).isoformat(
            timespec="seconds")
        write_json(path, merged, indent=1, default=str)


def sweep(args) -> None:
    from vasa_jax.plan.sample_plan import plan_sampler
    from vasa_jax.plan.train_plan import largest_batch
    from vasa_jax.train.run import load_config

    results = _load(args.out)
    results["note"] = ("Compiled on a CPU machine for TPU topologies with libtpu; memory and "
                       "FLOPs are XLA's analyses of the real executables; projected speeds "
                       "assume MFU 35 % (not measured).")
    rows = [(stage, sl, mesh, False) for stage in filter(None, args.stages.split(","))
            for sl in filter(None, args.slices.split(",")) for mesh in args.meshes.split(",")]
    for item in filter(None, args.remat.split(",")):
        stage, sl = item.split(":")
        rows += [(stage, sl, mesh, True) for mesh in args.meshes.split(",")]
    for stage, sl, mesh, remat in rows:
        key = f"{stage}:paper|{sl}|{mesh}" + ("|remat" if remat else "")
        if key in results["train"]:
            continue
        config = load_config(stage, "paper", overrides=["model.remat=True"] if remat else [])
        t0 = time.time()
        try:
            r = largest_batch(config, sl, mesh=MESHES[mesh], refine=args.refine)
            row = {k: r[k] for k in KEEP if k in r}
        except Exception as e:  # noqa: BLE001 - a mesh the model cannot use is a result too
            row = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"}
        row.update(stage=stage, mesh_choice=mesh, remat=remat, seconds=time.time() - t0)
        results["train"][key] = row
        _save(args.out, results)
        print(key, {k: row.get(k) for k in ("fits", "global_batch", "limited_by", "error")},
              flush=True)
    for sl in filter(None, args.sampler.split(",")):
        key = f"paper|{sl}|decode{args.decode_batch}"
        if key in results["sampler"]:
            continue
        try:
            results["sampler"][key] = plan_sampler(sl, decode_batch=args.decode_batch)
        except Exception as e:  # noqa: BLE001
            results["sampler"][key] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
        _save(args.out, results)
        print(key, {k: results["sampler"][key].get(k) for k in ("fits", "peak_bytes", "error")},
              flush=True)


def table(path: str) -> str:
    """Markdown rows of the sweep: one per (stage, slice, mesh)."""
    res = _load(path)
    g = 1024 ** 3
    lines = ["| stage | slice | mesh | remat | largest global batch (per batch shard) | "
             "HBM peak / chip | "
             "TFLOP / chip / step | projected step | projected examples/s | limited by |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for key, r in res["train"].items():
        stage, sl, mesh = key.split("|")[:3]
        if "error" in r:
            lines.append(f"| {stage} | {sl} | {mesh} | {'yes' if r['remat'] else 'no'} | "
                         f"- | - | - | - | - | {r['error'][:80]} |")
            continue
        if not r["fits"]:
            need = r.get("temp_bytes", 0) / g
            lines.append(f"| {stage} | {sl} | {mesh} | {'yes' if r['remat'] else 'no'} | "
                         f"does not fit | needs {need:.1f} GiB of temporaries | - | - | - | "
                         f"{r.get('limited_by', '')} |")
            continue
        lines.append(
            f"| {stage} | {sl} | {mesh} | {'yes' if r['remat'] else 'no'} | "
            f"{r['global_batch']} ({r['per_device_batch']:g}) | "
            f"{r['peak_bytes'] / g:.1f} / {r['hbm_capacity_bytes'] / g:.0f} GiB | "
            f"{r['flops_per_device'] / 1e12:.2f} | {r['projected_step_seconds'] * 1e3:.0f} ms | "
            f"{r['projected_examples_per_second']:,.0f} | {r['limited_by']} |")
    for key, r in res.get("sampler", {}).items():
        if "error" in r:
            lines.append(f"\nGeneration on one chip of {key}: {r['error']}")
            continue
        if not r.get("fits"):
            lines.append(f"\nGeneration on one {r['chip']} chip ({r['slice']}), decoding "
                         f"{r['decode_batch'] or r['window']} frames at once: does not fit "
                         f"(temporaries {r['temp_bytes'] / g:.1f} GiB, available "
                         f"{r['hbm_available_bytes'] / g:.1f} GiB).")
            continue
        p = r["projection"]
        lines.append(f"\nGeneration on one {r['chip']} chip ({r['slice']}): one window of "
                     f"{r['window']} frames at {r['resolution']} px (decoded "
                     f"{r['decode_batch'] or r['window']} at a time), {r['steps']} DDIM steps "
                     f"with CFG: fits, HBM peak {r['peak_bytes'] / g:.1f} GiB; "
                     f"{p['window_flops'] / 1e12:.1f} TFLOP per window "
                     f"({p['decode_share']:.0%} of its time decoding), PROJECTED at MFU "
                     f"{p['mfu_assumed']:.0%}: {p['frames_per_second']:.1f} frames/s, first "
                     f"frame {p['stream_first_frame_seconds']:.2f} s after the speech starts "
                     f"when streaming window by window.")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks/results/aot_plan.json"))
    ap.add_argument("--stages", default="latent,motion")
    ap.add_argument("--slices", default="v5e-16,v5e-256,v5p-8,v5p-128")
    ap.add_argument("--meshes", default="data,fsdp,fsdp_tensor")
    ap.add_argument("--remat", default="latent:v5e-16")
    ap.add_argument("--sampler", default="v5e-1,v5p-8")
    ap.add_argument("--decode-batch", type=int, default=2,
                    help="frames the sampler plans decode at once (0: the whole window)")
    ap.add_argument("--refine", type=int, default=3,
                    help="compiles after the two that fit the line (largest_batch)")
    ap.add_argument("--table", action="store_true", help="print the README table and exit")
    args = ap.parse_args()
    if args.table:
        print(table(args.out))
        return
    sweep(args)
    print(table(args.out))


if __name__ == "__main__":
    main()
