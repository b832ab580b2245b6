"""The stage-1 step's convolutions, one kernel at a time: XLA:CPU (jit) against PyTorch's CPU
kernels (oneDNN), equal threads. Isolates how much of ``bench_vs_torch.py``'s stage-1 gap is
the convolution kernels themselves rather than anything around them.

  python benchmarks/bench_conv_kernels.py [--variant synthtalk64] [--threads 2] [--reps 20]
      [--out benchmarks/results/conv_kernels.json]

The convolutions are read off the jaxpr of the generator loss of ``configs/latent.py:VARIANT``
(the model, VGG16 and the 3-D convolutions, which ``conv3d_as_2d`` lowers to 2-D ones), grouped
by shape with their count. Each shape is timed three ways, as a train step needs it: the
forward convolution, the input gradient (dx) and the kernel gradient (dw). JAX: one jitted
function each (``jax.vjp`` of ``lax.conv_general_dilated``); torch: ``F.conv2d`` and
``aten.convolution_backward`` with one output selected, channels-last tensors. Totals weight
each shape by its count; every forward convolution is counted with both gradients (the first
layers and VGG16's target branch need fewer in a real step, on both sides alike), so the totals
bound the step's convolution time from above and their ratio is the figure to read.

Each framework runs in its own process with OMP/MKL/PJRT_NPROC = N threads
(``bench_vs_torch.thread_environment``); quote figures measured while nothing else runs.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
DEFAULT_OUT = os.path.join(HERE, "results", "conv_kernels.json")


def step_convolutions(variant: str) -> list[dict]:
    """Every 2-D convolution in the stage-1 generator loss of ``variant``, grouped by shape:
    [{"x": (b, h, w, c), "w": (kh, kw, c, o), "stride": s, "padding": ((lo, hi), (lo, hi)),
    "count": n}], most frequent first. NHWC / HWIO, as the model calls them."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from configs.latent import get_config
    from vasa_jax.interop.face_latent import randomize
    from vasa_jax.latent.objective import generator_loss_terms
    from vasa_jax.train.latent_task import LatentTask

    c = get_config(variant)
    task = LatentTask(c)
    model = randomize(nnx.eval_shape(lambda: task.make_model(nnx.Rngs(c.seed))), c.seed)
    graphdef, state = nnx.split(model)
    res, b = c.model.resolution, c.data.batch_size
    frames = jax.ShapeDtypeStruct((b, 2, res, res, 3), jnp.uint8)
    extra = {}
    if c.model.motion_source != "encoder" or c.loss.get("pose_guide", 0):
        extra["motion"] = jax.ShapeDtypeStruct((b, 2, 12), jnp.float32)
    if c.loss.get("mouth_l1", 0):
        extra["mouth"] = jax.ShapeDtypeStruct((b, 2, res, res, 1), jnp.float32)

    def loss(state, frames, extra):
        return generator_loss_terms(nnx.merge(graphdef, state), frames, c.loss, **extra)[0]

    jaxpr = jax.make_jaxpr(loss)(state, frames, extra)
    counts: collections.Counter = collections.Counter()

    def walk(jx):
        for eqn in jx.eqns:
            if eqn.primitive.name == "conv_general_dilated":
                dn = eqn.params["dimension_numbers"]
                if (dn.lhs_spec, dn.rhs_spec, dn.out_spec) != ((0, 3, 1, 2), (3, 2, 0, 1),
                                                                 (0, 3, 1, 2)):
                    raise ValueError(f"not an NHWC/HWIO convolution: {dn}")
                if eqn.params["feature_group_count"] != 1 or any(
                        d != 1 for d in eqn.params["rhs_dilation"] + eqn.params["lhs_dilation"]):
                    raise ValueError("grouped or dilated convolutions are not benchmarked")
                strides = tuple(eqn.params["window_strides"])
                key = (tuple(eqn.invars[0].aval.shape), tuple(eqn.invars[1].aval.shape),
                       strides[0], tuple(map(tuple, eqn.params["padding"])))
                counts[key] += 1
            for v in eqn.params.values():
                for sub in (v if isinstance(v, (tuple, list)) else (v,)):
                    inner = getattr(sub, "jaxpr", sub)
                    if hasattr(inner, "eqns"):
                        walk(inner)

    walk(jaxpr.jaxpr)
    return [{"x": list(k[0]), "w": list(k[1]), "stride": k[2], "padding": [list(p) for p in k[3]],
             "count": n} for k, n in counts.most_common()]


def _timer(fn, reps: int) -> float:
    """Median ms of ``reps`` calls of ``fn`` (which returns when done), after two warm-ups."""
    from bench_vs_torch import time_calls

    return time_calls(fn, 2, reps)["ms"]["median"]


def jax_times(convs: list[dict], reps: int) -> list[dict]:
    import jax
    import numpy as np

    out = []
    for cv in convs:
        pad, s = [tuple(p) for p in cv["padding"]], cv["stride"]

        def conv(x, w, pad=pad, s=s):
            return jax.lax.conv_general_dilated(x, w, (s, s), pad,
                                                dimension_numbers=("NHWC", "HWIO", "NHWC"))

        r = np.random.default_rng(0)
        x = jax.numpy.asarray(r.standard_normal(cv["x"], np.float32))
        w = jax.numpy.asarray(r.standard_normal(cv["w"], np.float32))
        dy = jax.numpy.asarray(r.standard_normal(jax.eval_shape(conv, x, w).shape, np.float32))
        fwd = jax.jit(conv)
        dx = jax.jit(lambda x, w, dy: jax.vjp(lambda x: conv(x, w), x)[1](dy)[0])
        dw = jax.jit(lambda x, w, dy: jax.vjp(lambda w: conv(x, w), w)[1](dy)[0])
        out.append({"fwd": _timer(lambda: fwd(x, w).block_until_ready(), reps),
                    "dx": _timer(lambda: dx(x, w, dy).block_until_ready(), reps),
                    "dw": _timer(lambda: dw(x, w, dy).block_until_ready(), reps)})
    return out


