"""Per-frame motion labels of real video from mediapipe's face mesh, in SynthTalk's convention.

Stage 1's guidance (``vasa_jax.latent.guidance``: ``loss.pose_guide``, ``loss.expression_guide``,
``loss.mouth_l1``) reads SynthTalk's 12-d ground-truth ``motion`` track. On real video the same
fields are measured with the face mesh (``vasa_jax.eval.face_landmarks``), so the voxceleb2
builder stores a ``motion`` track of the same shape, field order, signs and (approximately)
units, and every guidance switch works on either dataset. Fields (``MOTION_FIELDS``):

- ``yaw``, ``pitch``, ``roll``: ``face_landmarks.head_pose`` (radians; its signs are SynthTalk's).
- ``tx``, ``ty``: where SynthTalk would put the head centre for eyes at the measured place:
  the outer-eye-corner midpoint in image half-widths (x right, y down, 0 = frame centre), moved
  down by SynthTalk's eye height (0.06 head units) and its 0.02 centre offset.
- ``scale``: the 3-D outer-eye-corner distance (the similarity fit's scale, so head turns do
  not shrink it) over SynthTalk's at scale 1 (``SYNTHTALK_EYE_SPAN`` half-widths).
- ``jaw_open``: ``face_landmarks.mouth_aperture`` / ``APERTURE_WIDE`` (0 = lips together,
  about 1 for a wide-open mouth).
- ``lip_width``: mouth-corner distance (61-291) / outer-eye-corner distance, mapped linearly
  so ``LIP_WIDTH_REST`` -> 0 and ``LIP_WIDTH_SPREAD`` -> 1.
- ``lip_round``: not measured (NaN): lip protrusion is not reliably visible in the mesh's depth.
- ``blink``: 1 - EAR / the clip's open-eye EAR (its 75th percentile, as
  ``face_landmarks.blinks``), clipped to [0, 1]: 0 open, 1 closed.
- ``gaze_x``, ``gaze_y``: each iris centre's offset from its eye's corner midpoint along the eye
  axis (x, image right positive) and across it (y, down positive), over half the eye width, read
  as the sine of the gaze angle (eyeball radius about half the eye width); averaged over the eyes.

Frames without a face are NaN in every field; the guidance losses skip NaN labels. The constants
are rough typical values for real faces (not fitted to any dataset), so the expression fields are
in SynthTalk's units only approximately: the expression guide's readout is a learned head, which
needs the channels, not their exact scale. ``mouth_centre`` (T, 2) is the inner-lip midpoint in
the same half-width coordinates, for the mouth box of ``loss.mouth_l1`` (SynthTalk computes it
from its own geometry). Both flip with the frame under a horizontal mirror like SynthTalk's
track (``data_pipeline.loader.MIRRORED_MOTION_COLUMNS``; x of ``mouth_centre``).
"""

from __future__ import annotations

import threading

import numpy as np

from data_pipeline.synthtalk.motion import FIELD, MOTION_DIM
from data_pipeline.synthtalk.render import HEAD_UNIT
from vasa_jax.eval import face_landmarks as fl

# SynthTalk's outer-eye-corner distance at scale 1, in image half-widths: 2 (eye_dx + eye half
# width) = 2 (0.275 + 0.105) head units (render.py, identity.py medians) of HEAD_UNIT each.
SYNTHTALK_EYE_SPAN = 2 * (0.275 + 0.105) * HEAD_UNIT
_EYE_HEIGHT, _CENTRE_OFFSET = 0.06, 0.02  # render.py: eyes 0.06 head units above the centre
APERTURE_WIDE = 0.5  # mouth_aperture of a wide-open mouth (face_landmarks: about 0.5-0.7)
LIP_WIDTH_REST, LIP_WIDTH_SPREAD = 0.55, 0.75  # mouth-corner / outer-eye-corner distance
OPEN_EYE_PERCENTILE = 75.0
MOUTH_LEFT, MOUTH_RIGHT = 61, 291  # mouth corners (image left / right on a frontal face)
IRIS_CENTRES = (468, 473)
EYE_CORNERS = ((fl.RIGHT_EYE_OUTER, 133), (fl.LEFT_EYE_OUTER, 362))  # (outer, inner) per eye


def _half_widths(px: np.ndarray, resolution: int) -> np.ndarray:
    """mediapipe's pixel coordinates (continuous: 0 = the frame's left/top edge, pixel i spans
    [i, i + 1)) -> half-widths of the frame (-1 = left/top edge, 0 = centre)."""
    return px * (2.0 / resolution) - 1.0


