"""The ``vasa-jax`` command.

  vasa-jax quickstart [--workdir DIR]            the main job on the embedded SynthTalk data
  vasa-jax data build synthtalk [--config NAME]  build a SynthTalk TFDS dataset (ArrayRecord)
  vasa-jax data show [--config NAME]             contact sheet PNG + mp4 with sound of a split
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


def quickstart(args) -> None:
    """The main job on the embedded dataset. Today: build SynthTalk and show its test split."""
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

    q = sub.add_parser("quickstart", help="build SynthTalk and show it (the README's main job)")
    q.add_argument("--workdir", default="runs/quickstart")
    q.add_argument("--data-dir", default=None, help="default: WORKDIR/tensorflow_datasets")
    q.add_argument("--synthtalk-config", default="res64_small")
    q.add_argument("--workers", type=int, default=0)
    q.set_defaults(func=quickstart)

    data = sub.add_parser("data", help="build and inspect datasets")
    dsub = data.add_subparsers(dest="data_command", required=True)
    b = dsub.add_parser("build", help="build a TFDS dataset")
    bsub = b.add_subparsers(dest="dataset", required=True)
    st = bsub.add_parser("synthtalk", help="procedurally generated talking faces")
    _add_build_args(st)
    st.set_defaults(func=build_synthtalk)

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
