"""Stage 1 as a trainer task: FaceLatentModel on (source, driver) frame pairs of one clip.

Per example, two distinct random frames i (source) and j (driver) of one clip, or, with
probability ``data.other_clip_driver``, j from another clip of the same person. One generator
step computes, in one batched decode (the VASA-1 terms on the first ``loss.aux_fraction`` of
the rows, to bound the cost):
- reconstruction: D(V_i, id_i, pose_j, dyn_j) -> frame j (and, with ``loss.symmetric``, j -> i);
  losses L1 + VGG16 perceptual + hinge GAN + discriminator feature matching, and optionally
  (``loss.motion_l1``, not in the papers) an extra L1 weighted by where the two frames differ,
  so the small moving parts (mouth, eyes) are not drowned by the static background;
- ``l_consist`` (VASA-1): D(V_j, id_j, pose_i, dyn_j) and D(V_i, id_i, pose_i, dyn_j) must agree
  (L1 between them);
- ``l_cross_id`` (VASA-1): the motion of another example's driver on source i; 1 - cosine between
  the identity embedding of that image and of frame i (target under stop-gradient; the embedder
  is the model's own identity encoder with frozen weights).
The discriminator (its own optimiser) sees the real drivers and the reconstructions.

With motion labels in the data (SynthTalk's ground truth), three more terms and the oracle rung
are config switches (``vasa_jax.latent.guidance``; all off in the papers' recipe):
``loss.pose_guide`` (z_pose against the head-pose labels), ``loss.expression_guide`` (the
expression readout of z_dyn against the labels), ``loss.mouth_l1`` (L1 in a box around the
labelled mouth), and ``model.motion_source = "oracle"`` (the decoder driven by the labels).
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from data_pipeline.synthtalk.motion import MOTION_DIM
from data_pipeline.views import pair_loader_config
from vasa_jax.latent import cross_render, guidance
from vasa_jax.latent.model import FaceLatentModel, make_face_latent_model
from vasa_jax.latent.objective import (discriminator_loss, generator_loss_terms,
                                       generator_outputs, needs_labels, uses_discriminator)
from vasa_jax.train.task import Task


class LatentTask(Task):
    name = "latent"

    def __init__(self, config):
        super().__init__(config)
        self.estimator_state = None
        self.cross_inputs = None

    def prepare(self) -> None:
        """Load the frozen motion estimator's weights (``model.motion_source = "estimator"``)
        from ``model.estimator_workdir``: a probe-task run or a shipped ``package:NAME``
        (skipped on restore: the checkpoint holds them); with ``loss.cross_render``, read the
        SynthTalk dataset's seed, from which its identities' appearance is drawn."""
        self._prepare_cross_render()
        m = self.config.model
        if m.get("motion_source", "encoder") != "estimator":
            return
        workdir = m.get("estimator_workdir", "")
        if not workdir:
            raise ValueError(
                "model.motion_source='estimator' needs model.estimator_workdir: the shipped "
                "estimator (--set model.estimator_workdir=package:estimator_synthtalk64) or the "
                "run dir of one you trained (`vasa-jax train probe --workdir runs/estimator "
                "--set seed=1`, then --set model.estimator_workdir=runs/estimator).")
        from vasa_jax.instruments.load import restore_probe

        probe = restore_probe(workdir)
        mine = jax.tree.map(lambda x: x.shape, nnx.state(
            nnx.eval_shape(lambda: make_face_latent_model(m, rngs=nnx.Rngs(0))).estimator))
        theirs = jax.tree.map(lambda x: x.shape, probe.state)
        if mine != theirs:
            raise ValueError(f"The motion estimator in {workdir} does not match "
                             f"model.estimator (widths, blocks, head, ...): set model.estimator "
                             f"to the config it was trained with ({dict(probe.config.model)}).")
        self.estimator_state = jax.device_get(probe.state)

    def _prepare_cross_render(self) -> None:
        if not self.config.loss.get("cross_render", False):
            return
        d = self.config.data
        if d.dataset != "synthtalk":
            raise ValueError(f"loss.cross_render renders SynthTalk identities; dataset "
                             f"{d.dataset!r} has no renderer. Turn it off "
                             f"(--set loss.cross_render=False).")
        if d.colour_jitter:
            raise ValueError("loss.cross_render targets are rendered without colour jitter; set "
                             "data.colour_jitter=0 or turn loss.cross_render off.")
        from data_pipeline.loader import dataset_dir

        self.cross_inputs = cross_render.RowInputs(cross_render.dataset_seed(
            dataset_dir(d.dataset, d.config, d.data_dir or None)))

    def init_model(self, model: FaceLatentModel) -> None:
        if self.estimator_state is not None:
            nnx.update(model.estimator, jax.tree.map(jnp.asarray, self.estimator_state))

    # -- data ----------------------------------------------------------------------------------
    def loader_config(self, batch_size: int):
        return pair_loader_config(self.config, split=self.config.data.split, train=True,
                                  batch_size=batch_size)

    def device_batch(self, batch: Mapping[str, Any]) -> dict[str, np.ndarray]:
        frames = np.asarray(batch["frames"], np.uint8)
        res = self.config.model.resolution
        if frames.shape[2:4] != (res, res):
            raise ValueError(f"Frames are {frames.shape[2]}x{frames.shape[3]} but the model is "
                             f"configured for {res}x{res}; set data.resolution to match the "
                             f"dataset config {self.config.data.config!r}.")
        out = {"frames": frames}
        if needs_labels(self.config):
            if "motion" not in batch:
                raise ValueError(
                    f"The stage-1 config asks for motion labels (model.motion_source="
                    f"{self.config.model.motion_source!r}, loss.pose_guide / expression_guide / "
                    f"mouth_l1 > 0) but dataset {self.config.data.dataset!r} gives none; set "
                    f"them to 'encoder' / 0, or train on a dataset with per-frame motion labels "
                    f"(SynthTalk, or voxceleb2 built with its face-mesh labels).")
            motion = np.asarray(batch["motion"], np.float32)  # (b, 2, 12)
            if (self.config.model.get("motion_source", "encoder") == "oracle"
                    and not np.isfinite(motion).all()):
                raise ValueError(
                    f"The oracle rung (model.motion_source='oracle') drives the decoder with the "
                    f"labels and needs every field of every frame, but dataset "
                    f"{self.config.data.dataset!r} has missing (NaN) labels (face-mesh labels: "
                    f"frames without a face, lip_round unmeasured). Use it on SynthTalk.")
            out["motion"] = motion
            if self.config.loss.mouth_l1:
                b = len(motion)
                centre = batch.get("mouth_centre")
                w = guidance.region_weight(
                    motion.reshape(2 * b, -1), res,
                    mouth_centre=None if centre is None else
                    np.asarray(centre, np.float32).reshape(2 * b, 2))
                out["mouth"] = w.reshape(b, 2, res, res, 1)
        if self.config.loss.get("cross_render", False):
            if self.cross_inputs is None:
                self._prepare_cross_render()
            out["cross"] = self.cross_inputs(batch)
        return out

    def batch_spec(self, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
        if self.config.loss.get("cross_render", False):
            raise NotImplementedError("loss.cross_render batches hold rendered SynthTalk rows; "
                                      "plan the config with --set loss.cross_render=False.")
        b, r = batch_size, self.config.model.resolution
        spec = {"frames": jax.ShapeDtypeStruct((b, 2, r, r, 3), np.uint8)}
        if needs_labels(self.config):
            spec["motion"] = jax.ShapeDtypeStruct((b, 2, MOTION_DIM), np.float32)
            if self.config.loss.mouth_l1:
                spec["mouth"] = jax.ShapeDtypeStruct((b, 2, r, r, 1), np.float32)
        return spec

    # -- objective -----------------------------------------------------------------------------
    def generator_outputs(self, model: FaceLatentModel, frames: jax.Array
                          ) -> dict[str, jax.Array]:
        """All images one generator step needs. frames (b, 2, R, R, 3) uint8."""
        return generator_outputs(model, frames, self.config.loss)

    def grads(self, graphdef, params, rest, batch, key):
        del key  # the objective is deterministic given the batch
        lc = self.config.loss
        merge = lambda disc, gen: nnx.merge(graphdef, disc, gen, rest)  # noqa: E731

        def generator_loss(gen):
            model = merge(params["discriminator"], gen)
            total, m, fake, real = generator_loss_terms(
                model, batch["frames"], lc, motion=batch.get("motion"), mouth=batch.get("mouth"),
                cross=batch.get("cross"))
            return total, (m, fake, real)

        (g_total, (metrics, fake, real)), g_grads = jax.value_and_grad(
            generator_loss, has_aux=True)(params["generator"])

        def d_loss(disc):
            return discriminator_loss(merge(disc, params["generator"]), fake, real)

        if uses_discriminator(lc):
            (d_total, d_metrics), d_grads = jax.value_and_grad(
                d_loss, has_aux=True)(params["discriminator"])
            metrics = dict(metrics, d_loss=d_total, **d_metrics)
        else:  # no GAN terms: the discriminator is not needed (its update is zero)
            d_grads = jax.tree.map(jnp.zeros_like, params["discriminator"])
        return {"discriminator": d_grads, "generator": g_grads}, g_total, metrics

    # -- evaluation ----------------------------------------------------------------------------
    def evaluate(self, model: FaceLatentModel, step: int) -> dict[str, float]:
        n = self.config.eval.train_eval_pairs
        if not n:
            return {}
        from vasa_jax.eval.latent_eval import reenactment_scores

        return reenactment_scores(model, self.config, self.config.eval.train_eval_split, n)

    def images(self, model: FaceLatentModel, step: int) -> dict[str, np.ndarray]:
        """TensorBoard grid (rows: source, driver, reconstruction, cross-reenactment)."""
        from vasa_jax.eval.latent_eval import reenactment_grid

        return {"reenactment": reenactment_grid(model, self.config,
                                                self.config.eval.train_eval_split, 8)[None]}
