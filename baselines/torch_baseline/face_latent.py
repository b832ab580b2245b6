"""PyTorch FaceLatentModel: the same network as ``vasa_jax.latent.model.FaceLatentModel`` (VASA-1
stage 1), written as idiomatic ``torch.nn`` modules.

Layouts are torch's: images ``(b, 3, R, R)`` in [-1, 1], feature maps ``(b, c, h, w)``, volumes
``(b, C, D, H, W)``. Poses ``z_pose`` (b, 7) = (yaw, pitch, roll, tx, ty, tz, log_scale) and
codes are as in JAX; flows and sampling grids are ``(b, D, H, W, 3)`` with the last axis (x, y, z),
the layout ``F.grid_sample`` takes.

    model = make_face_latent_model(config.model)          # configs/latent.py
    v_app, z_id = model.encode_appearance(image)          # (b, C, D, H, W), (b, id_dim)
    z_pose, z_dyn = model.encode_motion(image)            # (b, 7), (b, dyn_dim)
    image = model.decode(v_app, z_id, z_pose, z_dyn)      # (b, 3, R, R)
    feats_and_logits = model.discriminator(image)         # [([(b, c_i, h_i, w_i)], (b, 1, h, w))]

Parameter names (``state_dict``) mirror the Flax module tree, so that
``vasa_jax.interop.face_latent`` converts by name: Flax ``kernel`` <-> torch ``weight`` (Linear
(in, out) <-> (out, in); convolutions (k..., in, out) <-> (out, in, k...)), GroupNorm ``scale``
<-> ``weight``. The space-to-depth input and depth-to-space output use ``F.pixel_unshuffle`` /
``F.pixel_shuffle``, whose channel order differs from ours; the converter permutes those two
layers' channels.

Only float32 compute is implemented (``model.dtype == 'float32'``).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

POSE_DIM = 7


def num_groups(channels: int, max_groups: int = 32, min_group_size: int = 4) -> int:
    """The largest group count <= ``max_groups`` dividing ``channels`` into groups of at least
    ``min_group_size`` channels (1 if none); as ``vasa_jax.nn.conv.num_groups``."""
    for g in range(min(max_groups, channels // min_group_size), 0, -1):
        if channels % g == 0:
            return g
    return 1


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """(before, after) padding of TensorFlow/XLA's 'SAME' along one axis."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class SameConv2d(nn.Conv2d):
    """``nn.Conv2d`` with 'SAME' padding as XLA computes it from the input size (symmetric
    through the convolution's own padding when it can be, else an explicit ``F.pad``)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int = 1, bias: bool = True):
        super().__init__(in_ch, out_ch, kernel, stride=stride, padding=0, bias=bias)

    def conv_weight(self) -> torch.Tensor:
        return self.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (ph0, ph1), (pw0, pw1) = (same_padding(n, k, s) for n, k, s in
                                  zip(x.shape[-2:], self.kernel_size, self.stride))
        if ph0 != ph1 or pw0 != pw1:
            x, ph0, pw0 = F.pad(x, (pw0, pw1, ph0, ph1)), 0, 0
        return F.conv2d(x, self.conv_weight(), self.bias, self.stride, (ph0, pw0))


def standardize_weight(w: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Scaled weight standardisation: each output filter (w[o]) -> zero mean, variance 1/fan_in."""
    dims = tuple(range(1, w.ndim))
    fan_in = w[0].numel()
    mean = w.mean(dim=dims, keepdim=True)
    var = w.var(dim=dims, keepdim=True, unbiased=False)
    return (w - mean) * torch.rsqrt(var * fan_in + eps)


