"""SyncNet lip-sync instrument configs (``vasa_jax.train.syncnet_task``). Variants: ``test``
(tiny, CPU tests, res64_tiny), ``synthtalk64`` (the instrument: ``small`` SyncNet on res64_small
mouth crops, 1000 steps of 32 windows: ~1.05 steps/s, 16 min alone and 25 min on a 2-core CPU
shared with other jobs; on the 100 held-out ``test`` clips: AV offset 0 on every clip, LSE-C
0.77 / LSE-D 0.53, with the audio of another clip LSE-C 0.18 / LSE-D 1.17 and offset accuracy
0.07, chance 0.10).

Launch (training ends by estimating the BatchNorm statistics and writing the held-out metrics
that ``load_syncnet`` requires):
  python launch/train.py --config=configs/syncnet.py:synthtalk64 --workdir=runs/syncnet
"""

from __future__ import annotations

import ml_collections

from configs import common


def get_config(arg: str = "synthtalk64") -> ml_collections.ConfigDict:
    return common.from_variant("syncnet", arg, base, VARIANTS)


def base() -> ml_collections.ConfigDict:
    c = common.runtime("syncnet")

    c.data = common.data()  # one window (5 frames + 2 max_shift + 1 of audio) per clip
    c.data.flip = True  # mirror the frames (the audio stays)
    c.data.colour_jitter = 0.1
    c.data.cache_clips = 0  # >0: prepared clips (encoded frames) kept per loading process

    c.model = ml_collections.ConfigDict()
    c.model.size = "small"  # vasa_jax.instruments.syncnet.SIZES; the trained instrument is 'small'
    c.model.lip_widths = (24, 48, 64, 128)
    c.model.audio_widths = (16, 32, 64, 128)  # it runs on B (2 max_shift + 1) patches a step
    c.model.fc_hidden = 128
    c.model.embed_dim = 128

    c.loss = ml_collections.ConfigDict()
    c.loss.max_shift = 4  # negatives: the same clip's audio shifted by 1..4 frames either way
    c.loss.temperature = 0.07
    c.loss.shift_weight = 0.0  # x cross-entropy among the own clip's shifts only (timing alone)

    c.optim = common.optim(lr=2e-3, warmup_steps=50, end_lr_factor=0.02, weight_decay=1e-4,
                           ema_decay=0.99)
    c.train = common.train_loop(steps=1000, log_every=50, eval_every=500, checkpoint_every=500,
                                keep_checkpoints=2)

    # split: the held-out identities syncnet_heldout.json reports, written when training ends
    c.eval = common.evaluation()
    c.eval.heldout_after_training = True
    c.eval.vshift = 15  # offsets -15..15 frames, as Wav2Lip's LSE-C / LSE-D
    c.eval.calib_batches = 30  # training batches of 32 for the BatchNorm statistics
    c.eval.train_eval_clips = 16
    c.eval.train_eval_calib_batches = 5
    return c


def _test(c):
    c.data.config = "res64_tiny"
    c.data.batch_size = 8
    c.model.lip_widths = (16, 16, 32, 32)
    c.model.audio_widths = (8, 16, 16, 32)
    c.loss.shift_weight = 1.0  # 8 training clips: name the timing task outright
    c.model.fc_hidden, c.model.embed_dim = 32, 32
    c.optim.lr, c.optim.warmup_steps, c.optim.ema_decay = 3e-3, 5, 0.9
    c.train.steps, c.train.log_every, c.train.eval_every = 150, 1, 150  # < 60 s alone
    c.train.checkpoint_every = 150
    c.train.async_checkpoints = False
    c.eval.calib_batches = 4
    c.eval.train_eval_clips = 2
    c.eval.train_eval_calib_batches = 2


def _synthtalk64(c):
    c.data.config = "res64_small"
    c.data.cache_clips = 800  # all of res64_small's training clips


VARIANTS = {"test": _test, "synthtalk64": _synthtalk64}
