"""``vasa-jax eval``: the paper-style table of generated clip sets against real clips, the clip
sets it reads (``export-synthtalk``, ``generate-set``), and each stage's own report (``motion``,
``latent``, ``ladder``)."""

from __future__ import annotations

import os

from vasa_jax.cli.common import UserError, user_errors


def _clip_set_errors():
    from vasa_jax.media.errors import InputError

    return (InputError, FileNotFoundError)


def eval_sets(args) -> dict[str, str]:
    """``eval --generated [NAME=]DIR ... --real DIR``: the paper-style table."""
    from vasa_jax.eval import table
    from vasa_jax.eval.clip_set import read_clip_set

    if not args.real or not args.generated:
        raise UserError("Give --real DIR and at least one --generated [NAME=]DIR (or a "
                        "subcommand: export-synthtalk, generate-set, motion, latent).")
    with user_errors(*_clip_set_errors(), ValueError):
        real = read_clip_set(args.real, max_clips=args.max_clips or None)
        sets = {}
        for item in args.generated:
            label, sep, path = item.partition("=")
            if not sep:
                label, path = os.path.basename(os.path.normpath(item)), item
            sets[label] = read_clip_set(path, names=[c.name for c in real])
        inst = table.Instruments.load(probe=args.probe, syncnet=args.syncnet,
                                      syncnet_torch=args.syncnet_torch, capp=args.capp,
                                      fvd=not args.no_fvd, fvd_clip_len=args.fvd_clip_len,
                                      fvd_stride=args.fvd_stride)
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


def eval_export(args) -> list[str]:
    """``eval export-synthtalk``: a SynthTalk split as a real clip set (mp4 + truth json)."""
    from data_pipeline.loader import DatasetNotFoundError
    from vasa_jax.eval.clip_set import export_synthtalk

    with user_errors(DatasetNotFoundError):
        names = export_synthtalk(args.out, dataset_config=args.config, data_dir=args.data_dir,
                                 split=args.split, max_clips=args.max_clips or None)
    print(f"Wrote {len(names)} real clips (mp4 + ground-truth json) to {args.out}")
    return names


def eval_generate_set(args) -> list[str]:
    """``eval generate-set``: a generated clip set from a real one. The options, the output
    folder, the two runs and the real clips are checked before the models are loaded; clips
    already in --out are replaced only with --overwrite."""
    from vasa_jax.cli.generate import parse_controls
    from vasa_jax.eval.clip_set import generate_set, list_clips, read_clip_set
    from vasa_jax.media import checks
    from vasa_jax.media.audio import check_offline_length
    from vasa_jax.pipeline import Controls, TalkingFacePipeline

    with user_errors(*_clip_set_errors()):
        checks.check_positive(args.steps, "--steps")
        if args.max_clips < 0:
            raise UserError(f"--max-clips {args.max_clips}: give 0 (every clip) or more.")
        parse_controls(Controls(), cfg=args.cfg)  # the syntax (the model's defaults later)
        checks.check_output_dir(args.out)
        checks.check_runs(args.latent_workdir, args.motion_workdir)
        names = [os.path.splitext(os.path.basename(p))[0]
                 for p in list_clips(args.real)[:args.max_clips or None]]
        if not args.overwrite:
            checks.refuse_existing(os.path.join(args.out, f"{n}{ext}") for n in names
                                   for ext in (".mp4", ".json"))
        real = read_clip_set(args.real, max_clips=args.max_clips or None)
        for clip in real:
            check_offline_length(len(clip.audio), checks.MAX_SECONDS,
                                 f"Real clip {clip.name!r}")
        pipe = TalkingFacePipeline.from_checkpoints(args.latent_workdir, args.motion_workdir,
                                                    max_seconds=checks.MAX_SECONDS)
    cfg = dict(parse_controls(pipe.defaults, cfg=args.cfg, steps=args.steps, seed=args.seed).cfg)
    info = {"latent": args.latent_workdir, "motion": args.motion_workdir}
    paths = generate_set(pipe, real, args.out, cfg=cfg, steps=args.steps, seed=args.seed,
                         info=info, progress=lambda k, n: print(f"  {k}/{n}", flush=True))
    print(f"Wrote {len(paths)} generated clips to {args.out}")
    return paths


def eval_motion(args) -> tuple[str, str]:
    """``eval motion``: stage 2's lip-sync / head-motion / gaze table, one row per λA."""
    from vasa_jax.eval.motion_eval import evaluate_workdir, markdown_table

    with user_errors(FileNotFoundError, ValueError):
        md, js, rows = evaluate_workdir(
            args.workdir, split=args.split, max_clips=args.max_clips,
            cfg_audio=[float(x) for x in args.cfg_audio.split(",")], steps=args.steps,
            seed=args.seed, data_dir=args.data_dir, out=args.out,
            progress=lambda m: print(m, flush=True))
    print(markdown_table(rows))
    print(f"\nWrote {md} and {js}")
    return md, js


def eval_latent(args) -> tuple[str, str]:
    """``eval latent``: stage 1's self/cross-reenactment report on held-out people."""
    from vasa_jax.eval.latent_eval import evaluate_latent, write_report
    from vasa_jax.instruments.load import load_probe
    from vasa_jax.models import restore_model

    with user_errors(FileNotFoundError, ValueError):
        run = restore_model(args.workdir, task="latent", what="stage-1 (latent) run")
        probe = None
        if args.probe_workdir and args.probe_workdir != "none":
            probe = load_probe(args.probe_workdir)
    model, step, config = run.model, run.step, run.config
    if args.data_dir:
        config.data.data_dir = args.data_dir
    print(f"Stage-1 evaluation on {args.split} (checkpoint step {step}) ...")
    with user_errors(ValueError):
        result = evaluate_latent(
            model, config, split=args.split, max_clips=args.max_clips,
            probe=probe, frame_stride=args.frame_stride,
            progress=lambda k, n: print(f"\r  clip {k}/{n}", end="", flush=True))
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
    """``eval ladder``: one table over stage 1's diagnostic ladder of ``eval latent`` reports."""
    from vasa_jax.eval.latent_ladder import ladder_rows, markdown, read_report, write_ladder

    reports = {}
    for item in args.rung:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise UserError(f"--rung takes NAME=DIR (a run's eval dir or latent_eval.json), "
                            f"got {item!r}.")
        with user_errors(FileNotFoundError):
            reports[name] = read_report(path)
    js, md = write_ladder(reports, args.out)
    print(markdown(ladder_rows(reports)))
    print(f"Wrote {js} and {md}")
    return js, md


def _table_parser(ev) -> None:
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


def add_parser(sub) -> None:
    """``eval`` and its subcommands."""
    ev = sub.add_parser("eval", help="the paper-style table of generated clip sets against real "
                        "clips (--generated/--real), or a stage's own report",
                        description="vasa-jax eval --generated [NAME=]DIR ... --real DIR: the "
                        "table (Markdown + JSON + plots) of each generated set against the real "
                        "clips; or one of the subcommands.")
    _table_parser(ev)
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
    gs.add_argument("--out", required=True, help="the folder of the generated clips")
    gs.add_argument("--overwrite", action="store_true",
                    help="replace clips already in --out (otherwise they are refused)")
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
