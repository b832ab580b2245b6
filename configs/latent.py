"""Stage 1 (FaceLatentModel) configs. Variants: ``test`` (tiny, CPU tests), ``synthtalk64``
(64 px SynthTalk, trains in at most 60 minutes on a 2-core CPU; the recipe the PyTorch baseline
mirrors), the diagnostic ladder's rungs ``synthtalk64_oracle`` / ``synthtalk64_estimator`` /
``synthtalk64_guided`` / ``synthtalk64_unguided`` (the sharp 2-D and pixel paths, and motion
from: ground-truth labels, a frozen pretrained estimator, the encoder guided by labels, the
encoder alone),
``vox256``, ``vox512`` / ``paper`` (512 px, V_app 96 x 16 x 64 x 64, about 200M parameters,
VoxCeleb2; none of the departures from the papers).

Launch:
  vasa-jax train latent --variant synthtalk64 --workdir runs/latent
  vasa-jax train latent --variant synthtalk64_guided --workdir runs/ladder/guided
  python launch/train.py --config=configs/latent.py:synthtalk64 --workdir=runs/latent
  python launch/train.py --config=configs/latent.py:paper --workdir=gs://bucket/latent \\
      --config.mesh_shape='(-1,8,1)'
"""

from __future__ import annotations

import ml_collections

from configs import common
from configs.probe import get_config as probe_config
from vasa_jax.instruments.probe import SHIPPED_ESTIMATOR
from vasa_jax.parallel import DEFAULT_RULES

# Convolution channels shard over 'fsdp' (the output side) and 'tensor' (the input side).
LATENT_RULES = tuple(DEFAULT_RULES) + (("conv_out", "fsdp"), ("conv_in", "tensor"))


def get_config(arg: str = "synthtalk64") -> ml_collections.ConfigDict:
    c = common.from_variant("latent", arg, base, VARIANTS)
    c.model.resolution = c.data.resolution
    return c


def base() -> ml_collections.ConfigDict:
    c = common.runtime("latent", axis_rules=LATENT_RULES)

    c.data = common.data(batch_size=16)  # each example is a (source, driver) pair of one clip
    c.data.resolution = 64
    c.data.other_clip_driver = 0.0  # P(the driver is a frame of another clip of the same person)
    c.data.colour_jitter = 0.0

    m = c.model = ml_collections.ConfigDict()
    m.resolution = 64  # set from data.resolution
    m.patch = 2  # space-to-depth at the encoder inputs, depth-to-space at the G2D output
    m.app_channels = (32, 64)  # one 2x downsampling between entries
    m.volume_channels = 16  # C of V_app
    m.volume_depth = 8  # D of V_app
    m.app_blocks_3d = 1
    m.id_dim = 64
    m.motion_channels = (16, 32, 64, 128)  # halves the resolution after each
    m.motion_hidden = 256
    m.dyn_dim = 32
    m.warp_channels = 32
    m.warp_ups = 2
    m.flow_upsample = 2  # flows at half the volume's height/width, resized
    m.g3d_channels = (16, 32)
    m.g3d_dyn_cond = False  # adaptive GroupNorm on z_dyn in G3D (MegaPortraits: unconditioned)
    m.g2d_dyn_cond = False  # the same in G2D (MegaPortraits: unconditioned)
    m.g2d_channels = (64, 32)
    m.disc_channels = (32, 64, 128)
    m.disc_scales = 2
    m.dtype = "float32"
    m.remat = False  # recompute each residual block in the backward pass (vasa_jax.nn.remat)
    # Not in the papers (vasa_jax.latent.guidance): "oracle" drives the decoder with the
    # ground-truth motion (the ladder's first rung); expression_readout > 0 adds the hidden
    # width of the head that reads the guided expression channels off z_dyn.
    m.motion_source = "encoder"
    m.expression_readout = 0
    m.skip_channels = 0  # > 0: the sharp 2-D path (FaceLatentModel.decode) with this width
    m.pixel_warp = False  # the pixel path: source pixels warped, blended by an occlusion mask
    # motion_source = "estimator": a frozen probe-architecture CNN, trained on the labels in its
    # own run (`vasa-jax train probe --workdir DIR --set seed=1`) or shipped (package:NAME,
    # vasa_jax.shipped), reads the motion off frames.
    m.estimator = probe_config("synthtalk64").model
    m.estimator_workdir = ""

    loss = c.loss = ml_collections.ConfigDict()
    loss.l1 = 10.0
    loss.perceptual = 1.0
    loss.motion_l1 = 0.0  # extra L1 weighted by |driver - source| (losses.motion_weight_map)
    loss.perceptual_layers = 3  # VGG16 relu1_2, relu2_2, relu3_3 (up to 5)
    loss.adversarial = 0.1
    loss.feature_matching = 1.0
    loss.symmetric = True  # also reconstruct the source from the driver (twice the pairs)
    loss.consist = 2.0  # VASA-1's pose/dynamics disentanglement loss (L1)
    loss.cross_id = 1.0  # VASA-1's cross-identity loss (1 - cosine)
    loss.aux_fraction = 1.0  # share of the batch that also gets consist / cross_id
    # Guidance from motion labels (vasa_jax.latent.guidance; 0 = off, the papers' recipe):
    loss.pose_guide = 0.0  # L2 of z_pose against the head-pose labels
    loss.expression_guide = 0.0  # L2 of the expression readout of z_dyn against the labels
    loss.mouth_l1 = 0.0  # L1 inside a box around the labelled mouth centre
    # SynthTalk only (vasa_jax.latent.cross_render): the cross rows (source i, the driver of
    # row i - 1, another person) also get the reconstruction terms against the exact render of
    # i's identity with that driver's motion and emotion, which no real dataset has.
    loss.cross_render = False

    # MegaPortraits: AdamW 2e-4 cosine to 1e-6, betas (0.5, 0.999), weight decay 1e-2.
    c.optim = common.optim(lr=2e-4, end_lr_factor=0.005, b1=0.5)
    c.train = common.train_loop()
    c.train.image_every = 5000  # TensorBoard image grids (0: never)
    c.eval = common.evaluation()
    c.eval.train_eval_pairs = 32
    return c


