"""``vasa-jax data``: build SynthTalk, VoxCeleb2 and stage-1 latents datasets; show a split."""

from __future__ import annotations

import argparse
import shlex
import time

from vasa_jax.cli.common import UserError, unwritable_data_dir, user_errors


def build_synthtalk(args) -> str:
    """``data build synthtalk``: build (or reuse) a SynthTalk dataset; returns its name."""
    from data_pipeline.synthtalk.prepare import SynthtalkConfigError, prepare_synthtalk

    with user_errors(SynthtalkConfigError), unwritable_data_dir():
        return prepare_synthtalk(
            args.config, resolution=args.resolution, size=args.size, data_dir=args.data_dir,
            workers=args.workers, overwrite=args.overwrite, num_identities=args.num_identities,
            clips_per_identity=args.clips_per_identity, num_frames=args.num_frames,
            seed=args.seed, encoding=args.encoding)


def show_dataset(args) -> tuple[str, str]:
    """``data show``: a contact sheet PNG and an mp4 with sound of a few clips."""
    from data_pipeline.loader import DatasetNotFoundError
    from data_pipeline.show import show

    with user_errors(DatasetNotFoundError):
        png, mp4 = show(args.dataset, args.config, args.split, args.data_dir, args.out,
                        num_clips=args.num_clips, seed=args.seed)
    print(f"Contact sheet: {png}\nClips with sound: {mp4}")
    return png, mp4


def build_latents_cmd(args) -> str:
    """``data build latents``: stage-1 motion latents + audio features of a video dataset."""
    from data_pipeline.latents.latents_dataset_builder import build_latents
    from data_pipeline.loader import DatasetNotFoundError
    from ml_collections import ConfigDict

    from vasa_jax.train.run import ConfigError, apply_overrides

    for pair in args.audio:
        key, sep, _ = pair.partition("=")
        if not sep or not key:
            raise UserError(f"--audio takes FIELD=VALUE (e.g. frontend=wav2vec2); got {pair!r}.")
    with user_errors(ConfigError):  # values parsed as config_flags parses new fields
        audio = apply_overrides(ConfigDict(), args.audio, new_fields=True).to_dict()
    with user_errors(FileNotFoundError, DatasetNotFoundError, ValueError, ImportError):
        name = build_latents(args.source, args.source_config, args.stage1_workdir,
                             data_dir=args.data_dir, source_data_dir=args.source_data_dir,
                             use_beam=args.beam, overwrite=args.overwrite, audio=audio or None)
    print(f"Built latents/{name}. Train stage 2 on it with:\n  python launch/train.py "
          f"--config=configs/motion.py:synthtalk_latents --workdir=runs/motion_latents "
          f"--config.data.config={name}" +
          (f" --config.data.data_dir={args.data_dir}" if args.data_dir else ""))
    return name


def _voxceleb2_config(args):
    """The named config (default res256) with the options given on the command line."""
    from data_pipeline.voxceleb2 import voxceleb2_dataset_builder as vb

    def given(value, default):
        return default if value is None else value

    with user_errors(ValueError):
        base = vb.config_from_name(args.config) if args.config else vb.make_config()
        return vb.make_config(
            args.resolution or base.resolution, args.clip_frames or base.clip_frames,
            validation_fraction=given(args.validation_fraction, base.validation_fraction),
            quality_scorer=given(args.quality_scorer, base.quality_scorer),
            quality_threshold=given(args.quality_threshold, base.quality_threshold),
            face_labels=base.face_labels and not args.no_face_labels)


def _beam_flags(args, data_dir: str) -> list[str] | None:
    """Beam pipeline flags from --beam-runner/--beam-options (None: build without Beam)."""
    if not (args.beam_runner or args.beam_options):
        return None
    runner = args.beam_runner or "DirectRunner"
    local = [d for d in (args.manual_dir, data_dir) if "://" not in d]
    if local and runner == "DataflowRunner":
        raise UserError(f"Dataflow workers cannot read or write this machine's directories "
                        f"({', '.join(local)}); put the download and the --data-dir on Cloud "
                        f"Storage (gs://...).")
    if local and runner != "DirectRunner":
        print(f"Note: {runner} workers must see {', '.join(local)} at the same path (a shared "
              f"filesystem); otherwise use gs:// or another shared URL.")
    return ([f"--runner={args.beam_runner}"] if args.beam_runner else []) + \
        shlex.split(args.beam_options or "")


