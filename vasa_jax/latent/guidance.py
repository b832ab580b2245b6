"""Stage-1 motion guidance and the oracle rung (config switches; ``paper`` uses none of them).

MegaPortraits and VASA-1 learn head pose and facial dynamics without labels. On a CPU budget
that converges to copying the source (the motion latents carried no yaw or jaw, ridge r 0.05 /
0.09). The stage-1 lineage as practised supervises the motion code instead: face-vid2vid and
LivePortrait take head rotation/translation from a pretrained head-pose network, and LivePortrait
adds a landmark-guided loss on eyes and lips. Here:

- ``pose_guide``: L2 between the motion encoder's ``z_pose`` (b, 7) and the pose labels in the
  model's convention (``pose_labels``); ``tz`` is not labelled (orthographic renders) and stays
  free. Labels: SynthTalk's ground truth, or on real video the face-mesh head pose.
- ``expression_guide``: a small head (``ExpressionReadout``) reads the guided expression channels
  (``EXPRESSION_FIELDS``: jaw opening, lip width and rounding, blink, gaze) off ``z_dyn``, with an
  L2 loss against the labels scaled by ``EXPRESSION_SCALE``. ``z_dyn`` stays a free latent: the
  readout only makes sure the channels that matter for lip sync are in it.
- the oracle rung (``model.motion_source = "oracle"``): ``z_pose`` is the label itself and
  ``z_dyn`` a learned MLP of the 12-d ground truth (``OracleDynamics``). It answers whether the
  decoder can render a driver's motion at all, independent of any encoder.
- ``region_weight``: a box around the mouth centre (from the labels), for an extra L1 on the
  pixels that carry lip sync (the SynthTalk mouth is about 5 px of a 64 px frame and drowns in
  a whole-image L1).

Labels are SynthTalk's 12-d motion track (``data_pipeline.synthtalk.motion.MOTION_FIELDS``), or
on real video the face-mesh track the voxceleb2 builder stores in the same convention
(``data_pipeline.voxceleb2.face_labels``: NaN where no face was found or a field is not measured;
the guides skip those entries). The oracle rung needs complete labels (SynthTalk).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from data_pipeline.synthtalk import render
from data_pipeline.synthtalk.motion import FIELD, MOTION_DIM
from vasa_jax.nn.layers import dense

# Typical spread of each SynthTalk motion field (radians, normalised units, head scale, 0-1
# expression units): the unit every guide and the oracle's input measure errors in.
MOTION_SPREAD = np.array([0.2, 0.1, 0.1, 0.1, 0.1, 0.15, 0.25, 0.25, 0.25, 0.3, 0.15, 0.15],
                         np.float32)
EXPRESSION_FIELDS = ("jaw_open", "lip_width", "lip_round", "blink", "gaze_x", "gaze_y")
# So every guided expression channel weighs about the same.
EXPRESSION_SCALE = MOTION_SPREAD[[FIELD[f] for f in EXPRESSION_FIELDS]]
# z_pose channels with a label (yaw, pitch, roll, tx, ty, log_scale; not tz).
LABELLED_POSE = np.array([1, 1, 1, 1, 1, 0, 1], np.float32)
# The spread of each z_pose label (tz has none; the spread of log scale is about that of
# scale near 1), so the pose guide starts near 1 like the expression guide.
POSE_SCALE = np.concatenate([MOTION_SPREAD[:5], [1.0], MOTION_SPREAD[5:6]]).astype(np.float32)
# The renderer places the head centre 0.02 above ty (``render._render_frame``).
_TY_OFFSET = 0.02


def pose_labels(motion: jax.Array) -> jax.Array:
    """SynthTalk motion (..., 12) -> z_pose labels (..., 7) = (yaw, pitch, roll, tx, ty, tz,
    log_scale) in ``warp``'s convention.

    The renderer draws a feature at head position (X, Y, Z) at ``(X cos yaw + Z sin yaw,
    Y cos pitch + Z sin pitch)``, rolled and scaled; ``warp.rotation_matrix`` rotates y by
    ``cos p Y - sin p Z``, so pitch changes sign. tz is 0 (an orthographic camera)."""
    m = jnp.asarray(motion, jnp.float32)
    g = lambda name: m[..., FIELD[name]]  # noqa: E731
    return jnp.stack([g("yaw"), -g("pitch"), g("roll"), g("tx"), g("ty") - _TY_OFFSET,
                      jnp.zeros_like(g("yaw")), jnp.log(g("scale"))], axis=-1)


def expression_labels(motion: jax.Array) -> jax.Array:
    """SynthTalk motion (..., 12) -> the guided expression channels (..., 6), scaled by
    ``EXPRESSION_SCALE``."""
    m = jnp.asarray(motion, jnp.float32)
    cols = jnp.stack([m[..., FIELD[f]] for f in EXPRESSION_FIELDS], axis=-1)
    return cols / EXPRESSION_SCALE


def masked_mse(pred: jax.Array, labels: jax.Array, weight: jax.Array | None = None
               ) -> jax.Array:
    """Mean squared error over the finite labels (real-video labels are NaN where the face
    mesh found no face or a field is not measured), optionally weighted per channel:
    (b, k) x 2 -> scalar (0 when no label is finite). NaN labels pass no gradient or NaN."""
    ok = jnp.isfinite(labels)
    w = ok.astype(jnp.float32) * (1.0 if weight is None else weight)
    err = pred - jnp.where(ok, labels, 0.0)
    return (w * jnp.square(err)).sum() / jnp.maximum(w.sum(), 1.0)


def pose_guide_loss(z_pose: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean squared error over the labelled pose channels, each in units of its typical spread
    (``POSE_SCALE``): (b, 7) x 2 -> scalar. Non-finite labels are skipped."""
    scale = jnp.asarray(POSE_SCALE)
    return masked_mse(z_pose / scale, labels / scale, jnp.asarray(LABELLED_POSE))