class WSConv2d(SameConv2d):
    """Weight-standardised 2-D convolution, 'SAME' padding (``standardize=False``: plain)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int = 1, bias: bool = True,
                 standardize: bool = True):
        super().__init__(in_ch, out_ch, kernel, stride=stride, bias=bias)
        self.standardize = standardize

    def conv_weight(self) -> torch.Tensor:
        return standardize_weight(self.weight) if self.standardize else self.weight


class WSConv3d(nn.Conv3d):
    """Weight-standardised stride-1 3-D convolution with 'SAME' (odd-kernel) padding."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, bias: bool = True,
                 standardize: bool = True):
        if kernel % 2 == 0:
            raise ValueError(f"WSConv3d needs an odd kernel, got {kernel}.")
        super().__init__(in_ch, out_ch, kernel, padding=kernel // 2, bias=bias)
        self.standardize = standardize

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = standardize_weight(self.weight) if self.standardize else self.weight
        return self._conv_forward(x, w, self.bias)


def ws_conv(ndim: int, in_ch: int, out_ch: int, kernel: int, **kw) -> nn.Module:
    return (WSConv2d if ndim == 2 else WSConv3d)(in_ch, out_ch, kernel, **kw)


class AdaptiveGroupNorm(nn.Module):
    """GroupNorm (no affine) whose scale and bias come from a code: ``GN(x) (1 + gamma) + beta``
    with ``gamma, beta = proj(cond).chunk(2)``."""

    def __init__(self, channels: int, cond_dim: int):
        super().__init__()
        self.norm = nn.GroupNorm(num_groups(channels), channels, eps=1e-5, affine=False)
        self.proj = nn.Linear(cond_dim, 2 * channels)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        gamma, beta = self.proj(cond).chunk(2, dim=1)
        shape = gamma.shape + (1,) * (x.ndim - 2)
        return self.norm(x) * (1 + gamma.view(shape)) + beta.view(shape)


class ResBlock(nn.Module):
    """Pre-activation residual block: (GroupNorm, SiLU, 3x3 WS-conv) x 2 + a 1x1 skip when the
    width changes; the residual branch is scaled per channel by ``gain``. ``cond_dim`` > 0:
    adaptive norms. x (b, in, *spatial) [, cond (b, cond_dim)] -> (b, out, *spatial)."""

    def __init__(self, in_ch: int, out_ch: int, *, ndim: int, cond_dim: int = 0):
        super().__init__()
        if cond_dim:
            self.norm1 = AdaptiveGroupNorm(in_ch, cond_dim)
            self.norm2 = AdaptiveGroupNorm(out_ch, cond_dim)
        else:
            self.norm1 = nn.GroupNorm(num_groups(in_ch), in_ch, eps=1e-5)
            self.norm2 = nn.GroupNorm(num_groups(out_ch), out_ch, eps=1e-5)
        self.conv1 = ws_conv(ndim, in_ch, out_ch, 3)
        self.conv2 = ws_conv(ndim, out_ch, out_ch, 3)
        self.skip = ws_conv(ndim, in_ch, out_ch, 1) if in_ch != out_ch else None
        self.gain = nn.Parameter(torch.full((out_ch,), 0.2))
        self.conditioned = bool(cond_dim)

    def _norm(self, norm: nn.Module, x: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        return norm(x, cond) if self.conditioned else norm(x)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        h = self.conv1(F.silu(self._norm(self.norm1, x, cond)))
        h = self.conv2(F.silu(self._norm(self.norm2, h, cond)))
        skip = x if self.skip is None else self.skip(x)
        return skip + h * self.gain.view((1, -1) + (1,) * (x.ndim - 2))


def group_norm(x: torch.Tensor, channels: int) -> torch.Tensor:
    """GroupNorm without affine, ``num_groups(channels)`` groups, eps 1e-5."""
    return F.group_norm(x, num_groups(channels), eps=1e-5)


def upsample(x: torch.Tensor, factors: Sequence[int]) -> torch.Tensor:
    """Nearest-neighbour upsampling of the spatial axes by integer ``factors``."""
    if all(f == 1 for f in factors):
        return x
    return F.interpolate(x, scale_factor=tuple(float(f) for f in factors), mode="nearest")


# -- encoders ----------------------------------------------------------------------------------

class AppearanceEncoder(nn.Module):
    """Image (b, 3, R, R) -> posed volume (b, C, D, R / p 2^n, R / p 2^n) and z_id (b, id_dim)."""

    def __init__(self, channels: Sequence[int], volume_channels: int, volume_depth: int,
                 blocks_3d: int, id_dim: int, *, patch: int = 1):
        super().__init__()
        self.patch = patch
        self.stem = WSConv2d(3 * patch * patch, channels[0], 3)
        self.blocks = nn.ModuleList([ResBlock(a, b, ndim=2)
                                     for a, b in zip(channels[:-1], channels[1:])])
        self.last = ResBlock(channels[-1], channels[-1], ndim=2)
        self.to_volume = WSConv2d(channels[-1], volume_channels * volume_depth, 1)
        self.blocks_3d = nn.ModuleList([ResBlock(volume_channels, volume_channels, ndim=3)
                                        for _ in range(blocks_3d)])
        self.id_head = nn.Linear(channels[-1], id_dim)
        self.volume_channels, self.volume_depth = volume_channels, volume_depth

    def features(self, image: torch.Tensor) -> torch.Tensor:
        x = self.stem(F.pixel_unshuffle(image, self.patch) if self.patch > 1 else image)
        for block in self.blocks:
            x = F.avg_pool2d(block(x), 2)
        return F.silu(group_norm(self.last(x), x.shape[1]))

    def identity(self, image: torch.Tensor) -> torch.Tensor:
        """(b, 3, R, R) -> z_id (b, id_dim)."""
        return self.id_head(self.features(image).mean(dim=(2, 3)))

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.features(image)
        b, _, h, w = f.shape
        # Channel d * C + c of the 1x1 projection is voxel depth d, channel c.
        v = self.to_volume(f).view(b, self.volume_depth, self.volume_channels, h, w)
        v = v.transpose(1, 2)
        for block in self.blocks_3d:
            v = block(v)
        return v, self.id_head(f.mean(dim=(2, 3)))


class MotionEncoder(nn.Module):
    """Image (b, 3, R, R) -> z_pose (b, 7), z_dyn (b, dyn_dim)."""

    def __init__(self, channels: Sequence[int], hidden: int, dyn_dim: int, *, patch: int = 1):
        super().__init__()
        self.patch = patch
        self.stem = WSConv2d(3 * patch * patch, channels[0], 3)
        ins = (channels[0],) + tuple(channels[:-1])
        self.blocks = nn.ModuleList([ResBlock(a, b, ndim=2) for a, b in zip(ins, channels)])
        self.fc = nn.Linear(channels[-1], hidden)
        self.pose = nn.Linear(hidden, POSE_DIM)
        self.dyn = nn.Linear(hidden, dyn_dim)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.stem(F.pixel_unshuffle(image, self.patch) if self.patch > 1 else image)
        for block in self.blocks:
            x = F.avg_pool2d(block(x), 2)
        h = F.silu(group_norm(x, x.shape[1])).mean(dim=(2, 3))
        h = F.silu(self.fc(h))
        return self.pose(h), self.dyn(h)


# -- warping -----------------------------------------------------------------------------------

def unit_linspace(n: int, device=None) -> torch.Tensor:
    """n points from -1 to 1, rounded as ``jnp.linspace`` under ``jit`` rounds them
    (-(1 - s) + s with s = i * float32(1 / (n - 1))); ``torch.linspace`` differs in the last
    bit, which the sampling of a volume turns into visible differences."""
    if n == 1:
        return torch.full((1,), -1.0, device=device)
    step = torch.tensor(1.0 / (n - 1), dtype=torch.float32, device=device)
    s = torch.arange(n - 1, dtype=torch.float32, device=device) * step
    return torch.cat([-(1 - s) + s, torch.ones(1, device=device)])


def identity_grid(depth: int, height: int, width: int, device=None) -> torch.Tensor:
    """(d, h, w, 3) voxel centres in normalised (x, y, z) coordinates (align_corners=True)."""
    z, y, x = (unit_linspace(n, device) for n in (depth, height, width))
    zz, yy, xx = torch.meshgrid(z, y, x, indexing="ij")
    return torch.stack([xx, yy, zz], dim=-1)


def rotation_matrix(yaw: torch.Tensor, pitch: torch.Tensor, roll: torch.Tensor) -> torch.Tensor:
    """(..., 3, 3) rotation Rz(roll) @ Ry(yaw) @ Rx(pitch) on (x, y, z) column vectors."""
    cy, sy, cp, sp, cr, sr = (f(a) for a in (yaw, pitch, roll) for f in (torch.cos, torch.sin))
    one, zero = torch.ones_like(yaw), torch.zeros_like(yaw)
    rx = torch.stack([one, zero, zero, zero, cp, -sp, zero, sp, cp], -1).view(*yaw.shape, 3, 3)
    ry = torch.stack([cy, zero, sy, zero, one, zero, -sy, zero, cy], -1).view(*yaw.shape, 3, 3)
    rz = torch.stack([cr, -sr, zero, sr, cr, zero, zero, zero, one], -1).view(*yaw.shape, 3, 3)
    return rz @ ry @ rx


def _pose_parts(pose: torch.Tensor):
    return rotation_matrix(pose[:, 0], pose[:, 1], pose[:, 2]), pose[:, 3:6], pose[:, 6].exp()


def posed_to_canonical_coords(grid: torch.Tensor, pose: torch.Tensor,
                              flow: torch.Tensor | None = None) -> torch.Tensor:
    """``s R (g + F) + t`` for canonical points ``grid`` (d, h, w, 3): pose (b, 7), flow
    (b, d, h, w, 3) or None -> (b, d, h, w, 3)."""
    rot, t, s = _pose_parts(pose)
    g = grid[None] if flow is None else grid[None] + flow
    g = torch.einsum("bij,bdhwj->bdhwi", rot, g)
    return s[:, None, None, None, None] * g + t[:, None, None, None, :]


def canonical_coords_of_posed(grid: torch.Tensor, pose: torch.Tensor,
                              flow: torch.Tensor | None = None) -> torch.Tensor:
    """``R^T (p - t) / s + F`` for posed points ``grid`` (d, h, w, 3) -> (b, d, h, w, 3)."""
    rot, t, s = _pose_parts(pose)
    # times 1/s rather than / s: XLA rewrites the division so, and this rounds identically.
    p = (grid[None] - t[:, None, None, None, :]) * (1 / s)[:, None, None, None, None]
    c = torch.einsum("bji,bdhwj->bdhwi", rot, p)
    return c if flow is None else c + flow


def warp_to_canonical(volume: torch.Tensor, pose: torch.Tensor,
                      flow: torch.Tensor | None = None) -> torch.Tensor:
    """Posed volume (b, C, D, H, W) -> canonical volume of the same shape."""
    grid = identity_grid(*volume.shape[2:], device=volume.device)
    return F.grid_sample(volume, posed_to_canonical_coords(grid, pose, flow), mode="bilinear",
                         padding_mode="zeros", align_corners=True)


def warp_from_canonical(volume: torch.Tensor, pose: torch.Tensor,
                        flow: torch.Tensor | None = None) -> torch.Tensor:
    """Canonical volume (b, C, D, H, W) -> the volume posed by ``pose`` (+ ``flow``)."""
    grid = identity_grid(*volume.shape[2:], device=volume.device)
    return F.grid_sample(volume, canonical_coords_of_posed(grid, pose, flow), mode="bilinear",
                         padding_mode="zeros", align_corners=True)


class WarpGenerator(nn.Module):
    """Code (b, k) -> non-rigid 3-D flow (b, D, H, W, 3): a linear seed volume, 3-D residual
    blocks with adaptive GroupNorm, each but the last followed by a 2x upsampling, GroupNorm,
    SiLU, a plain 3x3x3 convolution to 3 channels; computed at 1/``flow_upsample`` of H and W
    and resized trilinearly (``jax.image.resize``'s half-pixel, edge-clamped linear kernel is
    ``align_corners=False`` interpolation)."""

    def __init__(self, cond_dim: int, volume_shape: Sequence[int], channels: int, num_ups: int,
                 *, flow_upsample: int = 1):
        super().__init__()
        self.volume_shape = tuple(volume_shape)
        d, h, w = volume_shape
        if h % flow_upsample or w % flow_upsample:
            raise ValueError(f"flow_upsample {flow_upsample} does not divide {volume_shape}.")
        h, w = h // flow_upsample, w // flow_upsample
        factors = []
        for _ in range(num_ups):
            fd = 2 if d % 2 == 0 and d // 2 >= 2 else 1
            if h % 2 or w % 2:
                raise ValueError(f"Volume {volume_shape} cannot be reached by {num_ups} "
                                 f"2x upsamplings.")
            d, h, w = d // fd, h // 2, w // 2
            factors.append((fd, 2, 2))
        self.factors = tuple(reversed(factors))
        self.seed_shape = (d, h, w)
        self.channels = channels
        self.seed = nn.Linear(cond_dim, d * h * w * channels)
        self.blocks = nn.ModuleList([ResBlock(channels, channels, ndim=3, cond_dim=cond_dim)
                                     for _ in range(num_ups + 1)])
        self.out = WSConv3d(channels, 3, 3, standardize=False)

    def forward(self, cond: torch.Tensor) -> torch.Tensor:
        # The seed vector is laid out (d, h, w, channels), as in the JAX model.
        x = self.seed(cond).view(cond.shape[0], *self.seed_shape, self.channels)
        x = x.permute(0, 4, 1, 2, 3)
        for i, block in enumerate(self.blocks):
            x = block(x, cond)
            if i < len(self.factors):
                x = upsample(x, self.factors[i])
        flow = self.out(F.silu(group_norm(x, self.channels)))
        if tuple(flow.shape[2:]) != self.volume_shape:
            flow = F.interpolate(flow, size=self.volume_shape, mode="trilinear",
                                 align_corners=False)
        return flow.permute(0, 2, 3, 4, 1)


# -- decoder -----------------------------------------------------------------------------------

class G3D(nn.Module):
    """3-D U-Net (b, C, D, H, W) -> (b, channels[0], D, H, W); H and W halve between levels."""

    def __init__(self, in_ch: int, channels: Sequence[int], *, cond_dim: int = 0):
        super().__init__()
        ins = (in_ch,) + tuple(channels[:-1])
        self.down = nn.ModuleList([ResBlock(a, b, ndim=3, cond_dim=cond_dim)
                                   for a, b in zip(ins, channels)])
        self.up = nn.ModuleList([ResBlock(channels[i + 1] + channels[i], channels[i], ndim=3,
                                          cond_dim=cond_dim)
                                 for i in reversed(range(len(channels) - 1))])

    def forward(self, v: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        skips = []
        for i, block in enumerate(self.down):
            v = block(v, cond)
            if i < len(self.down) - 1:
                skips.append(v)
                v = F.avg_pool3d(v, (1, 2, 2))
        for block in self.up:
            v = block(torch.cat([upsample(v, (1, 2, 2)), skips.pop()], dim=1), cond)
        return v


class Projection(nn.Module):
    """Orthographic projection: depth folded into channels (d * C + c), then a 1x1 conv.
    (b, C, D, H, W) -> (b, out_ch, H, W)."""

    def __init__(self, depth: int, in_ch: int, out_ch: int):
        super().__init__()
        self.conv = WSConv2d(depth * in_ch, out_ch, 1)

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        return self.conv(v.transpose(1, 2).flatten(1, 2))


class G2D(nn.Module):
    """2-D generator (b, in_ch, h, w) -> RGB (b, 3, h p 2^(n-1), w p 2^(n-1)) in [-1, 1]."""

    def __init__(self, in_ch: int, channels: Sequence[int], *, patch: int = 1):
        super().__init__()
        self.patch = patch
        ins = (in_ch,) + tuple(channels[:-1])
        self.blocks = nn.ModuleList([ResBlock(a, b, ndim=2) for a, b in zip(ins, channels)])
        self.to_rgb = WSConv2d(channels[-1], 3 * patch * patch, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, block in enumerate(self.blocks):
            if i > 0:
                x = upsample(x, (2, 2))
            x = block(x)
        x = self.to_rgb(F.silu(group_norm(x, x.shape[1])))
        return torch.tanh(F.pixel_shuffle(x, self.patch) if self.patch > 1 else x)


# -- discriminator -----------------------------------------------------------------------------

class PatchDiscriminator(nn.Module):
    """4x4 stride-2 convolutions + leaky ReLU(0.2), then a 3x3 conv to one logit per patch.
    (b, 3, h, w) -> ([(b, c_i, h / 2^(i+1), w / 2^(i+1))], (b, 1, h', w'))."""

    def __init__(self, channels: Sequence[int]):
        super().__init__()
        ins = (3,) + tuple(channels[:-1])
        self.convs = nn.ModuleList([SameConv2d(a, b, 4, stride=2) for a, b in zip(ins, channels)])
        self.out = SameConv2d(channels[-1], 1, 3)

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        feats = []
        for conv in self.convs:
            x = F.leaky_relu(conv(x), 0.2)
            feats.append(x)
        return feats, self.out(x)


class MultiScaleDiscriminator(nn.Module):
    """One PatchDiscriminator per scale; scale i sees the image average-pooled by 2^i."""

    def __init__(self, channels: Sequence[int], num_scales: int):
        super().__init__()
        self.scales = nn.ModuleList([PatchDiscriminator(channels) for _ in range(num_scales)])

    def forward(self, image: torch.Tensor) -> list[tuple[list[torch.Tensor], torch.Tensor]]:
        return [d(image if i == 0 else F.avg_pool2d(image, 2 ** i))
                for i, d in enumerate(self.scales)]


# -- the model ---------------------------------------------------------------------------------

class FaceLatentModel(nn.Module):
    """Stage 1 of VASA-1 (see ``vasa_jax.latent.model.FaceLatentModel``); the discriminator is
    a submodule (``discriminator``), trained with its own optimiser."""

    def __init__(self, *, resolution: int, patch: int, app_channels: Sequence[int],
                 volume_channels: int, volume_depth: int, app_blocks_3d: int, id_dim: int,
                 motion_channels: Sequence[int], motion_hidden: int, dyn_dim: int,
                 warp_channels: int, warp_ups: int, flow_upsample: int,
                 g3d_channels: Sequence[int], g3d_dyn_cond: bool, g2d_channels: Sequence[int],
                 disc_channels: Sequence[int], disc_scales: int, dtype: str = "float32"):
        super().__init__()
        if dtype != "float32":
            raise ValueError(f"The torch FaceLatentModel computes in float32 only; got "
                             f"dtype={dtype!r} (set model.dtype='float32').")
        num_down = len(app_channels) - 1
        if (resolution % (patch * 2 ** num_down)
                or len(motion_channels) > int(math.log2(resolution // patch))):
            raise ValueError(f"Resolution {resolution} does not fit the encoder depths "
                             f"(app {tuple(app_channels)}, motion {tuple(motion_channels)}).")
        if len(g2d_channels) != num_down + 1:
            raise ValueError(f"g2d_channels needs {num_down + 1} entries.")
        self.resolution, self.dyn_dim, self.id_dim = resolution, dyn_dim, id_dim
        side = resolution // patch // 2 ** num_down
        self.volume_shape = (volume_channels, volume_depth, side, side)  # (C, D, H, W)
        self.appearance = AppearanceEncoder(app_channels, volume_channels, volume_depth,
                                            app_blocks_3d, id_dim, patch=patch)
        self.motion = MotionEncoder(motion_channels, motion_hidden, dyn_dim, patch=patch)
        cond = dyn_dim + id_dim
        vshape = (volume_depth, side, side)
        self.warp_to_canonical = WarpGenerator(cond, vshape, warp_channels, warp_ups,
                                               flow_upsample=flow_upsample)
        self.warp_from_canonical = WarpGenerator(cond, vshape, warp_channels, warp_ups,
                                                 flow_upsample=flow_upsample)
        self.g3d = G3D(volume_channels, g3d_channels, cond_dim=dyn_dim if g3d_dyn_cond else 0)
        self.projection = Projection(volume_depth, g3d_channels[0], g2d_channels[0])
        self.g2d = G2D(g2d_channels[0], g2d_channels, patch=patch)
        self.discriminator = MultiScaleDiscriminator(disc_channels, disc_scales)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The Flax initialisation's distributions: WS-conv kernels N(0, 1/fan_in), Linear
        Xavier-uniform, discriminator convs LeCun-normal (truncated), zero biases, GroupNorm
        scale 1, residual gains 0.2; zero pose head, adaptive-norm projections and flow
        output layers (an untrained model is rigid and unconditioned)."""
        for m in self.modules():
            if isinstance(m, (WSConv2d, WSConv3d)):
                nn.init.normal_(m.weight, std=m.weight[0].numel() ** -0.5)
            elif isinstance(m, SameConv2d):  # the discriminator's plain convolutions
                # flax lecun_normal: truncated at 2 std, rescaled to variance 1 / fan_in
                std = m.weight[0].numel() ** -0.5 / 0.87962566103423978
                nn.init.trunc_normal_(m.weight, std=std, a=-2 * std, b=2 * std)
            elif isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
            elif isinstance(m, ResBlock):
                nn.init.constant_(m.gain, 0.2)
            if isinstance(m, (nn.Linear, nn.Conv2d, nn.Conv3d)) and m.bias is not None:
                nn.init.zeros_(m.bias)
        zero = [self.motion.pose.weight, self.warp_to_canonical.out.weight,
                self.warp_from_canonical.out.weight]
        zero += [m.proj.weight for m in self.modules() if isinstance(m, AdaptiveGroupNorm)]
        for w in zero:
            nn.init.zeros_(w)

    # -- encoders ------------------------------------------------------------------------------
    def encode_motion(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(b, 3, R, R) in [-1, 1] -> z_pose (b, 7), z_dyn (b, dyn_dim)."""
        return self.motion(image)

    def encode_appearance(self, image: torch.Tensor, z_pose: torch.Tensor | None = None,
                          z_dyn: torch.Tensor | None = None
                          ) -> tuple[torch.Tensor, torch.Tensor]:
        """(b, 3, R, R) -> canonical V_app (b, C, D, H, W), z_id (b, id_dim)."""
        if z_pose is None or z_dyn is None:
            z_pose, z_dyn = self.encode_motion(image)
        posed, z_id = self.appearance(image)
        flow = self.warp_to_canonical(torch.cat([z_dyn, z_id], dim=-1))
        return warp_to_canonical(posed, z_pose, flow), z_id

    def identity(self, image: torch.Tensor) -> torch.Tensor:
        """z_id (b, id_dim) of an image (the default identity embedder of l_cross_id)."""
        return self.appearance.identity(image)

    # -- decoder -------------------------------------------------------------------------------
    def drive(self, v_app: torch.Tensor, z_id: torch.Tensor, z_pose: torch.Tensor,
              z_dyn: torch.Tensor) -> torch.Tensor:
        """Canonical volume -> the volume posed by (z_pose, z_dyn)."""
        flow = self.warp_from_canonical(torch.cat([z_dyn, z_id], dim=-1))
        return warp_from_canonical(v_app, z_pose, flow)

    def decode(self, v_app: torch.Tensor, z_id: torch.Tensor, z_pose: torch.Tensor,
               z_dyn: torch.Tensor) -> torch.Tensor:
        """(V_app, z_id, z_pose, z_dyn) -> image (b, 3, R, R) in [-1, 1]."""
        v = self.g3d(self.drive(v_app, z_id, z_pose, z_dyn), z_dyn)
        return self.g2d(self.projection(v))

    def reenact(self, source: torch.Tensor, driver: torch.Tensor) -> torch.Tensor:
        """The source's appearance with the driver's pose and dynamics."""
        v_app, z_id = self.encode_appearance(source)
        z_pose, z_dyn = self.encode_motion(driver)
        return self.decode(v_app, z_id, z_pose, z_dyn)

    def generator_parameters(self) -> list[nn.Parameter]:
        """Every parameter outside the discriminator (the generator optimiser's group)."""
        return [p for n, p in self.named_parameters() if not n.startswith("discriminator.")]


def make_face_latent_model(model_cfg: Any) -> FaceLatentModel:
    """Build from a ``config.model`` ConfigDict (configs/latent.py)."""
    keys = ("resolution", "patch", "app_channels", "volume_channels", "volume_depth",
            "app_blocks_3d", "id_dim", "motion_channels", "motion_hidden", "dyn_dim",
            "warp_channels", "warp_ups", "flow_upsample", "g3d_channels", "g3d_dyn_cond",
            "g2d_channels", "disc_channels", "disc_scales", "dtype")
    return FaceLatentModel(**{k: model_cfg[k] for k in keys})


_INV_127_5 = float(torch.tensor(1 / 127.5, dtype=torch.float32))


def to_unit(frames: torch.Tensor) -> torch.Tensor:
    """uint8 (..., H, W, 3) frames -> float32 (..., 3, H, W) in [-1, 1].

    Rounded as jitted JAX rounds ``x / 127.5 - 1`` on CPU (x * float32(1/127.5) - 1 with one
    rounding, a fused multiply-add; exact in float64), so both frameworks see the same bits."""
    return (frames.double() * _INV_127_5 - 1.0).float().movedim(-1, -3)
