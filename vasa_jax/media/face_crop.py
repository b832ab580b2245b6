"""Find the face in a portrait photo and crop it to the framing the models were trained on.

Detection uses mediapipe's bundled BlazeFace models (0.10.14 ships them inside the wheel: the
short-range model for faces filling much of the photo, then the full-range one); when mediapipe
is not installed, scikit-image's bundled LBP frontal-face cascade. The crop is the square in which the
face box has the training framing (``Framing``: the box's centre and width as fractions of the
crop side), resized to the model resolution.
"""

from __future__ import annotations

import dataclasses
import functools

import cv2
import numpy as np

from vasa_jax.media.errors import InputError


@dataclasses.dataclass(frozen=True)
class FaceBox:
    """A detected face in pixels of the photo: top-left (x, y), width, height, score, and the
    eye centres ((x, y) of the eye on the image's left, then right) when the detector gives
    them."""

    x: float
    y: float
    width: float
    height: float
    score: float
    eyes: tuple[tuple[float, float], tuple[float, float]] | None = None

    @property
    def center(self) -> tuple[float, float]:
        return self.x + self.width / 2, self.y + self.height / 2

    @property
    def roll_degrees(self) -> float:
        """Angle of the eye line against the horizontal (0 without eyes), counter-clockwise
        positive in image coordinates (y down)."""
        if self.eyes is None:
            return 0.0
        (x0, y0), (x1, y1) = self.eyes
        return float(np.degrees(np.arctan2(-(y1 - y0), x1 - x0)))


@dataclasses.dataclass(frozen=True)
class Framing:
    """Where the detected face box sits in a training frame, as fractions of the frame side."""

    center_x: float
    center_y: float
    width: float


# SynthTalk's framing, measured with BlazeFace (short range) on frame 0 of 60 identities at
# 256 px: box centre (0.494 +- 0.020, 0.561 +- 0.016), width 0.382 +- 0.055 of the frame.
SYNTHTALK_FRAMING = Framing(0.494, 0.561, 0.382)


@functools.lru_cache(maxsize=2)
def _mediapipe_detector(model_selection: int):
    import mediapipe as mp

    return mp.solutions.face_detection.FaceDetection(model_selection=model_selection,
                                                     min_detection_confidence=0.5)


def _detect_mediapipe(image: np.ndarray, min_score: float) -> list[FaceBox]:
    h, w = image.shape[:2]
    for model_selection in (0, 1):  # short range, then full range
        result = _mediapipe_detector(model_selection).process(np.ascontiguousarray(image))
        boxes = []
        for d in result.detections or []:
            b = d.location_data.relative_bounding_box
            k = d.location_data.relative_keypoints  # 0, 1: the two eyes
            eyes = sorted([(k[0].x * w, k[0].y * h), (k[1].x * w, k[1].y * h)])
            if d.score[0] >= min_score:
                boxes.append(FaceBox(b.xmin * w, b.ymin * h, b.width * w, b.height * h,
                                     float(d.score[0]), (eyes[0], eyes[1])))
        if boxes:
            return boxes
    return []


def _detect_cascade(image: np.ndarray) -> list[FaceBox]:
    """scikit-image's bundled LBP frontal-face cascade (a weaker fallback: it misses turned
    faces and fires on face-like texture, so windows under half the largest one's width, mostly
    such false alarms in a portrait, are dropped)."""
    import skimage.data
    import skimage.feature

    detector = skimage.feature.Cascade(skimage.data.lbp_frontal_face_cascade_filename())
    h, w = image.shape[:2]
    found = detector.detect_multi_scale(img=image, scale_factor=1.2, step_ratio=1,
                                        min_size=(20, 20), max_size=(w, h))
    boxes = [FaceBox(float(d["c"]), float(d["r"]), float(d["width"]), float(d["height"]), 1.0)
             for d in found]
    largest = max((b.width for b in boxes), default=0.0)
    return [b for b in boxes if b.width >= largest / 2]


