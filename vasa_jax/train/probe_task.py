"""The SynthTalk probe as a trainer task: single frames -> the frame's motion and the emotion.

Training example: one random frame of a random training clip (``num_frames=1`` windows), mirrored
with its ground truth (p = 0.5) and colour-jittered by the loader; on the device, per example
(keys from its global stream position), a random colour cast (so appearance does not bias the
reading of unseen identities), a random blur and Gaussian pixel noise (so the probe also reads
the slightly soft, noisy frames generators produce). Loss: MSE on the normalised
12-d motion (per-field weights ``loss.field_weights``, default 1) + ``loss.emotion_weight`` x
softmax cross-entropy on the clip's emotion.

After ``Trainer.fit``, ``write_heldout(workdir, config)`` measures the probe on the held-out
identities (``eval.split``, default ``test``) and writes ``workdir/probe_heldout.json``, which
``vasa_jax.eval.synthtalk_probe.load_probe`` requires.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from flax import nnx

from data_pipeline.loader import LoaderConfig, make_loader, open_source
from vasa_jax import parallel
from vasa_jax.eval import synthtalk_probe as sp
from vasa_jax.train import restore
from vasa_jax.train.task import Task


def dataset_stats(config, max_clips: int) -> dict[str, np.ndarray]:
    """Per-field motion mean/std over every frame of the first ``max_clips`` clips of the
    training split (stored order, motion only: no pixels are decoded)."""
    d = config.data
    source, info = open_source(d.dataset, d.config, d.split, d.data_dir or None)
    n = min(int(max_clips), len(source)) if max_clips else len(source)
    cfg = LoaderConfig(
        dataset=d.dataset, config=d.config, split=d.split, data_dir=d.data_dir or None,
        num_frames=info.features["motion"].shape[0], batch_size=1, seed=config.seed,
        shuffle=False, num_epochs=1, random_window=False, frames=False, audio=False,
        augment=False, drop_remainder=False, shard_index=0, shard_count=1)
    it = iter(make_loader(cfg))
    motion = np.concatenate([next(it)["motion"][0] for _ in range(n)])
    return {"motion_mean": motion.mean(0), "motion_std": motion.std(0)}


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


class ProbeTask(Task):
    name = "probe"

    def __init__(self, config):
        super().__init__(config)
        self.stats: dict[str, np.ndarray] | None = None

    # -- model ---------------------------------------------------------------------------------
    def prepare(self) -> None:
        self.stats = dataset_stats(self.config, self.config.train.stats_clips)
        logging.info("probe motion std %s", np.round(self.stats["motion_std"], 4))

    def make_model(self, rngs: nnx.Rngs) -> sp.SynthTalkProbe:
        return sp.make_probe(self.config.model, rngs=rngs)

    def init_model(self, model: sp.SynthTalkProbe) -> None:
        if self.stats is not None:
            model.set_stats(**self.stats)

    # -- data ----------------------------------------------------------------------------------
    def train_loader(self):
        d = self.config.data
        cfg = LoaderConfig(
            dataset=d.dataset, config=d.config, split=d.split, data_dir=d.data_dir or None,
            num_frames=1, batch_size=parallel.batch_size_per_process(d.batch_size),
            seed=self.config.seed, shuffle=True, num_epochs=None, random_window=True,
            frames=True, audio=False, augment=True, flip_prob=0.5 if d.flip else 0.0,
            colour_jitter=d.colour_jitter, drop_remainder=True, cache_clips=d.cache_clips,
            worker_count=d.num_workers, worker_buffer_size=d.worker_buffer_size)
        return make_loader(cfg)

    def device_batch(self, batch: Mapping[str, Any]) -> dict[str, np.ndarray]:
        return {"frames": np.asarray(batch["frames"][:, 0], np.uint8),
                "motion": np.asarray(batch["motion"][:, 0], np.float32),
                "emotion": np.asarray(batch["emotion"], np.int32),
                "pos": (np.asarray(batch["pos"], np.int64) % (2 ** 31)).astype(np.int32)}

    # -- objective -----------------------------------------------------------------------------
    def loss(self, model: sp.SynthTalkProbe, batch, key):
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
    def evaluate(self, trainer, step: int) -> dict[str, float]:
        """Held-out validation identities: jaw_open and yaw r, per-frame emotion accuracy."""
        n = self.config.eval.train_eval_clips
        if not n:
            return {}
        from vasa_jax.train.restore import main_process_model

        model = main_process_model(trainer)  # a collective: every process takes part
        if model is None:
            return {}
        if not hasattr(self, "_eval_clips"):
            self._eval_clips = sp.read_clips(self.config, self.config.eval.train_eval_split, n)
        res = sp.clip_metrics(sp.Probe(model), self._eval_clips)
        return {"jaw_open_r": res["r/jaw_open"], "yaw_r": res["r/yaw"],
                "emotion_accuracy": res["emotion_accuracy"]}


def write_heldout(workdir: str, config=None, *, split: str | None = None,
                  max_clips: int | None = None) -> dict[str, Any]:
    """Measure the trained probe in ``workdir`` on held-out identities and write
    ``workdir/probe_heldout.json`` (NaN correlations as null). Returns the metrics.

    ``config`` locates the data (default: the checkpoint's own config); ``split`` defaults to
    ``config.eval.split`` (``test``) and ``max_clips`` to ``config.eval.max_clips`` (0 = all).
    Run it in one process, after training."""
    probe = sp.restore_probe(workdir)
    config = probe.config if config is None else config
    split = split or config.eval.split
    max_clips = config.eval.max_clips if max_clips is None else max_clips
    res: dict[str, Any] = sp.heldout_metrics(probe, config, split=split, max_clips=max_clips)
    res.update(split=split, dataset=f"{config.data.dataset}/{config.data.config}",
               step=int(probe.step))
    path = restore.write_heldout(workdir, sp.HELDOUT_FILE, res)
    logging.info("probe held-out metrics (%s):\n%s", path, sp.format_heldout(res))
    return res
