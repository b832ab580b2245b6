"""Stage-1 evaluation math that needs no trained model."""

import numpy as np
import pytest

from vasa_jax.eval.latent_eval import heldout_linear_r


def test_heldout_linear_r_finds_linear_codes_and_not_noise():
    rng = np.random.default_rng(0)
    n = 400
    targets = rng.normal(size=(n, 2))
    groups = np.repeat(np.arange(8), n // 8)
    mix = rng.normal(size=(2, 6))
    coded = targets @ mix + 0.05 * rng.normal(size=(n, 6)) + groups[:, None]  # + a group offset
    r = heldout_linear_r(coded, targets, groups)
    assert r.shape == (2,) and (r > 0.95).all()
    noise = heldout_linear_r(rng.normal(size=(n, 6)), targets, groups)
    assert (np.abs(noise) < 0.2).all()
    with pytest.raises(ValueError, match="two groups"):
        heldout_linear_r(coded, targets, np.zeros(n))
