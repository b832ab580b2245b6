"""``FaceLatentModel``: VASA-1's disentangled face latent space (stage 1).

encode_appearance: image -> canonical appearance volume ``V_app`` (b, D, H, W, C) + ``z_id``;
                   with the sharp path (``skip_channels`` > 0) the appearance is the pair
                   (V_app, S_can), S_can (b, R/p, R/p, skip_channels) canonical 2-D features;
                   with the pixel path (``pixel_warp``) the 4-tuple (V_app, S_can, source
                   image (b, R, R, 3), canonical -> source displacement (b, R, R, 2))
encode_motion:     image -> ``z_pose`` (b, 7) + ``z_dyn`` (b, dyn_dim)
motion_of:         the motion latents of frames, from the encoder or (the oracle rung) labels
decode:            (V_app, z_id, z_pose, z_dyn) -> image (b, R, R, 3) in [-1, 1]
reenact:           (source image, driver image) -> the source's face with the driver's motion

The discriminator lives in the same module tree (attribute ``discriminator``) so the trainer
keeps generator and discriminator in one state; the task gives them separate optimisers.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from vasa_jax.latent import guidance, warp
from vasa_jax.latent.discriminator import MultiScaleDiscriminator
from vasa_jax.latent.encoders import AppearanceEncoder, MotionEncoder
from vasa_jax.instruments.probe import make_probe
from vasa_jax.latent.generator import G2D, G3D, Projection, blend
from vasa_jax.nn.conv import WSConv, space_to_depth
from vasa_jax.nn.layers import dtype_of


# Where the motion latents come from: the motion encoder; (the ladder's oracle rung) the labels;
# or a frozen pretrained motion estimator (a probe-architecture CNN trained on the labels).
MOTION_SOURCES = ("encoder", "oracle", "estimator")


class FaceLatentModel(nnx.Module):
    def __init__(self, cfg: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
        dtype = dtype_of(cfg.dtype)
        num_down = len(cfg.app_channels) - 1
        res, patch = cfg.resolution, cfg.patch
        if (res % (patch * 2 ** num_down)
                or len(cfg.motion_channels) > int(math.log2(res // patch))):
            raise ValueError(f"Resolution {res} does not fit the encoder depths "
                             f"(app {cfg.app_channels}, motion {cfg.motion_channels}).")
        if len(cfg.g2d_channels) != num_down + 1:
            raise ValueError(f"g2d_channels needs {num_down + 1} entries (one per scale from "
                             f"the volume resolution {res // patch // 2 ** num_down} up to "
                             f"{res // patch}).")
        self.resolution, self.dyn_dim, self.id_dim = res, cfg.dyn_dim, cfg.id_dim
        side = res // patch // 2 ** num_down
        self.volume_shape = (cfg.volume_depth, side, side, cfg.volume_channels)
        self.appearance = AppearanceEncoder(cfg.app_channels, cfg.volume_channels,
                                            cfg.volume_depth, cfg.app_blocks_3d, cfg.id_dim,
                                            rngs=rngs, patch=patch, dtype=dtype)
        self.motion = MotionEncoder(cfg.motion_channels, cfg.motion_hidden, cfg.dyn_dim,
                                    rngs=rngs, patch=patch, dtype=dtype)
        cond = cfg.dyn_dim + cfg.id_dim
        vshape = self.volume_shape[:3]
        self.warp_to_canonical = warp.WarpGenerator(cond, vshape, cfg.warp_channels,
                                                    cfg.warp_ups, rngs=rngs,
                                                    flow_upsample=cfg.flow_upsample, dtype=dtype)
        self.warp_from_canonical = warp.WarpGenerator(cond, vshape, cfg.warp_channels,
                                                      cfg.warp_ups, rngs=rngs,
                                                      flow_upsample=cfg.flow_upsample,
                                                      dtype=dtype)
        self.g3d = G3D(cfg.volume_channels, cfg.g3d_channels, rngs=rngs,
                       cond_dim=cfg.dyn_dim if cfg.g3d_dyn_cond else 0, dtype=dtype)
        self.projection = Projection(cfg.volume_depth, cfg.g3d_channels[0], cfg.g2d_channels[0],
                                     rngs=rngs, dtype=dtype)
        skip = cfg.get("skip_channels", 0)
        self.pixel_warp = bool(cfg.get("pixel_warp", False))
        if self.pixel_warp and not skip:
            raise ValueError("model.pixel_warp rides the sharp 2-D path's soft surface: set "
                             "model.skip_channels > 0 as well.")
        self.patch = patch
        self.g2d = G2D(cfg.g2d_channels[0], cfg.g2d_channels, rngs=rngs, patch=patch,
                       skip_channels=skip + (3 * patch * patch if self.pixel_warp else 0),
                       cond_dim=cfg.dyn_dim if cfg.get("g2d_dyn_cond", False) else 0,
                       occlusion=self.pixel_warp, dtype=dtype)
        # The sharp path (not in MegaPortraits; see ``decode``): first-level source features,
        # carried to canonical and to the driver by the depth-collapsed 3-D warps.
        self.skip_channels = skip
        if skip:
            self.skip_proj = WSConv(self.appearance.skip_width, skip, 1, ndim=2, rngs=rngs,
                                    dtype=dtype)
            self.depth_logit = WSConv(cfg.volume_channels, 1, 1, ndim=3, rngs=rngs,
                                      standardize=False, zero_init=True, out_axis=None,
                                      dtype=dtype)
        else:
            self.skip_proj = self.depth_logit = None
        self.discriminator = MultiScaleDiscriminator(cfg.disc_channels, cfg.disc_scales,
                                                     rngs=rngs, dtype=dtype)
        # Guidance and the oracle rung (vasa_jax.latent.guidance); absent in the papers' model.
        source = cfg.get("motion_source", "encoder")
        if source not in MOTION_SOURCES:
            raise ValueError(f"model.motion_source must be one of {MOTION_SOURCES}, got "
                             f"{source!r}.")
        self.motion_source = source
        self.oracle = (guidance.OracleDynamics(cfg.dyn_dim, cfg.motion_hidden, rngs=rngs)
                       if source in ("oracle", "estimator") else None)
        # The estimator's weights come from its own training run (LatentTask.prepare) and stay
        # frozen: LatentTask's parameter groups leave out the path "estimator".
        self.estimator = (make_probe(cfg.estimator, rngs=rngs) if source == "estimator"
                          else None)
        hidden = cfg.get("expression_readout", 0)
        self.expression_readout = (guidance.ExpressionReadout(cfg.dyn_dim, hidden, rngs=rngs)
                                   if hidden else None)

    # -- encoders ------------------------------------------------------------------------------
    def encode_motion(self, image: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(b, R, R, 3) in [-1, 1] -> z_pose (b, 7), z_dyn (b, dyn_dim)."""
        if self.motion_source == "estimator":
            return self.motion_of(image)
        if self.motion_source == "oracle":
            raise ValueError("This stage-1 model is the oracle rung (model.motion_source="
                             "'oracle'): its motion comes from ground-truth labels, so it cannot "
                             "encode the motion of an image. Train with model.motion_source="
                             "'encoder' for a model that can.")
        return self.motion(image)

    def motion_of(self, image: jax.Array, labels: jax.Array | None = None
                  ) -> tuple[jax.Array, jax.Array]:
        """z_pose (b, 7), z_dyn (b, dyn_dim) of frames (b, R, R, 3): from the motion encoder;
        for the oracle rung, from the ground-truth motion ``labels`` (b, 12); for the estimator
        source, from the frozen estimator's reading of the frames (labels unused)."""
        if self.motion_source == "encoder":
            return self.motion(image)
        if self.motion_source == "estimator":
            labels = jax.lax.stop_gradient(self.estimator.predict_motion(image)[0])
        elif labels is None:
            raise ValueError("The oracle rung needs the frames' ground-truth motion labels.")
        return guidance.pose_labels(labels), self.oracle(labels)

    def encode_appearance(self, image: jax.Array, z_pose: jax.Array | None = None,
                          z_dyn: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
        """(b, R, R, 3) -> canonical V_app (b, D, H, W, C), z_id (b, id_dim).

        The posed volume is warped to canonical with the image's own pose and dynamics
        (computed here unless given)."""
        if z_pose is None or z_dyn is None:
            z_pose, z_dyn = self.encode_motion(image)
        posed, z_id, first = self.appearance.encode(image)
        flow = self.warp_to_canonical(jnp.concatenate([z_dyn, z_id], axis=-1))
        coords = warp.posed_to_canonical_coords(warp.identity_grid(*posed.shape[1:4]), z_pose,
                                                flow)
        v_can = warp.resample(posed, coords)
        if not self.skip_channels:
            return v_can, z_id
        disp = self._surface_displacement(v_can, coords)
        s_can = warp.resample(self.skip_proj(first), _coords_at(disp, first.shape[1:3]))
        if not self.pixel_warp:
            return (v_can, s_can), z_id
        # The pixel path keeps the source pixels and, per canonical pixel, the displacement to
        # where it lies in them (composed with the driver's in ``decode``: one resampling).
        pixel_disp = _coords_at(disp, image.shape[1:3]) - _identity_2d(image.shape[1:3])
        return (v_can, s_can, image, pixel_disp), z_id

    def _surface_displacement(self, volume: jax.Array, coords: jax.Array) -> jax.Array:
        """Collapse a 3-D sampling grid to 2-D along depth: per (h, w), the (x, y) of
        ``coords`` (b, d, h, w, 3) averaged over depth with softmax weights from
        ``depth_logit(volume)`` (a learned soft surface), minus the identity -> (b, h, w, 2)."""
        w = jax.nn.softmax(self.depth_logit(volume).astype(jnp.float32), axis=1)
        uv = (w * coords[..., :2]).sum(axis=1)
        return uv - _identity_2d(uv.shape[1:3])

    def identity(self, image: jax.Array) -> jax.Array:
        """z_id (b, id_dim) of an image (the default identity embedder of l_cross_id)."""
        return self.appearance.identity(image)

    # -- decoder -------------------------------------------------------------------------------
    def drive(self, v_app: jax.Array, z_id: jax.Array, z_pose: jax.Array, z_dyn: jax.Array
              ) -> jax.Array:
        """Canonical volume -> the volume posed by (z_pose, z_dyn)."""
        return self._drive(v_app, z_id, z_pose, z_dyn)[0]

    def _drive(self, v_can, z_id, z_pose, z_dyn):
        flow = self.warp_from_canonical(jnp.concatenate([z_dyn, z_id], axis=-1))
        coords = warp.canonical_coords_of_posed(warp.identity_grid(*v_can.shape[1:4]), z_pose,
                                                flow)
        return warp.resample(v_can, coords), coords

    def decode(self, v_app, z_id: jax.Array, z_pose: jax.Array, z_dyn: jax.Array
               ) -> jax.Array:
        """(V_app, z_id, z_pose, z_dyn) -> image (b, R, R, 3) in [-1, 1].

        With the sharp path, ``v_app`` is (V_app, S_can): the driven volume's soft surface
        collapses the canonical -> driver warp to 2-D, which carries S_can to the driver and
        into G2D's last block (one bilinear resampling at R/p instead of trilinear ones at the
        coarser volume: eyes and mouth keep their edges). With the pixel path, G2D's colour is
        blended with the carried source pixels by its occlusion mask (``decode_parts``)."""
        rgb, mask, pixels = self.decode_parts(v_app, z_id, z_pose, z_dyn)
        return rgb if mask is None else blend(mask, pixels, rgb)

    def decode_parts(self, v_app, z_id: jax.Array, z_pose: jax.Array, z_dyn: jax.Array):
        """``decode`` before the pixel path's blend: (G2D's colour (b, R, R, 3), its occlusion
        mask (b, R, R, 1), the source pixels carried to the driver (b, R, R, 3)); the last two
        are None without the pixel path."""
        v_can = v_app[0] if self.skip_channels else v_app
        driven, coords = self._drive(v_can, z_id, z_pose, z_dyn)
        v = self.g3d(driven, z_dyn)  # z_dyn used if g3d_dyn_cond
        skip = pixels = None
        if self.skip_channels:
            s_can = v_app[1]
            disp = self._surface_displacement(driven, coords)
            skip = warp.resample(s_can, _coords_at(disp, s_can.shape[1:3]))
        if self.pixel_warp:
            source, pixel_disp = v_app[2], v_app[3]
            uv = _coords_at(disp, source.shape[1:3])  # driver pixel -> canonical
            pixels = warp.resample(source, uv + warp.resample(pixel_disp, uv))
            skip = jnp.concatenate([skip, space_to_depth(pixels, self.patch).astype(skip.dtype)],
                                   axis=-1)
        # z_dyn used if g2d_dyn_cond
        rgb, mask = self.g2d.parts(self.projection(v), skip, z_dyn)
        return rgb, mask, pixels

    def reenact(self, source: jax.Array, driver: jax.Array) -> jax.Array:
        """The source's appearance with the driver's pose and dynamics: (b, R, R, 3) x 2 ->
        (b, R, R, 3)."""
        v_app, z_id = self.encode_appearance(source)
        z_pose, z_dyn = self.encode_motion(driver)
        return self.decode(v_app, z_id, z_pose, z_dyn)


def _identity_2d(size: tuple[int, int]) -> jax.Array:
    """(h, w, 2) pixel centres in normalised (x, y) coordinates."""
    return warp.identity_grid(1, *size)[0, ..., :2]


def _coords_at(disp: jax.Array, size: tuple[int, int]) -> jax.Array:
    """A 2-D displacement field (b, h, w, 2) resized bilinearly to ``size``, plus the identity
    there -> sampling coordinates (b, H, W, 2) (resizing the displacement, not the coordinates,
    keeps the identity exact)."""
    if disp.shape[1:3] != tuple(size):
        disp = jax.image.resize(disp, (disp.shape[0],) + tuple(size) + (2,), "bilinear")
    return disp + _identity_2d(size)


def make_face_latent_model(cfg: ml_collections.ConfigDict, *, rngs: nnx.Rngs
                           ) -> FaceLatentModel:
    return FaceLatentModel(cfg, rngs=rngs)


def to_unit(frames) -> jax.Array:
    """uint8 (..., 3) frames -> float32 in [-1, 1]."""
    return jnp.asarray(frames, jnp.float32) / 127.5 - 1.0


def to_uint8(images) -> jax.Array:
    """Images in [-1, 1] -> uint8 (rounded, clipped)."""
    return jnp.clip(jnp.round((images + 1.0) * 127.5), 0, 255).astype(jnp.uint8)
