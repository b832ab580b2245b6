"""SyncNet as a trainer task: contrastive audio-visual sync on SynthTalk windows.

Training example: a loader window of ``2 S + 6`` frames (S = ``loss.max_shift``) with its
aligned audio, mirrored (p = 0.5; the audio is unchanged) and colour-jittered by the loader. The
task cuts, on the host, the 5 centre frames ``[S, S + 5)`` to the model's mouth crop, and the
MFCC patches (13 x 20, 0.2 s) starting at frames ``S + s`` for every shift ``s`` in
``[-S, S]`` (the MFCCs of the whole window, so every patch has real audio).

Loss: InfoNCE over cosine similarity (temperature ``loss.temperature``). Each video window's
positive is its aligned patch (s = 0); its negatives are the same clip's audio shifted by
``s != 0`` (so the network must learn timing, not only who speaks or whether there is speech)
and every patch (aligned or shifted) of the other clips in the batch (``loss.shift_weight`` adds
a softmax over the own clip's shifts alone; 0 for ``synthtalk64``). Why InfoNCE rather than
the original's pairwise contrastive (margin) loss: one softmax uses all ``B (2 S + 1) - 1``
negatives of a batch at once with no margin to tune, and ranking the aligned patch above the
shifted ones is exactly what the offset search of LSE-C / LSE-D asks of the embedding.

BatchNorm: the trainer keeps only the parameters, so training normalises with each batch's
statistics. When training ends (``InstrumentTask``; or ``vasa_jax.train.heldout``), the running
statistics are estimated (PreciseBN: the mean of the batch statistics over
``eval.calib_batches`` training batches, EMA weights) and stored in ``syncnet_batch_stats.npz``;
then the instrument is measured on the held-out identities (``eval.split``, default ``test``)
and ``syncnet_heldout.json`` is written. ``vasa_jax.instruments.load.load_syncnet`` requires
both.
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from data_pipeline import views
from data_pipeline.loader import make_loader
from vasa_jax.instruments import mfcc as mfcc_lib
from vasa_jax.instruments import syncnet as sn
from vasa_jax.atomic import atomic_path
from vasa_jax.train.task import InstrumentTask


def window_frames(config) -> int:
    """Frames per loader window: 5 video frames centred in room for +-S shifts of the audio."""
    return 2 * int(config.loss.max_shift) + sn.WINDOW + 1


def host_batch(batch: Mapping[str, Any], crop, image_size, max_shift: int,
               audio_scale: float) -> dict[str, np.ndarray]:
    """Loader batch (frames (B, 2S + 6, R, R, 3), audio (B, (2S + 6) 640)) -> ``frames``
    (B, 5, H, W, 3) uint8 mouth crops of frames [S, S + 5) and ``mfcc`` (B, 2S + 1, 13, 20)
    float32 patches starting at frames S + s, s = -S..S (row S is the aligned one)."""
    s = int(max_shift)
    frames = np.asarray(batch["frames"])
    b = frames.shape[0]
    centre = frames[:, s:s + sn.WINDOW].reshape((-1,) + frames.shape[2:])
    crops = sn.mouth_crops(centre, crop, image_size).reshape(
        (b, sn.WINDOW) + tuple(image_size) + (3,))
    mf = mfcc_lib.syncnet_mfcc(np.asarray(batch["audio"], np.float32), audio_scale)
    starts = np.arange(2 * s + 1)  # = S + shift
    patches = np.stack([mfcc_lib.mfcc_patches(m, starts, sn.MFCC_WINDOW) for m in mf])
    return {"frames": crops, "mfcc": patches.astype(np.float32)}


def info_nce(video: jax.Array, audio: jax.Array, temperature: float, shift_weight: float = 0.0
             ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """video (B, D), audio (B, K, D) (K = 2S + 1 shifts, row S aligned), both L2-normalised ->
    (loss, metrics): cross-entropy of picking (b, S) among all B K patches for video b, plus
    ``shift_weight`` x the cross-entropy among the own clip's K shifts only (timing alone:
    other clips are told apart by voice and face long before timing is learned)."""
    b, k, d = audio.shape
    logits = video @ audio.reshape(b * k, d).T / temperature  # (B, B K)
    target = jnp.arange(b) * k + k // 2
    nce = optax.softmax_cross_entropy_with_integer_labels(logits, target).mean()
    own = logits.reshape(b, b, k)[jnp.arange(b), jnp.arange(b)]  # (B, K): own clip's shifts
    shift_ce = optax.softmax_cross_entropy_with_integer_labels(
        own, jnp.full((b,), k // 2)).mean()
    loss = nce + shift_weight * shift_ce
    shift = own.argmax(-1) - k // 2
    metrics = {"nce": nce, "shift_ce": shift_ce, "acc": (logits.argmax(-1) == target).mean(),
               "shift_acc": (shift == 0).mean(),
               "shift_acc_1": (jnp.abs(shift) <= 1).mean(),
               "pos_cos": own[:, k // 2].mean() * temperature}
    return loss, metrics


class SyncNetTask(InstrumentTask):
    name = "syncnet"

    # -- model ---------------------------------------------------------------------------------
    def _geometry(self):
        if not hasattr(self, "_geom"):
            m = nnx.eval_shape(lambda: self.make_model(nnx.Rngs(0)))
            self._geom = (m.crop, m.image_size, m.audio_scale)
        return self._geom

    # -- data ----------------------------------------------------------------------------------
    def loader_config(self, batch_size: int, *, seed: int | None = None,
                      augment: bool = True):
        return views.pixel_window_loader_config(
            self.config, num_frames=window_frames(self.config), batch_size=batch_size,
            audio=True, seed=seed, augment=augment)

    def device_batch(self, batch: Mapping[str, Any]) -> dict[str, np.ndarray]:
        crop, size, scale = self._geometry()
        out = host_batch(batch, crop, size, self.config.loss.max_shift, scale)
        out["pos"] = (np.asarray(batch["pos"], np.int64) % (2 ** 31)).astype(np.int32)
        return out

    # -- objective -----------------------------------------------------------------------------
    def loss(self, model: sn.SyncNetNetwork, batch, key):
        del key
        b, k = batch["mfcc"].shape[:2]
        video = model.embed_video(batch["frames"], train=True)
        audio = model.embed_audio(batch["mfcc"].reshape((b * k,) + batch["mfcc"].shape[2:]),
                                  train=True).reshape(b, k, -1)
        if not model.normalize:
            raise ValueError("SyncNet training uses cosine similarity: set model.normalize=True.")
        return info_nce(video, audio, self.config.loss.temperature,
                        self.config.loss.get("shift_weight", 0.0))

    # -- evaluation ----------------------------------------------------------------------------
    def calibration_batches(self, n: int, batch_size: int = 32):
        """``n`` host batches (frames, mfcc patches) of training windows, without augmentation
        (fixed seed), for the BatchNorm statistics."""
        crop, size, scale = self._geometry()
        it = iter(make_loader(self.loader_config(batch_size, seed=self.config.seed + 1,
                                                 augment=False)))
        for _ in range(int(n)):
            hb = host_batch(next(it), crop, size, self.config.loss.max_shift, scale)
            m = hb["mfcc"]
            yield hb["frames"], m.reshape((-1,) + m.shape[2:])

    def evaluate(self, model: sn.SyncNetNetwork, step: int) -> dict[str, float]:
        """Validation identities: offset accuracy (|offset| <= 1) and mean LSE-C / LSE-D
        (BatchNorm statistics calibrated on a few training batches)."""
        e = self.config.eval
        if not e.train_eval_clips:
            return {}
        sn.calibrate_batch_stats(model, self.calibration_batches(e.train_eval_calib_batches))
        clips = self.eval_clips(e.train_eval_split, e.train_eval_clips, frames=True, audio=True)
        res = clip_metrics(sn.SyncNet(model), clips, vshift=e.vshift,
                           shuffled=False)
        return {"offset_accuracy": res["offset_accuracy"], "lse_c": res["lse_c"],
                "lse_d": res["lse_d"]}

    def write_heldout(self, model: sn.SyncNetNetwork, workdir: str, step: int, **kwargs):
        """First estimate the BatchNorm statistics and store them in
        ``syncnet_batch_stats.npz``, then measure and write the held-out figures."""
        sn.calibrate_batch_stats(model, self.calibration_batches(self.config.eval.calib_batches))
        with atomic_path(os.path.join(workdir, sn.BATCH_STATS_FILE)) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, **sn.batch_stats_dict(model))
        return super().write_heldout(model, workdir, step, **kwargs)

    def measure(self, model: sn.SyncNetNetwork, split: str, max_clips: int) -> dict[str, Any]:
        clips = views.read_clips(self.config, split, max_clips, frames=True, audio=True)
        res = clip_metrics(sn.SyncNet(model), clips, vshift=self.config.eval.vshift)
        res["calib_batches"] = int(self.config.eval.calib_batches)
        return res


# -- held-out metrics ------------------------------------------------------------------------------

def clip_metrics(net: sn.SyncNet, clips: Sequence[dict[str, Any]], *, vshift: int,
                 shuffled: bool = True) -> dict[str, float]:
    """LSE scores over ``clips``: ``offset_accuracy`` (fraction of clips with |offset| <= 1),
    ``offset_exact`` (offset == 0), ``mean_abs_offset``, mean ``lse_c`` / ``lse_d``,
    ``window_offset_accuracy`` (per 5-frame window: |argmin offset| <= 1), ``sync_auc`` (per
    window, the fraction of the other 2 vshift offsets whose distance exceeds the aligned one's:
    0.5 is chance, 1 perfect); with ``shuffled``
    the same with every clip's audio taken from another clip (``shuffled/...``), and
    ``chance_offset_accuracy`` = 3 / (2 vshift + 1)."""
    if not clips:
        raise ValueError("No clips to measure SyncNet on.")
    res: dict[str, float] = {}
    n = len(clips)
    variants = [("", list(range(n)))]
    if shuffled:
        if n < 2:
            raise ValueError("Shuffling audio across clips needs at least two clips.")
        variants.append(("shuffled/", [(i + max(1, n // 2)) % n for i in range(n)]))
    for prefix, audio_from in variants:
        offsets, cs, ds, win, auc = [], [], [], [], []
        for c, j in zip(clips, audio_from):
            windows, patches = sn.clip_inputs(net, c["frames"], clips[j]["audio"])
            s = sn.scores_from_embeddings(net.embed_video(windows), net.embed_audio(patches),
                                          vshift, net.pad)
            offsets.append(s["offset"])
            cs.append(s["lse_c"])
            ds.append(s["lse_d"])
            win.append(np.abs(vshift - s["dists"].argmin(1)) <= 1)
            d = s["dists"]  # (n, 2 vshift + 1): is the aligned pair closer than a shifted one?
            auc.append((d[:, [vshift]] < np.delete(d, vshift, axis=1)).mean(1))
        offsets = np.asarray(offsets)
        res[prefix + "offset_accuracy"] = float(np.mean(np.abs(offsets) <= 1))
        res[prefix + "offset_exact"] = float(np.mean(offsets == 0))
        res[prefix + "mean_abs_offset"] = float(np.mean(np.abs(offsets)))
        res[prefix + "lse_c"] = float(np.mean(cs))
        res[prefix + "lse_d"] = float(np.mean(ds))
        res[prefix + "window_offset_accuracy"] = float(np.concatenate(win).mean())
        res[prefix + "sync_auc"] = float(np.concatenate(auc).mean())
    res["chance_offset_accuracy"] = 3.0 / (2 * vshift + 1)
    res["num_clips"] = n
    res["vshift"] = int(vshift)
    return res