def detect_faces(image: np.ndarray, *, min_score: float = 0.5, backend: str = "auto"
                 ) -> list[FaceBox]:
    """Faces in ``image`` (H, W, 3) uint8 RGB, ordered left to right.

    ``backend``: "mediapipe", "cascade" (scikit-image's LBP cascade), or "auto" (mediapipe if
    installed, else the cascade)."""
    if backend == "auto":
        try:
            import mediapipe  # noqa: F401
            backend = "mediapipe"
        except ImportError:
            backend = "cascade"
    if backend == "mediapipe":
        boxes = _detect_mediapipe(image, min_score)
    elif backend == "cascade":
        boxes = _detect_cascade(image)
    else:
        raise ValueError(f"Unknown face detector {backend!r}; use 'auto', 'mediapipe' or "
                         f"'cascade'.")
    return sorted(boxes, key=lambda b: b.center[0])


def level_eyes(image: np.ndarray, box: FaceBox, max_degrees: float = 45.0) -> np.ndarray:
    """The photo rotated about the face centre so that the eye line is horizontal (the face box
    keeps its centre and size); unchanged without eye positions or for rolls under 1 degree or
    over ``max_degrees`` (a misdetection more likely than a head so tilted)."""
    angle = box.roll_degrees
    if abs(angle) < 1.0 or abs(angle) > max_degrees:
        return image
    m = cv2.getRotationMatrix2D(box.center, -angle, 1.0)
    return cv2.warpAffine(image, m, (image.shape[1], image.shape[0]), flags=cv2.INTER_CUBIC,
                          borderMode=cv2.BORDER_REPLICATE)


def crop_to_framing(image: np.ndarray, box: FaceBox, resolution: int,
                    framing: Framing = SYNTHTALK_FRAMING) -> np.ndarray:
    """The square around ``box`` in which it has ``framing``, resized to (R, R, 3) uint8 (area
    averaging when shrinking); parts outside the photo repeat its edge pixels."""
    side = max(1, int(round(box.width / framing.width)))
    cx, cy = box.center
    x0 = int(round(cx - (framing.center_x - 0.5) * side - side / 2))
    y0 = int(round(cy - (framing.center_y - 0.5) * side - side / 2))
    h, w = image.shape[:2]
    pad = max(0, -x0, -y0, x0 + side - w, y0 + side - h)
    if pad:
        image = cv2.copyMakeBorder(image, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
    square = image[y0 + pad:y0 + pad + side, x0 + pad:x0 + pad + side]
    interpolation = cv2.INTER_AREA if side > resolution else cv2.INTER_CUBIC
    return cv2.resize(square, (resolution, resolution), interpolation=interpolation)


def crop_face(image: np.ndarray, resolution: int, *, face_index: int | None = None,
              framing: Framing = SYNTHTALK_FRAMING, min_face_px: float | None = None,
              backend: str = "auto", name: str = "the photo") -> tuple[np.ndarray, FaceBox]:
    """Detect the face, level its eyes (when the detector gives them) and crop it to the
    training framing: (H, W, 3) uint8 -> ((R, R, 3) uint8, the box used).

    Raises InputError when there is no face, when there are several and ``face_index`` (0 =
    leftmost) is not given, or when the face is smaller than ``min_face_px`` (default: half the
    face width of a training frame, i.e. more than 2x upscaling)."""
    boxes = detect_faces(image, backend=backend)
    h, w = image.shape[:2]
    if not boxes:
        raise InputError(f"No face found in {name} ({w}x{h}); use a photo in which one face "
                         f"is clearly visible and roughly frontal.")
    if face_index is None:
        if len(boxes) > 1:
            where = ", ".join(f"{i}: x={b.center[0]:.0f}" for i, b in enumerate(boxes))
            raise InputError(f"Found {len(boxes)} faces in {name} ({where}, left to right); "
                             f"choose one with --face-index (0 = leftmost).")
        face_index = 0
    if not 0 <= face_index < len(boxes):
        raise InputError(f"--face-index {face_index} is out of range: {name} has "
                         f"{len(boxes)} face(s) (indices 0..{len(boxes) - 1}, left to right).")
    box = boxes[face_index]
    need = max(16.0, framing.width * resolution / 2) if min_face_px is None else min_face_px
    if box.width < need:
        raise InputError(f"The face in {name} is {box.width:.0f} px wide, too small for "
                         f"{resolution} px output (need at least {need:.0f} px); use a "
                         f"higher-resolution photo or one where the face is larger.")
    return crop_to_framing(level_eyes(image, box), box, resolution, framing), box