def build_voxceleb2_cmd(args) -> str:
    """``data build voxceleb2``: the VoxCeleb2 download -> ArrayRecord clips, with progress and
    a summary (clips written, skipped files and why, hours of video)."""
    from data_pipeline.loader import default_data_dir
    from data_pipeline.voxceleb2 import report
    from data_pipeline.voxceleb2 import voxceleb2_dataset_builder as vb

    cfg = _voxceleb2_config(args)
    with user_errors(vb.ManualDirError):  # a missing or empty download: the layout, at once
        vb.find_identities(args.manual_dir)
    data_dir = args.data_dir or default_data_dir()
    beam_flags = _beam_flags(args, data_dir)
    last = [0.0]

    def progress(split, counts):
        now = time.time()
        if now - last[0] >= args.progress_every:
            last[0] = now
            skipped = sum(v for k, v in counts.items() if k.startswith("skipped_videos_"))
            print(f"  [{split}] {counts.get('videos', 0)} files, "
                  f"{counts.get('clips_written', 0)} clips, {skipped} files skipped, "
                  f"{counts.get('video_ms', 0) / 3.6e6:.2f} h decoded", flush=True)

    how = ("without Beam" if beam_flags is None else
           f"with Apache Beam ({args.beam_runner or 'DirectRunner'}; progress in the runner's "
           f"logs/UI)")
    print(f"Building voxceleb2/{cfg.name} from {args.manual_dir} into {data_dir} {how}",
          flush=True)
    with user_errors(vb.ManualDirError, vb.NoClipsError, ImportError), unwritable_data_dir():
        path, summary = vb.build_voxceleb2(args.manual_dir, cfg, data_dir=data_dir,
                                           beam_flags=beam_flags, overwrite=args.overwrite,
                                           progress=progress)
    if summary.get("reused"):
        print(f"voxceleb2/{cfg.name} is already prepared at {path} (use --overwrite to "
              f"rebuild). Its build report:")
    else:
        print(f"Built voxceleb2/{cfg.name} at {path} in {summary['build_seconds']:.1f} s.")
    if "splits" in summary:
        print(report.format_summary(summary))
    print(f"Full report: {path}/{report.REPORT_FILE}. Read it with LoaderConfig("
          f"dataset='voxceleb2', config='{cfg.name}', data_dir='{data_dir}')" +
          (f", or train stage 1: vasa-jax train latent --variant vox{cfg.resolution} "
           f"--workdir runs/latent_vox{cfg.resolution} --data-dir {data_dir}"
           if cfg.name in ("res256", "res512") else "") + ".")
    return cfg.name


def _synthtalk_parser(p: argparse.ArgumentParser) -> None:
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
    p.set_defaults(func=build_synthtalk)


def _latents_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--stage1-workdir", required=True, help="a trained stage-1 workdir")
    p.add_argument("--source", default="synthtalk", help="source TFDS dataset")
    p.add_argument("--source-config", default="res64_small")
    p.add_argument("--source-data-dir", default=None, help="default: --data-dir")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--beam", action="store_true", help="build with Apache Beam (DirectRunner "
                                                       "here; pass runner flags for clusters)")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--audio", action="append", default=[], metavar="FIELD=VALUE",
                   help="audio frontend settings (default: configs/motion.py's log-mel), e.g. "
                        "--audio frontend=wav2vec2 --audio checkpoint=DIR --audio mix_layers=True")
    p.set_defaults(func=build_latents_cmd)


def _voxceleb2_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--manual-dir", required=True,
                   help="the unzipped download: dev/mp4/idXXXXX/<video_id>/NNNNN.mp4, "
                        "test/mp4/..., optional dev/aac/... (local path or gs://)")
    p.add_argument("--config", default=None,
                   help="res256 (default) or res512, or a name printed by an earlier build")
    p.add_argument("--resolution", type=int, help="frame side in px (overrides --config)")
    p.add_argument("--clip-frames", type=int, help="frames per clip at 25 fps (default 75)")
    p.add_argument("--validation-fraction", type=float,
                   help="share of dev identities held out for validation (default 0.02)")
    p.add_argument("--quality-scorer", default=None,
                   help="a registered blind quality score (laplacian_sharpness); clips below "
                        "--quality-threshold are skipped")
    p.add_argument("--quality-threshold", type=float, default=None)
    p.add_argument("--no-face-labels", action="store_true",
                   help="skip the per-frame face-mesh motion labels (stage-1 guidance on "
                        "real video; about 5 ms of mediapipe per 256-px frame on one core): "
                        "config name *_nolabels")
    p.add_argument("--data-dir", default=None, help="TFDS data dir (default $VASA_JAX_DATA_DIR "
                   "or ~/tensorflow_datasets; gs:// for Dataflow)")
    p.add_argument("--beam-runner", default=None,
                   help="build with Apache Beam on this runner: DirectRunner, DataflowRunner, "
                        "FlinkRunner, SparkRunner, ... (default: no Beam)")
    p.add_argument("--beam-options", default=None,
                   help="more Beam pipeline flags in one string, e.g. '--project=P "
                        "--region=R --temp_location=gs://B/tmp' (implies Beam)")
    p.add_argument("--progress-every", type=float, default=5.0,
                   help="seconds between progress lines (plain builds)")
    p.add_argument("--overwrite", action="store_true", help="rebuild even if prepared")
    p.set_defaults(func=build_voxceleb2_cmd)


def _show_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", default="synthtalk")
    p.add_argument("--config", default="res64_small")
    p.add_argument("--split", default="test")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", default="runs/show")
    p.add_argument("--num-clips", type=int, default=6)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=show_dataset)


def add_parser(sub) -> None:
    """``data build {synthtalk,latents,voxceleb2}`` and ``data show``."""
    data = sub.add_parser("data", help="build and inspect datasets")
    dsub = data.add_subparsers(dest="data_command", required=True)
    b = dsub.add_parser("build", help="build a TFDS dataset")
    bsub = b.add_subparsers(dest="dataset", required=True)
    _synthtalk_parser(bsub.add_parser("synthtalk", help="procedurally generated talking faces"))
    _latents_parser(bsub.add_parser("latents", help="stage-1 motion latents + audio features "
                                    "of a video dataset (the data stage 2 trains on)"))
    _voxceleb2_parser(bsub.add_parser("voxceleb2", help="VoxCeleb2 from its manual download "
                                      "(plain, or Apache Beam: DirectRunner, Dataflow, Flink, "
                                      "Spark)"))
    _show_parser(dsub.add_parser("show", help="contact sheet PNG + mp4 with sound of a few "
                                 "clips"))
