"""Face measurements on real (or generated) videos from mediapipe's face mesh, for the evaluation
table's rows without SynthTalk ground truth (e.g. VoxCeleb2 real videos and our generations).

Landmarks. ``FaceMeshTracker`` runs the 478-point face mesh bundled with mediapipe 0.10.14
(``refine_landmarks=True`` adds the 10 iris points 468-477) in video mode, so after the first
detection the mesh is tracked from frame to frame. Landmarks are returned in pixels of the frame
as (x right, y down, z): mediapipe's z is a relative depth, positive away from the camera, on
the same scale as x, so it is multiplied by the frame width like x. Frames without a face give
rows of NaN.

Canonical face. mediapipe 0.10.14's wheel does *not* ship the face-geometry canonical model
(``modules/face_geometry/data`` holds only ``__init__.py``; no ``canonical_face_model.obj`` nor
``geometry_pipeline_metadata`` binarypb), so ``canonical_face`` derives a frontal template from
the mesh's own output on scikit-image's bundled astronaut portrait: the mesh of the photo and
of its mirror image give the left/right pairing of the 478 points; the best-fitting reflection
between the two sides gives the face's symmetry plane (its normal is the template's x axis);
the template's y axis is the nasion (168) to chin (152) direction within that plane, so pitch 0
is a face whose nasion-chin line lies in the image plane (facial angle of about 90 degrees for an
upright head, as with the Frankfurt horizontal level); finally the two sides are averaged, so
the template is exactly mirror-symmetric. Template units: the outer-eye-corner distance is 1.

Head pose. Each frame's landmarks on the rigid part of the face (upper face: forehead, nose,
cheekbones; no lips, jaw, eyes, brows, irises or the silhouette ring) are fitted with a
similarity transform ``x = s R X + t`` of the template (orthogonal Procrustes / Kabsch with scale,
det R = +1), and R is read as ``R = Rz(roll) Rx(pitch) Ry(-yaw)`` in the (x right, y down,
z away from the camera) frame: yaw first about the head's vertical axis, then pitch, then roll in
the image plane. The signs match SynthTalk's motion fields (``data_pipeline/synthtalk/motion.py``):

- yaw > 0: the face turns to the image's right (the subject's left; the nose moves right);
- pitch > 0: the face tilts down (the nose moves down in the image);
- roll > 0: the face rotates clockwise in the image.

Mirroring a frame flips the signs of yaw and roll and keeps pitch. Angles are in radians.

Scale-normalised per-frame measures (3-D distances between landmarks, so unaffected by head
rotation to first order):

- ``mouth_aperture``: inner-lip gap (13-14) / outer-eye-corner distance (33-263). The eye
  distance, not the mouth width, is the unit so that spreading the lips (smiling, /i/) does not
  shrink the aperture; 0 = lips together, about 0.5-0.7 for a wide-open mouth.
- ``eye_aspect_ratio``: Soukupová & Čech (2016), (|p2-p6| + |p3-p5|) / (2 |p1-p4|), per eye,
  averaged over both eyes (about 0.25-0.35 open, under 0.15 closed).
"""

from __future__ import annotations

import functools

import numpy as np

from vasa_jax.eval.motion_metrics import delta_p
from vasa_jax.media.errors import InputError

NUM_LANDMARKS = 478

# Landmark indices of mediapipe's face mesh topology (subject's right eye = image left).
LEFT_EYE_OUTER, RIGHT_EYE_OUTER = 263, 33
UPPER_LIP_INNER, LOWER_LIP_INNER = 13, 14
NASION, CHIN, NOSE_TIP = 168, 152, 1
# EAR points p1..p6 (p1, p4: corners; p2, p3 upper lid; p6, p5 the lower lid below them).
RIGHT_EYE_EAR = (33, 160, 158, 133, 153, 144)
LEFT_EYE_EAR = (362, 385, 387, 263, 373, 380)


# --------------------------------------------------------------------------------- landmarks

