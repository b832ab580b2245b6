"""``vasa-jax plan``: will a config fit a TPU slice, and how fast will it go? Compiles the real
train step (or the generation sampler) for the slice on this machine (``vasa_jax.plan``)."""

from __future__ import annotations

import re

from vasa_jax.cli.common import UserError, user_errors
from vasa_jax.plan.chips import GiB


def parse_config_spec(spec: str) -> tuple[str, str]:
    """``configs/latent.py:paper`` or ``latent:paper`` -> (stage, variant)."""
    m = re.fullmatch(r"(?:.*/)?(\w+?)(?:\.py)?:(\w+)", spec.strip())
    if not m:
        raise UserError(f"--config {spec!r}: expected configs/<stage>.py:<variant>, e.g. "
                        f"configs/latent.py:paper.")
    return m.group(1), m.group(2)


def _mesh(text: str | None):
    if not text:
        return None
    try:
        shape = tuple(int(x) for x in text.split(","))
    except ValueError:
        shape = ()
    if len(shape) != 3:
        raise UserError(f"--mesh {text!r}: expected data,fsdp,tensor sizes such as -1,1,1 or "
                        f"1,-1,1 (one -1 fills the slice).")
    return shape


def _gib(x) -> str:
    return "-" if x is None else f"{x / GiB:.2f} GiB"


def format_train_plan(r: dict) -> str:
    """A plan report as the lines the command prints."""
    lines = [f"{r['config']} on {r['slice']} ({r['devices']} x {r['chip']}), mesh {r['mesh']}, "
             f"global batch {r['global_batch']} ({r['per_device_batch']:g} per device), "
             f"{r['params']:,} parameters, {r['dtype']}",
             f"  fits: {'yes' if r['fits'] else 'NO'}    compile {r['compile_seconds']:.0f} s"]
    if "peak_bytes" in r:
        lines.append(f"  HBM per device: arguments {_gib(r['argument_bytes'])}, outputs "
                     f"{_gib(r['output_bytes'])} (donated {_gib(r['alias_bytes'])}), "
                     f"temporaries {_gib(r['temp_bytes'])}, peak {_gib(r['peak_bytes'])} of "
                     f"{_gib(r['hbm_capacity_bytes'])}")
        coll = ", ".join(f"{k} {v / 2 ** 20:.1f} MiB"
                         for k, v in r["collective_bytes_per_device"].items()) or "none"
        lines.append(f"  per device per step: {r['flops_per_device'] / 1e12:.3f} TFLOP, "
                     f"collectives {coll}")
        if r.get("projected_step_seconds"):
            lines.append(f"  projected: {r['projected_step_seconds'] * 1e3:.1f} ms/step, "
                         f"{r['projected_examples_per_second']:,.0f} examples/s at an assumed "
                         f"MFU of {r['mfu_assumed']:.0%} (a projection, not a measurement)")
    else:
        lines.append(f"  XLA: {r['xla_error']}")
    if r.get("advice"):
        lines.append(f"  advice: {r['advice']}")
    if r.get("limited_by"):
        lines.append(f"  largest batch limited by: {r['limited_by']}")
    return "\n".join(lines)


def plan(args) -> dict:
    from vasa_jax.plan.chips import PlanError
    from vasa_jax.train.run import ConfigError, load_config

    with user_errors(PlanError, ConfigError, NotImplementedError):
        if args.sampler:
            from vasa_jax.plan.sample_plan import format_sample_plan, plan_sampler

            r = plan_sampler(args.topology, latent_variant=args.latent_variant,
                             motion_variant=args.motion_variant, steps=args.steps,
                             decode_batch=args.decode_batch, mfu=args.mfu)
            text = format_sample_plan(r)
        else:
            from vasa_jax.plan.train_plan import largest_batch, plan_config

            if not args.config:
                raise UserError("Give --config configs/<stage>.py:<variant> (or --sampler).")
            stage, variant = parse_config_spec(args.config)
            config = load_config(stage, variant, overrides=args.set)
            if args.batch == "max":
                r = largest_batch(config, args.topology, mesh=_mesh(args.mesh), mfu=args.mfu,
                                  limit=args.max_batch)
            else:
                r = plan_config(config, args.topology, mesh=_mesh(args.mesh), mfu=args.mfu,
                                batch=int(args.batch) if args.batch else None)
            text = format_train_plan(r)
    print(text)
    if args.json:
        from vasa_jax.atomic import write_json

        print(f"Wrote {write_json(args.json, r, indent=1, default=str)}")
    return r


def add_parser(sub) -> None:
    p = sub.add_parser("plan", help="compile a config's train step (or the sampler) for a TPU "
                       "slice here and report fit, memory and projected speed")
    p.add_argument("--config", default=None,
                   help="configs/<stage>.py:<variant>, e.g. configs/latent.py:paper")
    p.add_argument("--topology", required=True,
                   help="a TPU slice: v5e-16, v5p-128, v6e-8, or a topology such as v5e:4x4")
    p.add_argument("--batch", default=None,
                   help="global batch (default: the config's), or 'max': the largest that fits")
    p.add_argument("--max-batch", type=int, default=1 << 16,
                   help="with --batch max: the largest global batch to consider")
    p.add_argument("--mesh", default=None,
                   help="data,fsdp,tensor sizes with one -1 (default -1,1,1: data parallel)")
    p.add_argument("--mfu", type=float, default=0.35,
                   help="model FLOPs utilisation assumed for the projected speed")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a config field (repeatable)")
    p.add_argument("--sampler", action="store_true",
                   help="plan generation instead: one window of the compiled sampler + decoder")
    p.add_argument("--latent-variant", default="paper", help="with --sampler: stage 1's variant")
    p.add_argument("--motion-variant", default="paper", help="with --sampler: stage 2's variant")
    p.add_argument("--steps", type=int, default=0,
                   help="with --sampler: denoising steps (default: the motion config's)")
    p.add_argument("--decode-batch", type=int, default=0,
                   help="with --sampler: frames decoded at once (0: the whole window)")
    p.add_argument("--json", default=None, help="also write the report here")
    p.set_defaults(func=plan)