def _test(c):
    c.data.config = "res64_tiny"
    c.data.batch_size = 8
    c.data.other_clip_driver = 0.5  # the synthtalk64 recipe, so the tests exercise it
    c.model.g3d_dyn_cond = True
    c.loss.motion_l1 = 10.0
    m = c.model
    m.app_channels, m.volume_channels, m.volume_depth = (8, 16), 4, 4
    m.id_dim, m.motion_channels, m.motion_hidden, m.dyn_dim = 8, (8, 16, 16), 16, 6
    m.warp_channels, m.warp_ups, m.g3d_channels, m.g2d_channels = 8, 1, (8, 8), (16, 8)
    m.disc_channels, m.disc_scales = (8, 16), 2
    c.loss.perceptual_layers = 2
    c.optim.lr, c.optim.warmup_steps, c.optim.ema_decay = 2e-3, 5, 0.9
    c.train.steps, c.train.log_every, c.train.eval_every = 40, 5, 0
    c.train.checkpoint_every, c.train.image_every = 20, 0
    c.eval.train_eval_pairs = 4


def _synthtalk64(c):
    """Sized for an hour on a 2-core CPU: pairs of 64 px frames, the VASA-1 terms on a quarter
    of the rows, VGG16 up to relu2_2, and no GAN (in so short a run the adversarial terms cost
    a third of the step and do not raise PSNR/LPIPS; ``paper`` keeps MegaPortraits' weights).

    Two frames of one 3-s SynthTalk clip differ little (the source itself scores 29.3 dB
    against the driver), so an autoencoder of the source is a strong local optimum and the
    motion path learned nothing in 1,500 steps. Three departures from the papers, all config
    switches: half of the drivers come from another clip of the same person (pose, distance,
    gaze and emotion differ), G3D's norms are conditioned on z_dyn (a direct path for the
    expression code besides the warp), and an extra L1 weighted by where the two frames differ
    keeps the 5-pixel mouth from being drowned by the background."""
    c.data.config = "res64_small"
    c.data.batch_size = 8
    c.data.other_clip_driver = 0.5
    c.model.g3d_dyn_cond = True
    c.loss.motion_l1 = 100.0
    c.loss.aux_fraction = 0.25
    c.loss.perceptual_layers = 2
    c.loss.adversarial, c.loss.feature_matching = 0.0, 0.0
    c.data.num_workers = 1
    c.optim.lr, c.optim.warmup_steps, c.optim.ema_decay = 1e-3, 50, 0.99
    c.train.steps, c.train.log_every = 2600, 25
    c.train.eval_every, c.train.checkpoint_every, c.train.image_every = 500, 500, 500


