"""Oracle-motion feasibility run for stage 1 (FaceLatentModel) on SynthTalk.

The motion encoder is replaced by the ground truth:
  z_pose = fixed map of GT [yaw, pitch, roll, tx, ty, scale] (see gt_pose)
  z_dyn  = learned MLP of the normalised 12-d GT motion track
Train: L1*10 + motion-weighted L1*100 + VGG perceptual (2 blocks), symmetric pairs, batch 8,
50% drivers from another clip of the same identity (synthtalk64 recipe, no consist/cross_id).
Eval: test split (held-out identities), cross-reenactment against the SynthTalk render of the
source identity (source clip's emotion) with the driver clip's GT motion.

usage: [STEPS=N] [MOUTH_W=W] [TAG=name] python oracle_ab.py A|B|C|D train_seconds
  A: synthtalk64 (patch 2, volume 8x16x16x16)   B: patch 1 (volume 8x32x32x16)
  C: patch 2, no 2-D downsampling (volume 4x32x32x16)   D: A + the sharp 2-D path
  STEPS: a step budget instead of the time budget; MOUTH_W: weight of an L1 in a box around
  the ground-truth mouth. ORACLE_DATA_DIR: a built res64_small; ORACLE_OUT: output dir (with a
  trained probe in ORACLE_OUT/probe).

The A/B of issue 18 (A_mouth vs D_mouth, 1,000 steps each, one pinned core each, 2026-12-02):
  STEPS=1000 MOUTH_W=20 TAG=A_mouth taskset -c 0 python oracle_ab.py A 0
  STEPS=1000 MOUTH_W=20 TAG=D_mouth taskset -c 1 python oracle_ab.py D 0
(Adapted from ../shared/findings/stage1-oracle/oracle.py.)
"""

import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from configs.latent import get_config
from data_pipeline.loader import make_loader
from data_pipeline.synthtalk import render
from data_pipeline.synthtalk.identity import sample_identity
from data_pipeline.loader import open_source
from data_pipeline.views import pair_loader_config, read_clips
from vasa_jax.instruments.load import load_probe
from vasa_jax.instruments.probe import pearson_or_nan
from vasa_jax.latent import losses
from vasa_jax.latent.model import FaceLatentModel, to_uint8, to_unit

DATA_DIR = os.environ.get("ORACLE_DATA_DIR", "runs/quickstart/tensorflow_datasets")
OUT = os.environ.get("ORACLE_OUT", "runs/oracle")
TAG = os.environ.get("TAG", "x")
STEPS = int(os.environ.get("STEPS", "0"))


MOUTH_W = float(os.environ.get("MOUTH_W", "0"))


def make_cfg(variant):
    c = get_config("synthtalk64")
    c.data.data_dir = DATA_DIR
    if variant == "B":
        c.model.patch = 1  # volume 32x32 instead of 16x16 at 64 px; G2D starts at 32x32
    if variant == "D":  # A + the sharp 2-D path
        c.model.skip_channels = 16
    if variant == "C":  # patch 2, no 2-D downsampling: volume 4 x 32 x 32 x 16
        m = c.model
        m.app_channels, m.volume_depth, m.g2d_channels = (64,), 4, (64,)
    return c


def mouth_mask(motion, res=64, half=(5, 4)):
    """(b, 12) GT motion -> (b, res, res, 1) box mask around the mouth centre."""
    c = jnp.asarray(np.round(render.mouth_centre_pixels(np.asarray(motion), res)), jnp.float32)
    ii = jnp.arange(res, dtype=jnp.float32)
    mx = jnp.abs(ii[None, None, :] - c[:, 0, None, None]) <= half[0]
    my = jnp.abs(ii[None, :, None] - c[:, 1, None, None]) <= half[1]
    return (mx & my).astype(jnp.float32)[..., None]


def gt_pose(m):
    """SynthTalk GT (b, 12) -> model pose (b, 7) = (yaw, pitch, roll, tx, ty, tz, log_scale).
    Render: image = (tx, ty - 0.02) + scale*0.64 * Rz(roll) (X cos yaw + Z sin yaw,
    Y cos pitch + Z sin pitch); warp.py: Rz(roll) Ry(yaw) Rx(pitch) with y' = cos p Y - sin p Z,
    so pitch flips sign."""
    return jnp.stack([m[:, 0], -m[:, 1], m[:, 2], m[:, 3], m[:, 4] - 0.02,
                      jnp.zeros_like(m[:, 0]), jnp.log(m[:, 5])], axis=-1)


