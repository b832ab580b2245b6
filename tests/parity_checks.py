"""What the two torch parity tests (stage 1 and stage 2) share (a helper module they import):
checks of a weight converter (``vasa_jax.interop.face_latent`` or ``motion_dit``) and the golden
file's writing. Torch is imported only by the functions that take a torch model."""

import os

import numpy as np
import pytest
from flax import nnx


def assert_same_variables(model, back) -> None:
    """``back`` holds the variables of ``model``: the same paths, in order, and equal values."""
    a, b = nnx.to_flat_state(nnx.state(model)), nnx.to_flat_state(nnx.state(back))
    assert [p for p, _ in a] == [p for p, _ in b], "the variable paths differ"
    for (p, va), (_, vb) in zip(a, b):
        np.testing.assert_array_equal(np.asarray(va.get_value()), np.asarray(vb.get_value()),
                                      err_msg=str(p))


def assert_bad_state_dicts_named(conv, sd, fresh, *, drop: str, missing_match: str,
                                 reshaped: dict, misshaped_match: str) -> None:
    """``conv.torch_to_flax`` into ``fresh()`` refuses the state_dict ``sd`` without the tensor
    ``drop`` (ValueError matching ``missing_match``), with an extra tensor ``extra.bias``, and
    with the wrongly shaped tensors ``reshaped`` swapped in (matching ``misshaped_match``)."""
    missing = dict(sd)
    del missing[drop]
    with pytest.raises(ValueError, match=missing_match):
        conv.torch_to_flax(missing, fresh())
    with pytest.raises(ValueError, match=r"unexpected.*extra\.bias"):
        conv.torch_to_flax({**sd, "extra.bias": np.zeros(3)}, fresh())
    with pytest.raises(ValueError, match=misshaped_match):
        conv.torch_to_flax({**sd, **reshaped}, fresh())


def random_torch_model(make_torch, model_cfg):
    """The torch baseline's ``make_torch(model_cfg)`` with every parameter drawn from N(0, 1)."""
    import torch

    tmodel = make_torch(model_cfg)
    with torch.no_grad():
        for p in tmodel.parameters():
            p.normal_()
    return tmodel


def assert_back_to_torch(conv, model, tmodel) -> None:
    """``model``, loaded from the torch model ``tmodel``'s state_dict, converts back to exactly
    that state_dict (torch -> flax -> torch is exact), which ``tmodel`` loads with strict names."""
    import torch

    back = conv.flax_to_torch(nnx.state(model))
    for name, value in tmodel.state_dict().items():
        np.testing.assert_array_equal(back[name], value.numpy(), err_msg=name)
    tmodel.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in back.items()}, strict=True)


def save_golden(path: str, arrays: dict[str, np.ndarray]) -> None:
    """Write the golden ``arrays`` to ``path`` (an .npz file) through a temporary file and a
    rename, and say where."""
    tmp = path + ".tmp.npz"
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, path)
    print(f"wrote {path} ({os.path.getsize(path)} bytes)")
