"""Where the generated video loses SyncNet's lip-sync confidence (LSE-C), one part at a time.

SyncNet (the shipped one, package:syncnet_synthtalk64) reads LSE-C on held-out SynthTalk
clips, whole clips at 25 fps, each with the speech it is scored against:

- real: the rendered clip and its own speech; chance: the same frames with the next clip's;
- real render, mouth at a x amplitude: the clip re-rendered by SynthTalk's renderer with
  jaw_open, lip_width and lip_round pulled towards their clip mean by the factor a (an oracle
  for "the right motion, too small": does SyncNet's confidence follow the amplitude?);
- stage 1 self: the stage-1 model's reenactment of the clip from its first frame;
- stage 1 cross: another identity's first frame driven by this clip (scored with this speech);
- stage 2 (generated set): the clips `benchmarks/quality.py` generated (``--gen`` folder).

Each row also gives the probe's jaw_open on the frames against the truth: r and the std ratio
(amplitude). Writes NAME.json here.

  python docs/results/sync_diagnostic/sync_diagnostic.py NAME LATENT_WORKDIR [--gen DIR] [--clips N]
"""
import argparse, json, os

import jax.numpy as jnp
import numpy as np

from data_pipeline.loader import open_source
from data_pipeline.synthtalk import render
from data_pipeline.synthtalk.identity import sample_identity
from data_pipeline.synthtalk.motion import FIELD
from vasa_jax.eval.latent_eval import reenact_frames
from data_pipeline.views import read_clips
from vasa_jax.instruments.load import load_probe, load_syncnet
from vasa_jax.instruments.probe import SHIPPED_PROBE, pearson_or_nan
from vasa_jax.instruments.syncnet import sync_scores
from vasa_jax.media.audio import to_float32
from vasa_jax.models import restore_model

HERE = os.path.dirname(os.path.abspath(__file__))
ap = argparse.ArgumentParser()
ap.add_argument("name"); ap.add_argument("latent")
ap.add_argument("--gen", default=None); ap.add_argument("--clips", type=int, default=24)
ap.add_argument("--syncnet", default="package:syncnet_synthtalk64")
args = ap.parse_args()

run = restore_model(args.latent); step, cfg, model = run.step, run.config, run.model
net = load_syncnet(args.syncnet)
probe = load_probe(SHIPPED_PROBE); J = list(probe.motion_fields).index("jaw_open")
d = cfg.data
source, info = open_source(d.dataset, d.config, "test", d.data_dir or None)
seed = int(info.metadata["seed"])
clips = read_clips(cfg, "test", args.clips, frames=True)
n = len(clips)
audio = [to_float32(source[i]["audio"]) for i in range(n)]

rows = {}
def score(name, frames, speech, truth_jaw):
    s = sync_scores(net, frames, speech)
    jaw = probe.predict(frames)["motion"][:, J]
    r = rows.setdefault(name, {"lse_c": [], "lse_d": [], "offset": [], "jaw": [], "gt": []})
    r["lse_c"].append(s["lse_c"]); r["lse_d"].append(s["lse_d"]); r["offset"].append(s["offset"])
    r["jaw"].append(jaw); r["gt"].append(truth_jaw)

MOUTH = [FIELD[f] for f in ("jaw_open", "lip_width", "lip_round")]
for k, c in enumerate(clips):
    gt = c["motion"][:, FIELD["jaw_open"]]
    score("real", c["frames"], audio[k], gt)
    score("chance (next clip's speech)", c["frames"], audio[(k + 1) % n],
          clips[(k + 1) % n]["motion"][:, FIELD["jaw_open"]])
    params = sample_identity(seed, c["identity"]).render_params()
    style = jnp.asarray(render.EMOTION_STYLE[c["emotion"]])
    for a in (1.0, 0.5, 0.3):
        m = c["motion"].copy()
        m[:, MOUTH] = m[:, MOUTH].mean(0) + a * (m[:, MOUTH] - m[:, MOUTH].mean(0))
        fr = np.asarray(render.render_clip(jnp.asarray(m), params, style, c["frames"].shape[1]))
        score(f"real render, mouth at {a:g}x amplitude", fr, audio[k], gt)
    self_ = reenact_frames(model, c["frames"][0], c["frames"], source_motion=c["motion"][0],
                           driver_motion=c["motion"])
    score("stage 1 self-reenactment", self_, audio[k], gt)
    other = next(clips[(k + j) % n] for j in range(1, n) if clips[(k + j) % n]["identity"] != c["identity"])
    cross = reenact_frames(model, other["frames"][0], c["frames"], source_motion=other["motion"][0],
                           driver_motion=c["motion"])
    score("stage 1 cross-reenactment", cross, audio[k], gt)
    print(k + 1, "/", n, flush=True)

if args.gen:
    from vasa_jax.eval.clip_set import read_clip_set
    for clip in read_clip_set(args.gen)[:n]:
        truth = np.asarray(source[int(clip.name.rsplit("_c", 1)[1])]["motion"], np.float32)
        score("stage 2 + stage 1 (generated set)", clip.frames, clip.audio,
              truth[:len(clip.frames), FIELD["jaw_open"]])

out = {"latent": args.latent, "step": step, "gen": args.gen, "clips": n,
       "syncnet_heldout": dict(net.heldout), "rows": {}}
for name, r in rows.items():
    jaw, gt = np.concatenate(r["jaw"]), np.concatenate(r["gt"])
    amp = np.mean([j.std() / max(g.std(), 1e-6) for j, g in zip(r["jaw"], r["gt"])])
    out["rows"][name] = {"lse_c": float(np.mean(r["lse_c"])), "lse_d": float(np.mean(r["lse_d"])),
                         "offset_abs_le1": float(np.mean(np.abs(r["offset"]) <= 1)),
                         "probe_jaw_r": pearson_or_nan(jaw, gt), "probe_jaw_std_ratio": float(amp)}
    print(f"{name:45s} " + " ".join(f"{k} {v:.3f}" for k, v in out["rows"][name].items()))
with open(os.path.join(HERE, args.name + ".json"), "w") as fh:
    json.dump(out, fh, indent=1)