class ExpressionReadout(nnx.Module):
    """z_dyn (b, dyn_dim) -> the guided expression channels (b, 6) (scaled units): a one-hidden
    -layer MLP, so the channels must be present in z_dyn but need not be its coordinates."""

    def __init__(self, dyn_dim: int, hidden: int, *, rngs: nnx.Rngs, dtype=jnp.float32):
        self.fc = dense(dyn_dim, hidden, ("cond", "mlp"), rngs=rngs, dtype=dtype)
        self.out = dense(hidden, len(EXPRESSION_FIELDS), ("mlp", None), rngs=rngs, dtype=dtype)

    def __call__(self, z_dyn: jax.Array) -> jax.Array:
        return self.out(jax.nn.silu(self.fc(z_dyn))).astype(jnp.float32)


class OracleDynamics(nnx.Module):
    """The oracle rung's z_dyn: a learned MLP of the ground-truth motion (b, 12) -> (b, dyn_dim)
    (two hidden layers). Inputs are centred and scaled by fixed SynthTalk spreads."""

    _CENTRE = np.array([0, 0, 0, 0, 0, 1, 0.3, 0.4, 0.3, 0.1, 0, 0], np.float32)

    def __init__(self, dyn_dim: int, hidden: int, *, rngs: nnx.Rngs, dtype=jnp.float32):
        self.fc1 = dense(MOTION_DIM, hidden, (None, "mlp"), rngs=rngs, dtype=dtype)
        self.fc2 = dense(hidden, hidden, ("mlp", "mlp"), rngs=rngs, dtype=dtype)
        self.out = dense(hidden, dyn_dim, ("mlp", "cond"), rngs=rngs, dtype=dtype)

    def __call__(self, motion: jax.Array) -> jax.Array:
        x = (jnp.asarray(motion, jnp.float32) - self._CENTRE) / MOTION_SPREAD
        x = jax.nn.silu(self.fc1(x))
        x = jax.nn.silu(self.fc2(x))
        return self.out(x).astype(jnp.float32)


def region_weight(motion: np.ndarray, resolution: int, half: tuple[float, float] = (0.12, 0.09),
                  mouth_centre: np.ndarray | None = None) -> np.ndarray:
    """A box around the mouth centre of each frame: motion (b, 12) -> (b, R, R, 1) float32 in
    {0, 1}. ``half`` = the box's half width and height as fractions of R (at 64 px about 15 x 11
    px, one and a half times the widest SynthTalk mouth at scale 1). Computed on the host: from
    SynthTalk's ground-truth motion through its geometry, or from ``mouth_centre`` (b, 2)
    (x right, y down, image half-widths; the face-mesh lips on real video) when given. A NaN
    centre (no face) gives an empty box."""
    if mouth_centre is not None:
        c = (np.asarray(mouth_centre, np.float64) + 1.0) * 0.5 * resolution - 0.5
    else:
        c = render.mouth_centre_pixels(np.asarray(motion), resolution)  # (b, 2) column, row
    ii = np.arange(resolution, dtype=np.float32)
    inx = np.abs(ii[None, None, :] - c[:, 0, None, None]) <= half[0] * resolution
    iny = np.abs(ii[None, :, None] - c[:, 1, None, None]) <= half[1] * resolution
    with np.errstate(invalid="ignore"):
        return (inx & iny).astype(np.float32)[..., None]


def region_l1(pred: jax.Array, target: jax.Array, weight: jax.Array) -> jax.Array:
    """Mean absolute error inside the region ``weight`` (b, R, R, 1): (b, R, R, 3) x 2 ->
    scalar (0 when the region is empty)."""
    err = jnp.abs(pred.astype(jnp.float32) - target.astype(jnp.float32)).mean(-1, keepdims=True)
    return (weight * err).sum() / jnp.maximum(weight.sum(), 1.0)


__all__ = ["EXPRESSION_FIELDS", "EXPRESSION_SCALE", "ExpressionReadout", "MOTION_SPREAD",
           "OracleDynamics", "POSE_SCALE", "expression_labels", "masked_mse", "pose_guide_loss",
           "pose_labels", "region_l1", "region_weight"]
