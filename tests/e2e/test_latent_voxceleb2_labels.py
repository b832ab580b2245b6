"""Stage 1's guidance on the real-data path: a voxceleb2 build (``voxceleb2_labelled``: a
fake download of real H.264 mp4s at 128 px, stored at 64 px) with its face-mesh labels trains
the ``test`` config with the pose and expression guides and the mouth-box L1 through the
trainer, and the guides fall."""

import numpy as np
import pytest

from trainer_configs import make_test_config

from configs.latent import get_config
from vasa_jax.train.latent_task import LatentTask
from vasa_jax.train.trainer import Trainer, read_metrics

STEPS = 12


@pytest.mark.slow
def test_guided_stage1_trains_on_face_mesh_labels(voxceleb2_labelled, tmp_path):
    _, data_dir, name = voxceleb2_labelled
    c = make_test_config(get_config, data_dir, **{
        "data.dataset": "voxceleb2", "data.config": name,
        "model.expression_readout": 16, "loss.pose_guide": 1.0, "loss.expression_guide": 1.0,
        "loss.mouth_l1": 5.0, "train.steps": STEPS, "optim.decay_steps": STEPS,
        "train.checkpoint_every": STEPS, "num_devices": 1})
    result = Trainer(LatentTask(c), c, str(tmp_path / "run")).fit()
    assert result["nonfinite_total"] == 0
    rows = read_metrics(str(tmp_path / "run"))
    for key in ("pose_guide", "expression_guide", "mouth_l1"):
        series = {r["step"]: r[key] for r in rows if key in r}
        early = np.mean([series[s] for s in range(1, 4)])
        late = np.mean([series[s] for s in range(STEPS - 2, STEPS + 1)])
        assert np.isfinite(early) and late < early, (key, early, late)