class Oracle(nnx.Module):
    def __init__(self, cfg, mean, std, *, rngs):
        self.model = FaceLatentModel(cfg.model, rngs=rngs)
        self.mean, self.std = nnx.Variable(jnp.asarray(mean)), nnx.Variable(jnp.asarray(std))
        self.fc1 = nnx.Linear(12, 128, rngs=rngs)
        self.fc2 = nnx.Linear(128, 128, rngs=rngs)
        self.fc3 = nnx.Linear(128, cfg.model.dyn_dim, rngs=rngs)

    def dyn(self, m):
        x = (m - self.mean.value) / self.std.value
        x = jax.nn.silu(self.fc1(x))
        x = jax.nn.silu(self.fc2(x))
        return self.fc3(x)

    def appearance(self, img, m):
        return self.model.encode_appearance(img, gt_pose(m), self.dyn(m))

    def decode(self, v, zid, m):
        return self.model.decode(v, zid, gt_pose(m), self.dyn(m))


def loss_fn(o, frames, motion, mask):
    src, drv = to_unit(frames[:, 0]), to_unit(frames[:, 1])
    b = src.shape[0]
    both = jnp.concatenate([src, drv])
    mb = jnp.concatenate([motion[:, 0], motion[:, 1]])
    vol, zid = o.appearance(both, mb)
    s, d = slice(0, b), slice(b, 2 * b)
    v = jax.tree.map(lambda x: jnp.concatenate([x[s], x[d]]), vol)
    z = jnp.concatenate([zid[s], zid[d]])
    mm = jnp.concatenate([mb[d], mb[s]])
    fake = o.decode(v, z, mm)
    real = jnp.concatenate([drv, src])
    l1 = losses.l1_loss(fake, real)
    w = losses.motion_weight_map(src, drv)
    w = jnp.concatenate([w, w])
    ml1 = losses.weighted_l1_loss(fake, real, w)
    perc = losses.perceptual_loss(fake, real, 2)
    total = 10.0 * l1 + 100.0 * ml1 + perc
    mouth = losses.weighted_l1_loss(fake, real, mask) * (mask.size / jnp.maximum(mask.sum(), 1.0))
    total = total + MOUTH_W * mouth
    return total, {"l1": l1, "ml1": ml1, "perc": perc, "mouth": mouth,
                   "psnr": losses.psnr(fake, real).mean()}


def train(variant, seconds):
    cfg = make_cfg(variant)
    lcfg = pair_loader_config(cfg, split="train", train=True, batch_size=8)
    it = iter(make_loader(lcfg))
    # GT normalisation from a few training batches
    ms = [next(it)["motion"].reshape(-1, 12) for _ in range(10)]
    ms = np.concatenate(ms)
    mean, std = ms.mean(0), ms.std(0) + 1e-3
    o = Oracle(cfg, mean, std, rngs=nnx.Rngs(0))
    graphdef, params, rest = nnx.split(o, nnx.Param, ...)
    nparam = sum(x.size for x in jax.tree.leaves(params))
    print(f"[{variant}] volume {o.model.volume_shape} params {nparam:,} (incl. unused motion "
          f"encoder/discriminator)", flush=True)
    tx = optax.chain(optax.clip_by_global_norm(1.0),
                     optax.inject_hyperparams(optax.adamw)(learning_rate=1e-3, b1=0.5, b2=0.999,
                                                            weight_decay=1e-2))
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state, frames, motion, mask, lr):
        def f(p):
            return loss_fn(nnx.merge(graphdef, p, rest), frames, motion, mask)
        (total, m), g = jax.value_and_grad(f, has_aux=True)(params)
        opt_state[1].hyperparams["learning_rate"] = lr
        upd, opt_state = tx.update(g, opt_state, params)
        return optax.apply_updates(params, upd), opt_state, dict(m, total=total)

    peak, warm = 1e-3, 50
    t0, n, log = None, 0, []
    while True:
        batch = next(it)
        frames = jnp.asarray(batch["frames"])
        motion = jnp.asarray(batch["motion"], jnp.float32)
        frac = 0.0 if t0 is None else (n / STEPS if STEPS else (time.time() - t0) / seconds)
        if frac >= 1.0:
            break
        lr = peak * min(1.0, (n + 1) / warm) * (0.01 + 0.99 * 0.5 * (1 + np.cos(np.pi * frac)))
        mask = jnp.concatenate([mouth_mask(motion[:, 1]), mouth_mask(motion[:, 0])])
        params, opt_state, m = step(params, opt_state, frames, motion, mask, jnp.float32(lr))
        if t0 is None:
            jax.block_until_ready(params)
            t0 = time.time()  # time after compile
            print(f"[{variant}] compiled", flush=True)
        n += 1
        if n % 50 == 0:
            m = {k: float(v) for k, v in m.items()}
            el = time.time() - t0
            m.update(step=n, t=el, steps_per_s=n / el, lr=lr)
            log.append(m)
            print(json.dumps(m), flush=True)
    el = time.time() - t0
    print(f"[{variant}] trained {n} steps in {el:.0f}s = {n / el:.3f} steps/s", flush=True)
    o = nnx.merge(graphdef, params, rest)
    return o, cfg, {"steps": n, "seconds": el, "steps_per_s": n / el, "log": log}