def _gaze(lm: np.ndarray) -> np.ndarray:
    """(T, 478, 3) pixels -> (T, 2) (gaze_x, gaze_y) radians, averaged over both eyes."""
    out = []
    for outer, inner in EYE_CORNERS:
        a, b = lm[:, outer, :2], lm[:, inner, :2]
        centre = (a + b) / 2
        axis = np.where((b[:, :1] > a[:, :1]), b - a, a - b)  # points to the image's right
        width = np.linalg.norm(axis, axis=-1, keepdims=True)
        ex = axis / width
        ey = np.stack([-ex[:, 1], ex[:, 0]], -1)  # ex turned a quarter clockwise: down
        # This eye's iris: the iris centre nearer its corner midpoint (robust to the mesh's
        # left/right naming).
        iris = np.stack([lm[:, i, :2] for i in IRIS_CENTRES], 1)  # (T, 2, 2)
        pick = np.argmin(np.linalg.norm(iris - centre[:, None], axis=-1), axis=1)
        iris = iris[np.arange(len(lm)), pick]
        d = iris - centre
        sines = np.stack([(d * ex).sum(-1), (d * ey).sum(-1)], -1) / (width / 2)
        out.append(np.arcsin(np.clip(sines, -1.0, 1.0)))
    return (out[0] + out[1]) / 2


def motion_from_landmarks(landmarks: np.ndarray, resolution: int
                          ) -> tuple[np.ndarray, np.ndarray]:
    """Face-mesh landmarks of one clip -> its labels.

    ``landmarks``: (T, 478, 3) pixels of square frames of side ``resolution`` (NaN rows for
    frames without a face, as ``FaceMeshTracker.track`` gives). Returns (``motion`` (T, 12)
    float32 in SynthTalk's field order, NaN where unmeasured; ``mouth_centre`` (T, 2) float32
    half-widths (x right, y down))."""
    lm = np.asarray(landmarks, np.float64)
    if lm.ndim != 3 or lm.shape[1:] != (fl.NUM_LANDMARKS, 3):
        raise ValueError(f"landmarks must be (T, {fl.NUM_LANDMARKS}, 3), got {lm.shape}.")
    t = len(lm)
    motion = np.full((t, MOTION_DIM), np.nan)
    found = ~np.isnan(lm).any(axis=(1, 2))
    mouth_centre = np.full((t, 2), np.nan)
    if not found.any():
        return motion.astype(np.float32), mouth_centre.astype(np.float32)
    f = lm[found]
    rot, s, _ = fl.fit_pose(f)
    pose = fl.angles_from_rotation(rot)
    scale = s * (2.0 / resolution) / SYNTHTALK_EYE_SPAN
    eyes = _half_widths((f[:, fl.RIGHT_EYE_OUTER, :2] + f[:, fl.LEFT_EYE_OUTER, :2]) / 2,
                        resolution)
    eye_dist = np.linalg.norm(f[:, fl.LEFT_EYE_OUTER] - f[:, fl.RIGHT_EYE_OUTER], axis=-1)
    ear = fl.eye_aspect_ratio(f)
    open_level = np.percentile(ear, OPEN_EYE_PERCENTILE)
    m = motion[found]
    m[:, FIELD["yaw"]], m[:, FIELD["pitch"]], m[:, FIELD["roll"]] = pose.T
    m[:, FIELD["scale"]] = scale
    m[:, FIELD["tx"]] = eyes[:, 0]
    m[:, FIELD["ty"]] = eyes[:, 1] + _CENTRE_OFFSET + _EYE_HEIGHT * HEAD_UNIT * scale
    m[:, FIELD["jaw_open"]] = fl.mouth_aperture(f) / APERTURE_WIDE
    width = np.linalg.norm(f[:, MOUTH_RIGHT] - f[:, MOUTH_LEFT], axis=-1) / eye_dist
    m[:, FIELD["lip_width"]] = (width - LIP_WIDTH_REST) / (LIP_WIDTH_SPREAD - LIP_WIDTH_REST)
    m[:, FIELD["blink"]] = np.clip(1.0 - ear / open_level, 0.0, 1.0)
    m[:, [FIELD["gaze_x"], FIELD["gaze_y"]]] = _gaze(f)
    motion[found] = m
    lips = (f[:, fl.UPPER_LIP_INNER, :2] + f[:, fl.LOWER_LIP_INNER, :2]) / 2
    mouth_centre[found] = _half_widths(lips, resolution)
    return motion.astype(np.float32), mouth_centre.astype(np.float32)


_LOCAL = threading.local()  # one face-mesh tracker per thread (Beam workers included)


def label_clip(frames: np.ndarray) -> dict[str, np.ndarray]:
    """(T, R, R, 3) uint8 RGB -> ``{"motion": (T, 12), "mouth_centre": (T, 2)}`` float32 (NaN
    where no face), tracking the mesh through the clip from a fresh detection."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[1] != frames.shape[2] or frames.dtype != np.uint8:
        raise ValueError(f"frames must be square (T, R, R, 3) uint8, got {frames.dtype} "
                         f"{frames.shape}.")
    tracker = getattr(_LOCAL, "tracker", None)
    if tracker is None:
        tracker = _LOCAL.tracker = fl.FaceMeshTracker()
    else:
        tracker.reset()  # forget the previous clip's face
    motion, mouth = motion_from_landmarks(tracker.track(frames), frames.shape[1])
    return {"motion": motion, "mouth_centre": mouth}


__all__ = ["APERTURE_WIDE", "LIP_WIDTH_REST", "LIP_WIDTH_SPREAD", "SYNTHTALK_EYE_SPAN",
           "label_clip", "motion_from_landmarks"]