def _synthtalk64_guided(c):
    """The stage-1 recipe that transfers motion on a CPU budget: ``synthtalk64`` plus three
    departures from the papers, each a switch (see ``vasa_jax.latent.guidance``):

    - guidance from motion labels, as the stage-1 lineage does in practice (face-vid2vid and
      LivePortrait take head pose from a pretrained estimator; LivePortrait guides eyes and lips
      with landmarks): ``loss.pose_guide`` pulls z_pose to the head-pose labels and
      ``loss.expression_guide`` makes a small readout find jaw, lips, blink and gaze in z_dyn
      (labels: SynthTalk's ground truth; face-mesh measures on real video);
    - ``loss.mouth_l1``: an L1 inside a box around the labelled mouth, which is about 5 px of
      the 64 px frame and otherwise drowns in the whole-image terms;
    - ``model.skip_channels``: a sharp 2-D path. With oracle motion the decoder formed no eyes
      or mouth in 17 min (../shared/findings/stage1-oracle): a 16 x 16 volume resampled
      trilinearly twice loses detail finer than its 4 px voxels. First-level source features
      (32 x 32) ride the same warps collapsed to 2-D by a learned soft depth and join G2D's last
      block, whose norms are conditioned on z_dyn (``model.g2d_dyn_cond``) so the expression
      code can draw the mouth at full resolution. With oracle motion for 1,000 steps this
      raised held-out cross-reenactment PSNR 26.0 -> 27.3 dB and the probe's jaw r 0.03 ->
      0.28, yaw r 0.74 -> 0.85 (docs/results/stage1_ladder/);
    - ``model.pixel_warp``: the pixel path (FOMM's occlusion-aware output). The source pixels
      ride the composed surface warps once, at full resolution, and an occlusion mask from G2D
      blends them with G2D's colour, which paints only what the warp cannot carry (the inside
      of an opening mouth). With oracle motion for 1,000 steps this took held-out self LPIPS
      0.162 -> 0.024, cross-reenactment PSNR 27.2 -> 32.4 dB, the probe's yaw r 0.77 -> 0.93
      and jaw r 0.27 -> 0.42 (the ladder's rows ``oracle`` and ``oracle + pixel path``).
      The mask's gradient reaches G2D's own colour only through (1 - m), about 0.04 at the
      mouth, so at ``mouth_l1`` = 20 G2D never learned to paint and the output showed the
      source's mouth (probe jaw r 0.88 with the *source's* jaw); ``mouth_l1`` = 100 makes the
      mask open where the driver's mouth does (mask r -0.73 with the driver's jaw) and took
      the oracle's cross-reenactment jaw r 0.42 -> 0.77 (ladder row ``oracle + pixel path +
      mouth L1 100``; docs/results/stage1_ladder/mask_diagnostic).

    The ladder's other rungs change one switch: ``synthtalk64_oracle`` (ground-truth motion
    instead of the motion encoder) and ``synthtalk64_unguided`` (no labels: the papers'
    losses on the same model)."""
    _synthtalk64(c)
    c.model.skip_channels = 16
    c.model.pixel_warp = True
    c.model.g2d_dyn_cond = True
    c.model.expression_readout = 64
    c.loss.pose_guide = 10.0
    c.loss.expression_guide = 1.0
    c.loss.mouth_l1 = 100.0


def _synthtalk64_oracle(c):
    """The ladder's first rung: ``synthtalk64_guided`` with z_pose = the head-pose labels and
    z_dyn = an MLP of the ground-truth motion (no motion encoder). Can the decoder render the
    driver's mouth and head turn at all?"""
    _synthtalk64_guided(c)
    c.model.motion_source = "oracle"
    c.loss.pose_guide = c.loss.expression_guide = 0.0  # the labels are the motion


def _synthtalk64_estimator(c):
    """``synthtalk64_oracle`` with the labels read off the frames by a frozen pretrained motion
    estimator (item 2 of issue 18: head pose, and here the expression too, from a pretrained
    network, as face-vid2vid and LivePortrait take pose) instead of the ground truth: a model
    that can encode any frame, so stage 2 can train on its latents. The estimator is a
    probe-architecture CNN trained with another seed than the measuring probe (independent
    networks), shipped in vasa_jax/assets (held-out r: jaw_open 0.94, yaw 0.98); retrain it
    with `vasa-jax train probe --workdir runs/estimator --set seed=1` and
    `vasa-jax ship --workdir runs/estimator --name NAME`.

    At the full 2,600 steps (86 min on one core) this is the stage-1 default, held-out
    cross-reenactment probe r jaw 0.91, yaw 0.95, self LPIPS 0.023
    (docs/results/stage1_synthtalk64/latent_eval.json)."""
    _synthtalk64_oracle(c)
    c.model.motion_source = "estimator"
    c.model.estimator_workdir = SHIPPED_ESTIMATOR


def _synthtalk64_unguided(c):
    """The ladder's last rung: the ``synthtalk64_guided`` model trained without labels (no pose,
    expression or mouth terms), as the papers train."""
    _synthtalk64_guided(c)
    c.model.expression_readout = 0
    c.loss.pose_guide = c.loss.expression_guide = c.loss.mouth_l1 = 0.0