def torch_times(convs: list[dict], reps: int) -> list[dict]:
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    torch.set_num_interop_threads(1)
    out = []
    g = torch.Generator().manual_seed(0)
    cl = torch.channels_last
    for cv in convs:
        b, h, w_, c = cv["x"]
        kh, kw, _, o = cv["w"]
        (pt, pb), (pl, pr) = cv["padding"]
        s = cv["stride"]
        x = torch.randn(b, c, h, w_, generator=g).contiguous(memory_format=cl)
        if (pt, pl) == (pb, pr):  # symmetric padding: the convolution pads
            xp, pad = x, (pt, pl)
        else:  # XLA's asymmetric 'SAME' padding of even strides: pad first
            xp, pad = F.pad(x, (pl, pr, pt, pb)).contiguous(memory_format=cl), (0, 0)
        wt = torch.randn(o, c, kh, kw, generator=g).contiguous(memory_format=cl)
        with torch.no_grad():
            y = F.conv2d(xp, wt, stride=s, padding=pad)
            dy = torch.randn(y.shape, generator=g).contiguous(memory_format=cl)

            def back(mask):
                return torch.ops.aten.convolution_backward(
                    dy, xp, wt, None, [s, s], list(pad), [1, 1], False, [0, 0], 1, mask)

            out.append({"fwd": _timer(lambda: F.conv2d(xp, wt, stride=s, padding=pad), reps),
                        "dx": _timer(lambda: back([True, False, False]), reps),
                        "dw": _timer(lambda: back([False, True, False]), reps)})
    return out


def totals(convs: list[dict], times: list[dict]) -> dict[str, float]:
    t = {k: sum(cv["count"] * tm[k] for cv, tm in zip(convs, times)) for k in ("fwd", "dx", "dw")}
    t["all"] = sum(t.values())
    return t


def run_worker(args) -> None:
    sys.path.insert(0, REPO)
    sys.path.insert(0, HERE)
    with open(args.exchange) as f:
        convs = json.load(f)["convolutions"]
    times = jax_times(convs, args.reps) if args.worker == "jax" else torch_times(convs, args.reps)
    with open(args.exchange + f".{args.worker}", "w") as f:
        json.dump(times, f)


def main(argv=None) -> dict | None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", default="synthtalk64", help="configs/latent.py variant")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--out", default=DEFAULT_OUT)
    ap.add_argument("--worker", choices=("jax", "torch"), help=argparse.SUPPRESS)
    ap.add_argument("--exchange", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return run_worker(args)

    sys.path.insert(0, REPO)
    sys.path.insert(0, HERE)
    from bench_common import cpu_model, save_json
    from bench_vs_torch import thread_environment

    convs = step_convolutions(args.variant)
    env = dict(os.environ, **thread_environment(args.threads))
    with tempfile.TemporaryDirectory() as tmp:
        exchange = os.path.join(tmp, "convs.json")
        with open(exchange, "w") as f:
            json.dump({"convolutions": convs}, f)
        times = {}
        for fw in ("jax", "torch"):
            subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", fw,
                            "--exchange", exchange, "--reps", str(args.reps)],
                           env=env, check=True, cwd=REPO)
            with open(f"{exchange}.{fw}") as f:
                times[fw] = json.load(f)
    rows = [dict(cv, jax_ms=j, torch_ms=t) for cv, j, t in zip(convs, times["jax"], times["torch"])]
    tot = {fw: totals(convs, times[fw]) for fw in ("jax", "torch")}
    result = {"variant": args.variant, "threads": args.threads, "reps": args.reps,
              "cpu_model": cpu_model(), "measured_on": time.strftime("%Y-%m-%d"),
              "command": "python benchmarks/bench_conv_kernels.py " + " ".join(
                  a for a in (argv or sys.argv[1:])),
              "distinct_shapes": len(convs), "convolutions": sum(cv["count"] for cv in convs),
              "total_ms": tot,
              "torch_over_jax": {k: tot["torch"][k] / tot["jax"][k] for k in tot["jax"]},
              "rows": rows}
    print(f"{'x (b,h,w,c)':<22} {'w':<16} {'s':>1} {'n':>3} | {'jax fwd/dx/dw ms':>20} | "
          f"{'torch fwd/dx/dw ms':>20}")
    for r in rows:
        j, t = r["jax_ms"], r["torch_ms"]
        print(f"{str(tuple(r['x'])):<22} {str(tuple(r['w'])):<16} {r['stride']:>1} "
              f"{r['count']:>3} | {j['fwd']:6.2f} {j['dx']:6.2f} {j['dw']:6.2f} | "
              f"{t['fwd']:6.2f} {t['dx']:6.2f} {t['dw']:6.2f}")
    for k in ("fwd", "dx", "dw", "all"):
        print(f"total {k:>4}: JAX {tot['jax'][k]:7.1f} ms, torch {tot['torch'][k]:7.1f} ms "
              f"(torch / JAX {result['torch_over_jax'][k]:.2f})")
    save_json(result, args.out)
    return result


if __name__ == "__main__":
    main()
