"""Stage-1 speed: FaceLatentModel encode / decode frames per second on this CPU, and XLA FLOPs
per frame of the `paper` config at 512 px with a (clearly labelled) H100 projection.

  python benchmarks/bench_latent.py [--out benchmarks/results/latent.json] [--batch 8]

Measured rows (fp32, random-initialised weights, jit-compiled, warm-up call excluded, median of
several timed calls; each row names its exact config):
  encode        encode_motion + encode_appearance(image, z_pose, z_dyn) of a frame: all four
                latents (V_app, z_id, z_pose, z_dyn), the motion encoder run once
  encode_motion encode_motion alone: the per-frame cost of latent extraction (a video's
                appearance is computed once, from its source photo)
  decode        decode(V_app, z_id, z_pose, z_dyn) -> image, batch 8 (throughput) and 1 (latency)

Not measured, compiled only (`paper`, 512 px): abstract parameters from nnx.eval_shape, so the
~180M parameters are never allocated; FLOPs from jax.jit(...).lower(...).compile().cost_analysis()
of batch 1, cross-checked against the conv / matmul FLOPs counted from the jaxpr. The H100
figure is a projection (989 TFLOP/s dense bf16 at 40% utilisation / FLOPs per frame), shown next
to VASA-1's reported 45 fps at 512x512 on an RTX 4090 (whole pipeline incl. motion generation).
"""

from __future__ import annotations

import datetime
import math
import os
import platform
import statistics
import sys
import time

from bench_common import bench_parser, cpu_model, matmul_peak, save_json, xla_cost

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

H100_BF16_DENSE_FLOPS = 989e12
H100_UTILISATION = 0.4
VASA1_REPORTED = {"fps": 45, "resolution": 512, "gpu": "NVIDIA RTX 4090",
                  "source": "Xu et al. 2024, VASA-1, arXiv:2404.10667",
                  "covers": "whole pipeline incl. motion generation (reported, not measured here)"}
# A moderate head pose for the decode inputs, so the warp's gathers are not the identity
# (yaw, pitch, roll in radians; tx, ty, tz; log_scale).
DECODE_POSE = (0.3, 0.1, 0.05, 0.02, -0.02, 0.0, 0.0)

# The measured rows: (label, variant, resolution, model overrides, timed calls of the batch
# encode and decode, note); encode_motion and the batch-1 decode get at least 3 timed calls.
# `plus_one_stage` keeps V_app at 1/8 of the image side, as vox256 and paper do.
PLUS_ONE_STAGE = {"app_channels": (32, 64, 64), "g2d_channels": (64, 64, 32),
                  "motion_channels": (16, 32, 64, 128, 128)}
ROWS = (
    ("64", "synthtalk64", 64, {}, 7, "synthtalk64 as configured"),
    ("128", "synthtalk64", 128, PLUS_ONE_STAGE, 7,
     "in-between: synthtalk64 at 128 px plus one 2x stage in each encoder trunk and in G2D "
     "(app_channels (32, 64, 64), motion_channels (16, 32, 64, 128, 128), g2d_channels "
     "(64, 64, 32)), so V_app stays 8 x 16 x 16 x 16 = 1/8 of the image side"),
    ("256", "vox256", 256, {"dtype": "float32"}, 2,
     "vox256 with model.dtype float32 (configured bfloat16)"),
    ("128 res-only", "synthtalk64", 128, {}, 7,
     "synthtalk64 architecture unchanged, only the resolution set to 128 (V_app 8 x 32 x 32 x 16)"),
    ("256 res-only", "synthtalk64", 256, {}, 5,
     "synthtalk64 architecture unchanged, only the resolution set to 256 (V_app 8 x 64 x 64 x 16)"),
)


def model_config(variant: str, resolution: int, overrides: dict):
    from configs.latent import get_config

    c = get_config(variant)
    c.data.resolution = c.model.resolution = resolution
    for key, value in overrides.items():
        setattr(c.model, key, value)
    return c.model


