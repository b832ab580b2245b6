"""The ``vasa-jax`` command.

  vasa-jax quickstart [--workdir DIR]            the main job on the embedded SynthTalk data
  vasa-jax data build synthtalk [--config NAME]  build a SynthTalk TFDS dataset (ArrayRecord)
  vasa-jax data show [--config NAME]             contact sheet PNG + mp4 with sound of a split
  vasa-jax data build latents --stage1-workdir DIR   stage-1 motion latents of a video dataset
  vasa-jax data build voxceleb2 --manual-dir DIR [--beam-runner R]   VoxCeleb2 (ArrayRecord)
  vasa-jax train latent --workdir DIR            train stage 1 (FaceLatentModel) on one host
  vasa-jax train motion --workdir DIR            train stage 2 (MotionDiT) on one host
  vasa-jax train probe --workdir DIR             train the SynthTalk probe (a measuring CNN)
  vasa-jax train syncnet|capp --workdir DIR      train the lip-sync / audio-pose instruments
  vasa-jax ship --workdir DIR --name NAME        a trained probe -> shipped weights (package:NAME)
  vasa-jax eval latent --workdir DIR             self/cross-reenactment report for stage 1
  vasa-jax eval ladder --rung NAME=DIR ...       stage 1's diagnostic ladder as one table
  vasa-jax eval motion --workdir DIR             lip-sync / head-motion / gaze table for stage 2
  vasa-jax eval --generated DIR --real DIR       the paper-style table of clip sets (mp4 + json)
  vasa-jax eval export-synthtalk --out DIR       a SynthTalk split as a real clip set
  vasa-jax eval generate-set --real DIR ...      a generated clip set from a real one
  vasa-jax generate --image P --audio A --out V  a talking-face mp4 from a photo and speech
  vasa-jax verify VIDEO                          watermark, C2PA manifest and safety tags
  vasa-jax convert wav2vec2 --hf-dir D --out O   Hugging Face wav2vec2 weights -> orbax

Multi-host training goes through ``launch/train.py`` (see the README).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

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
          "probe": "the SynthTalk probe", "syncnet": "the SyncNet lip-sync instrument",
          "capp": "the CAPP audio-pose instrument"}
INSTRUMENTS = ("probe", "syncnet", "capp")  # measuring networks: held-out accuracy written after


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
    if stage in INSTRUMENTS:
        import importlib

        write_heldout = importlib.import_module(f"vasa_jax.train.{stage}_task").write_heldout
        print(f"Held-out {stage} accuracy: {write_heldout(args.workdir, config)}")
    return result


def train_motion(args) -> dict:
    return train_stage(argparse.Namespace(**vars(args), stage="motion"))


DEFAULT_VARIANTS = {"motion": "synthtalk", "latent": "synthtalk64_estimator", "probe": "synthtalk64",
                    "syncnet": "synthtalk64", "capp": "synthtalk64"}


def eval_latent(args) -> tuple[str, str]:
    from vasa_jax.eval.latent_eval import evaluate_latent, write_report
    from vasa_jax.train.restore import host_model, load_trainer

    try:
        trainer, step = load_trainer(args.workdir)
        probe = None
        if args.probe_workdir and args.probe_workdir != "none":
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


def eval_ladder(args) -> tuple[str, str]:
    from vasa_jax.eval.latent_ladder import markdown, ladder_rows, read_report, write_ladder

    reports = {}
    for item in args.rung:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise UserError(f"--rung takes NAME=DIR (a run's eval dir or latent_eval.json), "
                            f"got {item!r}.")
        try:
            reports[name] = read_report(path)
        except FileNotFoundError as e:
            raise UserError(str(e)) from None
    js, md = write_ladder(reports, args.out)
    print(markdown(ladder_rows(reports)))
    print(f"Wrote {js} and {md}")
    return js, md


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


def _clip_set_errors():
    from vasa_jax.media.errors import InputError

    return (InputError, FileNotFoundError)


def eval_export(args) -> list[str]:
    from vasa_jax.eval.clip_set import export_synthtalk
    from data_pipeline.loader import DatasetNotFoundError

    try:
        names = export_synthtalk(args.out, dataset_config=args.config, data_dir=args.data_dir,
                                 split=args.split, max_clips=args.max_clips or None)
    except DatasetNotFoundError as e:
        raise UserError(str(e)) from None
    print(f"Wrote {len(names)} real clips (mp4 + ground-truth json) to {args.out}")
    return names


def eval_generate_set(args) -> list[str]:
    from vasa_jax.eval.clip_set import generate_set, read_clip_set
    from vasa_jax.pipeline import TalkingFacePipeline

    try:
        real = read_clip_set(args.real, max_clips=args.max_clips or None)
        pipe = TalkingFacePipeline.from_checkpoints(args.latent_workdir, args.motion_workdir)
    except _clip_set_errors() as e:
        raise UserError(str(e)) from None
    cfg = dict(_controls(argparse.Namespace(cfg=args.cfg, emotion=None, gaze=None, distance=None,
                                            steps=args.steps, fast=False, seed=args.seed,
                                            sampler=None), pipe.defaults).cfg)
    info = {"latent": args.latent_workdir, "motion": args.motion_workdir}
    paths = generate_set(pipe, real, args.out, cfg=cfg, steps=args.steps, seed=args.seed,
                         info=info, progress=lambda k, n: print(f"  {k}/{n}", flush=True))
    print(f"Wrote {len(paths)} generated clips to {args.out}")
    return paths


def eval_sets(args) -> dict[str, str]:
    """``vasa-jax eval --generated [NAME=]DIR ... --real DIR``: the paper-style table."""
    from vasa_jax.eval import table
    from vasa_jax.eval.clip_set import read_clip_set

    if not args.real or not args.generated:
        raise UserError("Give --real DIR and at least one --generated [NAME=]DIR (or a "
                        "subcommand: export-synthtalk, generate-set, motion, latent).")
    try:
        real = read_clip_set(args.real, max_clips=args.max_clips or None)
        names = [c.name for c in real]
        sets = {}
        for item in args.generated:
            label, sep, path = item.partition("=")
            if not sep:
                label, path = os.path.basename(os.path.normpath(item)), item
            sets[label] = read_clip_set(path, names=names)
        inst = table.Instruments.load(probe=args.probe, syncnet=args.syncnet,
                                      syncnet_torch=args.syncnet_torch, capp=args.capp,
                                      fvd=not args.no_fvd, fvd_clip_len=args.fvd_clip_len,
                                      fvd_stride=args.fvd_stride)
    except (*_clip_set_errors(), ValueError) as e:
        raise UserError(str(e)) from None
    if args.shuffled_row:
        sets = {"Real video, audio shuffled (chance)": table.shuffled_audio(real), **sets}
    results = table.evaluate_sets(real, sets, inst, progress=lambda m: print(m, flush=True))
    meta = {"title": "Evaluation", "real": args.real, "clips": len(real),
            "generated": ", ".join(args.generated),
            "fvd": "off" if args.no_fvd else (f"I3D logits, {args.fvd_clip_len}-frame clips every "
                                              f"{args.fvd_stride} frames")}
    paths = table.write_report(results, args.out, meta=meta, accuracies=inst.accuracies(),
                               real=real)
    print(table.markdown_table({k: v.row for k, v in results.items()}))
    print("\n".join(f"Wrote {p}" for p in paths.values()))
    return paths


def ship_weights(args) -> tuple[str, str]:
    """A trained probe, SyncNet or CAPP run -> ``vasa_jax/assets/NAME.{npz,json}``
    (``vasa_jax.shipped``); the kind is read from the held-out file the run holds."""
    from flax import nnx

    from vasa_jax import shipped
    from vasa_jax.eval import capp, syncnet, synthtalk_probe

    loaders = {"syncnet": (syncnet.HELDOUT_FILE, syncnet.load_syncnet),
               "capp": (capp.HELDOUT_FILE, capp.load_capp),
               "probe": (synthtalk_probe.HELDOUT_FILE, synthtalk_probe.load_probe)}
    kind = next((k for k, (f, _) in loaders.items()
                 if os.path.exists(os.path.join(args.workdir, f))), "probe")
    try:
        net = loaders[kind][1](args.workdir)
    except (FileNotFoundError, ValueError) as e:
        raise UserError(str(e)) from None
    command = args.command or (f"vasa-jax train {kind} --workdir {args.workdir} --variant "
                               f"{net.config.variant} --set seed={net.config.seed}")
    paths = shipped.ship(args.name, nnx.merge(net.graphdef, net.state), kind=kind,
                         config=net.config, step=net.step, heldout=net.heldout,
                         command=command, assets=args.assets or shipped.ASSETS)
    print("\n".join(f"Wrote {p}" for p in paths))
    return paths


def quickstart(args) -> dict:
    """The main job on the embedded dataset: build SynthTalk and show its test split, train
    stage 1, turn SynthTalk into its motion latents, train stage 2 on them, and make a held-out
    person speak held-out audio (an mp4, and a side-by-side mp4 with the ground truth)."""
    from vasa_jax.demo import run_demo
    from vasa_jax.safety.publish import verify_video

    t0 = time.time()
    data_dir = args.data_dir or os.path.join(args.workdir, "tensorflow_datasets")
    build_args = argparse.Namespace(
        config=args.synthtalk_config, resolution=None, size=None, num_identities=None,
        clips_per_identity=None, num_frames=None, seed=None, encoding=None,
        data_dir=data_dir, workers=args.workers, overwrite=False)
    name = build_synthtalk(build_args)
    show_dataset(argparse.Namespace(dataset="synthtalk", config=name, split="test",
                                    data_dir=data_dir, out=os.path.join(args.workdir, "show"),
                                    num_clips=6, seed=0))
    latent_dir = os.path.join(args.workdir, "latent")
    train_stage(argparse.Namespace(stage="latent", variant=args.latent_variant,
                                   data_dir=data_dir, workdir=latent_dir,
                                   set=[f"data.config={name}"] + list(args.set_latent)))
    from data_pipeline.latents.latents_dataset_builder import build_latents

    motion_config = stage_config("motion", args.motion_variant, data_dir, args.set_motion)
    print(f"Encoding SynthTalk {name} into stage-1 latents")
    latents = build_latents("synthtalk", name, latent_dir, data_dir=data_dir,
                            source_data_dir=data_dir, audio=dict(motion_config.audio))
    motion_dir = os.path.join(args.workdir, "motion")
    train_stage(argparse.Namespace(stage="motion", variant=args.motion_variant,
                                   data_dir=data_dir, workdir=motion_dir,
                                   set=[f"data.config={latents}"] + list(args.set_motion)))
    print("Generating a held-out identity speaking held-out audio")
    result = run_demo(latent_dir, motion_dir, name, data_dir, os.path.join(args.workdir, "demo"))
    print(f"Generated ({result['frames']} frames at {result['resolution']} px, identity "
          f"{result['identity']}): {result['generated']}\n"
          f"Ground truth | generated: {result['side_by_side']}")
    print("\n".join(verify_video(result["generated"]).lines()))
    print(f"Main job done in {(time.time() - t0) / 60:.1f} min.")
    return result


def _controls(args, defaults):
    from vasa_jax.pipeline import EMOTIONS, Controls

    cfg = dict(defaults.cfg)
    for item in args.cfg:
        name, _, value = item.partition("=")
        try:
            cfg[name] = float(value)
        except ValueError:
            raise UserError(f"--cfg {item!r}: expected CONDITION=SCALE, e.g. audio=0.5.") from None
        if name not in ("audio", "gaze", "distance", "emotion"):
            raise UserError(f"--cfg {item!r}: conditions are audio, gaze, distance, emotion.")
    emotion = args.emotion
    if emotion is not None:
        names = {name: i for i, name in enumerate(EMOTIONS)} | {str(i): i for i in
                                                                range(len(EMOTIONS))}
        if emotion not in names:
            raise UserError(f"--emotion {emotion!r}: use one of {', '.join(EMOTIONS)} (or "
                            f"0-{len(EMOTIONS) - 1}).")
        emotion = names[emotion]
    steps = 10 if args.fast else (args.steps or defaults.steps)
    return Controls(gaze=tuple(args.gaze) if args.gaze else None, distance=args.distance,
                    emotion=emotion, cfg=tuple(sorted(cfg.items())), steps=steps,
                    sampler=args.sampler or defaults.sampler, seed=args.seed)


def generate(args) -> str:
    """Photo + speech -> a watermarked, C2PA-signed mp4 with sound (nothing written on error)."""
    from tqdm import tqdm

    from vasa_jax.constants import SAMPLES_PER_FRAME
    from vasa_jax.media.audio import load_speech
    from vasa_jax.media.errors import InputError
    from vasa_jax.pipeline import TalkingFacePipeline
    from vasa_jax.safety import provenance
    from vasa_jax.safety.publish import MIN_OUTPUT_SIZE, write_marked_video

    if not args.out.lower().endswith(".mp4"):
        raise UserError(f"--out {args.out!r}: the output is an mp4 file; end the name in .mp4.")
    identity = None
    try:
        if bool(args.c2pa_cert) != bool(args.c2pa_key):
            raise UserError("--c2pa-cert and --c2pa-key go together (certificate chain PEM and "
                            "its private key PEM).")
        if args.c2pa_cert and not args.no_c2pa:
            identity = provenance.SigningIdentity.from_files(args.c2pa_cert, args.c2pa_key)
        audio = load_speech(args.audio, max_seconds=None if args.stream else args.max_seconds)
        pipe = TalkingFacePipeline.from_checkpoints(args.latent_workdir, args.motion_workdir,
                                                    max_seconds=args.max_seconds)
        controls = _controls(args, pipe.defaults)
        source = pipe.prepare_source(args.image, face_index=args.face_index,
                                     detect=not args.no_detect)
    except (InputError, provenance.ProvenanceError, FileNotFoundError, ValueError) as e:
        raise UserError(str(e)) from None
    frames_total = -(-len(audio) // SAMPLES_PER_FRAME)
    windows = -(-frames_total // pipe.window)
    mode = "streaming" if args.stream else "offline"
    print(f"Generating {frames_total / 25:.1f} s ({frames_total} frames, {windows} windows of "
          f"{pipe.window}) at {pipe.resolution} px, {controls.steps} steps, {mode}")
    with tqdm(total=windows, unit="window") as bar:
        if args.stream:
            chunk = 16000 // 5  # 200 ms pieces, as a live source would deliver
            pieces = (audio[i:i + chunk] for i in range(0, len(audio), chunk))
            frames = []
            for part in pipe.stream(source, pieces, controls):
                frames.append(part)
                bar.update(1)
            frames = np.concatenate(frames)
        else:
            frames = pipe.generate(source, audio, controls,
                                   progress=lambda d, n: bar.update(d - bar.n)).frames
    generation = {"model": "vasa_jax", "latent_workdir": args.latent_workdir,
                  "motion_workdir": args.motion_workdir, "seed": controls.seed,
                  "steps": controls.steps, "sampler": controls.sampler,
                  "cfg": dict(controls.cfg), "gaze": controls.gaze,
                  "distance": controls.distance, "emotion": controls.emotion}
    from vasa_jax.media.video_io import resize_frames

    size = args.size or max(MIN_OUTPUT_SIZE, pipe.resolution)
    try:
        write_marked_video(args.out, resize_frames(frames, size), audio,
                           watermark_on=not args.no_watermark,
                           c2pa_on=not args.no_c2pa, identity=identity, generation=generation)
    except provenance.ProvenanceError as e:
        raise UserError(str(e)) from None
    marks = [m for m, off in (("watermark", args.no_watermark), ("C2PA manifest", args.no_c2pa))
             if not off]
    print(f"Wrote {args.out} ({', '.join(marks) or 'NO safety marks: recorded in its tags'}).")
    return args.out


def verify(args) -> int:
    from vasa_jax.safety.publish import verify_video

    if not os.path.isfile(args.video):
        raise UserError(f"{args.video!r} does not exist.")
    try:
        report = verify_video(args.video)
    except ValueError as e:
        raise UserError(f"Cannot read {args.video!r} as a video: {e}") from None
    print("\n".join(report.lines()))
    return report


def _audio_settings(pairs: list[str]) -> dict | None:
    """``["frontend=wav2vec2", "checkpoint=DIR", "layer=9"]`` -> the audio frontend's settings
    (values read as Python literals where they parse, else kept as strings); None if empty."""
    import ast

    if not pairs:
        return None
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UserError(f"--audio takes FIELD=VALUE (e.g. frontend=wav2vec2); got {pair!r}.")
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value
    return out


def build_latents_cmd(args) -> str:
    from data_pipeline.latents.latents_dataset_builder import build_latents
    from data_pipeline.loader import DatasetNotFoundError

    try:
        name = build_latents(args.source, args.source_config, args.stage1_workdir,
                             data_dir=args.data_dir, source_data_dir=args.source_data_dir,
                             use_beam=args.beam, overwrite=args.overwrite,
                             audio=_audio_settings(args.audio))
    except (FileNotFoundError, DatasetNotFoundError, ValueError, ImportError) as e:
        raise UserError(str(e)) from None
    print(f"Built latents/{name}. Train stage 2 on it with:\n  python launch/train.py "
          f"--config=configs/motion.py:synthtalk_latents --workdir=runs/motion_latents "
          f"--config.data.config={name}" +
          (f" --config.data.data_dir={args.data_dir}" if args.data_dir else ""))
    return name


def convert_wav2vec2(args) -> str:
    """``vasa-jax convert wav2vec2``: a Hugging Face wav2vec2 directory -> our orbax checkpoint
    (written to a temporary directory, then renamed to --out)."""
    from vasa_jax.interop import wav2vec2 as w2v

    out = os.path.abspath(args.out)
    if os.path.exists(out) and not os.path.isdir(out):
        raise UserError(f"--out {args.out} is a file; give a directory.")
    if os.path.isdir(out) and os.listdir(out) and not args.force:
        raise UserError(f"--out {args.out} exists and is not empty; choose another directory "
                        "or pass --force to replace it.")
    t0 = time.time()
    try:
        config, model = w2v.convert_hf(args.hf_dir)
        preprocessor = w2v.read_preprocessor(args.hf_dir)
        w2v.save_converted(config, model, out, preprocessor, overwrite=args.force,
                           source=os.path.abspath(args.hf_dir))
    except (FileNotFoundError, FileExistsError, ValueError) as e:
        raise UserError(str(e)) from None
    from vasa_jax.motion.wav2vec2 import num_params

    print(f"Converted {args.hf_dir}: wav2vec2, {config.layout}; {config.num_hidden_layers} "
          f"layers x {config.hidden_size} ({config.num_attention_heads} heads), "
          f"{num_params(model) / 1e6:.1f}M parameters; preprocessor {preprocessor}.")
    print(f"Wrote {out} in {time.time() - t0:.1f} s (load it with "
          "vasa_jax.interop.wav2vec2.load_converted).")
    return out


def _voxceleb2_config(args):
    from data_pipeline.voxceleb2 import voxceleb2_dataset_builder as vb

    try:
        base = vb.config_from_name(args.config) if args.config else vb.make_config()
        return vb.make_config(
            args.resolution or base.resolution, args.clip_frames or base.clip_frames,
            validation_fraction=(base.validation_fraction if args.validation_fraction is None
                                 else args.validation_fraction),
            quality_scorer=(base.quality_scorer if args.quality_scorer is None
                            else args.quality_scorer),
            quality_threshold=(base.quality_threshold if args.quality_threshold is None
                               else args.quality_threshold),
            face_labels=base.face_labels and not getattr(args, "no_face_labels", False))
    except ValueError as e:
        raise UserError(str(e)) from None


def build_voxceleb2_cmd(args) -> str:
    """``vasa-jax data build voxceleb2``: the VoxCeleb2 download -> ArrayRecord clips, with
    progress and a summary (clips written, skipped files and why, hours of video)."""
    import shlex

    from data_pipeline.loader import default_data_dir
    from data_pipeline.voxceleb2 import report
    from data_pipeline.voxceleb2 import voxceleb2_dataset_builder as vb

    cfg = _voxceleb2_config(args)
    try:
        vb.find_identities(args.manual_dir)  # a missing or empty download: the layout, at once
    except vb.ManualDirError as e:
        raise UserError(str(e)) from None
    data_dir = args.data_dir or default_data_dir()
    beam_flags = None
    if args.beam_runner or args.beam_options:
        beam_flags = ([f"--runner={args.beam_runner}"] if args.beam_runner else []) + \
            shlex.split(args.beam_options or "")
        runner = args.beam_runner or "DirectRunner"
        if runner != "DirectRunner":
            local = [d for d in (args.manual_dir, data_dir) if "://" not in d]
            if local and runner == "DataflowRunner":
                raise UserError(f"Dataflow workers cannot read or write this machine's "
                                f"directories ({', '.join(local)}); put the download and the "
                                f"--data-dir on Cloud Storage (gs://...).")
            if local:
                print(f"Note: {runner} workers must see {', '.join(local)} at the same path "
                      f"(a shared filesystem); otherwise use gs:// or another shared URL.")
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
    try:
        path, summary = vb.build_voxceleb2(args.manual_dir, cfg, data_dir=data_dir,
                                           beam_flags=beam_flags, overwrite=args.overwrite,
                                           progress=progress)
    except (vb.ManualDirError, vb.NoClipsError, ImportError) as e:
        raise UserError(str(e)) from None
    except PermissionError as e:
        raise UserError(f"Cannot write the dataset: {e}. Choose a writable --data-dir.") from None
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

    q = sub.add_parser("quickstart", help="the README's main job: SynthTalk -> stage 1 -> "
                       "latents -> stage 2 -> a held-out person speaking held-out audio")
    q.add_argument("--workdir", default="runs/quickstart")
    q.add_argument("--data-dir", default=None, help="default: WORKDIR/tensorflow_datasets")
    q.add_argument("--synthtalk-config", default="res64_small")
    q.add_argument("--workers", type=int, default=0)
    q.add_argument("--latent-variant", default="quickstart", help="configs/latent.py variant")
    q.add_argument("--motion-variant", default="quickstart_latents",
                   help="configs/motion.py variant (one that trains on latents)")
    q.add_argument("--set-latent", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a stage-1 config field (repeatable)")
    q.add_argument("--set-motion", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a stage-2 config field (repeatable)")
    q.set_defaults(func=quickstart)

    sh = sub.add_parser("ship", help="a trained probe, SyncNet or CAPP run (a measuring "
                        "instrument, or the motion estimator) -> vasa_jax/assets/NAME.{npz,json}")
    sh.add_argument("--workdir", required=True,
                    help="the run, with its held-out file ({probe,syncnet,capp}_heldout.json)")
    sh.add_argument("--name", required=True, help="shipped as package:NAME")
    sh.add_argument("--command", default="", help="how it was trained (recorded)")
    sh.add_argument("--assets", default=None, help="default: the package's vasa_jax/assets")
    sh.set_defaults(func=ship_weights)

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

    ev = sub.add_parser("eval", help="the paper-style table of generated clip sets against real "
                        "clips (--generated/--real), or a stage's own report",
                        description="vasa-jax eval --generated [NAME=]DIR ... --real DIR: the "
                        "table (Markdown + JSON + plots) of each generated set against the real "
                        "clips; or one of the subcommands.")
    ev.add_argument("--generated", action="append", default=[], metavar="[NAME=]DIR",
                    help="a generated clip set (repeatable; NAME labels its row)")
    ev.add_argument("--real", default=None, help="the real clip set (NAME.mp4 + NAME.json)")
    ev.add_argument("--probe", default=None, help="a trained SynthTalk probe workdir or the "
                    "shipped package:probe_synthtalk64 (reads pose, mouth, gaze, emotion; "
                    "without it mediapipe reads pose/mouth)")
    ev.add_argument("--syncnet", default=None, help="a trained SyncNet workdir or the shipped "
                    "package:syncnet_synthtalk64 (sync columns)")
    ev.add_argument("--syncnet-torch", default=None, metavar="syncnet_v2.model",
                    help="the original SyncNet's PyTorch weights (224 px face crops) instead "
                         "of --syncnet; read with torch.load(weights_only=True)")
    ev.add_argument("--capp", default=None, help="a trained CAPP workdir or the shipped "
                    "package:capp_synthtalk64 (audio-pose column)")
    ev.add_argument("--no-fvd", action="store_true", help="skip FVD (I3D is slow on a CPU)")
    ev.add_argument("--fvd-clip-len", type=int, default=16, help="frames per I3D clip")
    ev.add_argument("--fvd-stride", type=int, default=16, help="frames between I3D clips")
    ev.add_argument("--max-clips", type=int, default=0, help="0 = every real clip")
    ev.add_argument("--shuffled-row", action="store_true",
                    help="add the real clips with their audio shuffled across clips (chance)")
    ev.add_argument("--out", default="runs/eval", help="where eval.md/json/png go")
    ev.set_defaults(func=eval_sets)
    evsub = ev.add_subparsers(dest="stage", required=False)
    ex = evsub.add_parser("export-synthtalk", help="write a SynthTalk split as a real clip set")
    ex.add_argument("--out", required=True)
    ex.add_argument("--config", default="res64_small", help="SynthTalk dataset config")
    ex.add_argument("--data-dir", default=None)
    ex.add_argument("--split", default="test")
    ex.add_argument("--max-clips", type=int, default=0, help="0 = the whole split")
    ex.set_defaults(func=eval_export)
    gs = evsub.add_parser("generate-set", help="a generated clip set from a real one: each "
                          "clip's first frame as the photo, its speech as the audio, its "
                          "gaze/distance/emotion as the controls")
    gs.add_argument("--latent-workdir", required=True)
    gs.add_argument("--motion-workdir", required=True)
    gs.add_argument("--real", required=True)
    gs.add_argument("--out", required=True)
    gs.add_argument("--cfg", action="append", default=[], metavar="CONDITION=SCALE")
    gs.add_argument("--steps", type=int, default=50)
    gs.add_argument("--seed", type=int, default=0)
    gs.add_argument("--max-clips", type=int, default=0)
    gs.set_defaults(func=eval_generate_set)
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
    el.add_argument("--probe-workdir", default="package:probe_synthtalk64",
                    help="the SynthTalk probe that measures motion transfer: the shipped one "
                         "(default), a run of `vasa-jax train probe`, or 'none'")
    el.add_argument("--data-dir", default=None)
    el.add_argument("--split", default="test")
    el.add_argument("--max-clips", type=int, default=0, help="0 = the whole split")
    el.add_argument("--frame-stride", type=int, default=1, help="evaluate every n-th frame")
    el.add_argument("--out", default=None, help="default WORKDIR/eval")
    el.set_defaults(func=eval_latent)
    ld = evsub.add_parser("ladder", help="stage 1: one table over the diagnostic ladder's "
                          "reports (oracle / guided / unguided rungs)")
    ld.add_argument("--rung", action="append", required=True, metavar="NAME=DIR",
                    help="a rung's name and its `eval latent` output dir (repeatable, in order)")
    ld.add_argument("--out", required=True, help="where ladder.json and ladder.md go")
    ld.set_defaults(func=eval_ladder)

    g = sub.add_parser("generate", help="a talking-face mp4 (with sound) from a portrait photo "
                       "and a speech file; watermarked and C2PA-signed by default")
    g.add_argument("--image", required=True, help="portrait photo (JPEG, PNG, ...)")
    g.add_argument("--audio", required=True, help="speech (wav, mp3, m4a, flac; any rate)")
    g.add_argument("--out", required=True, help="output .mp4")
    g.add_argument("--latent-workdir", required=True, help="trained stage 1 (local or gs://)")
    g.add_argument("--motion-workdir", required=True,
                   help="stage 2 trained on that stage 1's latents (local or gs://)")
    g.add_argument("--gaze", type=float, nargs=2, metavar=("THETA", "PHI"),
                   help="main gaze direction in radians (default: the model's choice)")
    g.add_argument("--distance", type=float, help="head-to-camera distance (normalised)")
    g.add_argument("--emotion", help="neutral, happy, sad, surprised (or 0-3)")
    g.add_argument("--cfg", action="append", default=[], metavar="CONDITION=SCALE",
                   help="guidance scale, e.g. --cfg audio=0.5 --cfg gaze=1 (repeatable)")
    g.add_argument("--steps", type=int, default=None, help="denoising steps (default 50)")
    g.add_argument("--fast", action="store_true", help="10 denoising steps")
    g.add_argument("--sampler", choices=("ddim", "ddpm"), default=None)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--face-index", type=int, default=None,
                   help="which face when the photo has several (0 = leftmost)")
    g.add_argument("--no-detect", action="store_true",
                   help="the photo is already a training-framed face crop")
    g.add_argument("--stream", action="store_true",
                   help="generate window by window as audio arrives (no length limit)")
    g.add_argument("--max-seconds", type=float, default=300.0, help="offline length limit")
    g.add_argument("--size", type=int, default=None,
                   help="output side in px (default: the model's, at least 256, where the "
                        "watermark survives re-encoding and resizing)")
    g.add_argument("--no-watermark", action="store_true",
                   help="do not watermark the frames (recorded in the file's tags)")
    g.add_argument("--no-c2pa", action="store_true",
                   help="do not sign a C2PA manifest (recorded in the file's tags)")
    g.add_argument("--c2pa-cert", help="your signing certificate chain (PEM; default: a local "
                   "development certificate)")
    g.add_argument("--c2pa-key", help="the private key of --c2pa-cert (PEM)")
    g.set_defaults(func=generate)

    v = sub.add_parser("verify", help="report a video's watermark, C2PA manifest and safety "
                       "tags")
    v.add_argument("video")
    v.set_defaults(func=verify)

    cv = sub.add_parser("convert", help="convert pretrained weights from other frameworks")
    cvsub = cv.add_subparsers(dest="model", required=True)
    cw = cvsub.add_parser("wav2vec2", help="a Hugging Face wav2vec2 directory (config.json + "
                          "model.safetensors or pytorch_model.bin) -> an orbax checkpoint")
    cw.add_argument("--hf-dir", required=True, help="the downloaded Hugging Face model folder")
    cw.add_argument("--out", required=True, help="output directory (must be empty or new)")
    cw.add_argument("--force", action="store_true", help="replace a non-empty --out")
    cw.set_defaults(func=convert_wav2vec2)

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
    lt.add_argument("--audio", action="append", default=[], metavar="FIELD=VALUE",
                    help="audio frontend settings (default: configs/motion.py's log-mel), e.g. "
                         "--audio frontend=wav2vec2 --audio checkpoint=DIR --audio mix_layers=True")
    lt.set_defaults(func=build_latents_cmd)

    vx = bsub.add_parser("voxceleb2", help="VoxCeleb2 from its manual download (plain, or "
                                           "Apache Beam: DirectRunner, Dataflow, Flink, Spark)")
    vx.add_argument("--manual-dir", required=True,
                    help="the unzipped download: dev/mp4/idXXXXX/<video_id>/NNNNN.mp4, "
                         "test/mp4/..., optional dev/aac/... (local path or gs://)")
    vx.add_argument("--config", default=None,
                    help="res256 (default) or res512, or a name printed by an earlier build")
    vx.add_argument("--resolution", type=int, help="frame side in px (overrides --config)")
    vx.add_argument("--clip-frames", type=int, help="frames per clip at 25 fps (default 75)")
    vx.add_argument("--validation-fraction", type=float,
                    help="share of dev identities held out for validation (default 0.02)")
    vx.add_argument("--quality-scorer", default=None,
                    help="a registered blind quality score (laplacian_sharpness); clips below "
                         "--quality-threshold are skipped")
    vx.add_argument("--quality-threshold", type=float, default=None)
    vx.add_argument("--no-face-labels", action="store_true",
                    help="skip the per-frame face-mesh motion labels (stage-1 guidance on "
                         "real video; about 5 ms of mediapipe per 256-px frame on one core): "
                         "config name *_nolabels")
    vx.add_argument("--data-dir", default=None, help="TFDS data dir (default $VASA_JAX_DATA_DIR "
                    "or ~/tensorflow_datasets; gs:// for Dataflow)")
    vx.add_argument("--beam-runner", default=None,
                    help="build with Apache Beam on this runner: DirectRunner, DataflowRunner, "
                         "FlinkRunner, SparkRunner, ... (default: no Beam)")
    vx.add_argument("--beam-options", default=None,
                    help="more Beam pipeline flags in one string, e.g. '--project=P "
                         "--region=R --temp_location=gs://B/tmp' (implies Beam)")
    vx.add_argument("--progress-every", type=float, default=5.0,
                    help="seconds between progress lines (plain builds)")
    vx.add_argument("--overwrite", action="store_true", help="rebuild even if prepared")
    vx.set_defaults(func=build_voxceleb2_cmd)

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
