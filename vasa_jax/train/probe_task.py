"""The SynthTalk probe as a trainer task: single frames -> the frame's motion and the emotion.

Training example: one random frame of a random training clip (``num_frames=1`` windows), mirrored
with its ground truth (p = 0.5) and colour-jittered by the loader; on the device, per example
(keys from its global stream position), a random colour cast (so appearance does not bias the
reading of unseen identities), a random blur and Gaussian pixel noise (so the probe also reads
the slightly soft, noisy frames generators produce). Loss: MSE on the normalised
12-d motion (per-field weights ``loss.field_weights``, default 1) + ``loss.emotion_weight`` x
softmax cross-entropy on the clip's emotion.

When training ends, the probe is measured on the held-out identities (``eval.split``, default
``test``) and ``workdir/probe_heldout.json`` is written (``InstrumentTask``), which
``vasa_jax.instruments.load.load_probe`` requires.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from data_pipeline import views
from vasa_jax.instruments import probe as sp
from vasa_jax.train.task import InstrumentTask


def blur3(x: jax.Array) -> jax.Array:
    """Separable [1, 2, 1] / 4 blur of (R, R, C) with edge padding."""
    p = jnp.pad(x, ((1, 1), (1, 1), (0, 0)), mode="edge")
    p = 0.25 * p[:-2] + 0.5 * p[1:-1] + 0.25 * p[2:]
    return 0.25 * p[:, :-2] + 0.5 * p[:, 1:-1] + 0.25 * p[:, 2:]


def degrade(frames: jax.Array, keys: jax.Array, blur: float, noise: float,
            channel_gain: float = 0.0) -> jax.Array:
    """Per example: scale each colour channel's intensity by ~ U(1 - ``channel_gain``,
    1 + ``channel_gain``) (a colour cast: skin, lip and background tones vary), blend with a
    blurred copy (weight ~ U(0, ``blur``)) and add Gaussian noise (std ~ U(0, ``noise``)).
    frames (b, R, R, 3) float in [-1, 1]; keys (b, 2)."""
    def one(x, k):
        k1, k2, k3, k4 = jax.random.split(k, 4)
        g = jax.random.uniform(k4, (3,), minval=1.0 - channel_gain, maxval=1.0 + channel_gain)
        x = jnp.clip((x + 1.0) * g - 1.0, -1.0, 1.0)
        a = jax.random.uniform(k1, (), maxval=blur)
        s = jax.random.uniform(k2, (), maxval=noise)
        x = (1.0 - a) * x + a * blur3(x)
        return x + s * jax.random.normal(k3, x.shape)

    return jax.vmap(one)(frames, keys)


class ProbeTask(InstrumentTask):
    name = "probe"

    def __init__(self, config):
        super().__init__(config)
        self.stats: dict[str, np.ndarray] | None = None

    # -- model ---------------------------------------------------------------------------------
    def prepare(self) -> None:
        c = self.config
        self.stats = views.clip_stats(views.read_clips(c, c.data.split, c.train.stats_clips),
                                      {"motion": "motion"})
        logging.info("probe motion std %s", np.round(self.stats["motion_std"], 4))

    def init_model(self, model: sp.ProbeNetwork) -> None:
        if self.stats is not None:
            model.set_stats(**self.stats)

    # -- data ----------------------------------------------------------------------------------
    def loader_config(self, batch_size: int):
        return views.pixel_window_loader_config(self.config, num_frames=1,
                                                batch_size=batch_size, audio=False)

    def device_batch(self, batch: Mapping[str, Any]) -> dict[str, np.ndarray]:
        return {"frames": np.asarray(batch["frames"][:, 0], np.uint8),
                "motion": np.asarray(batch["motion"][:, 0], np.float32),
                "emotion": np.asarray(batch["emotion"], np.int32),
                "pos": (np.asarray(batch["pos"], np.int64) % (2 ** 31)).astype(np.int32)}

    # -- objective -----------------------------------------------------------------------------
    def loss(self, model: sp.ProbeNetwork, batch, key):
        a = self.config.augment
        keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, batch["pos"])
        frames = sp.to_unit_range(batch["frames"])
        gain = a.get("channel_gain", 0.0)
        if a.blur > 0 or a.noise > 0 or gain > 0:
            frames = degrade(frames, keys, a.blur, a.noise, gain)
        motion, logits = model(frames)
        err = jnp.square(motion - model.normalize_motion(batch["motion"]))
        motion_mse = err.mean()
        weighted = (err * jnp.asarray(self.field_weights(model.motion_dim))).mean()
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["emotion"]).mean()
        loss = weighted + self.config.loss.emotion_weight * ce
        acc = (logits.argmax(-1) == batch["emotion"]).mean()
        jaw = sp.MOTION_FIELDS.index("jaw_open")
        return loss, {"motion_mse": motion_mse, "emotion_ce": ce, "emotion_acc": acc,
                      "jaw_mse": err[:, jaw].mean(), "yaw_mse": err[:, 0].mean()}

    def field_weights(self, motion_dim: int) -> np.ndarray:
        """(M,) weights of the per-field squared errors: 1, or ``loss.field_weights[name]``."""
        given = dict(self.config.loss.get("field_weights", {}) or {})
        unknown = set(given) - set(sp.MOTION_FIELDS[:motion_dim])
        if unknown:
            raise ValueError(f"loss.field_weights has unknown fields {sorted(unknown)}; the "
                             f"fields are {sp.MOTION_FIELDS[:motion_dim]}.")
        return np.array([float(given.get(f, 1.0)) for f in sp.MOTION_FIELDS[:motion_dim]],
                        np.float32)

    # -- evaluation ----------------------------------------------------------------------------
    def evaluate(self, model: sp.ProbeNetwork, step: int) -> dict[str, float]:
        """Held-out validation identities: jaw_open and yaw r, per-frame emotion accuracy."""
        n = self.config.eval.train_eval_clips
        if not n:
            return {}
        clips = self.eval_clips(self.config.eval.train_eval_split, n, frames=True)
        res = sp.clip_metrics(sp.Probe(model), clips)
        return {"jaw_open_r": res["r/jaw_open"], "yaw_r": res["r/yaw"],
                "emotion_accuracy": res["emotion_accuracy"]}

    def measure(self, model: sp.ProbeNetwork, split: str, max_clips: int) -> dict[str, Any]:
        return sp.heldout_metrics(sp.Probe(model), self.config, split=split,
                                  max_clips=max_clips)
