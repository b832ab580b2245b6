"""SynthTalk probe configs (``vasa_jax.train.probe_task``). Variants: ``test`` (tiny, CPU tests),
``synthtalk64`` (res64_small, 2200 steps of 32 frames; 7 min 40 s on a shared 2-core CPU; held-out
identities: jaw_open r 0.958, yaw r 0.987, emotion accuracy 0.75 per frame).

Launch (training ends by writing the held-out metrics that ``load_probe`` requires):
  python launch/train.py --config=configs/probe.py:synthtalk64 --workdir=runs/probe
"""

from __future__ import annotations

import ml_collections

from configs import common
from data_pipeline.synthtalk.motion import MOTION_FIELDS


def get_config(arg: str = "synthtalk64") -> ml_collections.ConfigDict:
    return common.from_variant("probe", arg, base, VARIANTS)


def base() -> ml_collections.ConfigDict:
    c = common.runtime("probe")

    c.data = common.data(batch_size=64)  # one random frame of a random clip per example
    c.data.flip = True  # mirror (the loader mirrors the ground truth too)
    c.data.colour_jitter = 0.1
    c.data.cache_clips = 0  # >0: prepared clips (encoded frames) kept per loading process

    c.augment = ml_collections.ConfigDict()  # on the device, per example
    c.augment.blur = 0.5  # blend weight of a [1,2,1] blur ~ U(0, blur)
    c.augment.noise = 0.03  # Gaussian pixel noise std ~ U(0, noise), in [-1, 1] units
    c.augment.channel_gain = 0.15  # per-channel intensity gain ~ U(1 -/+ channel_gain)

    c.model = ml_collections.ConfigDict()
    c.model.widths = (32, 64, 128, 128)  # one stride-2 stage each
    c.model.blocks = 2  # conv units per stage (the first downsamples)
    c.model.stem = 0  # channels of a full-resolution conv unit before the stages (0: none)
    c.model.head = 256
    c.model.norm = "group"  # or "layer" (per-pixel LayerNorm)
    c.model.motion_dim = 12
    c.model.num_emotions = 4
    c.model.dtype = "float32"

    c.loss = ml_collections.ConfigDict()
    c.loss.emotion_weight = 0.5
    # Per-field weights of the normalised squared error. The mouth opening is a few pixels at
    # 64 px; weighting it (and yaw) makes the probe learn them well within a short budget.
    c.loss.field_weights = ml_collections.ConfigDict({f: 1.0 for f in MOTION_FIELDS})
    c.loss.field_weights.jaw_open = 4.0
    c.loss.field_weights.yaw = 2.0

    c.optim = common.optim(lr=3e-3, weight_decay=1e-4, ema_decay=0.99)
    c.train = common.train_loop(steps=2000, log_every=50, eval_every=1000,
                                checkpoint_every=1000, keep_checkpoints=2)
    c.train.stats_clips = 200  # clips read for the dataset statistics (normalisation)

    # split: the held-out identities probe_heldout.json reports, written when training ends
    c.eval = common.evaluation()
    c.eval.heldout_after_training = True
    c.eval.train_eval_clips = 8
    return c


def _test(c):
    c.data.config = "res64_tiny"
    c.data.batch_size = 8
    c.model.widths, c.model.blocks, c.model.head = (8, 16, 16, 16), 1, 32
    c.optim.lr, c.optim.warmup_steps, c.optim.ema_decay = 1e-2, 5, 0.9
    c.train.steps, c.train.log_every, c.train.eval_every = 60, 1, 30
    c.train.checkpoint_every, c.train.stats_clips = 30, 8
    c.train.async_checkpoints = False
    c.eval.train_eval_clips = 1


def _synthtalk64(c):
    c.data.config = "res64_small"
    c.data.batch_size = 32
    c.train.steps, c.train.log_every = 2200, 50
    c.train.eval_every, c.train.checkpoint_every = 1100, 1100
    c.data.cache_clips = 800  # all of res64_small's training clips (~330 MB of PNG bytes)


VARIANTS = {"test": _test, "synthtalk64": _synthtalk64}