class FaceMeshTracker:
    """mediapipe's bundled face mesh (478 points with iris refinement) over RGB frames.

    Use as a context manager or call ``close()``. ``static_image_mode=False`` (the default)
    tracks the face across consecutive frames of one video; make a new tracker per video (or
    call ``reset()``) so tracking does not carry over between clips.
    """

    def __init__(self, *, static_image_mode: bool = False, min_detection_confidence: float = 0.5,
                 min_tracking_confidence: float = 0.5):
        import mediapipe as mp

        self._options = dict(static_image_mode=static_image_mode, max_num_faces=1,
                             refine_landmarks=True,
                             min_detection_confidence=min_detection_confidence,
                             min_tracking_confidence=min_tracking_confidence)
        self._mesh = mp.solutions.face_mesh.FaceMesh(**self._options)

    def reset(self) -> None:
        """Forget the tracked face (start of a new video)."""
        import mediapipe as mp

        self._mesh.close()
        self._mesh = mp.solutions.face_mesh.FaceMesh(**self._options)

    def process(self, frame: np.ndarray) -> np.ndarray:
        """One (H, W, 3) uint8 RGB frame -> (478, 3) float64 landmarks in pixels (x, y, depth
        z scaled like x), NaN when no face is found."""
        frame = np.asarray(frame)
        if frame.ndim != 3 or frame.shape[-1] != 3 or frame.dtype != np.uint8:
            raise ValueError(f"A frame must be (H, W, 3) uint8 RGB, got {frame.shape} "
                             f"{frame.dtype}.")
        h, w = frame.shape[:2]
        result = self._mesh.process(np.ascontiguousarray(frame))
        if not result.multi_face_landmarks:
            return np.full((NUM_LANDMARKS, 3), np.nan)
        pts = result.multi_face_landmarks[0].landmark
        out = np.array([(p.x, p.y, p.z) for p in pts], np.float64)
        return out * np.array([w, h, w], np.float64)

    def track(self, frames: np.ndarray) -> np.ndarray:
        """(T, H, W, 3) uint8 RGB -> (T, 478, 3) landmarks in pixels (NaN rows without a face)."""
        frames = np.asarray(frames)
        if frames.ndim != 4:
            raise ValueError(f"frames must be (T, H, W, 3) uint8 RGB, got {frames.shape}.")
        if len(frames) == 0:
            return np.zeros((0, NUM_LANDMARKS, 3))
        return np.stack([self.process(f) for f in frames])

    def close(self) -> None:
        self._mesh.close()

    def __enter__(self) -> "FaceMeshTracker":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ---------------------------------------------------------------------------- canonical face

def _procrustes(src: np.ndarray, dst: np.ndarray, proper: bool = True
                ) -> tuple[np.ndarray, float, np.ndarray]:
    """Similarity fit ``dst ~ s R src + t`` for (N, 3) point sets: (R (3, 3), s, t (3,)).
    ``proper``: constrain det R = +1 (a rotation), else the best orthogonal matrix."""
    mu_s, mu_d = src.mean(0), dst.mean(0)
    a, b = src - mu_s, dst - mu_d
    u, sig, vt = np.linalg.svd(b.T @ a)
    d = np.ones(3)
    if proper and np.linalg.det(u @ vt) < 0:
        d[2] = -1.0
    r = (u * d) @ vt
    s = float((sig * d).sum() / (a * a).sum())
    return r, s, mu_d - s * r @ mu_s


def _mirror_pairing(points: np.ndarray, mirrored: np.ndarray, width: int) -> np.ndarray:
    """The left/right partner of each landmark, (478,) int: ``mirrored`` are the landmarks of
    the horizontally flipped photo; flipping them back puts point i where its partner is."""
    from scipy.optimize import linear_sum_assignment

    back = mirrored.copy()
    back[:, 0] = width - back[:, 0]
    cost = np.linalg.norm(back[:, None, :2] - points[None, :, :2], axis=-1)
    rows, cols = linear_sum_assignment(cost)
    pair = np.empty(len(points), int)
    pair[rows] = cols
    return pair


def _eye_mouth_brow_indices() -> set[int]:
    from mediapipe.python.solutions import face_mesh_connections as c

    sets = (c.FACEMESH_LIPS, c.FACEMESH_LEFT_EYE, c.FACEMESH_RIGHT_EYE, c.FACEMESH_LEFT_EYEBROW,
            c.FACEMESH_RIGHT_EYEBROW, c.FACEMESH_FACE_OVAL, c.FACEMESH_IRISES)
    return {i for s in sets for edge in s for i in edge} | set(range(468, NUM_LANDMARKS))


