"""CAPP as a trainer task: symmetric InfoNCE between pose windows and audio windows.

Training example: a random window of ``model.window`` frames of a random training clip: the
ground-truth head pose (SynthTalk motion fields yaw, pitch, roll) and the audio features of the
same frames (``config.audio``'s frontend, applied to the whole clip by a loader transform, as
the motion stage does). The loader skips the pixels (``frames=False``) and the raw audio. The
pose is mirrored with p = 0.5 (yaw and roll change sign; ``data.flip``); on the device, per
example (keys from its global stream position), Gaussian pose noise and a shift of the pose
against the audio by up to ``augment.max_shift`` frames. ``augment.splice`` (new pairs spliced at
random frames from several pairs of the batch, ``splice``) is available but off in every
variant: with it CAPP stayed at chance; what stopped it from memorising res64_small's 800
training clips is the encoders' 'flatten' pooling (``vasa_jax.instruments.capp``). Loss: CLIP's
symmetric cross-entropy over the global batch's pose-to-audio and audio-to-pose similarity
logits (scaled by the learned ``exp(log_scale)``).

When training ends, CAPP is measured on the held-out identities (``eval.split``, default
``test``) and ``workdir/capp_heldout.json`` is written (``InstrumentTask``), which
``vasa_jax.instruments.load.load_capp`` requires.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from data_pipeline import views
from vasa_jax.instruments import capp as cp
from vasa_jax.motion.audio import AddAudioFeatures, frontend_from_config
from vasa_jax.train.task import InstrumentTask


def shift_frames(x: jax.Array, shift: jax.Array) -> jax.Array:
    """x (T, C) delayed by ``shift`` frames (negative: advanced), edges repeated."""
    t = x.shape[0]
    return x[jnp.clip(jnp.arange(t) - shift, 0, t - 1)]


def splice(pose: jax.Array, features: jax.Array, key: jax.Array, prob: float,
           segments: int = 2) -> tuple[jax.Array, jax.Array]:
    """New aligned pairs from pairs of the batch: with probability ``prob`` example i is cut at
    ``segments - 1`` random frames (sorted, within [T/8, 7T/8)) and its s-th segment is taken
    from example i - s (pose and audio features alike), each taken pose segment offset so that
    it continues from the frame before it without a jump. Audio and pose stay aligned frame by
    frame, but the window is a combination never seen before, so a model cannot match pairs by
    memorising the training clips (it does, within a few hundred steps, on 800 clips).
    pose (B, T, 3), features (B, T, F) -> the same shapes."""
    b, t = pose.shape[:2]
    if segments < 2:
        return pose, features
    k1, k2 = jax.random.split(key)
    lo, hi = max(t // 8, 1), max(7 * t // 8, t // 8 + 2)
    cuts = jnp.sort(jax.random.randint(k1, (b, segments - 1), lo, hi), axis=1)
    do = jax.random.bernoulli(k2, prob, (b,))
    rows, frames = jnp.arange(b), jnp.arange(t)
    out_p, out_f = pose, features
    for s in range(1, segments):
        cut = cuts[:, s - 1]
        src = (rows - s) % b
        other = pose[src]
        other = other + (out_p[rows, cut - 1] - other[rows, cut - 1])[:, None, :]  # continue
        tail = ((frames[None, :] >= cut[:, None]) & do[:, None])[..., None]  # (B, T, 1)
        out_p = jnp.where(tail, other, out_p)
        out_f = jnp.where(tail, features[src], out_f)
    return out_p, out_f


def info_nce(pose_emb: jax.Array, audio_emb: jax.Array, scale: jax.Array
             ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """CLIP's symmetric InfoNCE of unit embeddings (B, D) x (B, D); row i of each is a pair.
    Returns (loss, metrics: top-1 accuracy, matched and mismatched mean similarity)."""
    sim = pose_emb @ audio_emb.T  # (B, B)
    logits = scale * sim
    labels = jnp.arange(sim.shape[0])
    loss = 0.5 * (optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
                  + optax.softmax_cross_entropy_with_integer_labels(logits.T, labels).mean())
    b = sim.shape[0]
    eye = jnp.eye(b, dtype=bool)
    return loss, {"top1": (logits.argmax(-1) == labels).mean(),
                  "matched_sim": jnp.diag(sim).mean(),
                  "offdiag_sim": jnp.where(eye, 0.0, sim).sum() / (b * (b - 1)),
                  "scale": scale}


class CappTask(InstrumentTask):
    name = "capp"

    def __init__(self, config):
        super().__init__(config)
        self.frontend = frontend_from_config(config.audio)
        if self.frontend.dim != config.model.audio_dim:
            raise ValueError(f"config.model.audio_dim={config.model.audio_dim} but the "
                             f"{self.frontend.name} frontend gives {self.frontend.dim} features.")
        self.stats: dict[str, np.ndarray] | None = None

    # -- model ---------------------------------------------------------------------------------
    def prepare(self) -> None:
        c = self.config
        self.stats = views.pose_audio_stats(
            views.read_pose_clips(c, c.data.split, c.train.stats_clips), c.model.center_pose)
        logging.info("CAPP pose std %s, pose diff std %s", np.round(self.stats["pose_std"], 4),
                     np.round(self.stats["pose_diff_std"], 5))

    def init_model(self, model: cp.CappNetwork) -> None:
        if self.stats is not None:
            model.set_stats(**self.stats)

    # -- data ----------------------------------------------------------------------------------
    def loader_config(self, batch_size: int):
        return views.window_loader_config(self.config, split=self.config.data.split,
                                          num_frames=self.config.model.window, train=True,
                                          batch_size=batch_size)

    def clip_transforms(self):
        return [AddAudioFeatures(self.frontend)]

    def device_batch(self, batch: Mapping[str, Any]) -> dict[str, np.ndarray]:
        return {"pose": np.asarray(batch["motion"][..., views.POSE_COLUMNS], np.float32),
                "audio_features": np.asarray(batch["audio_features"], np.float32),
                "pos": (np.asarray(batch["pos"], np.int64) % (2 ** 31)).astype(np.int32)}

    # -- objective -----------------------------------------------------------------------------
    def loss(self, model: cp.CappNetwork, batch, key):
        a = self.config.augment
        pose = batch["pose"]
        keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, batch["pos"])

        def augment(p, k):
            k1, k2 = jax.random.split(k)
            if a.max_shift > 0:
                p = shift_frames(p, jax.random.randint(k1, (), -a.max_shift, a.max_shift + 1))
            return p + a.pose_noise * jax.random.normal(k2, p.shape)

        pose = jax.vmap(augment)(pose, keys)
        feats = batch["audio_features"]
        if a.get("splice", 0.0) > 0:
            pose, feats = splice(pose, feats, jax.random.fold_in(key, 1), a.splice,
                                 a.get("splice_segments", 2))
        pe, ae = model(pose, feats)
        return info_nce(pe, ae, model.scale())

    # -- evaluation ----------------------------------------------------------------------------
    def evaluate(self, model: cp.CappNetwork, step: int) -> dict[str, float]:
        """Held-out validation identities: retrieval top-1 and matched minus shuffled score."""
        e = self.config.eval
        if not e.train_eval_clips:
            return {}
        if not hasattr(self, "_eval_windows"):
            clips = views.read_pose_clips(self.config, e.train_eval_split, e.train_eval_clips)
            self._eval_windows = clip_windows(clips, model.window, e.hop or model.window)
        res = cp.pair_metrics(cp.Capp(model), *self._eval_windows, batch=e.batch)
        return {"top1": res["top1"], "top5": res["top5"], "matched": res["matched_mean"],
                "shuffled": res["shuffled_mean"], "chance_top1": res["chance_top1"]}

    def measure(self, model: cp.CappNetwork, split: str, max_clips: int) -> dict[str, Any]:
        return heldout_metrics(cp.Capp(model), self.config, split=split, max_clips=max_clips)


def clip_windows(clips, window: int, hop: int) -> tuple[np.ndarray, np.ndarray]:
    """Windows of every clip (``cp.clip_windows``), stacked: ((N, window, 3), (N, window, F))."""
    poses, feats = zip(*(cp.clip_windows(c["pose"], c["audio_features"], window, hop)
                         for c in clips))
    return np.concatenate(poses), np.concatenate(feats)


def heldout_metrics(capp: cp.Capp, config, split: str = "test", max_clips: int | None = None
                    ) -> dict[str, Any]:
    """``cp.pair_metrics`` over the windows (every ``eval.hop`` frames) of the clips of
    ``split`` (default ``test``: identities never seen in training); ``max_clips`` None/0 = all.
    Also ``clip_score_mean``: mean ``capp_score`` of the whole clips."""
    e = config.eval
    clips = views.read_pose_clips(config, split, max_clips)
    hop = e.hop or capp.window
    res: dict[str, Any] = cp.pair_metrics(capp, *clip_windows(clips, capp.window, hop),
                                          batch=e.batch, seed=config.seed)
    res["clip_score_mean"] = float(np.mean([
        cp.capp_score(capp, c["pose"], None, hop=hop, features=c["audio_features"])
        for c in clips]))
    res.update(num_clips=len(clips), window=int(capp.window), hop=int(hop))
    return res