def mouth_box_l1(imgs, target, motion, res, half=(5, 4)):
    """Mean abs difference (0..255) in a box around the GT mouth centre of ``motion``."""
    c = np.round(render.mouth_centre_pixels(motion, res)).astype(int)
    out = []
    for i in range(len(imgs)):
        x0, y0 = np.clip(c[i, 0] - half[0], 0, res), np.clip(c[i, 1] - half[1], 0, res)
        x1, y1 = np.clip(c[i, 0] + half[0] + 1, 0, res), np.clip(c[i, 1] + half[1] + 1, 0, res)
        a = imgs[i, y0:y1, x0:x1].astype(np.float32)
        b = target[i, y0:y1, x0:x1].astype(np.float32)
        out.append(np.abs(a - b).mean())
    return np.asarray(out)


def psnr_np(a, b):
    a, b = a.astype(np.float64) / 127.5 - 1, b.astype(np.float64) / 127.5 - 1
    mse = ((a - b) ** 2).reshape(len(a), -1).mean(-1)
    return 10 * np.log10(4.0 / np.maximum(mse, 1e-10))


def evaluate(o, cfg, variant, stride=5):
    probe = load_probe(f"{OUT}/probe")
    source, info = open_source("synthtalk", cfg.data.config, "test", DATA_DIR)
    seed = int(info.metadata["seed"])
    clips = read_clips(cfg, "test", int(os.environ.get("MAX_CLIPS", "0")) or None, frames=True)
    n = len(clips)
    res = 64
    graphdef, state = nnx.split(o)

    @jax.jit
    def enc(state, img, m):
        return nnx.merge(graphdef, state).appearance(to_unit(img), m)

    @jax.jit
    def dec(state, v, zid, m):
        return to_uint8(nnx.merge(graphdef, state).decode(v, zid, m))

    outs, tgts, srcs, drvm = [], [], [], []
    for k, c in enumerate(clips):
        other = next(clips[(k + j) % n] for j in range(1, n + 1)
                     if clips[(k + j) % n]["identity"] != c["identity"])
        dm = other["motion"][::stride]
        v, zid = enc(state, c["frames"][:1], jnp.asarray(c["motion"][:1]))
        T = len(dm)
        rep = lambda x: jax.tree.map(lambda a: jnp.repeat(a, T, 0), x)  # noqa: E731
        out = np.asarray(dec(state, rep(v), rep(zid), jnp.asarray(dm)))
        truth = np.asarray(render.render_clip(
            jnp.asarray(dm), sample_identity(seed, c["identity"]).render_params(),
            jnp.asarray(render.EMOTION_STYLE[c["emotion"]]), res))
        outs.append(out), tgts.append(truth), drvm.append(dm)
        srcs.append(np.repeat(c["frames"][:1], T, 0))
    outs, tgts, srcs, drvm = map(np.concatenate, (outs, tgts, srcs, drvm))
    # sanity: the renderer reproduces a stored frame
    c0 = clips[0]
    re = np.asarray(render.render_clip(jnp.asarray(c0["motion"][:1]),
                                       sample_identity(seed, c0["identity"]).render_params(),
                                       jnp.asarray(render.EMOTION_STYLE[c0["emotion"]]), res))
    render_check = float(np.abs(re.astype(np.float32) - c0["frames"][:1]).mean())
    p_out = probe.predict(outs)["motion"]
    p_tgt = probe.predict(tgts)["motion"]
    p_src = probe.predict(srcs)["motion"]
    r = {}
    for name, p in (("output", p_out), ("target", p_tgt), ("source", p_src)):
        for f, i in (("jaw_open", 6), ("yaw", 0), ("pitch", 1)):
            r[f"probe_r_{f}_{name}"] = pearson_or_nan(p[:, i], drvm[:, i])
    res_d = {
        "variant": variant, "clips": n, "frames": int(len(outs)),
        "render_check_l1_0_255": render_check,
        "psnr_output": float(psnr_np(outs, tgts).mean()),
        "psnr_source": float(psnr_np(srcs, tgts).mean()),
        "l1_output_0_255": float(np.abs(outs.astype(np.float32) - tgts).mean()),
        "l1_source_0_255": float(np.abs(srcs.astype(np.float32) - tgts).mean()),
        "mouth_l1_output": float(mouth_box_l1(outs, tgts, drvm, res).mean()),
        "mouth_l1_source": float(mouth_box_l1(srcs, tgts, drvm, res).mean()),
        **r,
        "probe_heldout_r_jaw": probe.heldout.get("r/jaw_open"),
        "probe_heldout_r_yaw": probe.heldout.get("r/yaw"),
    }
    # mouth-darkness readout: mean intensity in the mouth box vs GT jaw (independent of probe)
    def mouth_int(imgs):
        cc = np.round(render.mouth_centre_pixels(drvm, res)).astype(int)
        return np.asarray([imgs[i, max(cc[i, 1] - 2, 0):cc[i, 1] + 3,
                                max(cc[i, 0] - 3, 0):cc[i, 0] + 4].mean() for i in range(len(imgs))])
    for name, im in (("output", outs), ("target", tgts), ("source", srcs)):
        res_d[f"mouth_intensity_r_jaw_{name}"] = pearson_or_nan(-mouth_int(im), drvm[:, 6])
    # grid: rows = examples (3 widest jaw, 3 largest |yaw|, from different clips); cols src|tgt|out
    T = len(drvm) // n
    picks = []
    jaw_order = np.argsort(-drvm[:, 6])
    yaw_order = np.argsort(-np.abs(drvm[:, 0] - p_src[:, 0] * 0 - np.repeat(
        [c["motion"][0, 0] for c in clips], T)))
    used = set()
    for order, k in ((jaw_order, 3), (yaw_order, 3)):
        got = 0
        for i in order:
            if i // T in used:
                continue
            used.add(i // T)
            picks.append(int(i))
            got += 1
            if got == k:
                break
    rows = [np.concatenate([srcs[i], tgts[i], outs[i]], axis=1) for i in picks]
    grid = np.concatenate(rows, axis=0)
    grid = np.repeat(np.repeat(grid, 4, 0), 4, 1)
    import PIL.Image
    path = f"{OUT}/grid_{TAG}.png"
    PIL.Image.fromarray(grid).save(path)
    res_d["grid"] = path
    res_d["grid_rows"] = [{"jaw": float(drvm[i, 6]), "yaw_drv": float(drvm[i, 0]),
                           "yaw_src": float(clips[i // T]["motion"][0, 0])} for i in picks]
    return res_d


if __name__ == "__main__":
    variant, seconds = sys.argv[1], float(sys.argv[2])
    o, cfg, tinfo = train(variant, seconds)
    t = time.time()
    ev = evaluate(o, cfg, variant)
    ev["eval_seconds"] = time.time() - t
    ev["train"] = {k: v for k, v in tinfo.items() if k != "log"}
    ev["train_last_log"] = tinfo["log"][-1] if tinfo["log"] else None
    print(json.dumps(ev, indent=1), flush=True)
    with open(f"{OUT}/result_{TAG}.json", "w") as f:
        json.dump(dict(ev, log=tinfo["log"]), f, indent=1)