@functools.lru_cache(maxsize=1)
def _canonical() -> tuple[np.ndarray, np.ndarray]:
    import skimage.data

    photo = skimage.data.astronaut()
    with FaceMeshTracker(static_image_mode=True) as fm:
        pts, mir = fm.process(photo), fm.process(photo[:, ::-1])
    if np.isnan(pts).any() or np.isnan(mir).any():
        raise RuntimeError("mediapipe's face mesh found no face in scikit-image's astronaut "
                           "photo; the canonical face cannot be built (check the mediapipe "
                           "install: 0.10.14 bundles the face models).")
    pair = _mirror_pairing(pts, mir, photo.shape[1])
    c = pts - pts.mean(0)
    # The reflection mapping each point to its partner: its -1 eigenvector is the lateral axis.
    q, _, _ = _procrustes(c, c[pair], proper=False)
    evals, evecs = np.linalg.eigh((q + q.T) / 2)
    lateral = evecs[:, np.argmin(evals)]
    if (c[LEFT_EYE_OUTER] - c[RIGHT_EYE_OUTER]) @ lateral < 0:
        lateral = -lateral
    down = c[CHIN] - c[NASION]
    down = down - (down @ lateral) * lateral
    down /= np.linalg.norm(down)
    away = np.cross(lateral, down)  # right-handed: x right, y down, z away from the camera
    t = c @ np.stack([lateral, down, away], 1)
    mirror = np.array([-1.0, 1.0, 1.0])
    t = (t + t[pair] * mirror) / 2  # exactly symmetric
    t -= t.mean(0)
    t /= np.linalg.norm(t[LEFT_EYE_OUTER] - t[RIGHT_EYE_OUTER])
    skip = _eye_mouth_brow_indices()
    rigid = np.array([i for i in range(468) if i not in skip and t[i, 1] <= t[NOSE_TIP, 1]])
    return t, rigid


def canonical_face() -> np.ndarray:
    """The frontal template, (478, 3): x to the image's right (subject's left), y down, z away
    from the camera, centred, outer-eye-corner distance 1, mirror-symmetric. Built once (on the
    first call) from the face mesh of scikit-image's astronaut photo (see the module doc)."""
    return _canonical()[0].copy()


def rigid_indices() -> np.ndarray:
    """Indices (K,) of the landmarks used for the pose fit (upper face, no eyes/brows/lips/
    silhouette)."""
    return _canonical()[1].copy()


# ------------------------------------------------------------------------------- head pose

def rotation_from_angles(yaw, pitch, roll) -> np.ndarray:
    """``Rz(roll) Rx(pitch) Ry(-yaw)`` in the (x right, y down, z away) frame: (...,) x 3 ->
    (..., 3, 3). The inverse of ``angles_from_rotation``."""
    yaw, pitch, roll = (np.asarray(a, np.float64) for a in (yaw, pitch, roll))
    o, z = np.ones_like(yaw), np.zeros_like(yaw)
    cy, sy = np.cos(-yaw), np.sin(-yaw)
    cp, sp = np.cos(pitch), np.sin(pitch)
    cr, sr = np.cos(roll), np.sin(roll)
    ry = np.stack([np.stack([cy, z, sy], -1), np.stack([z, o, z], -1),
                   np.stack([-sy, z, cy], -1)], -2)
    rx = np.stack([np.stack([o, z, z], -1), np.stack([z, cp, -sp], -1),
                   np.stack([z, sp, cp], -1)], -2)
    rz = np.stack([np.stack([cr, -sr, z], -1), np.stack([sr, cr, z], -1),
                   np.stack([z, z, o], -1)], -2)
    return rz @ rx @ ry


def angles_from_rotation(r: np.ndarray) -> np.ndarray:
    """(..., 3, 3) rotations -> (..., 3) (yaw, pitch, roll) radians (conventions: module doc)."""
    r = np.asarray(r, np.float64)
    pitch = np.arcsin(np.clip(r[..., 2, 1], -1.0, 1.0))
    yaw = np.arctan2(r[..., 2, 0], r[..., 2, 2])
    roll = np.arctan2(-r[..., 0, 1], r[..., 1, 1])
    return np.stack([yaw, pitch, roll], -1)


