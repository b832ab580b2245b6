"""Frames and a mouth check of the main job's side_by_side.mp4 (truth | generated).

Writes side_by_side_frames.png (frames 0, 20, 40, 60) and demo_jaw.json: the shipped SynthTalk
probe's jaw_open and yaw readings on both halves (resized to 64 px), their Pearson r over the
clip, and the spread of each. One held-out clip: a quick look, not the quality table
(benchmarks/quality.py).

  python docs/results/quickstart/frames_and_jaw.py runs/quickstart/demo/side_by_side.mp4
"""

import json
import os
import sys

import numpy as np
import PIL.Image

from vasa_jax.instruments.load import load_probe
from vasa_jax.instruments.probe import SHIPPED_PROBE, pearson_or_nan
from vasa_jax.media.video_io import read_mp4

HERE = os.path.dirname(os.path.abspath(__file__))


def main(path: str) -> dict:
    frames = read_mp4(path)[0]  # (T, H, 2W, 3)
    w = frames.shape[2] // 2
    truth, ours = frames[:, :, :w], frames[:, :, w:]
    picks = [i for i in (0, 20, 40, 60) if i < len(frames)]
    PIL.Image.fromarray(np.concatenate([frames[i] for i in picks], axis=0)).save(
        os.path.join(HERE, "side_by_side_frames.png"))
    small = lambda x: np.stack([np.asarray(PIL.Image.fromarray(f).resize((64, 64),  # noqa: E731
                                                                          PIL.Image.BILINEAR))
                                for f in x])
    probe = load_probe(SHIPPED_PROBE)
    fields = list(probe.motion_fields)
    pt, po = probe.predict(small(truth))["motion"], probe.predict(small(ours))["motion"]
    out = {"video": path, "frames": int(len(frames))}
    for f in ("jaw_open", "yaw"):
        i = fields.index(f)
        out[f] = {"r_generated_vs_truth": pearson_or_nan(po[:, i], pt[:, i]),
                  "std_truth": float(pt[:, i].std()), "std_generated": float(po[:, i].std())}
    out["probe_heldout_r"] = {f: probe.heldout[f"r/{f}"] for f in ("jaw_open", "yaw")}
    with open(os.path.join(HERE, "demo_jaw.json"), "w") as f:
        json.dump(out, f, indent=1)
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main(sys.argv[1])