def param_counts(model) -> dict:
    import jax
    from flax import nnx

    def count(m):
        return sum(math.prod(x.shape) for x in jax.tree.leaves(nnx.state(m, nnx.Param)))

    total, disc = count(model), count(model.discriminator)
    return {"total": total, "generator": total - disc, "discriminator": disc}


def matmul_flops_from_jaxpr(fn, *args) -> float:
    """2 x multiply-adds of every conv_general_dilated and dot_general in ``fn``'s jaxpr
    (nested jaxprs included): an independent count to compare with XLA's."""
    import jax

    def walk(jaxpr) -> float:
        total = 0.0
        for eqn in jaxpr.eqns:
            name = eqn.primitive.name
            if name == "conv_general_dilated":
                out = eqn.outvars[0].aval.shape
                rhs = eqn.invars[1].aval.shape
                spec = eqn.params["dimension_numbers"].rhs_spec  # (out, in, *spatial)
                taps = math.prod(rhs[i] for i in spec[2:])
                total += 2.0 * math.prod(out) * taps * rhs[spec[1]]
            elif name == "dot_general":
                (contract, _), _ = eqn.params["dimension_numbers"]
                lhs = eqn.invars[0].aval.shape
                total += 2.0 * math.prod(eqn.outvars[0].aval.shape) * math.prod(
                    lhs[i] for i in contract)
            for value in eqn.params.values():
                for sub in value if isinstance(value, (tuple, list)) else (value,):
                    if isinstance(sub, jax.extend.core.ClosedJaxpr):
                        total += walk(sub.jaxpr)
                    elif isinstance(sub, jax.extend.core.Jaxpr):
                        total += walk(sub)
        return total

    return walk(jax.make_jaxpr(fn)(*args).jaxpr)


def _encode(model, images):
    z_pose, z_dyn = model.encode_motion(images)
    v_app, z_id = model.encode_appearance(images, z_pose, z_dyn)
    return v_app, z_id, z_pose, z_dyn


def _timed(compiled, args, reps: int) -> list[float]:
    import jax

    jax.block_until_ready(compiled(*args))  # warm-up, excluded
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        times.append(time.perf_counter() - t)
    return times


def bench_row(label: str, variant: str, resolution: int, overrides: dict, reps: int,
              note: str, batch: int) -> dict:
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from vasa_jax.latent.model import FaceLatentModel

    t_row = time.perf_counter()
    cfg = model_config(variant, resolution, overrides)
    model = FaceLatentModel(cfg, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model)
    images = jax.random.uniform(jax.random.PRNGKey(0), (batch, resolution, resolution, 3),
                                jnp.float32, -1.0, 1.0)

    def encode(st, x):
        return _encode(nnx.merge(graphdef, st), x)

    def encode_motion(st, x):
        return nnx.merge(graphdef, st).encode_motion(x)

    def decode(st, *latents):
        return nnx.merge(graphdef, st).decode(*latents)

    row = {"label": label, "variant": variant, "resolution": resolution,
           "overrides": {k: list(v) if isinstance(v, tuple) else v for k, v in overrides.items()},
           "note": note, "dtype": cfg.dtype, "patch": cfg.patch,
           "volume_shape": list(model.volume_shape), "params": param_counts(model),
           "batch": batch}
    compile_s = 0.0

    def measure(name, fn, args, n):
        nonlocal compile_s
        t = time.perf_counter()
        compiled = jax.jit(fn).lower(state, *args).compile()
        compile_s += time.perf_counter() - t
        times = _timed(compiled, (state,) + args, n)
        b, med, cost = args[0].shape[0], statistics.median(times), xla_cost(compiled)
        row[name] = {"batch": b, "timed_calls": n, "median_s": med, "times_s": times,
                     "fps": b / med,
                     "ms_per_call": med * 1e3, "xla_gflops_per_frame": cost["flops"] / b / 1e9,
                     "achieved_gflops": cost["flops"] / med / 1e9}
        return compiled

    v_app, z_id, _, z_dyn = measure("encode", encode, (images,), reps)(state, images)
    measure("encode_motion", encode_motion, (images,), max(reps, 3))
    # Decode inputs: this model's latents of the images, with a moderate head pose.
    pose = jnp.broadcast_to(jnp.asarray(DECODE_POSE, jnp.float32), (batch, 7))
    latents = (v_app, z_id, pose, z_dyn)
    measure("decode", decode, latents, reps)
    measure("decode_b1", decode, tuple(a[:1] for a in latents), max(reps, 3))
    row["compile_s"] = compile_s
    row["row_wall_s"] = time.perf_counter() - t_row
    return row


