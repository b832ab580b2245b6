"""Load the original SyncNet PyTorch weights (syncnet_python's ``syncnet_v2.model``) into the
``original``-size ``SyncNetNetwork``.

The file is a plain ``state_dict`` of the published ``SyncNetNetwork``: ``netcnnaud.<i>.*`` and
``netcnnlip.<i>.*`` (``torch.nn.Sequential`` indices: each conv is conv/BN/ReLU = 3 entries,
each max-pool 1), ``netfcaud.{0,1,3}.*`` and ``netfclip.{0,1,3}.*`` (Linear, BatchNorm1d,
Linear). It is read with ``torch.load(path, map_location="cpu", weights_only=True)`` only: no
arbitrary unpickling. Layouts: conv ``(out, in, *k)`` -> ``(*k, in, out)``; linear
``(out, in)`` -> ``(in, out)``; BatchNorm ``weight/bias/running_mean/running_var`` -> ``scale/
bias/mean/var`` (``num_batches_tracked`` is ignored).

The converted network expects what the original does (see ``vasa_jax.instruments.syncnet``): 224x224
face crops read as BGR 0..255 (``SyncNetNetwork.video_input`` converts RGB uint8) and MFCCs of the
audio in the int16 range (``audio_scale`` 32768).

Use::

  model = load_torch_weights("syncnet_v2.model")          # SyncNetNetwork, size 'original'
  sync_scores(model, face_crops_224, audio)
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import jax.numpy as jnp
import numpy as np
from flax import nnx

from vasa_jax.instruments import syncnet as sn
from vasa_jax.interop import files

# (torch Sequential prefix of the conv stack, of the FC head, our branch attribute)
BRANCHES = (("netcnnaud", "netfcaud", "audio"), ("netcnnlip", "netfclip", "lip"))
_IGNORED_SUFFIXES = ("num_batches_tracked",)


def torch_key_map(model: sn.SyncNetNetwork) -> dict[str, tuple[Any, str, str]]:
    """{torch key: (our variable, kind, description)} for every tensor the model needs; kind is
    'conv', 'linear' or 'vector' (how to lay the tensor out)."""
    out: dict[str, tuple[Any, str, str]] = {}
    for cnn, fc, attr in BRANCHES:
        branch: sn.Branch = getattr(model, attr)
        i = 0
        for layer in branch.layers:
            if isinstance(layer, sn._ConvBNReLU):
                out[f"{cnn}.{i}.weight"] = (layer.conv.kernel, "conv", f"{attr} conv")
                out[f"{cnn}.{i}.bias"] = (layer.conv.bias, "vector", f"{attr} conv")
                _bn(out, f"{cnn}.{i + 1}", layer.bn, f"{attr} BatchNorm")
                i += 3  # conv, BN, ReLU
            else:
                i += 1  # max-pool
        out[f"{fc}.0.weight"] = (branch.fc1.kernel, "linear", f"{attr} fc1")
        out[f"{fc}.0.bias"] = (branch.fc1.bias, "vector", f"{attr} fc1")
        _bn(out, f"{fc}.1", branch.bn, f"{attr} fc BatchNorm")
        out[f"{fc}.3.weight"] = (branch.fc2.kernel, "linear", f"{attr} fc2")
        out[f"{fc}.3.bias"] = (branch.fc2.bias, "vector", f"{attr} fc2")
    return out


def _bn(out, prefix: str, bn: sn.BatchNorm, what: str) -> None:
    out[f"{prefix}.weight"] = (bn.scale, "vector", what)
    out[f"{prefix}.bias"] = (bn.bias, "vector", what)
    out[f"{prefix}.running_mean"] = (bn.mean, "vector", what)
    out[f"{prefix}.running_var"] = (bn.var, "vector", what)


def _layout(x: np.ndarray, kind: str) -> np.ndarray:
    if kind == "conv":  # (out, in, *k) -> (*k, in, out)
        return np.transpose(x, tuple(range(2, x.ndim)) + (1, 0))
    if kind == "linear":  # (out, in) -> (in, out)
        return x.T
    return x


def _torch_shape(shape: tuple[int, ...], kind: str) -> tuple[int, ...]:
    """The torch shape of a tensor ``_layout`` turns into ``shape``."""
    if kind == "conv":  # (*k, in, out) -> (out, in, *k)
        return (shape[-1], shape[-2], *shape[:-2])
    if kind == "linear":  # (in, out) -> (out, in)
        return (shape[1], shape[0])
    return tuple(shape)


def convert_state_dict(state_dict: Mapping[str, Any], model: sn.SyncNetNetwork
                       ) -> sn.SyncNetNetwork:
    """Copy a SyncNet ``state_dict`` (torch tensors or NumPy arrays) into ``model`` in place
    (``model`` may be abstract, from ``nnx.eval_shape``: it sets every variable).

    Raises ValueError naming every missing, unexpected or wrongly shaped tensor (the
    file's shape against the torch shape this model needs)."""
    want = torch_key_map(model)
    arrays = {k: files.to_numpy(v) for k, v in state_dict.items()
              if not k.endswith(_IGNORED_SUFFIXES)}
    problems = files.shape_mismatches({k: a.shape for k, a in arrays.items()},
                                      {k: _torch_shape(var.shape, kind)
                                       for k, (var, kind, _) in want.items()})
    if problems:
        raise ValueError("The SyncNet weights do not fit this model (is it the 'original' size "
                         "and the file syncnet_python's syncnet_v2.model?): " + problems + ".")
    for key, (var, kind, _) in want.items():
        var.set_value(jnp.asarray(_layout(arrays[key], kind), jnp.float32))
    return model


def load_torch_weights(path: str, *, size: str = "original", **overrides) -> sn.SyncNetNetwork:
    """``syncnet_v2.model`` (a torch ``state_dict``) -> a ``SyncNetNetwork`` of ``size`` with those
    weights. Reads with ``weights_only=True`` (tensors only)."""
    import torch

    if not os.path.exists(path):
        raise FileNotFoundError(f"No SyncNet weights at {path}: download syncnet_v2.model "
                                f"(syncnet_python's download_model.sh) and pass its path.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - re-raised with the file named
        raise ValueError(f"Could not read {path} as a PyTorch state_dict of tensors "
                         f"(weights_only=True): {e}") from e
    if not isinstance(state, Mapping):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a state_dict.")
    # Shapes only (no random initialisation): every variable comes from the file.
    model = nnx.eval_shape(lambda: sn.make_syncnet(size=size, rngs=nnx.Rngs(0), **overrides))
    return convert_state_dict(state, model)
