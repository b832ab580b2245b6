"""Stage 2 (MotionDiT) configs. Variants: ``test`` (tiny, CPU tests), ``synthtalk`` (trains in
under 20 minutes on a 2-core CPU, on SynthTalk's ground-truth motion), ``synthtalk_latents``
(the same on stage-1 latents of SynthTalk: the ``latents`` dataset), ``paper`` (8 layers x 512
wide x 8 heads, W=50, K=10); ``test_wav2vec2``, ``synthtalk_wav2vec2``, ``paper_wav2vec2``: the
same with wav2vec 2.0 audio features (``--config.audio.checkpoint=<converted dir>``).

Launch:
  python launch/train.py --config=configs/motion.py:synthtalk --workdir=runs/motion
  python launch/train.py --config=configs/motion.py:synthtalk_latents --workdir=runs/motion_lat \\
      --config.data.config=<name printed by the latents build>
  python launch/train.py --config=configs/motion.py:paper --workdir=gs://bucket/motion \\
      --config.data.config=res256_large --config.mesh_shape='(-1,1,1)'
  python launch/local_multihost.py --num_processes=2 --devices_per_process=2 -- \\
      --config=configs/motion.py:test --workdir=/tmp/motion_mh
"""

from __future__ import annotations

import ml_collections

from configs import common


def get_config(arg: str = "synthtalk") -> ml_collections.ConfigDict:
    return common.from_variant("motion", arg, base, VARIANTS)


def base() -> ml_collections.ConfigDict:
    c = common.runtime("motion")

    c.data = common.data()
    c.data.cache_clips = 0  # >0: prepared clips kept per loading process (small datasets)

    c.audio = ml_collections.ConfigDict()
    c.audio.frontend = "mel"
    c.audio.n_mels = 40
    c.audio.hops_per_frame = 4

    c.model = ml_collections.ConfigDict()
    c.model.motion_dim = 12  # SynthTalk's ground-truth track; latents set their own
    c.model.audio_dim = c.audio.get_ref("n_mels") * c.audio.get_ref("hops_per_frame")
    c.model.audio_layers = 1  # >1: audio features are that many stacked vectors, learned mix
    c.model.width = 512
    c.model.depth = 8
    c.model.heads = 8
    c.model.mlp_ratio = 4.0
    c.model.window = 50  # W
    c.model.context = 10  # K
    c.model.num_emotions = 4
    c.model.dtype = "float32"
    c.model.remat = False  # recompute each transformer block in the backward pass

    c.diffusion = ml_collections.ConfigDict()
    c.diffusion.schedule = "cosine"
    c.diffusion.train_steps = 1000
    c.diffusion.p_condition = 0.1  # each of audio, gaze, distance, emotion
    c.diffusion.p_context = 0.5  # previous motion + audio together
    c.diffusion.p_audio_tail = 0.1  # drop the last 1..max_audio_tail audio frames
    c.diffusion.max_audio_tail = 0  # 0 = W // 5
    c.diffusion.velocity_weight = 0.0  # our addition, not the paper's: weight of the Δx0 error

    c.optim = common.optim(lr=1e-4, warmup_steps=1000)
    c.train = common.train_loop()
    c.train.stats_clips = 200  # clips read for the dataset statistics (normalisation)

    c.sample = ml_collections.ConfigDict()
    c.sample.steps = 50
    c.sample.sampler = "ddim"
    c.sample.cfg = ml_collections.ConfigDict({"audio": 0.5, "gaze": 1.0})  # paper defaults

    c.eval = common.evaluation()
    c.eval.train_eval_clips = 16
    c.eval.train_eval_steps = 10
    return c