def paper_flops() -> dict:
    """Compiled-only analysis of the `paper` config at 512 px, batch 1 (no parameters are
    allocated: nnx.eval_shape gives abstract arrays)."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from configs.latent import get_config
    from vasa_jax.latent import warp
    from vasa_jax.latent.model import FaceLatentModel

    c = get_config("paper")
    cfg = c.model
    abstract = nnx.eval_shape(lambda: FaceLatentModel(cfg, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)
    r, dtype = cfg.resolution, jnp.dtype(cfg.dtype)

    def sds(shape, dt=jnp.float32):
        return jax.ShapeDtypeStruct(shape, dt)

    image = sds((1, r, r, 3))
    latents = (sds((1,) + abstract.volume_shape, dtype), sds((1, cfg.id_dim)), sds((1, 7)),
               sds((1, cfg.dyn_dim)))

    def m(st):
        return nnx.merge(graphdef, st)

    def analyse(fn, *args) -> dict:
        t = time.perf_counter()
        compiled = jax.jit(fn).lower(state, *args).compile()
        cost = xla_cost(compiled)
        return {"xla_gflops": cost["flops"] / 1e9,
                "xla_gbytes_accessed": cost["bytes_accessed"] / 1e9,
                "conv_matmul_gflops_from_jaxpr": matmul_flops_from_jaxpr(fn, state, *args) / 1e9,
                "compile_s": time.perf_counter() - t}

    out = {"variant": "paper", "resolution": r, "dtype": cfg.dtype, "patch": cfg.patch,
           "volume_shape": list(abstract.volume_shape), "params": param_counts(abstract),
           "batch": 1}
    out["decode"] = analyse(lambda st, *z: m(st).decode(*z), *latents)
    out["encode"] = analyse(lambda st, x: _encode(m(st), x), image)
    out["encode_motion"] = analyse(lambda st, x: m(st).encode_motion(x), image)

    # Decode, stage by stage (the intermediate shapes from jax.eval_shape).
    v_app, z_id, z_pose, z_dyn = latents
    cond = jax.eval_shape(lambda a, b: jnp.concatenate([a, b], -1), z_dyn, z_id)
    flow = jax.eval_shape(lambda st, k: m(st).warp_from_canonical(k), state, cond)
    posed = jax.eval_shape(warp.warp_from_canonical, v_app, z_pose, flow)
    g3d = jax.eval_shape(lambda st, v: m(st).g3d(v), state, posed)
    proj = jax.eval_shape(lambda st, v: m(st).projection(v), state, g3d)
    stages = {
        "warp_generator (flow from z_dyn, z_id)":
            analyse(lambda st, k: m(st).warp_from_canonical(k), cond),
        "warp (grid_sample3d, gathers)":
            analyse(lambda st, v, p, f: warp.warp_from_canonical(v, p, f), v_app, z_pose, flow),
        "G3D": analyse(lambda st, v: m(st).g3d(v), posed),
        "projection": analyse(lambda st, v: m(st).projection(v), g3d),
        "G2D": analyse(lambda st, x: m(st).g2d(x), proj),
    }
    out["decode_stages"] = stages
    out["decode_stages_sum_xla_gflops"] = sum(s["xla_gflops"] for s in stages.values())
    out["notes"] = [
        "xla_gflops: compiled HLO (CPU backend) cost_analysis()['flops'], batch 1, per frame.",
        "conv_matmul_gflops_from_jaxpr: 2 x multiply-adds of every conv_general_dilated and "
        "dot_general in the jaxpr, counting every kernel tap. XLA's convolution count leaves "
        "out taps that fall in the 'SAME' padding (checked: a 3x3 conv on 4x4 gives exactly the "
        "in-bounds taps), so it is lower where feature maps are small (G3D's 16 x 8 x 8 level); "
        "XLA also counts elementwise work (norms, activations, weight standardisation), so it is "
        "higher for stages without small maps.",
        "The warp's gathers (take_along_axis in grid_sample3d) are data movement: XLA reports "
        "about 1 flop per gathered element, so the warp stage is ~0.3 GFLOP; its real cost on a "
        "GPU is memory traffic, not FLOPs.",
        "encode_appearance alone (pose and dynamics given) ~= encode - encode_motion.",
    ]
    return out


def print_rows(rows: list[dict]) -> None:
    head = (f"{'row':<13} {'config':<28} {'params G/total':>15} {'V_app':>16} "
            f"{'enc fps':>8} {'motion fps':>10} {'dec fps':>8} {'dec b1 ms':>9} "
            f"{'GFLOP/fr enc/mot/dec':>21} {'dec GFLOP/s':>11}")
    print(head)
    print("-" * len(head))
    for r in rows:
        cfg = f"{r['variant']}@{r['resolution']}" + ("+1stage" if r["label"] == "128" else "")
        cfg += " fp32" if r["dtype"] == "float32" else f" {r['dtype']}"
        p = r["params"]
        print(f"{r['label']:<13} {cfg:<28} {p['generator'] / 1e6:6.2f}M/{p['total'] / 1e6:6.2f}M "
              f"{'x'.join(map(str, r['volume_shape'])):>16} {r['encode']['fps']:8.1f} "
              f"{r['encode_motion']['fps']:10.1f} {r['decode']['fps']:8.1f} "
              f"{r['decode_b1']['ms_per_call']:9.1f} "
              f"{r['encode']['xla_gflops_per_frame']:6.2f}/{r['encode_motion']['xla_gflops_per_frame']:5.2f}"
              f"/{r['decode']['xla_gflops_per_frame']:6.2f}   {r['decode']['achieved_gflops']:11.1f}")
    print(f"(batch {rows[0]['batch']} for fps; fp32; median of the timed calls; "
          "enc = encode_motion + encode_appearance)")
    for r in rows:
        print(f"  {r['label']}: {r['note']}")


def main():
    ap = bench_parser(__doc__, "latent.json")
    ap.add_argument("--batch", type=int, default=8)
    args = ap.parse_args()

    import jax

    load_start = os.getloadavg()
    start = time.perf_counter()
    print(f"load average at start (1/5/15 min): {load_start[0]:.2f} {load_start[1]:.2f} "
          f"{load_start[2]:.2f} on {os.cpu_count()} CPUs")
    peak = matmul_peak()
    print(f"fp32 matmul peak (measured now): {peak:.1f} GFLOP/s")

    rows = []
    for label, variant, res, overrides, reps, note in ROWS:
        rows.append(bench_row(label, variant, res, overrides, reps, note, args.batch))
        r = rows[-1]
        print(f"  measured {label} ({variant}@{res}): enc {r['encode']['fps']:.1f} fps, "
              f"decode {r['decode']['fps']:.1f} fps, compile {r['compile_s']:.0f} s", flush=True)
    print()
    print_rows(rows)

    paper = paper_flops()
    dec_flops = paper["decode"]["xla_gflops"] * 1e9
    enc_flops = paper["encode"]["xla_gflops"] * 1e9
    projection = {
        "label": "PROJECTION, not a measurement",
        "formula": "989e12 FLOP/s (H100 SXM dense bf16) * 0.4 utilisation / XLA FLOPs per frame",
        "h100_bf16_dense_flops": H100_BF16_DENSE_FLOPS, "utilisation": H100_UTILISATION,
        "decode_fps": H100_BF16_DENSE_FLOPS * H100_UTILISATION / dec_flops,
        "encode_fps": H100_BF16_DENSE_FLOPS * H100_UTILISATION / enc_flops,
        "encode_motion_fps": H100_BF16_DENSE_FLOPS * H100_UTILISATION
        / (paper["encode_motion"]["xla_gflops"] * 1e9),
        "covers": "the paper-config decoder only (stage-1 decode); no motion generation, "
                  "no audio features, no host/IO",
    }
    p = paper["params"]
    print()
    print(f"paper config, 512 px ({paper['dtype']}, V_app "
          f"{'x'.join(map(str, paper['volume_shape']))}), compiled only, not run:")
    print(f"  parameters (eval_shape): total {p['total'] / 1e6:.2f}M = generator "
          f"{p['generator'] / 1e6:.2f}M + discriminator {p['discriminator'] / 1e6:.2f}M")
    for key, name in (("decode", "decode"), ("encode", "encode_motion + encode_appearance"),
                      ("encode_motion", "encode_motion")):
        a = paper[key]
        print(f"  {name:<38} {a['xla_gflops']:9.1f} GFLOP/frame (XLA cost_analysis), "
              f"conv+matmul from jaxpr {a['conv_matmul_gflops_from_jaxpr']:9.1f}")
    print("  decode by stage (XLA GFLOP / conv+matmul GFLOP from jaxpr):")
    for name, a in paper["decode_stages"].items():
        print(f"    {name:<40} {a['xla_gflops']:9.2f} / {a['conv_matmul_gflops_from_jaxpr']:9.2f}")
    print(f"    {'sum of stages':<40} {paper['decode_stages_sum_xla_gflops']:9.2f}")
    print()
    print(f"PROJECTION (not a measurement): one H100 at 40% of 989 TFLOP/s bf16 -> "
          f"{projection['decode_fps']:.0f} fps decode at 512 px "
          f"({dec_flops / 1e9:.0f} GFLOP/frame); encode {projection['encode_fps']:.0f} fps, "
          f"encode_motion {projection['encode_motion_fps']:.0f} fps")
    print(f"REPORTED (VASA-1 paper, {VASA1_REPORTED['source']}): {VASA1_REPORTED['fps']} fps at "
          f"512x512 on an {VASA1_REPORTED['gpu']}, whole pipeline incl. motion generation")

    load_end = os.getloadavg()
    total_s = time.perf_counter() - start
    print(f"load average at end: {load_end[0]:.2f} {load_end[1]:.2f} {load_end[2]:.2f}; "
          f"total {total_s:.0f} s")
    shared = load_start[0] > 0.5
    result = {
        "command": "python " + " ".join(sys.argv),
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"nproc": os.cpu_count(), "affinity_cpus": len(os.sched_getaffinity(0)),
                    "cpu_model": cpu_model(), "platform": platform.platform(),
                    "jax_version": jax.__version__, "backend": jax.default_backend(),
                    "loadavg_start": list(load_start), "loadavg_end": list(load_end),
                    "shared": shared,
                    "shared_note": ("the machine was shared: other processes were using the CPUs "
                                    "during the measurement (see the load averages), so the "
                                    "frames/s are lower and noisier than on an idle machine"
                                    if shared else "load average at start below 0.5")},
        "matmul_peak_gflops_measured_now": peak,
        "protocol": {"precision": "float32", "weights": "random init (nnx.Rngs(0))",
                     "images": "uniform in [-1, 1]",
                     "decode_inputs": "the model's own encode of the images, z_pose replaced by "
                                      f"{list(DECODE_POSE)}",
                     "timing": "jit-compiled (lower().compile()), one warm-up call excluded, "
                               "median of the timed calls, block_until_ready",
                     "encode": "encode_motion + encode_appearance(image, z_pose, z_dyn): the "
                               "motion encoder once; all four latents",
                     "encode_motion": "encode_motion alone (per-frame cost of latent "
                                      "extraction; appearance is once per video)"},
        "rows": rows,
        "paper_512_compiled_only": paper,
        "h100_projection": projection,
        "vasa1_reported": VASA1_REPORTED,
        "total_runtime_s": total_s,
    }
    save_json(result, args.out)


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    main()
