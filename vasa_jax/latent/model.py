"""``FaceLatentModel``: VASA-1's disentangled face latent space (stage 1).

encode_appearance: image -> canonical appearance volume ``V_app`` (b, D, H, W, C) + ``z_id``
encode_motion:     image -> ``z_pose`` (b, 7) + ``z_dyn`` (b, dyn_dim)
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

from vasa_jax.latent import warp
from vasa_jax.latent.discriminator import MultiScaleDiscriminator
from vasa_jax.latent.encoders import AppearanceEncoder, MotionEncoder
from vasa_jax.latent.generator import G2D, G3D, Projection
from vasa_jax.nn.layers import dtype_of


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
        self.g2d = G2D(cfg.g2d_channels[0], cfg.g2d_channels, rngs=rngs, patch=patch,
                       dtype=dtype)
        self.discriminator = MultiScaleDiscriminator(cfg.disc_channels, cfg.disc_scales,
                                                     rngs=rngs, dtype=dtype)

    # -- encoders ------------------------------------------------------------------------------
    def encode_motion(self, image: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(b, R, R, 3) in [-1, 1] -> z_pose (b, 7), z_dyn (b, dyn_dim)."""
        return self.motion(image)

    def encode_appearance(self, image: jax.Array, z_pose: jax.Array | None = None,
                          z_dyn: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
        """(b, R, R, 3) -> canonical V_app (b, D, H, W, C), z_id (b, id_dim).

        The posed volume is warped to canonical with the image's own pose and dynamics
        (computed here unless given)."""
        if z_pose is None or z_dyn is None:
            z_pose, z_dyn = self.encode_motion(image)
        posed, z_id = self.appearance(image)
        flow = self.warp_to_canonical(jnp.concatenate([z_dyn, z_id], axis=-1))
        return warp.warp_to_canonical(posed, z_pose, flow), z_id

    def identity(self, image: jax.Array) -> jax.Array:
        """z_id (b, id_dim) of an image (the default identity embedder of l_cross_id)."""
        return self.appearance.identity(image)

    # -- decoder -------------------------------------------------------------------------------
    def drive(self, v_app: jax.Array, z_id: jax.Array, z_pose: jax.Array, z_dyn: jax.Array
              ) -> jax.Array:
        """Canonical volume -> the volume posed by (z_pose, z_dyn)."""
        flow = self.warp_from_canonical(jnp.concatenate([z_dyn, z_id], axis=-1))
        return warp.warp_from_canonical(v_app, z_pose, flow)

    def decode(self, v_app: jax.Array, z_id: jax.Array, z_pose: jax.Array, z_dyn: jax.Array
               ) -> jax.Array:
        """(V_app, z_id, z_pose, z_dyn) -> image (b, R, R, 3) in [-1, 1]."""
        v = self.g3d(self.drive(v_app, z_id, z_pose, z_dyn), z_dyn)  # used if g3d_dyn_cond
        return self.g2d(self.projection(v))

    def reenact(self, source: jax.Array, driver: jax.Array) -> jax.Array:
        """The source's appearance with the driver's pose and dynamics: (b, R, R, 3) x 2 ->
        (b, R, R, 3)."""
        v_app, z_id = self.encode_appearance(source)
        z_pose, z_dyn = self.encode_motion(driver)
        return self.decode(v_app, z_id, z_pose, z_dyn)


def make_face_latent_model(cfg: ml_collections.ConfigDict, *, rngs: nnx.Rngs
                           ) -> FaceLatentModel:
    return FaceLatentModel(cfg, rngs=rngs)


def to_unit(frames) -> jax.Array:
    """uint8 (..., 3) frames -> float32 in [-1, 1]."""
    return jnp.asarray(frames, jnp.float32) / 127.5 - 1.0


def to_uint8(images) -> jax.Array:
    """Images in [-1, 1] -> uint8 (rounded, clipped)."""
    return jnp.clip(jnp.round((images + 1.0) * 127.5), 0, 255).astype(jnp.uint8)
