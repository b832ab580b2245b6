"""The ``vasa-jax`` command.

  vasa-jax quickstart [--workdir DIR]            the main job on the embedded SynthTalk data
  vasa-jax data build synthtalk [--config NAME]  build a SynthTalk TFDS dataset (ArrayRecord)
  vasa-jax data show [--config NAME]             contact sheet PNG + mp4 with sound of a split
  vasa-jax data build latents --stage1-workdir DIR   stage-1 motion latents of a video dataset
  vasa-jax train latent --workdir DIR            train stage 1 (FaceLatentModel) on one host
  vasa-jax train motion --workdir DIR            train stage 2 (MotionDiT) on one host
  vasa-jax train probe --workdir DIR             train the SynthTalk probe (a measuring CNN)
  vasa-jax eval latent --workdir DIR             self/cross-reenactment report for stage 1
  vasa-jax eval motion --workdir DIR             lip-sync / head-motion / gaze table for stage 2

Multi-host training goes through ``launch/train.py`` (see the README).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow is only a TFDS/clu dependency


class UserError(Exception):
    """A mistake the user can fix; printed without a traceback."""


def _synthtalk_builder(args):
    from data_pipeline.synthtalk import synthtalk_dataset_builder as stb

    overrides = dict(num_identities=args.num_identities, clips_per_identity=args.clips_per_identity,
                     num_frames=args.num_frames, seed=args.seed, encoding=args.encoding)
    if args.config:
        names = {c.name: c for c in stb.Synthtalk.BUILDER_CONFIGS}
        if args.config not in names:
            raise UserError(f"Unknown SynthTalk config {args.config!r}. Known configs: "
                            f"{', '.join(names)}; or give --resolution/--size and overrides.")
        if args.resolution is not None or args.size is not None:
            raise UserError("Give either --config or --resolution/--size, not both.")
        resolution, size = names[args.config].resolution, args.config.split("_", 1)[1]
    else:
        resolution, size = args.resolution or 64, args.size or "small"
    try:
        cfg = stb.make_config(resolution, size, **overrides)
    except ValueError as e:
        raise UserError(str(e)) from None
    registered = {c.name for c in stb.Synthtalk.BUILDER_CONFIGS}
    return stb.Synthtalk(config=cfg.name if cfg.name in registered else cfg,
                         data_dir=args.data_dir, workers=args.workers)


def build_synthtalk(args) -> str:
    """Build (or reuse) a SynthTalk dataset; returns its config name."""
    import tensorflow_datasets as tfds

    builder = _synthtalk_builder(args)
    c = builder.builder_config
    n = c.num_identities * c.clips_per_identity
    mode = (tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS if not args.overwrite
            else tfds.download.GenerateMode.FORCE_REDOWNLOAD)
    if builder.is_prepared() and not args.overwrite:
        print(f"SynthTalk {c.name} is already prepared at {builder.data_dir} "
              f"(use --overwrite to rebuild).")
        return c.name
    print(f"Building SynthTalk {c.name}: {n} clips of {c.num_frames} frames at "
          f"{c.resolution} px into {builder.data_dir}")
    t0 = time.time()
    try:
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(download_mode=mode))
    except PermissionError as e:
        raise UserError(f"Cannot write the dataset: {e}. Choose a writable --data-dir.") from None
    dt = time.time() - t0
    splits = ", ".join(f"{k} {v.num_examples}" for k, v in builder.info.splits.items())
    print(f"Built {n} clips in {dt:.1f} s ({n / dt:.1f} clips/s): {splits}.")
    return c.name


def show_dataset(args) -> tuple[str, str]:
    from data_pipeline.loader import DatasetNotFoundError
    from data_pipeline.show import show

    try:
        png, mp4 = show(args.dataset, args.config, args.split, args.data_dir, args.out,
                        num_clips=args.num_clips, seed=args.seed)
    except DatasetNotFoundError as e:
        raise UserError(str(e)) from None
    print(f"Contact sheet: {png}\nClips with sound: {mp4}")
    return png, mp4


STAGES = {"motion": "stage 2 (MotionDiT)", "latent": "stage 1 (FaceLatentModel)",
          "probe": "the SynthTalk probe"}


def stage_config(stage: str, variant: str, data_dir: str | None, overrides: list[str]):
    """``configs/<stage>.py:variant`` with ``--data-dir`` and ``--set FIELD=VALUE`` applied."""
    import importlib

    get_config = importlib.import_module(f"configs.{stage}").get_config
    try:
        config = get_config(variant)
    except ValueError as e:
        raise UserError(str(e)) from None
    if data_dir:
        config.data.data_dir = data_dir
    for item in overrides or []:
        key, _, value = item.partition("=")
        node = config
        *path, leaf = key.split(".")
        try:
            for p in path:
                node = node[p]
            current = node[leaf]
        except (KeyError, AttributeError):
            raise UserError(f"Unknown config field {key!r} in --set {item!r}.") from None
        import ast

        try:
            parsed = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            parsed = value
        node[leaf] = type(current)(parsed) if current is not None and not isinstance(
            current, (tuple, list)) else parsed
    if not any(o.startswith("optim.decay_steps=") for o in overrides or []):
        config.optim.decay_steps = config.train.steps
    return config


def train_stage(args) -> dict:
    from data_pipeline.loader import DatasetNotFoundError
    from vasa_jax.train.tasks import make_task
    from vasa_jax.train.trainer import Trainer

    stage = args.stage
    config = stage_config(stage, args.variant or DEFAULT_VARIANTS[stage], args.data_dir, args.set)
    print(f"Training {STAGES[stage]} ({config.variant}) for {config.train.steps} steps into "
          f"{args.workdir}")
    try:
        trainer = Trainer(make_task(config), config, args.workdir)
    except DatasetNotFoundError as e:
        raise UserError(str(e)) from None
    print(f"{trainer.num_params():,} parameters on mesh {dict(trainer.mesh.shape)}")
    result = trainer.fit(progress=True)
    print(f"Done in {result['train_seconds'] / 60:.1f} min; final loss {result.get('loss', 0):.4f}.")
    if stage == "probe":
        from vasa_jax.train.probe_task import write_heldout

        path = write_heldout(args.workdir, config)
        print(f"Held-out probe accuracy: {path}")
    return result


def train_motion(args) -> dict:
    return train_stage(argparse.Namespace(**vars(args), stage="motion"))


DEFAULT_VARIANTS = {"motion": "synthtalk", "latent": "synthtalk64", "probe": "synthtalk64"}


def eval_latent(args) -> tuple[str, str]:
    from vasa_jax.eval.latent_eval import evaluate_latent, write_report
    from vasa_jax.train.restore import host_model, load_trainer

    try:
        trainer, step = load_trainer(args.workdir)
        probe = None
        if args.probe_workdir:
            from vasa_jax.eval.synthtalk_probe import load_probe

            probe = load_probe(args.probe_workdir)
    except FileNotFoundError as e:
        raise UserError(str(e)) from None
    config = trainer.config
    if args.data_dir:
        config.data.data_dir = args.data_dir
    model = host_model(trainer)

    def progress(k, n):
        print(f"\r  clip {k}/{n}", end="", flush=True)

    print(f"Stage-1 evaluation on {args.split} (checkpoint step {step}) ...")
    try:
        result = evaluate_latent(model, config, split=args.split, max_clips=args.max_clips,
                                 probe=probe, frame_stride=args.frame_stride, progress=progress)
    except ValueError as e:
        raise UserError(str(e)) from None
    result.update(workdir=args.workdir, checkpoint_step=step,
                  dataset=f"{config.data.dataset}/{config.data.config}")
    js, png = write_report(result, args.out or os.path.join(args.workdir, "eval"))
    print()
    for part in ("self", "cross", "motion_latents", "warp"):
        print(part, {k: round(v, 4) for k, v in result[part].items()})
    if probe is not None:
        print("probe held-out accuracy:", probe.heldout)
    print(f"Wrote {js} and {png}")
    return js, png


def eval_motion(args) -> tuple[str, str]:
    from vasa_jax.eval.motion_eval import evaluate_motion, markdown_table, real_row, write_report
    from vasa_jax.train.motion_task import read_clips
    from vasa_jax.train.restore import host_model, load_trainer

    try:
        trainer, step = load_trainer(args.workdir)
    except FileNotFoundError as e:
        raise UserError(str(e)) from None
    config = trainer.config
    if args.data_dir:
        config.data.data_dir = args.data_dir
    clips = read_clips(config, args.split, args.max_clips or None)
    model = host_model(trainer)
    gaze_scale = float(config.sample.cfg.get("gaze", 1.0))
    rows = {"Real video (ground truth)": real_row(clips)}
    for lam in [float(x) for x in args.cfg_audio.split(",")]:
        print(f"Generating motion for {len(clips)} {args.split} clips: λA={lam:g}, "
              f"λg={gaze_scale:g}, {args.steps} steps ...", flush=True)
        rows[f"MotionDiT, λA={lam:g}, λg={gaze_scale:g}, {args.steps} steps"] = evaluate_motion(
            model, clips, trainer.task.schedule, num_steps=args.steps,
            sampler=config.sample.sampler, cfg_scales={"audio": lam, "gaze": gaze_scale},
            seed=args.seed)
    meta = {"workdir": args.workdir, "checkpoint_step": step, "split": args.split,
            "clips": len(clips), "dataset": f"{config.data.dataset}/{config.data.config}",
            "sampler": config.sample.sampler, "seed": args.seed}
    out = args.out or os.path.join(args.workdir, "eval")
    md, js = write_report(rows, out, meta)
    print(markdown_table(rows))
    print(f"\nWrote {md} and {js}")
    return md, js


def quickstart(args) -> None:
    """The main job on the embedded dataset: build SynthTalk and show its test split, train
    stage 2 on its ground-truth motion, and print the motion evaluation on held-out people."""
    data_dir = args.data_dir or os.path.join(args.workdir, "tensorflow_datasets")
    build_args = argparse.Namespace(
        config=args.synthtalk_config, resolution=None, size=None, num_identities=None,
        clips_per_identity=None, num_frames=None, seed=None, encoding=None,
        data_dir=data_dir, workers=args.workers, overwrite=False)
    name = build_synthtalk(build_args)
    show_args = argparse.Namespace(dataset="synthtalk", config=name, split="test",
                                   data_dir=data_dir, out=os.path.join(args.workdir, "show"),
                                   num_clips=6, seed=0)
    show_dataset(show_args)
    motion_dir = os.path.join(args.workdir, "motion")
    overrides = [f"data.config={name}"] + list(args.set or [])
    train_motion(argparse.Namespace(variant=args.motion_variant, data_dir=data_dir,
                                    set=overrides, workdir=motion_dir))
    eval_motion(argparse.Namespace(workdir=motion_dir, data_dir=data_dir, split="test",
                                   max_clips=0, steps=50, cfg_audio="0,0.5,1", seed=0,
                                   out=os.path.join(args.workdir, "eval")))


def build_latents_cmd(args) -> str:
    from data_pipeline.latents.latents_dataset_builder import build_latents
    from data_pipeline.loader import DatasetNotFoundError

    try:
        name = build_latents(args.source, args.source_config, args.stage1_workdir,
                             data_dir=args.data_dir, source_data_dir=args.source_data_dir,
                             use_beam=args.beam, overwrite=args.overwrite)
    except (FileNotFoundError, DatasetNotFoundError, ValueError, ImportError) as e:
        raise UserError(str(e)) from None
    print(f"Built latents/{name}. Train stage 2 on it with:\n  python launch/train.py "
          f"--config=configs/motion.py:synthtalk_latents --workdir=runs/motion_latents "
          f"--config.data.config={name}" +
          (f" --config.data.data_dir={args.data_dir}" if args.data_dir else ""))
    return name


def _add_build_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="named config, e.g. res64_small (see --help of the builder)")
    p.add_argument("--resolution", type=int, help="frame side in pixels (default 64)")
    p.add_argument("--size", choices=("tiny", "small", "large"), help="default small")
    p.add_argument("--num-identities", type=int)
    p.add_argument("--clips-per-identity", type=int)
    p.add_argument("--num-frames", type=int, help="frames per clip (25 fps)")
    p.add_argument("--seed", type=int)
    p.add_argument("--encoding", choices=("png", "jpeg"))
    p.add_argument("--data-dir", default=None, help="TFDS data dir (default $VASA_JAX_DATA_DIR "
                   "or ~/tensorflow_datasets)")
    p.add_argument("--workers", type=int, default=0, help="generator processes (0: all cores)")
    p.add_argument("--overwrite", action="store_true", help="rebuild even if prepared")


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="vasa-jax", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)

    q = sub.add_parser("quickstart", help="the README's main job: build and show SynthTalk, "
                       "train stage 2, print its evaluation")
    q.add_argument("--workdir", default="runs/quickstart")
    q.add_argument("--data-dir", default=None, help="default: WORKDIR/tensorflow_datasets")
    q.add_argument("--synthtalk-config", default="res64_small")
    q.add_argument("--workers", type=int, default=0)
    q.add_argument("--motion-variant", default="synthtalk", help="configs/motion.py variant")
    q.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a stage-2 config field (repeatable)")
    q.set_defaults(func=quickstart)

    tr = sub.add_parser("train", help="train a stage on this host")
    trsub = tr.add_subparsers(dest="stage", required=True)
    for stage, help_ in STAGES.items():
        tm = trsub.add_parser(stage, help=help_)
        tm.add_argument("--workdir", required=True)
        tm.add_argument("--variant", default=None,
                        help=f"a configs/{stage}.py variant (default {DEFAULT_VARIANTS[stage]})")
        tm.add_argument("--data-dir", default=None)
        tm.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a config field, e.g. --set train.steps=500 (repeatable)")
        tm.set_defaults(func=train_stage)

    ev = sub.add_parser("eval", help="evaluate a trained stage")
    evsub = ev.add_subparsers(dest="stage", required=True)
    em = evsub.add_parser("motion", help="stage 2 against SynthTalk's ground truth")
    em.add_argument("--workdir", required=True, help="the training workdir (checkpoints/)")
    em.add_argument("--data-dir", default=None)
    em.add_argument("--split", default="test")
    em.add_argument("--max-clips", type=int, default=0, help="0 = the whole split")
    em.add_argument("--steps", type=int, default=50, help="sampling steps per window")
    em.add_argument("--cfg-audio", default="0,0.5,1", help="audio guidance scales to compare")
    em.add_argument("--seed", type=int, default=0)
    em.add_argument("--out", default=None, help="default WORKDIR/eval")
    em.set_defaults(func=eval_motion)
    el = evsub.add_parser("latent", help="stage 1: self/cross-reenactment on held-out people")
    el.add_argument("--workdir", required=True, help="the stage-1 training workdir")
    el.add_argument("--probe-workdir", default=None,
                    help="a trained SynthTalk probe (vasa-jax train probe) for motion transfer")
    el.add_argument("--data-dir", default=None)
    el.add_argument("--split", default="test")
    el.add_argument("--max-clips", type=int, default=0, help="0 = the whole split")
    el.add_argument("--frame-stride", type=int, default=1, help="evaluate every n-th frame")
    el.add_argument("--out", default=None, help="default WORKDIR/eval")
    el.set_defaults(func=eval_latent)

    data = sub.add_parser("data", help="build and inspect datasets")
    dsub = data.add_subparsers(dest="data_command", required=True)
    b = dsub.add_parser("build", help="build a TFDS dataset")
    bsub = b.add_subparsers(dest="dataset", required=True)
    st = bsub.add_parser("synthtalk", help="procedurally generated talking faces")
    _add_build_args(st)
    st.set_defaults(func=build_synthtalk)

    lt = bsub.add_parser("latents", help="stage-1 motion latents + audio features of a video "
                                         "dataset (the data stage 2 trains on)")
    lt.add_argument("--stage1-workdir", required=True, help="a trained stage-1 workdir")
    lt.add_argument("--source", default="synthtalk", help="source TFDS dataset")
    lt.add_argument("--source-config", default="res64_small")
    lt.add_argument("--source-data-dir", default=None, help="default: --data-dir")
    lt.add_argument("--data-dir", default=None)
    lt.add_argument("--beam", action="store_true", help="build with Apache Beam (DirectRunner "
                                                        "here; pass runner flags for clusters)")
    lt.add_argument("--overwrite", action="store_true")
    lt.set_defaults(func=build_latents_cmd)

    s = dsub.add_parser("show", help="contact sheet PNG + mp4 with sound of a few clips")
    s.add_argument("--dataset", default="synthtalk")
    s.add_argument("--config", default="res64_small")
    s.add_argument("--split", default="test")
    s.add_argument("--data-dir", default=None)
    s.add_argument("--out", default="runs/show")
    s.add_argument("--num-clips", type=int, default=6)
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=show_dataset)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        args.func(args)
    except UserError as e:
        print(f"vasa-jax: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
