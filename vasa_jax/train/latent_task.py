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

from data_pipeline.loader import LoaderConfig, make_loader
from vasa_jax import parallel
from vasa_jax.latent import cross_render, guidance, losses
from vasa_jax.latent.model import FaceLatentModel, make_face_latent_model, to_unit
from vasa_jax.train.task import Task

DISCRIMINATOR = nnx.All(nnx.Param, nnx.PathContains("discriminator"))
# A frozen pretrained motion estimator (model.motion_source = "estimator") is in no group: its
# weights ride in the train state's ``rest``, untouched by the optimiser and weight decay.
GENERATOR = nnx.All(nnx.Param, nnx.Not(nnx.PathContains("estimator")))


def pair_loader_config(config, *, split: str, train: bool, batch_size: int,
                       shard_index=None, shard_count=None) -> LoaderConfig:
    d = config.data
    return LoaderConfig(
        dataset=d.dataset, config=d.config, split=split, data_dir=d.data_dir or None,
        num_frames=2, random_frames=2, batch_size=batch_size, seed=config.seed, shuffle=train,
        num_epochs=None if train else 1, frames=True, audio=False,
        augment=train and d.flip, flip_prob=0.5, colour_jitter=d.colour_jitter if train else 0.0,
        drop_remainder=train, worker_count=d.num_workers if train else 0,
        worker_buffer_size=d.worker_buffer_size, shard_index=shard_index, shard_count=shard_count,
        other_clip_driver=d.other_clip_driver if train else 0.0)


class LatentTask(Task):
    name = "latent"
    # The discriminator's filter comes first: a variable goes to the first group it matches.
    param_groups = {"discriminator": DISCRIMINATOR, "generator": GENERATOR}
    ema_groups = ("generator",)

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
        from vasa_jax.eval.synthtalk_probe import restore_probe

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

    def make_model(self, rngs: nnx.Rngs) -> FaceLatentModel:
        return make_face_latent_model(self.config.model, rngs=rngs)

    def init_model(self, model: FaceLatentModel) -> None:
        if self.estimator_state is not None:
            nnx.update(model.estimator, jax.tree.map(jnp.asarray, self.estimator_state))

    # -- data ----------------------------------------------------------------------------------
    def train_loader(self):
        per_process = parallel.batch_size_per_process(self.config.data.batch_size)
        return make_loader(pair_loader_config(self.config, split=self.config.data.split,
                                              train=True, batch_size=per_process))

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
    def evaluate(self, trainer, step: int) -> dict[str, float]:
        n = self.config.eval.train_eval_pairs
        if not n:
            return {}
        from vasa_jax.eval.latent_eval import reenactment_scores
        from vasa_jax.train.restore import main_process_model

        model = main_process_model(trainer)  # a collective: every process takes part
        if model is None:
            return {}
        return reenactment_scores(model, self.config, self.config.eval.train_eval_split, n)

    def images(self, trainer, step: int) -> dict[str, np.ndarray]:
        """TensorBoard grid (rows: source, driver, reconstruction, cross-reenactment)."""
        from vasa_jax.eval.latent_eval import reenactment_grid
        from vasa_jax.train.restore import main_process_model

        model = main_process_model(trainer)  # a collective: every process takes part
        if model is None:
            return {}
        return {"reenactment": reenactment_grid(model, self.config,
                                                self.config.eval.train_eval_split, 8)[None]}


# -- the stage-1 objective (module level, so that parity tests and baselines can call it) -------

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
