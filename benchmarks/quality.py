"""The SynthTalk quality table for the current checkpoints, with VASA-1's Table 5 ablations.

Held-out SynthTalk identities (the test split): each real clip's first frame is the photo, its
speech the audio, its gaze/distance/emotion the controls. Rows: Real video; the real clips with
their audio shuffled across clips (the chance level of the sync and audio-pose columns); our
model at the default audio guidance λA = 0.5 with 50 steps; λA = 0, 1, 2 (50 steps); and
λA = 0.5 with 10 steps. The instruments (SynthTalk probe, SyncNet, CAPP) are the ones shipped
in vasa_jax/assets, each with its checksum and held-out accuracy, so every table measures with
the same rulers; ``--instruments DIR`` measures with trained runs instead (trained there first
when missing: `vasa-jax train syncnet|capp|probe --variant synthtalk64`, 5-15 min each).

  python benchmarks/quality.py --workdir runs/quickstart      # after `vasa-jax quickstart`

writes ``benchmarks/results/quality.{md,json}`` and ``quality_{mouth_tracks,bars}.png``; the
clip sets stay in ``--sets`` (default runs/quality) for ``vasa-jax eval --generated ... --real``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

# (row label, audio guidance, steps); gaze guidance stays at its default 1.0
ABLATIONS = (("ours, λA=0.5, 50 steps (default)", 0.5, 50), ("ours, λA=0, 50 steps", 0.0, 50),
             ("ours, λA=1, 50 steps", 1.0, 50), ("ours, λA=2, 50 steps", 2.0, 50),
             ("ours, λA=0.5, 10 steps", 0.5, 10))
INSTRUMENTS = ("probe", "syncnet", "capp")


def instrument(kind: str, instruments: str | None, data_dir: str | None, dataset: str) -> str:
    """Where ``kind`` is loaded from: the weights shipped in the package (fixed rulers, with
    the held-out accuracy they were shipped with) for res64_small unless ``instruments`` is
    given; else ``instruments/kind``, trained there (its synthtalk64 variant) if missing."""
    from vasa_jax.instruments.capp import SHIPPED_CAPP
    from vasa_jax.instruments.syncnet import SHIPPED_SYNCNET
    from vasa_jax.instruments.probe import SHIPPED_PROBE

    if instruments is None and dataset == "res64_small":
        return {"probe": SHIPPED_PROBE, "syncnet": SHIPPED_SYNCNET, "capp": SHIPPED_CAPP}[kind]
    workdir = os.path.join(instruments or "runs/instruments", kind)
    if os.path.exists(os.path.join(workdir, f"{kind}_heldout.json")):
        return workdir
    from vasa_jax.train.run import fit_stage

    print(f"Training the {kind} instrument into {workdir} (it is not there yet)", flush=True)
    fit_stage(kind, workdir, variant="synthtalk64", data_dir=data_dir,
              overrides=[f"data.config={dataset}"])
    return workdir


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", default="runs/quickstart",
                    help="holds latent/ and motion/ (the quickstart's layout)")
    ap.add_argument("--latent-workdir", default=None, help="default WORKDIR/latent")
    ap.add_argument("--motion-workdir", default=None, help="default WORKDIR/motion")
    ap.add_argument("--data-dir", default=None,
                    help="TFDS dir with SynthTalk (default WORKDIR/tensorflow_datasets if it "
                         "exists, else $VASA_JAX_DATA_DIR)")
    ap.add_argument("--dataset", default="res64_small", help="SynthTalk config")
    ap.add_argument("--instruments", default=None,
                    help="workdirs probe/, syncnet/, capp/ to measure with instead of the "
                         "shipped instruments (trained there if missing; the default for "
                         "datasets other than res64_small: runs/instruments)")
    ap.add_argument("--sets", default="runs/quality", help="where the clip sets are written")
    ap.add_argument("--max-clips", type=int, default=40, help="held-out clips per row")
    ap.add_argument("--no-fvd", action="store_true")
    ap.add_argument("--fvd-stride", type=int, default=32,
                    help="frames between the 16-frame I3D clips (32: two per 3-s clip; I3D "
                         "takes ~1.7 CPU-s per clip)")
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    args = ap.parse_args(argv)

    from vasa_jax.eval import table
    from vasa_jax.eval.clip_set import export_synthtalk, generate_set, read_clip_set
    from vasa_jax.pipeline import TalkingFacePipeline

    t0 = time.time()
    latent_wd = args.latent_workdir or os.path.join(args.workdir, "latent")
    motion_wd = args.motion_workdir or os.path.join(args.workdir, "motion")
    data_dir = args.data_dir
    if data_dir is None and os.path.isdir(os.path.join(args.workdir, "tensorflow_datasets")):
        data_dir = os.path.join(args.workdir, "tensorflow_datasets")
    dirs = {k: instrument(k, args.instruments, data_dir, args.dataset) for k in INSTRUMENTS}

    real_dir = os.path.join(args.sets, "real")
    print(f"Exporting {args.max_clips} held-out clips to {real_dir}", flush=True)
    export_synthtalk(real_dir, dataset_config=args.dataset, data_dir=data_dir, split="test",
                     max_clips=args.max_clips)
    real = read_clip_set(real_dir, max_clips=args.max_clips)

    pipe = TalkingFacePipeline.from_checkpoints(latent_wd, motion_wd)
    gaze = dict(pipe.defaults.cfg).get("gaze", 1.0)
    sets, timing = {"Real video, audio shuffled (chance)": table.shuffled_audio(real)}, {}
    for label, lam, steps in ABLATIONS:
        out = os.path.join(args.sets, f"gen_a{lam:g}_s{steps}")
        print(f"Generating {label} into {out}", flush=True)
        t = time.time()
        generate_set(pipe, real, out, cfg={"audio": lam, "gaze": gaze}, steps=steps,
                     info={"latent": latent_wd, "motion": motion_wd})
        timing[label] = round(time.time() - t, 1)
        sets[label] = read_clip_set(out, names=[c.name for c in real])

    inst = table.Instruments.load(probe=dirs["probe"], syncnet=dirs["syncnet"],
                                  capp=dirs["capp"], fvd=not args.no_fvd,
                                  fvd_stride=args.fvd_stride)
    results = table.evaluate_sets(real, sets, inst, progress=lambda m: print(m, flush=True))
    meta = {"title": "SynthTalk quality table (held-out identities)",
            "command": "python benchmarks/quality.py " + " ".join(argv or sys.argv[1:]),
            "latent": latent_wd, "motion": motion_wd, "dataset": f"synthtalk/{args.dataset}/test",
            "clips per row": len(real), "gaze guidance": gaze,
            "fvd": "off" if args.no_fvd else (f"I3D Kinetics-400 logits, 16-frame clips every "
                                              f"{args.fvd_stride} frames"),
            "generation seconds per row": timing,
            "minutes": round((time.time() - t0) / 60, 1)}
    paths = table.write_report(results, args.out, meta=meta, accuracies=inst.accuracies(),
                               stem="quality", real=real)
    print(table.markdown_table({k: v.row for k, v in results.items()}))
    for p in paths.values():
        print(f"wrote {p}")
    return {k: v.row for k, v in results.items()}


if __name__ == "__main__":
    main()
