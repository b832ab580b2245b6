"""Vectorised 2.5-D face renderer for SynthTalk (JAX, jit-compiled once per clip shape).

Each frame is composed back to front from anti-aliased analytic shapes: background, shoulders,
neck, hair, ears, a shaded face ellipse with a jaw line, hair cap, eyebrows, eyes (sclera, iris,
pupil, lids that close when blinking), nose, mouth (lips, dark interior, teeth, tongue when open),
cheeks, optional glasses.

Geometry. Image coordinates run over [-1, 1] with y down. A head unit maps to ``HEAD_UNIT``
image units at scale 1. A facial feature at 3-D head position (X, Y, Z) (Z towards the camera)
is projected orthographically after yaw and pitch, ``x = X cos(yaw) + Z sin(yaw)``,
``y = Y cos(pitch) + Z sin(pitch)``, so features slide across the face by their depth (the nose
most) while the outline narrows; roll rotates the head in the image plane; scale sizes it.

Anti-aliasing: a shape's coverage of a pixel is ``clip(0.5 - d / w, 0, 1)`` for an (approximate)
signed distance ``d`` and an edge width ``w`` of about one pixel; thin horizontal bands (mouth
opening, eye aperture) use the exact box-filtered overlap, which is 0 when the band closes.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from data_pipeline.synthtalk.motion import FIELD

HEAD_UNIT = 0.64
EDGE = 1.2  # edge width in pixels

# Per emotion: brow inner lift, brow outer lift, eye openness, mouth-corner curve, cheek blush.
# Lifts are in head units (negative = up).
EMOTION_STYLE = np.array([
    [0.000, 0.000, 1.00, 0.0, 0.0],  # neutral
    [-0.015, -0.015, 0.78, 1.0, 1.0],  # happy: raised cheeks narrow the eyes, corners up
    [-0.055, 0.025, 0.80, -0.9, 0.0],  # sad: inner brows up, corners down
    [-0.075, -0.070, 1.40, 0.0, 0.0],  # surprised: brows up, eyes wide
], np.float32)

# Features in head units: (X, Y, Z).
_EYE_Y, _EYE_Z = -0.06, 0.62
_BROW_DY = -0.17
_NOSE = (0.0, 0.19, 0.92)
_MOUTH = (0.0, 0.46, 0.58)
_LIGHT = np.array([-0.45, -0.55, 0.70]) / np.linalg.norm([-0.45, -0.55, 0.70])


def _cov(d, w):
    """Coverage of a pixel by a shape with signed distance ``d`` (inside < 0), edge width ``w``."""
    return jnp.clip(0.5 - d / w, 0.0, 1.0)


def _band(y, lo, hi, w):
    """Exact coverage of a pixel of height ``w`` centred at ``y`` by the interval [lo, hi]."""
    return jnp.clip((jnp.minimum(y + 0.5 * w, hi) - jnp.maximum(y - 0.5 * w, lo)) / w, 0.0, 1.0)


def _ellipse_sd(x, y, a, b):
    """Approximate signed distance to the ellipse (x/a)^2 + (y/b)^2 = 1 (first-order)."""
    g = (x / a) ** 2 + (y / b) ** 2 - 1.0
    grad = 2.0 * jnp.sqrt((x / (a * a)) ** 2 + (y / (b * b)) ** 2)
    return g / (grad + 1e-6)


def _segment_sd(x, y, x0, y0, x1, y1, r):
    """Signed distance to a capsule of radius ``r`` around the segment (x0, y0)-(x1, y1)."""
    dx, dy = x1 - x0, y1 - y0
    t = jnp.clip(((x - x0) * dx + (y - y0) * dy) / (dx * dx + dy * dy + 1e-9), 0.0, 1.0)
    return jnp.sqrt((x - x0 - t * dx) ** 2 + (y - y0 - t * dy) ** 2) - r


def _over(img, colour, alpha):
    """Composite ``colour`` (3,) or (R, R, 3) over ``img`` (R, R, 3) with coverage (R, R)."""
    a = alpha[..., None]
    return img * (1.0 - a) + colour * a


def _render_frame(m, app, style, grid):
    """One frame. ``m``: (12,) motion; ``app``: identity params; ``style``: (5,) emotion row.

    Returns (R, R, 3) float32 in [0, 1].
    """
    x, y = grid  # (R, R) each, image coordinates
    res = x.shape[0]
    px = 2.0 / res  # pixel size in image units

    yaw, pitch, roll = m[FIELD["yaw"]], m[FIELD["pitch"]], m[FIELD["roll"]]
    scale = m[FIELD["scale"]]
    jaw_open, lip_width, lip_round = m[FIELD["jaw_open"]], m[FIELD["lip_width"]], m[FIELD["lip_round"]]
    blink = m[FIELD["blink"]]
    gaze_x, gaze_y = m[FIELD["gaze_x"]], m[FIELD["gaze_y"]]
    brow_inner, brow_outer, eye_open, mouth_curve, blush = (style[i] for i in range(5))
    cy_, sy_ = jnp.cos(yaw), jnp.sin(yaw)
    cp_, sp_ = jnp.cos(pitch), jnp.sin(pitch)
    cr_, sr_ = jnp.cos(roll), jnp.sin(roll)
    W, H = app["face_w"], app["face_h"]

    # Head-plane coordinates (head units, y down) of every pixel.
    unit = scale * HEAD_UNIT
    cx, cyy = m[FIELD["tx"]], m[FIELD["ty"]] - 0.02
    dx, dy = x - cx, y - cyy
    hx = (cr_ * dx + sr_ * dy) / unit
    hy = (-sr_ * dx + cr_ * dy) / unit
    w = EDGE * px / unit  # edge width in head units

    def project(X, Y, Z):
        return X * cy_ + Z * sy_, Y * cp_ + Z * sp_

    def local(X, Y, Z):
        """Feature-local coordinates (foreshortened by yaw and pitch) around a 3-D point."""
        fx, fy = project(X, Y, Z)
        return (hx - fx) / cy_, (hy - fy) / cp_

    # 1. Background: flat or vertical gradient, with a soft vignette.
    t = (y + 1.0) * 0.5
    img = app["bg_top"] * (1 - t[..., None]) + app["bg_bottom"] * t[..., None]
    img = img * (1.0 - 0.12 * (x * x + y * y))[..., None]

    # 2. Shoulders (they follow the head's translation but not its rotation).
    sx, sy = (x - 0.6 * cx) / scale, (y - 0.62 - 0.62 * scale - 0.5 * cyy) / scale
    sh = _cov(_ellipse_sd(sx, sy, 1.0, 0.45), EDGE * px / scale)
    sh_shade = 0.75 + 0.25 * jnp.clip(1.0 - (sx / 1.0) ** 2, 0.0, 1.0)
    img = _over(img, app["shirt"] * sh_shade[..., None], sh)

    # 3. Neck.
    neck_d = jnp.maximum(jnp.abs(hx) - 0.40 * W, -hy + 0.3)
    neck = _cov(neck_d, w) * (hy < 2.2)
    img = _over(img, app["skin"] * 0.72, neck)

    # 4. Hair behind the head (shifted against the turn: depth behind the face).
    style_w = app["hair_style"]  # one-hot over (bald, short, long, bun, fringe)
    has_hair = 1.0 - style_w[0]
    bx = hx + 0.18 * sy_
    back_a = W * (1.10 + 0.22 * style_w[2])
    back_b_top = H * 1.07
    back = _cov(_ellipse_sd(bx, hy + 0.06, back_a, back_b_top), w)
    long_body = _cov(jnp.maximum(jnp.abs(bx) - W * 1.28, jnp.abs(hy - 0.55) - 0.75), w) * style_w[2]
    bun = _cov(_ellipse_sd(bx, hy + H * 1.05, 0.30, 0.24), w) * style_w[3]
    hair_shade = 0.8 + 0.2 * jnp.clip(0.5 - 0.5 * hy, 0.0, 1.0)
    hair_back = jnp.maximum(jnp.maximum(back * (hy < 0.35 + 0.9 * style_w[2]), long_body), bun)
    img = _over(img, app["hair"] * (0.7 * hair_shade)[..., None], hair_back * has_hair)

    # 5. Ears, drawn before the face that hides their inner half.
    for side in (-1.0, 1.0):
        ex, ey = project(side * W * 0.98, 0.02, -0.1)
        ear = _cov(_ellipse_sd(hx - ex, hy - ey, 0.09 * cy_ + 0.02, 0.17), w)
        img = _over(img, app["skin"] * 0.8, ear)

    # 6. Face: ellipse narrowed by yaw/pitch, a jaw that tapers, a chin that drops with the jaw.
    half_w = jnp.sqrt((W * cy_) ** 2 + (0.75 * W * sy_) ** 2)
    half_h_top = jnp.sqrt((H * cp_) ** 2 + (0.75 * W * sp_) ** 2)
    half_h_bot = half_h_top + 0.07 * jaw_open
    below = jnp.clip(hy / half_h_bot, 0.0, 1.0)
    taper = 1.0 - (1.0 - app["jaw"]) * below ** 2
    fx = hx / taper
    face_d = _ellipse_sd(fx, hy, half_w, jnp.where(hy > 0, half_h_bot, half_h_top))
    face = _cov(face_d, w)
    nx = jnp.clip(hx / half_w, -1.0, 1.0)
    ny = jnp.clip(hy / half_h_bot, -1.0, 1.0)
    nz = jnp.sqrt(jnp.clip(1.0 - nx * nx - ny * ny, 0.0, 1.0))
    lambert = jnp.clip(nx * _LIGHT[0] + ny * _LIGHT[1] + nz * _LIGHT[2], 0.0, 1.0)
    shade = 0.60 + 0.48 * lambert
    img = _over(img, app["skin"] * shade[..., None], face)

    # 7. Hair cap above the hairline (style-dependent), following the forehead's projection.
    hlx, hly = local(0.0, 0.0, 0.6)
    hx_n = hlx / W
    line = (-0.50 * H + 0.30 * H * hx_n * hx_n) * (style_w[1] + style_w[3]) \
        + (-0.45 * H + 0.25 * H * hx_n * hx_n) * style_w[2] \
        + (-0.28 * H + 0.10 * H * hx_n) * style_w[4] \
        - 10.0 * style_w[0]
    cap = face * _cov(hly - line, w)
    texture = 0.95 + 0.05 * jnp.sin(30.0 * hx + 8.0 * hy)
    img = _over(img, app["hair"] * (hair_shade * texture)[..., None], cap)

    # 8. Eye sockets and eyebrows.
    eyes = []  # feature-local coordinates around each eye centre
    for side in (-1.0, 1.0):
        lx, ly = local(side * app["eye_dx"], _EYE_Y, _EYE_Z)
        eyes.append((lx, ly))
        socket = _cov(_ellipse_sd(lx, ly, 0.16, 0.10), 3 * w) * face
        img = img * (1.0 - 0.07 * socket)[..., None]
        # Brow: two capsules, inner end -> arch -> outer end (side * x grows outwards).
        inner = (side * -0.10, _BROW_DY + brow_inner)
        arch = (side * 0.01, _BROW_DY - 0.018 + 0.5 * (brow_inner + brow_outer))
        outer = (side * 0.12, _BROW_DY + 0.012 + brow_outer)
        brow_d = jnp.minimum(_segment_sd(lx, ly, *inner, *arch, app["brow_thick"]),
                             _segment_sd(lx, ly, *arch, *outer, 0.85 * app["brow_thick"]))
        img = _over(img, app["hair"] * 0.8, _cov(brow_d, w) * face)

    # 9. Eyes: almond aperture that closes with the blink; iris and pupil follow the gaze.
    aw = 0.105 * app["eye_size"]
    ah = 0.052 * app["eye_size"] * eye_open * (1.0 - blink)
    iris_r = 0.048 * app["eye_size"]
    for lx, ly in eyes:
        hh = ah * jnp.clip(1.0 - (lx / aw) ** 2, 0.0, 1.0)
        ap = _band(ly, -hh, hh, w) * (jnp.abs(lx) < aw)
        ix = lx - 0.07 * jnp.sin(gaze_x)
        iy = ly - 0.05 * jnp.sin(gaze_y)
        iris = _cov(jnp.sqrt(ix * ix + iy * iy) - iris_r, w)
        pupil = _cov(jnp.sqrt(ix * ix + iy * iy) - 0.45 * iris_r, w)
        glint = _cov(jnp.sqrt((ix + 0.35 * iris_r) ** 2 + (iy + 0.35 * iris_r) ** 2) - 0.2 * iris_r, w)
        eye = jnp.full_like(img, 0.93)
        eye = _over(eye, app["eye_colour"], iris)
        eye = _over(eye, jnp.array([0.03, 0.03, 0.03]), pupil)
        eye = _over(eye, jnp.array([1.0, 1.0, 1.0]), glint * 0.8)
        img = _over(img, eye, ap * face)
        lid = _cov(jnp.abs(ly + hh) - 0.010, w) * (jnp.abs(lx) < aw * 1.05)
        img = _over(img, app["hair"] * 0.35 + 0.05, lid * face)

    # 10. Nose: side shadow, tip highlight, nostrils, and the shadow below.
    ns = app["nose_size"]
    lx, ly = local(*_NOSE)
    ridge = _cov(_ellipse_sd(lx - 0.045 * ns, ly + 0.09, 0.035 * ns, 0.16 * ns), 3 * w)
    img = img * (1.0 - 0.10 * ridge * face)[..., None]
    tip = _cov(_ellipse_sd(lx, ly, 0.07 * ns, 0.05 * ns), 2 * w)
    img = _over(img, app["skin"] * 1.08, tip * 0.5 * face)
    below_nose = _cov(_ellipse_sd(lx, ly - 0.06 * ns, 0.08 * ns, 0.025), 2 * w)
    img = img * (1.0 - 0.15 * below_nose * face)[..., None]
    for side in (-1.0, 1.0):
        nost = _cov(_ellipse_sd(lx - side * 0.035 * ns, ly - 0.04 * ns, 0.018 * ns, 0.011 * ns), w)
        img = _over(img, app["skin"] * 0.35, nost * face)

    # 11. Mouth: lips around an opening whose height follows jaw_open (0 = closed, no gap).
    lx, ly = local(_MOUTH[0], _MOUTH[1] + 0.04 * jaw_open, _MOUTH[2])
    mw = 0.17 * (0.80 + 0.45 * lip_width) * (1.0 - 0.35 * lip_round)
    ly = ly + 0.045 * mouth_curve * (lx / mw) ** 2  # corners up (happy) or down (sad)
    prof = jnp.sqrt(jnp.clip(1.0 - (lx / mw) ** 2, 0.0, 1.0))
    oh = 0.12 * jaw_open * (1.0 + 0.3 * lip_round) * prof
    ut, lt = 0.026 * (1 + 0.5 * lip_round) * prof, 0.034 * (1 + 0.5 * lip_round) * prof
    lips = _band(ly, -oh - ut, oh + lt, w) * face
    lip_shade = jnp.where(ly > 0, 1.08, 0.92)
    img = _over(img, app["lip_colour"] * lip_shade[..., None], lips)
    inside = _band(ly, -oh, oh, w) * face
    mouth = jnp.broadcast_to(jnp.array([0.20, 0.04, 0.05]), img.shape)
    tongue = _cov(_ellipse_sd(lx, ly - 0.8 * oh, 0.55 * mw, 0.35 * oh + 1e-4), w)
    mouth = _over(mouth, jnp.array([0.45, 0.15, 0.17]), tongue)
    teeth_up = _band(ly, -oh, -oh + jnp.minimum(0.022 * prof, 0.6 * oh), w)
    teeth_lo = _band(ly, oh - jnp.minimum(0.012 * prof, 0.3 * oh), oh, w)
    mouth = _over(mouth, jnp.array([0.93, 0.91, 0.86]), jnp.maximum(teeth_up, teeth_lo))
    img = _over(img, mouth, inside)
    seam = _band(ly, -0.004, 0.004, w) * face * (jnp.abs(lx) < mw) * (1.0 - jnp.clip(oh / 0.01, 0, 1))
    img = img * (1.0 - 0.45 * seam)[..., None]

    # 12. Cheeks (blush when happy).
    for side in (-1.0, 1.0):
        lx, ly = local(side * 0.36, 0.22, 0.5)
        cheek = _cov(_ellipse_sd(lx, ly, 0.12, 0.08), 4 * w) * face * blush
        img = _over(img, jnp.array([0.85, 0.35, 0.35]), 0.18 * cheek)

    # 13. Glasses: two rings and a bridge, slightly tinted lenses.
    g = app["glasses"]
    rims, lens = 0.0, 0.0
    for lx, ly in eyes:
        r = jnp.sqrt((lx / 1.1) ** 2 + ly ** 2)
        rims = jnp.maximum(rims, _cov(jnp.abs(r - 0.15) - 0.012, w))
        lens = jnp.maximum(lens, _cov(r - 0.15, w))
    bl, bly = local(0.0, _EYE_Y - 0.03, _EYE_Z + 0.1)
    bridge = _cov(jnp.maximum(jnp.abs(bly) - 0.012, jnp.abs(bl) - (app["eye_dx"] - 0.165)), w)
    img = _over(img, app["glasses_colour"], 0.12 * lens * g)
    img = _over(img, app["glasses_colour"], jnp.maximum(rims, bridge) * g)
    return jnp.clip(img, 0.0, 1.0)


@functools.partial(jax.jit, static_argnames=("resolution",))
def render_clip(motion, appearance, style, resolution: int):
    """Render a clip.

    Args:
      motion: (T, 12) float32 ground-truth motion (``motion.MOTION_FIELDS`` order).
      appearance: dict from ``Identity.render_params()``.
      style: (5,) float32 emotion style row (``EMOTION_STYLE[emotion]``).
      resolution: output side R in pixels.

    Returns:
      (T, R, R, 3) uint8 frames.
    """
    grid = _pixel_grid(resolution)
    frames = jax.vmap(lambda m: _render_frame(m, appearance, style, grid))(motion)
    return jnp.round(frames * 255.0).astype(jnp.uint8)


@functools.partial(jax.jit, static_argnames=("resolution",))
def render_frames(motion, appearance, style, resolution: int):
    """Render frames of different people: ``render_clip`` with the appearance and the style
    given per frame (motion (T, 12), every ``appearance`` entry and ``style`` with a leading
    axis T) -> (T, R, R, 3) uint8."""
    grid = _pixel_grid(resolution)
    frames = jax.vmap(lambda m, a, s: _render_frame(m, a, s, grid))(motion, appearance, style)
    return jnp.round(frames * 255.0).astype(jnp.uint8)


def _pixel_grid(resolution: int):
    """The image coordinates (x, y) of every pixel centre, each (R, R), in [-1, 1]."""
    c = (jnp.arange(resolution, dtype=jnp.float32) + 0.5) * (2.0 / resolution) - 1.0
    return jnp.meshgrid(c, c, indexing="xy")


def mouth_centre_pixels(motion: np.ndarray, resolution: int) -> np.ndarray:
    """(T, 2) pixel (column, row) of the mouth centre in each frame, from the motion alone.

    Mirrors the projection in ``_render_frame`` so pixel measurements (tests, probes) can find
    the mouth without a detector.
    """
    m = np.asarray(motion, np.float64)
    yaw, pitch, roll = m[:, FIELD["yaw"]], m[:, FIELD["pitch"]], m[:, FIELD["roll"]]
    fx = _MOUTH[0] * np.cos(yaw) + _MOUTH[2] * np.sin(yaw)
    fy = (_MOUTH[1] + 0.04 * m[:, FIELD["jaw_open"]]) * np.cos(pitch) + _MOUTH[2] * np.sin(pitch)
    unit = m[:, FIELD["scale"]] * HEAD_UNIT
    # Inverse of the head-plane transform: image = centre + unit * R(roll) @ (fx, fy).
    ix = m[:, FIELD["tx"]] + unit * (np.cos(roll) * fx - np.sin(roll) * fy)
    iy = m[:, FIELD["ty"]] - 0.02 + unit * (np.sin(roll) * fx + np.cos(roll) * fy)
    to_px = lambda v: (v + 1.0) * 0.5 * resolution - 0.5
    return np.stack([to_px(ix), to_px(iy)], axis=1)
