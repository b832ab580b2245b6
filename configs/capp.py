"""CAPP configs (``vasa_jax.train.capp_task``; the model is ``vasa_jax.instruments.capp``): contrastive
audio-pose pretraining, VASA-1's audio-pose alignment instrument. Variants: ``test`` (tiny, CPU
tests, 12-frame windows of res64_tiny's 25-frame clips), ``synthtalk64`` (3-s windows of
res64_small's 75-frame clips; the real instrument: 600 steps of 64 windows, 6 min 10 s of training
on a shared 2-core CPU, ~8 min with start-up; held-out test identities, 100 windows: matched
score 0.212 +- 0.163, shuffled audio 0.025 (mean off-diagonal 0.004), retrieval top-1 0.30 /
top-5 0.59 within batches of 32, chance 0.031).

Launch (training ends by writing the held-out figures that ``load_capp`` requires):
  python launch/train.py --config=configs/capp.py:synthtalk64 --workdir=runs/capp
"""

from __future__ import annotations

import ml_collections

from configs import common


def get_config(arg: str = "synthtalk64") -> ml_collections.ConfigDict:
    return common.from_variant("capp", arg, base, VARIANTS)


def base() -> ml_collections.ConfigDict:
    c = common.runtime("capp")

    c.data = common.data(batch_size=64)  # one window of a random clip each (InfoNCE batch)
    c.data.flip = True  # mirror the pose (yaw, roll change sign; the audio is unchanged)
    c.data.cache_clips = 1000  # prepared clips (motion + audio features, no pixels) per process

    # The audio frontend (``vasa_jax.motion.audio``), as the motion stage reads it.
    c.audio = ml_collections.ConfigDict()
    c.audio.frontend = "mel"
    c.audio.n_mels = 40
    c.audio.hops_per_frame = 4

    c.model = ml_collections.ConfigDict()
    c.model.window = 75  # frames per window: 3 s at 25 fps (VASA-1)
    c.model.audio_dim = c.audio.get_ref("n_mels") * c.audio.get_ref("hops_per_frame")
    c.model.width = 64  # pose encoder: a 6-layer transformer (VASA-1)
    c.model.depth = 6
    c.model.heads = 4
    c.model.audio_width = 64
    c.model.audio_depth = 3
    c.model.audio_heads = 4
    c.model.mlp_ratio = 2.0
    c.model.pose_kernel = 3  # input conv over time (1 = per-frame projection)
    c.model.audio_kernel = 5
    c.model.embed_dim = 64
    c.model.pose_diffs = True  # also feed frame-to-frame pose changes
    c.model.center_pose = True  # remove each window's mean pose
    c.model.positions = "learned"  # or "sinusoidal"
    # "flatten": a 4-d code per frame, concatenated in time order, then linear. With "mean"
    # pooling CAPP memorised the 800 training clips and scored held-out pairs at chance.
    c.model.pool = "flatten"
    c.model.pool_dim = 4
    c.model.init_temperature = 0.07
    c.model.max_scale = 100.0
    c.model.dtype = "float32"

    c.augment = ml_collections.ConfigDict()  # on the device, per example
    c.augment.pose_noise = 0.002  # radians, Gaussian, per frame and angle
    c.augment.max_shift = 1  # shift the pose against the audio by U{-s..s} frames (edge clamp)
    # P(an example is spliced from clips of the batch at random frames). Off: with it (0.9, 3
    # segments) training stayed at chance for 225+ steps; "flatten" pooling generalises without.
    c.augment.splice = 0.0
    c.augment.splice_segments = 3  # segments (from as many clips) of a spliced example

    c.optim = common.optim(lr=1e-3, end_lr_factor=0.02, b2=0.98, weight_decay=0.1,
                           ema_decay=0.99)
    c.train = common.train_loop(steps=2000, log_every=50, eval_every=500, checkpoint_every=500,
                                keep_checkpoints=2)
    c.train.stats_clips = 200  # clips read for the dataset statistics (normalisation)

    # split: the held-out identities capp_heldout.json reports, written when training ends
    c.eval = common.evaluation()
    c.eval.heldout_after_training = True
    c.eval.hop = 0  # frames between windows of a clip (0 = the window: non-overlapping)
    c.eval.batch = 32  # retrieval within groups of this many windows (chance top-1 = 1/32)
    c.eval.train_eval_clips = 64
    return c


def _test(c):
    c.data.config = "res64_tiny"
    c.data.batch_size = 16
    c.data.cache_clips = 16
    c.audio.n_mels = 16
    c.audio.hops_per_frame = 2
    c.model.window = 12  # res64_tiny's clips are 25 frames
    c.model.width, c.model.depth, c.model.heads = 32, 2, 2
    c.model.audio_width, c.model.audio_depth, c.model.audio_heads = 32, 1, 2
    c.model.embed_dim = 16
    c.optim.lr, c.optim.warmup_steps, c.optim.ema_decay = 3e-3, 10, 0.9
    c.optim.weight_decay = 0.05
    c.train.steps, c.train.log_every, c.train.eval_every = 150, 10, 150
    c.train.checkpoint_every, c.train.stats_clips = 150, 8
    c.train.async_checkpoints = False
    c.eval.hop = 3
    c.eval.batch = 8
    c.eval.train_eval_clips = 2


def _synthtalk64(c):
    c.data.config = "res64_small"
    c.data.batch_size = 64
    c.optim.warmup_steps = 50
    c.train.steps, c.train.log_every = 600, 25
    c.train.eval_every, c.train.checkpoint_every = 100, 200


VARIANTS = {"test": _test, "synthtalk64": _synthtalk64}
