"""SynthTalk's exact cross-reenactment targets, a stage-1 training signal (``loss.cross_render``;
issue 18 item 5; not in the papers, which have no such data).

A real dataset shows each person only with their own motion, so stage 1 learns to reenact
identity A with B's motion (the task it is used for) only through same-person reconstruction
and the indirect ``l_consist`` / ``l_cross_id`` terms. SynthTalk can render the answer: the
renderer is a pure JAX function of (motion, appearance, emotion style), so identity A's
appearance drawn with B's per-frame motion and B's clip emotion is the exact target of "V_app of
A, motion of B". The training step's cross rows (``l_cross_id``'s: source i with the driver of
row (i - 1) mod b) then also get the reconstruction terms against that target.

Mirror augmentation is respected: the driver's labels are already mirrored with its frame, and
a mirrored source shows the mirror image of A, whose render with motion m is the mirror of A's
render with the mirrored motion (A's hair need not be symmetric). The mouth box of a target is
its driver's (the mouth centre depends on the motion only).

Inputs come per batch row from the host (``RowInputs``): the source's appearance
(``Identity.render_params`` of its identity, drawn from the dataset's seed), the driver clip's
emotion style and the source's mirror flag.
"""

from __future__ import annotations

import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from data_pipeline.loader import MIRRORED_MOTION_COLUMNS
from data_pipeline.synthtalk import render
from data_pipeline.synthtalk.identity import sample_identity
from data_pipeline.synthtalk.motion import MOTION_DIM
from vasa_jax.latent.model import to_unit

_MIRROR_SIGN = np.ones(MOTION_DIM, np.float32)
_MIRROR_SIGN[list(MIRRORED_MOTION_COLUMNS)] = -1.0


def dataset_seed(dataset_dir: str | os.PathLike) -> int:
    """The seed a SynthTalk dataset was drawn with (its identities are a pure function of it),
    from the ``metadata.json`` TFDS writes beside the records."""
    path = os.path.join(os.fspath(dataset_dir), "metadata.json")
    try:
        with open(path) as f:
            return int(json.load(f)["seed"])
    except (OSError, KeyError, ValueError) as e:
        raise ValueError(f"loss.cross_render needs the SynthTalk dataset's seed from {path} "
                         f"({e}); rebuild the dataset with `vasa-jax data synthtalk` or turn "
                         f"loss.cross_render off.") from None


class RowInputs:
    """Host-side per-row inputs of the cross targets for one dataset (identities cached)."""

    def __init__(self, seed: int):
        self.seed = seed
        self._cache: dict[int, dict[str, np.ndarray]] = {}

    def appearance(self, identity: int) -> dict[str, np.ndarray]:
        if identity not in self._cache:
            self._cache[identity] = sample_identity(self.seed, identity).render_params()
        return self._cache[identity]

    def __call__(self, batch) -> dict[str, object]:
        """batch: the loader's pair batch (``identity`` (b,), ``driver_emotion`` (b,) or
        ``emotion``, optional ``mirrored`` (b,)) -> {"appearance": {name: (b, ...)}, "style":
        (b, 5) the driver clip's emotion style, "mirrored": (b,) float32}."""
        ids = np.asarray(batch["identity"]).astype(int)
        emotion = batch.get("driver_emotion", batch.get("emotion"))
        if emotion is None:
            raise ValueError("loss.cross_render needs the driver clip's emotion in the batch "
                             "(SynthTalk's 'emotion' field).")
        apps = [self.appearance(int(i)) for i in ids]
        mirrored = np.asarray(batch.get("mirrored", np.zeros(len(ids))), np.float32)
        return {"appearance": {k: np.stack([a[k] for a in apps]) for k in apps[0]},
                "style": render.EMOTION_STYLE[np.asarray(emotion).astype(int)],
                "mirrored": mirrored}


@functools.partial(jax.jit, static_argnames=("resolution",))
def render_targets(motion: jax.Array, appearance: dict, style: jax.Array, mirrored: jax.Array,
                   resolution: int) -> jax.Array:
    """Identity renders: motion (n, 12) as seen (mirrored with its frame), appearance {name:
    (n, ...)}, style (n, 5), mirrored (n,) 0/1 (the source's mirror flag) -> (n, R, R, 3)
    float32 in [-1, 1], the image the model's input convention expects (``to_unit``)."""
    flip = mirrored[:, None] > 0.5
    m = jnp.where(flip, motion * _MIRROR_SIGN, motion)
    # uint8, as the dataset stores its frames, so targets match the stored pixels.
    frames = to_unit(render.render_frames(m, appearance, style, resolution))
    return jnp.where(flip[:, :, None, None], frames[:, :, ::-1], frames)
