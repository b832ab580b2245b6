"""Stage 1's training objective (VASA-1 sec. 3.2 with MegaPortraits' terms): one generator step's
images from one batched decode, the generator's loss terms, and the discriminator's hinge loss.

Reconstruction: D(V_i, id_i, pose_j, dyn_j) -> frame j (and, with ``loss.symmetric``, j -> i);
L1 + VGG16 perceptual + hinge GAN + discriminator feature matching, and optionally
(``loss.motion_l1``) an extra L1 weighted by where the two frames differ. ``l_consist``:
D(V_j, id_j, pose_i, dyn_j) and D(V_i, id_i, pose_i, dyn_j) must agree. ``l_cross_id``: the
motion of another example's driver on source i keeps i's identity embedding. With motion labels
(``vasa_jax.latent.guidance``): ``loss.pose_guide``, ``loss.expression_guide``,
``loss.mouth_l1`` and the oracle rung (``model.motion_source = "oracle"``).

Module-level functions, so that the task, the parity tests and the PyTorch baseline call the same
code.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from vasa_jax.latent import cross_render, guidance, losses
from vasa_jax.latent.model import FaceLatentModel, to_unit


def needs_labels(config) -> bool:
    """Whether a stage-1 config trains on motion labels (guidance terms or the oracle rung)."""
    lc = config.loss
    return (config.model.get("motion_source", "encoder") == "oracle"
            or bool(lc.get("pose_guide", 0) or lc.get("expression_guide", 0)
                    or lc.get("mouth_l1", 0) or lc.get("cross_render", False)))


def uses_discriminator(loss_cfg) -> bool:
    """Whether the generator loss has GAN terms (else the discriminator is not trained)."""
    return bool(loss_cfg.adversarial or loss_cfg.feature_matching)


def generator_outputs(model: FaceLatentModel, frames: jax.Array, loss_cfg,
                      motion: jax.Array | None = None) -> dict[str, jax.Array]:
    """All images one generator step needs, from one batched decode.

    frames: uint8 (b, 2, R, R, 3), [:, 0] the sources i and [:, 1] the drivers j.
    Returns images (n, R, R, 3) in [-1, 1]: ``recon`` (b: V_i with the motion of j),
    ``recon_back`` (b, with ``loss_cfg.symmetric``: V_j with the motion of i), ``consist_j`` /
    ``consist_i`` (a = max(1, round(b aux_fraction)) rows each, with ``consist``), ``cross``
    (a, with ``cross_id`` or ``cross_render``: V_i with the motion of the driver of row
    (r - 1) mod b); and ``src``,
    ``drv`` (b, the frames as images), ``zid_src`` (a, id_dim) and ``pose``, ``dyn`` (2b: the
    sources' then the drivers' motion latents). ``motion`` (b, 2, 12): the frames' labels, which
    the oracle rung (``model.motion_source = "oracle"``) takes its motion from."""
    lc = loss_cfg
    src, drv = to_unit(frames[:, 0]), to_unit(frames[:, 1])
    b = src.shape[0]
    both = jnp.concatenate([src, drv])
    labels = None if motion is None else jnp.concatenate([motion[:, 0], motion[:, 1]])
    pose, dyn = model.motion_of(both, labels)
    vol, zid = model.encode_appearance(both, pose, dyn)
    s, d = slice(0, b), slice(b, 2 * b)
    rows = lambda x, r: jax.tree.map(lambda v: v[r], x)  # noqa: E731  (vol may be a pair)
    jobs = {"recon": (rows(vol, s), zid[s], pose[d], dyn[d])}
    if lc.symmetric:
        jobs["recon_back"] = (rows(vol, d), zid[d], pose[s], dyn[s])
    a = max(1, int(round(b * lc.aux_fraction)))  # rows that also get l_consist / l_cross_id
    sa, da = slice(0, a), slice(b, b + a)
    if lc.consist:
        jobs["consist_j"] = (rows(vol, da), zid[da], pose[sa], dyn[da])
        jobs["consist_i"] = (rows(vol, sa), zid[sa], pose[sa], dyn[da])
    if lc.cross_id or lc.get("cross_render", False):
        other = lambda x: jnp.roll(x[d], 1, axis=0)[:a]  # noqa: E731  another pair's driver
        jobs["cross"] = (rows(vol, sa), zid[sa], other(pose), other(dyn))
    args = [jax.tree.map(lambda *xs: jnp.concatenate(xs), *[j[k] for j in jobs.values()])
            for k in range(4)]
    images = model.decode(*args)
    out, start = {}, 0
    for name, job in jobs.items():
        out[name] = images[start:start + len(job[1])]
        start += len(job[1])
    out.update(src=src, drv=drv, zid_src=zid[sa], pose=pose, dyn=dyn)
    return out


def generator_loss_terms(model: FaceLatentModel, frames: jax.Array, loss_cfg, *,
                         motion: jax.Array | None = None, mouth: jax.Array | None = None,
                         cross: dict | None = None
                         ) -> tuple[jax.Array, dict[str, jax.Array], jax.Array, jax.Array]:
    """The stage-1 generator loss of one batch: frames uint8 (b, 2, R, R, 3) ->
    (total, metrics, fake, real). ``motion`` (b, 2, 12): motion labels, needed by the guidance
    terms and the oracle rung; ``mouth`` (b, 2, R, R, 1): the mouth boxes of ``loss.mouth_l1``
    (``guidance.region_weight`` of the labels); ``cross``: with ``loss.cross_render``, the
    per-row inputs of the rendered cross-reenactment targets (``cross_render.RowInputs``), whose
    rows join the reconstructions (every reconstruction term applies to them).

    metrics holds every unweighted term that ``loss_cfg`` enables (``l1``, ``motion_l1``,
    ``perceptual``, ``g_adv``, ``feature_matching``, ``consist``, ``cross_id``, ``pose_guide``,
    ``expression_guide``, ``mouth_l1``), ``psnr`` (of the same-person reconstructions) and, with
    ``cross_render``, ``cross_render_psnr``; ``fake`` (reconstructions, under stop-gradient)
    and ``real`` (their targets) are (b or 2b, plus a with ``cross_render``, R, R, 3), the
    discriminator's inputs. The discriminator's parameters are used,
    not trained, here (differentiate w.r.t. the generator's only); ``l_cross_id`` embeds with
    a frozen copy of the model (gradient only through the image)."""
    lc = loss_cfg
    out = generator_outputs(model, frames, lc, motion)
    fakes = [out["recon"]] + ([out["recon_back"]] if lc.symmetric else [])
    reals = [out["drv"]] + ([out["src"]] if lc.symmetric else [])
    m = {"psnr": losses.psnr(jnp.concatenate(fakes), jnp.concatenate(reals)).mean()}
    # Where each target differs from the image it is drawn from (motion_l1's weights).
    moving = ([losses.motion_weight_map(out["src"], out["drv"])] * len(fakes)
              if lc.motion_l1 else [])
    mouths = None if mouth is None else [mouth[:, 1]] + ([mouth[:, 0]] if lc.symmetric else [])
    if lc.get("cross_render", False):  # V_i with the motion of row (i - 1)'s driver
        a = out["cross"].shape[0]
        prev = lambda x: jax.tree.map(lambda v: jnp.roll(v, 1, axis=0)[:a], x)  # noqa: E731
        first = lambda x: jax.tree.map(lambda v: v[:a], x)  # noqa: E731
        target = cross_render.render_targets(
            prev(motion[:, 1]), first(cross["appearance"]), prev(cross["style"]),
            first(cross["mirrored"]), resolution=frames.shape[2])
        m["cross_render_psnr"] = losses.psnr(out["cross"], target).mean()
        fakes.append(out["cross"])
        reals.append(jax.lax.stop_gradient(target))
        if lc.motion_l1:
            moving.append(losses.motion_weight_map(out["src"][:a], target))
        if mouths is not None:
            mouths.append(prev(mouth[:, 1]))
    fake, real = jnp.concatenate(fakes), jnp.concatenate(reals)
    m["l1"] = losses.l1_loss(fake, real)
    total = lc.l1 * m["l1"]
    if lc.motion_l1:  # extra L1 where source and target differ (the moving parts)
        w = jnp.concatenate(moving)
        m["motion_l1"] = losses.weighted_l1_loss(fake, real, w)
        total += lc.motion_l1 * m["motion_l1"]
    if lc.get("mouth_l1", 0):  # targets: the drivers, then (symmetric) the sources
        w = jnp.concatenate(mouths)
        m["mouth_l1"] = guidance.region_l1(fake, real, w)
        total += lc.mouth_l1 * m["mouth_l1"]
    if lc.get("pose_guide", 0) or lc.get("expression_guide", 0):
        labels = jnp.concatenate([motion[:, 0], motion[:, 1]])
        if lc.get("pose_guide", 0):
            m["pose_guide"] = guidance.pose_guide_loss(out["pose"],
                                                       guidance.pose_labels(labels))
            total += lc.pose_guide * m["pose_guide"]
        if lc.get("expression_guide", 0):
            if model.expression_readout is None:
                raise ValueError("loss.expression_guide needs model.expression_readout > 0 "
                                 "(the hidden width of the head that reads z_dyn).")
            pred = model.expression_readout(out["dyn"])
            m["expression_guide"] = guidance.masked_mse(pred,
                                                        guidance.expression_labels(labels))
            total += lc.expression_guide * m["expression_guide"]
    if lc.perceptual:
        m["perceptual"] = losses.perceptual_loss(fake, real, lc.perceptual_layers)
        total += lc.perceptual * m["perceptual"]
    if uses_discriminator(lc):
        d_fake = model.discriminator(fake)
        d_real = model.discriminator(real)
        m["g_adv"] = losses.hinge_generator_loss([lg for _, lg in d_fake])
        m["feature_matching"] = losses.feature_matching_loss(
            [f for f, _ in d_real], [f for f, _ in d_fake])
        total += lc.adversarial * m["g_adv"] + lc.feature_matching * m["feature_matching"]
    if lc.consist:
        m["consist"] = losses.l1_loss(out["consist_j"], out["consist_i"])
        total += lc.consist * m["consist"]
    if lc.cross_id:
        graphdef, state = nnx.split(model)
        frozen = nnx.merge(graphdef, jax.lax.stop_gradient(state))
        emb = frozen.identity(out["cross"])
        m["cross_id"] = losses.cosine_distance(
            emb, jax.lax.stop_gradient(out["zid_src"])).mean()
        total += lc.cross_id * m["cross_id"]
    return total, m, jax.lax.stop_gradient(fake), real


def discriminator_loss(model: FaceLatentModel, fake: jax.Array, real: jax.Array
                       ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Hinge loss of the multi-scale discriminator on ``real`` and ``fake`` (n, R, R, 3) ->
    (loss, {"d_real", "d_fake": mean logits averaged over scales})."""
    d_real = [lg for _, lg in model.discriminator(real)]
    d_fake = [lg for _, lg in model.discriminator(fake)]
    loss = losses.hinge_discriminator_loss(d_real, d_fake)
    return loss, {"d_real": sum(x.mean() for x in d_real) / len(d_real),
                  "d_fake": sum(x.mean() for x in d_fake) / len(d_fake)}
