"""The main job (``quickstart``) and its end (``run_demo``): a held-out SynthTalk person
speaking held-out audio.

One test-split identity's first clip gives the photo (its frame 0, already in the training
framing); another of its clips gives the speech and the ground truth. The trained pipeline turns
photo + speech into ``generated.mp4``; ``side_by_side.mp4`` shows the ground-truth clip (left)
next to the generated one (right), with the speech. Both are upscaled to at least 256 px, where
the watermark survives re-encoding and resizing, and both carry it and a C2PA manifest.
"""

from __future__ import annotations

import os
import time
from typing import Sequence

import numpy as np

from data_pipeline.loader import decode_frame, open_source
from vasa_jax.media.audio import to_float32
from vasa_jax.media.video_io import resize_frames
from vasa_jax.pipeline import Controls, TalkingFacePipeline
from vasa_jax.safety.publish import MIN_OUTPUT_SIZE, write_marked_video


def held_out_pair(dataset_config: str, data_dir: str | None, split: str = "test"
                  ) -> tuple[dict, dict]:
    """Two clips of the same identity of ``split``: (photo clip, speech clip)."""
    source, _ = open_source("synthtalk", dataset_config, split, data_dir)
    first: dict[int, int] = {}
    for i in range(len(source)):
        ident = int(source[i]["identity"])
        if ident in first:
            return source[first[ident]], source[i]
        first[ident] = i
    raise ValueError(f"No identity has two clips in the {split} split of {dataset_config}.")


def run_demo(latent_workdir: str, motion_workdir: str, dataset_config: str,
             data_dir: str | None, out_dir: str, *, controls: Controls | None = None) -> dict:
    """Write ``generated.mp4`` and ``side_by_side.mp4`` into ``out_dir``; returns their paths
    and what was generated."""
    photo_clip, speech_clip = held_out_pair(dataset_config, data_dir)
    photo = decode_frame(photo_clip["frames"][0])
    truth = np.stack([decode_frame(b) for b in speech_clip["frames"]])
    audio = to_float32(speech_clip["audio"])
    pipe = TalkingFacePipeline.from_checkpoints(latent_workdir, motion_workdir)
    c = controls or pipe.defaults
    source = pipe.prepare_source(photo, detect=False)  # a dataset frame: already framed
    out = pipe.generate(source, audio, c)
    os.makedirs(out_dir, exist_ok=True)
    facts = {"model": "vasa_jax", "seed": c.seed, "steps": c.steps,
             "identity": int(speech_clip["identity"]), "demo": "held-out SynthTalk identity"}
    size = max(MIN_OUTPUT_SIZE, pipe.resolution)
    generated = write_marked_video(os.path.join(out_dir, "generated.mp4"),
                                   resize_frames(out.frames, size), audio, generation=facts)
    n = min(len(truth), len(out.frames))
    both = np.concatenate([resize_frames(truth[:n], size), resize_frames(out.frames[:n], size)],
                          axis=2)
    side = write_marked_video(os.path.join(out_dir, "side_by_side.mp4"), both,
                              audio[: n * 640], generation=dict(facts, layout="truth | ours"))
    return {"generated": generated, "side_by_side": side, "frames": len(out.frames),
            "identity": int(speech_clip["identity"]), "resolution": pipe.resolution}


def quickstart(workdir: str, *, data_dir: str | None = None,
               synthtalk_config: str = "res64_small", workers: int = 0,
               latent_variant: str = "quickstart", motion_variant: str = "quickstart_latents",
               set_latent: Sequence[str] = (), set_motion: Sequence[str] = ()) -> dict:
    """The main job on the embedded dataset, printing each step: build SynthTalk and show its
    test split, train stage 1, turn SynthTalk into its motion latents, train stage 2 on them,
    and make a held-out person speak held-out audio (``run_demo``). ``set_latent`` and
    ``set_motion`` are ``FIELD=VALUE`` overrides of the two stages' configs; everything goes
    under ``workdir`` (the data under ``workdir/tensorflow_datasets`` unless ``data_dir``).
    Returns ``run_demo``'s result."""
    from data_pipeline.latents.latents_dataset_builder import build_latents
    from data_pipeline.show import show
    from data_pipeline.synthtalk.prepare import prepare_synthtalk
    from vasa_jax.safety.publish import verify_video
    from vasa_jax.train.run import fit_stage, load_config

    t0 = time.time()
    data_dir = data_dir or os.path.join(workdir, "tensorflow_datasets")
    name = prepare_synthtalk(synthtalk_config, data_dir=data_dir, workers=workers)
    png, mp4 = show("synthtalk", name, "test", data_dir, os.path.join(workdir, "show"),
                    num_clips=6, seed=0)
    print(f"Contact sheet: {png}\nClips with sound: {mp4}")
    latent_dir = os.path.join(workdir, "latent")
    fit_stage("latent", latent_dir, variant=latent_variant, data_dir=data_dir,
              overrides=[f"data.config={name}", *set_latent])
    motion_config = load_config("motion", motion_variant, data_dir=data_dir,
                                overrides=set_motion)
    print(f"Encoding SynthTalk {name} into stage-1 latents")
    latents = build_latents("synthtalk", name, latent_dir, data_dir=data_dir,
                            source_data_dir=data_dir, audio=dict(motion_config.audio))
    motion_dir = os.path.join(workdir, "motion")
    fit_stage("motion", motion_dir, variant=motion_variant, data_dir=data_dir,
              overrides=[f"data.config={latents}", *set_motion])
    print("Generating a held-out identity speaking held-out audio")
    result = run_demo(latent_dir, motion_dir, name, data_dir, os.path.join(workdir, "demo"))
    print(f"Generated ({result['frames']} frames at {result['resolution']} px, identity "
          f"{result['identity']}): {result['generated']}\n"
          f"Ground truth | generated: {result['side_by_side']}")
    print("\n".join(verify_video(result["generated"]).lines()))
    print(f"Main job done in {(time.time() - t0) / 60:.1f} min.")
    return result