def _test(c):
    c.data.config = "res64_tiny"
    c.data.batch_size = 8
    c.model.width, c.model.depth, c.model.heads, c.model.window, c.model.context = 32, 2, 2, 16, 4
    c.audio.n_mels = 8
    c.optim.lr, c.optim.warmup_steps, c.optim.ema_decay = 3e-3, 5, 0.9
    c.train.steps, c.train.log_every, c.train.eval_every = 30, 5, 0
    c.train.checkpoint_every, c.train.stats_clips = 10, 8
    c.diffusion.train_steps = 100
    c.sample.steps = 5
    c.eval.train_eval_clips, c.eval.train_eval_steps = 2, 3


def _synthtalk(c):
    c.data.config = "res64_small"
    c.data.batch_size = 32
    c.data.num_workers = 1
    c.data.cache_clips = 1000  # all of res64_small's training clips: ~40 MB without pixels
    c.model.width, c.model.depth, c.model.heads = 160, 4, 4
    # Short training leaves high-frequency jitter in the pose; the velocity term removes it.
    c.diffusion.velocity_weight = 2.0
    c.optim.lr, c.optim.warmup_steps = 1e-3, 200
    c.optim.ema_decay = 0.995
    c.train.steps, c.train.log_every = 4500, 50
    c.train.eval_every, c.train.checkpoint_every = 1500, 1500
    c.eval.train_eval_clips = 16


def _synthtalk_latents(c):
    """``synthtalk`` on the ``latents`` dataset: [z_pose, z_dyn] of a stage-1 encoder trained
    with configs/latent.py:synthtalk64, built over SynthTalk (data_pipeline/latents)."""
    _synthtalk(c)
    c.data.dataset = "latents"
    c.data.config = ""  # required: --config.data.config=<name printed by the latents build>
    c.data.flip = False  # the mirror flips SynthTalk's ground-truth columns; latents have none
    c.model.motion_dim = 7 + 32  # z_pose (7) + z_dyn (dyn_dim 32 of latent.py:synthtalk64)
    c.eval.train_eval_clips = 0  # the SynthTalk motion metrics need the 12-d ground truth


def _test_latents(c):
    """``test`` on the latents of a latent.py:test stage 1 (tests and the main job's test)."""
    _test(c)
    c.data.dataset, c.data.config, c.data.flip = "latents", "", False
    c.model.motion_dim = 7 + 6  # z_pose + z_dyn (dyn_dim 6 of latent.py:test)
    c.eval.train_eval_clips = 0


def _quickstart_latents(c):
    """``synthtalk_latents`` shortened to fit the README's main job."""
    _synthtalk_latents(c)
    c.train.steps = 2500
    c.train.eval_every = c.train.checkpoint_every = 2500


def _paper(c):
    pass  # the base values are the paper's (8 x 512 x 8 heads, W=50, K=10)


def _wav2vec2(c):
    """The wav2vec2 audio frontend (``vasa_jax.motion.audio.Wav2Vec2Frontend``) instead of
    log-mel: every hidden state, mixed with learned weights in the model. Needs
    ``--config.audio.checkpoint=<dir written by vasa-jax convert wav2vec2>``; the feature width
    and layer count come from that checkpoint (``audio_dim = audio_layers = 0``)."""
    c.audio = ml_collections.ConfigDict(dict(
        frontend="wav2vec2", checkpoint="", layer=-1, mix_layers=True, chunk_frames=500,
        context_frames=25, dtype="float32"))
    c.model.audio_dim = 0
    c.model.audio_layers = 0


def _with_wav2vec2(variant):
    def apply(c):
        variant(c)
        _wav2vec2(c)
    apply.__doc__ = f"``{variant.__name__[1:]}`` with the wav2vec2 audio frontend."
    return apply


VARIANTS = {"test": _test, "synthtalk": _synthtalk, "synthtalk_latents": _synthtalk_latents,
            "quickstart_latents": _quickstart_latents, "test_latents": _test_latents,
            "paper": _paper}
VARIANTS.update({f"{name}_wav2vec2": _with_wav2vec2(VARIANTS[name])
                 for name in ("test", "synthtalk", "paper")})
