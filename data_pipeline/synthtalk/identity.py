"""Synthetic people: a seeded draw of appearance and voice per identity id.

An identity is a pure function of ``(seed, identity_id)``. Lengths are in head units (the face
ellipse is about 0.7 x 0.9 of them; ``render.py`` maps head units to pixels).
"""

from __future__ import annotations

import dataclasses

import numpy as np

HAIR_STYLES = ("bald", "short", "long", "bun", "fringe")

_SKIN_LIGHT = np.array([0.96, 0.82, 0.72])
_SKIN_DARK = np.array([0.38, 0.24, 0.16])
_HAIR_COLOURS = np.array([
    [0.08, 0.06, 0.05],  # black
    [0.30, 0.18, 0.10],  # brown
    [0.55, 0.36, 0.18],  # light brown
    [0.85, 0.70, 0.40],  # blonde
    [0.62, 0.22, 0.10],  # red
    [0.62, 0.62, 0.60],  # grey
])
_EYE_COLOURS = np.array([
    [0.30, 0.18, 0.08],  # brown
    [0.20, 0.40, 0.70],  # blue
    [0.25, 0.50, 0.30],  # green
    [0.45, 0.50, 0.52],  # grey
    [0.50, 0.38, 0.18],  # hazel
])


@dataclasses.dataclass(frozen=True)
class Identity:
    """Appearance and voice of one synthetic person.

    Colours are RGB in [0, 1]. ``hair_style`` indexes ``HAIR_STYLES``.
    """

    identity_id: int
    face_w: float  # half-width of the face ellipse
    face_h: float  # half-height of the face ellipse
    jaw: float  # lower-face width relative to the cheeks (1 = round, 0.7 = narrow chin)
    skin: np.ndarray
    hair: np.ndarray
    hair_style: int
    eye_colour: np.ndarray
    eye_dx: float  # half the distance between the eyes
    eye_size: float
    brow_thick: float
    nose_size: float
    lip_colour: np.ndarray
    bg_top: np.ndarray
    bg_bottom: np.ndarray
    shirt: np.ndarray
    glasses: bool
    glasses_colour: np.ndarray
    f0: float  # mean voice pitch in Hz
    formant_scale: float  # vocal-tract scaling of the formant frequencies

    def render_params(self) -> dict[str, np.ndarray]:
        """Float32 arrays for ``render.render_clip`` (the per-clip appearance)."""
        style = np.zeros(len(HAIR_STYLES), np.float32)
        style[self.hair_style] = 1.0
        f = np.float32
        return {
            "face_w": f(self.face_w), "face_h": f(self.face_h), "jaw": f(self.jaw),
            "skin": self.skin.astype(f), "hair": self.hair.astype(f), "hair_style": style,
            "eye_colour": self.eye_colour.astype(f), "eye_dx": f(self.eye_dx),
            "eye_size": f(self.eye_size), "brow_thick": f(self.brow_thick),
            "nose_size": f(self.nose_size), "lip_colour": self.lip_colour.astype(f),
            "bg_top": self.bg_top.astype(f), "bg_bottom": self.bg_bottom.astype(f),
            "shirt": self.shirt.astype(f), "glasses": f(self.glasses),
            "glasses_colour": self.glasses_colour.astype(f),
        }


def sample_identity(seed: int, identity_id: int) -> Identity:
    """The identity ``identity_id`` of the dataset drawn with ``seed`` (deterministic)."""
    rng = np.random.default_rng([seed, identity_id, 1])
    tone = rng.uniform()
    skin = _SKIN_LIGHT + (_SKIN_DARK - _SKIN_LIGHT) * tone + rng.normal(0, 0.02, 3)
    hair = _HAIR_COLOURS[rng.integers(len(_HAIR_COLOURS))] * rng.uniform(0.85, 1.15)
    lip = np.clip(skin * np.array([0.85, 0.55, 0.55]) + np.array([0.12, 0.0, 0.02]), 0, 1)
    # Background: a muted colour, either flat or a vertical gradient to a second one.
    bg_top = rng.uniform(0.15, 0.85, 3)
    bg_bottom = bg_top if rng.random() < 0.4 else rng.uniform(0.15, 0.85, 3)
    f0 = rng.uniform(90.0, 260.0)
    return Identity(
        identity_id=identity_id,
        face_w=rng.uniform(0.62, 0.76),
        face_h=rng.uniform(0.86, 0.98),
        jaw=rng.uniform(0.68, 0.95),
        skin=np.clip(skin, 0, 1),
        hair=np.clip(hair, 0, 1),
        hair_style=int(rng.integers(len(HAIR_STYLES))),
        eye_colour=_EYE_COLOURS[rng.integers(len(_EYE_COLOURS))],
        eye_dx=rng.uniform(0.24, 0.31),
        eye_size=rng.uniform(0.85, 1.15),
        brow_thick=rng.uniform(0.022, 0.045),
        nose_size=rng.uniform(0.8, 1.25),
        lip_colour=lip,
        bg_top=bg_top,
        bg_bottom=bg_bottom,
        shirt=rng.uniform(0.1, 0.9, 3),
        glasses=bool(rng.random() < 0.25),
        glasses_colour=rng.uniform(0.0, 0.35, 3),
        f0=f0,
        # Higher voices tend to come from shorter vocal tracts: higher formants.
        formant_scale=float(np.clip(0.85 + (f0 - 90.0) / 170.0 * 0.25 + rng.normal(0, 0.04),
                                    0.82, 1.2)),
    )