def fit_pose(landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rigid + scale fit of the canonical face to each frame's rigid landmarks.

    ``landmarks``: (T, 478, 3) or (478, 3) pixels. Returns (R (T, 3, 3), s (T,) pixels per
    template unit, i.e. per outer-eye-corner distance, t (T, 3)); NaN for frames without a face.
    """
    lm = np.asarray(landmarks, np.float64)
    single = lm.ndim == 2
    lm = lm[None] if single else lm
    tmpl, rigid = _canonical()
    rs = np.full((len(lm), 3, 3), np.nan)
    ss = np.full(len(lm), np.nan)
    ts = np.full((len(lm), 3), np.nan)
    for k, frame in enumerate(lm):
        if np.isnan(frame[rigid]).any():
            continue
        rs[k], ss[k], ts[k] = _procrustes(tmpl[rigid], frame[rigid])
    return (rs[0], ss[0], ts[0]) if single else (rs, ss, ts)


def head_pose(landmarks: np.ndarray) -> np.ndarray:
    """(T, 478, 3) or (478, 3) landmarks -> (T, 3) or (3,) (yaw, pitch, roll) radians."""
    return angles_from_rotation(fit_pose(landmarks)[0])


# ------------------------------------------------------------------------ mouth and eyes

def _dist(lm: np.ndarray, i: int, j: int) -> np.ndarray:
    return np.linalg.norm(lm[..., i, :] - lm[..., j, :], axis=-1)


def mouth_aperture(landmarks: np.ndarray) -> np.ndarray:
    """Inner-lip gap / outer-eye-corner distance: (T, 478, 3) -> (T,) (or (478, 3) -> scalar)."""
    lm = np.asarray(landmarks, np.float64)
    return _dist(lm, UPPER_LIP_INNER, LOWER_LIP_INNER) / _dist(lm, LEFT_EYE_OUTER,
                                                               RIGHT_EYE_OUTER)


def eye_aspect_ratio(landmarks: np.ndarray) -> np.ndarray:
    """Soukupová & Čech EAR averaged over both eyes: (T, 478, 3) -> (T,)."""
    lm = np.asarray(landmarks, np.float64)

    def ear(p):
        return (_dist(lm, p[1], p[5]) + _dist(lm, p[2], p[4])) / (2 * _dist(lm, p[0], p[3]))

    return (ear(RIGHT_EYE_EAR) + ear(LEFT_EYE_EAR)) / 2


# ---------------------------------------------------------------------------------- blinks

def blinks(ear: np.ndarray, fps: float, *, closed_fraction: float = 0.75,
           open_percentile: float = 75.0, min_seconds: float = 0.03,
           max_seconds: float = 0.5) -> dict:
    """Blink events in an EAR track (T,) (NaN = no face).

    The open-eye level is the clip's ``open_percentile`` EAR percentile; a blink is a run of
    frames with EAR below ``closed_fraction`` times that level lasting between ``min_seconds``
    (at least one frame) and ``max_seconds`` (longer closures are eyes shut or looking down,
    not blinks) and not touching a frame without a face or the clip's ends.

    Returns ``count``, ``rate_per_minute`` (over the clip's duration), ``frames`` (K,) the
    frame of lowest EAR in each blink, ``spans`` (K, 2) [start, end) frames, ``open_level``
    and ``threshold``.
    """
    ear = np.asarray(ear, np.float64)
    valid = ~np.isnan(ear)
    empty = dict(count=0, rate_per_minute=0.0, frames=np.zeros(0, int),
                 spans=np.zeros((0, 2), int), open_level=float("nan"),
                 threshold=float("nan"))
    if valid.sum() < 2:
        return empty
    level = float(np.percentile(ear[valid], open_percentile))
    thr = closed_fraction * level
    low = np.where(valid, ear < thr, False)
    # Runs of low frames.
    edges = np.diff(np.concatenate([[0], low.astype(int), [0]]))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    min_len = max(1, int(round(min_seconds * fps)))
    max_len = max(min_len, int(round(max_seconds * fps)))
    frames, spans = [], []
    for a, b in zip(starts, ends):
        if not min_len <= b - a <= max_len or a == 0 or b == len(ear):
            continue
        if not (valid[a - 1] and valid[b]):
            continue
        frames.append(a + int(np.argmin(ear[a:b])))
        spans.append((a, b))
    minutes = len(ear) / fps / 60.0
    return dict(count=len(frames), rate_per_minute=len(frames) / minutes if minutes else 0.0,
                frames=np.asarray(frames, int), spans=np.asarray(spans, int).reshape(-1, 2),
                open_level=level, threshold=thr)


# ------------------------------------------------------------------------------ one video

def _delta_p_over_runs(pose: np.ndarray, found: np.ndarray) -> float:
    """ΔP over the runs of consecutive frames with a face (each run weighted by its number of
    steps): (T, 3), (T,) bool -> radians per frame (NaN with no two consecutive faces)."""
    edges = np.diff(np.concatenate([[0], found.astype(int), [0]]))
    runs = [(a, b) for a, b in zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1))
            if b - a >= 2]
    if not runs:
        return float("nan")
    steps = np.array([b - a - 1 for a, b in runs], np.float64)
    values = np.array([delta_p(pose[a:b]) for a, b in runs])
    return float((values * steps).sum() / steps.sum())


def measure_video(frames: np.ndarray, fps: float, *, tracker: FaceMeshTracker | None = None,
                  name: str = "the video") -> dict:
    """All measures of one video (T, H, W, 3) uint8 RGB at ``fps``.

    Returns a dict: per-frame tracks (T,) ``mouth``, ``ear``, ``yaw``, ``pitch``, ``roll``
    (radians; NaN where no face), ``landmarks`` (T, 478, 3), ``detection_rate`` (fraction of
    frames with a face), ``blinks`` (see ``blinks``), ``delta_p`` (mean absolute frame-to-frame
    change of (yaw, pitch, roll) over consecutive frames that both have a face, radians per
    frame), ``pose_range`` {yaw, pitch, roll: (min, max)} and ``pose_std`` (3,), ``mouth_std``,
    ``num_frames`` and ``fps``.

    Noise floor: on a still frame repeated, mediapipe's tracked mesh alternates between two
    nearby solutions, so ΔP is 0.07-0.3 deg (0.001-0.005 rad) per frame with no motion at all
    (more at higher resolution), and ``mouth_std`` about 0.01. Compare ΔP only between videos
    of similar size measured the same way.

    Raises InputError when no frame has a face. A given ``tracker`` is reset first and left
    open; otherwise one is made and closed.
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or not len(frames):
        raise ValueError(f"frames must be (T, H, W, 3) uint8 RGB with T >= 1, got "
                         f"{frames.shape} {frames.dtype}.")
    if tracker is None:
        with FaceMeshTracker() as tr:
            lm = tr.track(frames)
    else:
        tracker.reset()
        lm = tracker.track(frames)
    found = ~np.isnan(lm[:, 0, 0])
    t, h, w = frames.shape[:3]
    if not found.any():
        raise InputError(f"No face found in any of the {t} frames of {name} ({w}x{h}); the "
                         f"measures need one clearly visible face (mediapipe face mesh). Check that the "
                         f"frames are RGB uint8 and show a face at least ~30 px wide.")
    pose = head_pose(lm)
    mouth, ear = mouth_aperture(lm), eye_aspect_ratio(lm)
    dp = _delta_p_over_runs(pose, found)
    names = ("yaw", "pitch", "roll")
    return dict(
        landmarks=lm, mouth=mouth, ear=ear, yaw=pose[:, 0], pitch=pose[:, 1], roll=pose[:, 2],
        detection_rate=float(found.mean()), blinks=blinks(ear, fps), delta_p=dp,
        pose_range={n: (float(np.nanmin(pose[:, i])), float(np.nanmax(pose[:, i])))
                    for i, n in enumerate(names)},
        pose_std=np.nanstd(pose, axis=0), mouth_std=float(np.nanstd(mouth)),
        num_frames=int(t), fps=float(fps))