def _vox(c, resolution: int):
    c.data.dataset = "voxceleb2"
    c.data.config = f"res{resolution}"
    c.data.resolution = resolution
    c.data.batch_size = 64
    c.data.num_workers = 8
    c.data.colour_jitter = 0.05
    c.model.dtype = "bfloat16"
    c.model.patch, c.model.flow_upsample = 1, 1


def _vox256(c):
    _vox(c, 256)
    m = c.model
    m.app_channels, m.volume_channels, m.volume_depth = (64, 128, 256, 512), 64, 16
    m.app_blocks_3d, m.id_dim = 4, 256
    m.motion_channels, m.motion_hidden, m.dyn_dim = (32, 64, 128, 256, 256, 512), 512, 128
    m.warp_channels, m.warp_ups, m.g3d_channels = 64, 3, (64, 128, 256)
    m.g2d_channels = (256, 256, 128, 64)
    m.disc_channels, m.disc_scales = (64, 128, 256, 512), 3
    c.loss.perceptual_layers = 5


def _vox256_guided(c):
    """``vox256`` with the guidance switches of ``synthtalk64_guided`` on real video: the
    labels are the face-mesh ``motion`` and ``mouth_centre`` the voxceleb2 builder stores
    (``data_pipeline.voxceleb2.face_labels``; NaN entries are skipped). Head pose guides z_pose
    (face-vid2vid / LivePortrait take it from a pretrained estimator), the expression readout
    finds jaw, lip width, blink and gaze in z_dyn (LivePortrait's landmark guidance), and the
    mouth box's L1 weighs the lips. Guide weights as on SynthTalk; mouth L1 20 (SynthTalk's 100
    serves its pixel path, which vox256 does not use). Not yet trained at this scale."""
    _vox256(c)
    c.model.expression_readout = 64
    c.loss.pose_guide = 10.0
    c.loss.expression_guide = 1.0
    c.loss.mouth_l1 = 20.0


def _paper(c):
    """512 px, V_app 96 x 16 x 64 x 64 as in MegaPortraits; about 200M parameters."""
    _vox(c, 512)
    m = c.model
    m.app_channels, m.volume_channels, m.volume_depth = (128, 256, 512, 1024), 96, 16
    m.app_blocks_3d, m.id_dim = 6, 512
    m.motion_channels, m.motion_hidden, m.dyn_dim = (64, 128, 256, 512, 512, 512, 512), 1024, 256
    m.warp_channels, m.warp_ups, m.g3d_channels = 96, 3, (96, 192, 384, 768)
    m.g2d_channels = (1024, 512, 256, 128)
    m.disc_channels, m.disc_scales = (64, 128, 256, 512), 3
    c.loss.perceptual_layers = 5
    c.loss.adversarial, c.loss.feature_matching = 1.0, 40.0  # MegaPortraits
    c.optim.lr, c.optim.warmup_steps = 2e-4, 1000


def _quickstart(c):
    """``synthtalk64_estimator`` fitted to the README's main job (an hour on a fresh 2-core
    machine, install included). SyncNet's confidence in the generated video follows the mouth
    amplitude stage 1 has learned, which grows with its steps (docs/results/sync_diagnostic:
    self-reenactment LSE-C 0.15 / 0.49 / 0.55 / 0.60 at 700 / 1,400 / 2,200 / 2,600 steps), so
    the quickstart spends its hour on stage-1 steps, on both cores: 2,500 steps in 43.8 min,
    the whole job 58.7 min from a fresh clone, generated LSE-C 0.516 = 3.3x chance
    (benchmarks/results/quality.md; 2,200 steps: 2.9x, 1,400: 2.5x). Stage 2's steps buy
    less: 4,000 instead of 2,500 on the same 2,200-step latents raised the generated LSE-C
    only 0.458 -> 0.467
    (docs/results/sync_diagnostic/stage2_steps.json). (Dropping VASA-1's l_consist /
    l_cross_id rows would make a step 17% cheaper, but at 1,400 steps it cost self / cross
    LSE-C 0.49 / 0.47 -> 0.41 / 0.35: docs/results/sync_diagnostic/exp_noaux_1400.json.)"""
    _synthtalk64_estimator(c)
    c.train.steps = 2500
    c.train.eval_every = c.train.checkpoint_every = c.train.image_every = 2500


VARIANTS = {"test": _test, "synthtalk64": _synthtalk64, "synthtalk64_guided": _synthtalk64_guided,
            "synthtalk64_oracle": _synthtalk64_oracle,
            "synthtalk64_estimator": _synthtalk64_estimator,
            "synthtalk64_unguided": _synthtalk64_unguided, "quickstart": _quickstart,
            "vox256": _vox256, "vox256_guided": _vox256_guided, "vox512": _paper,
            "paper": _paper}
