"""SynthTalk probe configs (``vasa_jax.train.probe_task``). Variants: ``test`` (tiny, CPU tests),
``synthtalk64`` (res64_small, 2200 steps of 32 frames; 7 min 40 s on a shared 2-core CPU; held-out
identities: jaw_open r 0.958, yaw r 0.987, emotion accuracy 0.75 per frame).

Launch (then write the held-out metrics that ``load_probe`` requires):
  python launch/train.py --config=configs/probe.py:synthtalk64 --workdir=runs/probe
  python -c "from vasa_jax.train.probe_task import write_heldout; write_heldout('runs/probe')"
"""

from __future__ import annotations

import ml_collections

from configs.common import from_variant

from data_pipeline.synthtalk.motion import MOTION_FIELDS
from vasa_jax.parallel import DEFAULT_RULES


def get_config(arg: str = "synthtalk64") -> ml_collections.ConfigDict:
    return from_variant("probe", arg, base, VARIANTS)


def base() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.task = "probe"
    c.variant = ""
    c.seed = 0
    c.mesh_shape = (-1, 1, 1)  # ('data', 'fsdp', 'tensor'); -1 fills with the remaining devices
    c.num_devices = 0  # 0 = every device; N = the first N
    c.axis_rules = tuple(DEFAULT_RULES)  # the probe's axis names have no rule: replicated

    c.data = ml_collections.ConfigDict()
    c.data.dataset = "synthtalk"
    c.data.config = "res64_small"
    c.data.data_dir = ""  # "" = $VASA_JAX_DATA_DIR or ~/tensorflow_datasets
    c.data.split = "train"
    c.data.batch_size = 64  # global; one random frame of a random clip per example
    c.data.flip = True  # mirror (the loader mirrors the ground truth too)
    c.data.colour_jitter = 0.1
    c.data.num_workers = 0
    c.data.worker_buffer_size = 2
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

    c.optim = ml_collections.ConfigDict()
    c.optim.lr = 3e-3
    c.optim.warmup_steps = 100
    c.optim.decay_steps = 0  # set to train.steps by get_config
    c.optim.end_lr_factor = 0.01
    c.optim.b1 = 0.9
    c.optim.b2 = 0.999
    c.optim.eps = 1e-8
    c.optim.weight_decay = 1e-4
    c.optim.clip_norm = 1.0
    c.optim.ema_decay = 0.99

    c.train = ml_collections.ConfigDict()
    c.train.steps = 2000
    c.train.log_every = 50
    c.train.eval_every = 1000
    c.train.checkpoint_every = 1000
    c.train.keep_checkpoints = 2
    c.train.async_checkpoints = True
    c.train.profile_steps = 0  # >0: trace this many steps from profile_first_step
    c.train.profile_first_step = 10
    c.train.stats_clips = 200

    c.eval = ml_collections.ConfigDict()
    c.eval.split = "test"  # held-out identities: what probe_heldout.json reports
    c.eval.max_clips = 0  # 0 = all
    c.eval.train_eval_split = "validation"
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
