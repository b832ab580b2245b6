"""Convert Hugging Face wav2vec 2.0 checkpoints into our Flax ``Wav2Vec2Model``
(``vasa_jax.motion.wav2vec2``), and save / load the converted model as an orbax checkpoint.

    config, model = convert_hf("wav2vec2-base-960h/")          # config.json + weights
    save_converted(config, model, "w2v2_base", read_preprocessor("wav2vec2-base-960h/"))
    config, model, preprocessor = load_converted("w2v2_base")  # no torch import

or from the shell: ``vasa-jax convert wav2vec2 --hf-dir DIR --out DIR``.

An HF model directory holds ``config.json`` and the weights as ``model.safetensors`` or
``pytorch_model.bin`` (read with ``torch.load(weights_only=True)``, so it cannot run code), or
sharded with an ``*.index.json``. Checkpoints of ``Wav2Vec2ForCTC`` / ``Wav2Vec2ForPreTraining``
/ ... (names prefixed ``wav2vec2.``) load too: the prefix is stripped and the heads and
training-only tensors (``lm_head``, ``quantizer``, ``project_q``, ``project_hid``,
``masked_spec_embed``, classifiers) are ignored. The positional convolution's weight norm may be
stored the old way (``weight_g``/``weight_v``) or as torch parametrizations
(``parametrizations.weight.original0``/``original1``).

Names: the HF name of a Flax variable is its path joined with dots (``kernel`` and LayerNorm /
GroupNorm ``scale`` renamed ``weight``); layouts:

- ``nnx.Linear`` kernel (in, out)                  <-> ``nn.Linear`` weight (out, in)
- feature conv kernel (k, in, out)                 <-> ``nn.Conv1d`` weight (out, in, k)
- attention q/k/v kernel (embed, heads, kv), bias (heads, kv)
                                                   <-> weight (heads * kv, embed), bias (heads * kv)
- attention out kernel (heads, kv, embed)          <-> weight (embed, heads * kv)
- positional conv ``weight_v`` (k, C / groups, C)  <-> ``parametrizations.weight.original1``
  (C, C / groups, k); ``weight_g`` (k,)            <-> ``...original0`` (1, 1, k).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Any, Callable, Mapping

import jax
import numpy as np
from flax import nnx

from vasa_jax.interop import files
from vasa_jax.motion.wav2vec2 import Wav2Vec2Config, Wav2Vec2Model, num_params

WHAT = "Wav2Vec2Model"
PREFIX = "wav2vec2."
# Heads and training-only tensors of HF checkpoints (after stripping PREFIX): not converted.
IGNORED_PREFIXES = ("lm_head.", "quantizer.", "project_q.", "project_hid.", "masked_spec_embed",
                    "classifier.", "projector.", "feature_extractor._freeze", "dropout_features",
                    "tdnn.", "objective.", "layer_weights")
WEIGHT_G = "parametrizations.weight.original0"
WEIGHT_V = "parametrizations.weight.original1"
CONVERTED_JSON = "wav2vec2.json"
PARAMS_DIR = "params"
FORMAT = "vasa_jax.wav2vec2/1"
DEFAULT_PREPROCESSOR = {"do_normalize": True, "sampling_rate": 16000,
                        "return_attention_mask": False, "padding_value": 0.0}
FIX = "vasa-jax convert wav2vec2 --hf-dir HF_MODEL_DIR --out {out}"


# -- names and layouts -------------------------------------------------------------------------

def _rule(path: tuple, shape: tuple[int, ...]) -> tuple[str, Callable, Callable]:
    """(HF name, flax -> torch array, torch -> flax array) for one Flax variable."""
    names = [str(p) for p in path]
    ident = lambda a: a  # noqa: E731
    last, owner = names[-1], names[-2] if len(names) > 1 else ""
    base = ".".join(names[:-1])
    if last == "weight_g":
        return (f"{base}.{WEIGHT_G}", lambda a: a.reshape(1, 1, -1), lambda a: a.reshape(-1))
    if last == "weight_v":
        return (f"{base}.{WEIGHT_V}", lambda a: a.transpose(2, 1, 0),
                lambda a: a.transpose(2, 1, 0))
    if owner in ("q_proj", "k_proj", "v_proj"):
        if last == "kernel":
            width, heads, hd = shape
            return (f"{base}.weight", lambda a: a.reshape(width, heads * hd).T,
                    lambda a: a.T.reshape(width, heads, hd))
        heads, hd = shape
        return (f"{base}.bias", lambda a: a.reshape(heads * hd),
                lambda a: a.reshape(heads, hd))
    if owner == "out_proj" and last == "kernel":
        heads, hd, width = shape
        return (f"{base}.weight", lambda a: a.reshape(heads * hd, width).T,
                lambda a: a.T.reshape(heads, hd, width))
    if last == "kernel" and len(shape) == 3:  # feature conv
        return f"{base}.weight", (lambda a: a.transpose(2, 1, 0)), (lambda a: a.transpose(2, 1, 0))
    if last == "kernel":  # nnx.Linear
        return f"{base}.weight", (lambda a: a.T), (lambda a: a.T)
    if last == "scale":  # LayerNorm / GroupNorm
        return f"{base}.weight", ident, ident
    return ".".join(names), ident, ident


def torch_names(model_or_state: Any) -> dict[str, tuple[int, ...]]:
    """{HF ``Wav2Vec2Model`` state_dict name: shape} for every variable of our model."""
    return files.torch_names(model_or_state, _rule)


def flax_to_torch(state: Any) -> dict[str, np.ndarray]:
    """Our model (or its state) -> HF-named float32 numpy arrays (weight norm as
    parametrizations), loadable into a ``transformers`` ``Wav2Vec2Model``."""
    return files.flax_to_torch(state, _rule)


def hf_state_dict(raw: Mapping[str, Any]) -> dict[str, Any]:
    """An HF checkpoint's tensors -> the names ``torch_names`` uses: ``wav2vec2.`` prefix
    stripped (when present, every other top-level tensor is a head and dropped), heads and
    training-only tensors dropped, ``weight_g``/``weight_v`` renamed to the parametrization
    names. Anything else is kept, so ``check_state_dict`` reports it as unexpected."""
    keys = list(raw)
    if any(k.startswith(PREFIX) for k in keys):
        items = [(k[len(PREFIX):], raw[k]) for k in keys if k.startswith(PREFIX)]
    else:
        items = [(k, raw[k]) for k in keys]
    out = {}
    for k, v in items:
        if k.startswith(IGNORED_PREFIXES):
            continue
        if k.endswith(".weight_g"):
            k = k[: -len("weight_g")] + WEIGHT_G
        elif k.endswith(".weight_v"):
            k = k[: -len("weight_v")] + WEIGHT_V
        out[k] = v
    return out


def check_state_dict(state_dict: Mapping[str, Any], model: nnx.Module) -> None:
    """Raise ValueError naming every missing, unexpected and mis-shaped tensor of an
    ``hf_state_dict`` against ``model``."""
    files.check_state_dict(state_dict, torch_names(model), WHAT)


def torch_to_flax(state_dict: Mapping[str, Any], model: nnx.Module) -> nnx.Module:
    """Load an ``hf_state_dict`` (torch tensors or numpy) into ``model`` (which may be abstract,
    from ``nnx.eval_shape``) in place and return it; ValueError if anything is missing,
    unexpected or mis-shaped."""
    return files.torch_to_flax(state_dict, model, _rule, WHAT)


# -- Hugging Face directories ------------------------------------------------------------------

def _read_json(path: str, what: str) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); {what}") from None


def read_hf_config(hf_dir: str | os.PathLike) -> Wav2Vec2Config:
    """``config.json`` of a Hugging Face model directory -> ``Wav2Vec2Config``."""
    hf_dir = os.fspath(hf_dir)
    path = os.path.join(hf_dir, "config.json")
    if not os.path.isdir(hf_dir):
        raise FileNotFoundError(f"No directory {hf_dir!r}. Download a wav2vec2 model first, e.g. "
                                "`huggingface-cli download facebook/wav2vec2-base-960h "
                                f"--local-dir {hf_dir}`.")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{hf_dir!r} is not a Hugging Face model directory: it has no "
                                "config.json. Point --hf-dir at the folder holding config.json "
                                "and model.safetensors (or pytorch_model.bin).")
    d = _read_json(path, "re-download the model.")
    try:
        return Wav2Vec2Config.from_hf_dict(d)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: {e}") from None


def read_preprocessor(hf_dir: str | os.PathLike) -> dict[str, Any]:
    """The feature-extractor settings the model expects, from ``preprocessor_config.json`` if
    present: ``do_normalize`` (default True: zero-mean / unit-variance per utterance, see
    ``wav2vec2.normalize_audio``), ``sampling_rate`` (16000), ``return_attention_mask`` (whether
    HF pads-and-masks batches for this model; default False), ``padding_value`` (0.0)."""
    out = dict(DEFAULT_PREPROCESSOR)
    path = os.path.join(os.fspath(hf_dir), "preprocessor_config.json")
    if os.path.isfile(path):
        d = _read_json(path, "re-download the model or delete the file (defaults are used).")
        for k in out:
            if k in d:
                out[k] = type(out[k])(d[k])
    return out


def _weight_files(hf_dir: str) -> list[str]:
    for single, index in (("model.safetensors", "model.safetensors.index.json"),
                          ("pytorch_model.bin", "pytorch_model.bin.index.json")):
        if os.path.isfile(os.path.join(hf_dir, single)):
            return [os.path.join(hf_dir, single)]
        index_path = os.path.join(hf_dir, index)
        if os.path.isfile(index_path):
            weight_map = _read_json(index_path, "re-download the model.").get("weight_map", {})
            return [os.path.join(hf_dir, f) for f in sorted(set(weight_map.values()))]
    raise FileNotFoundError(f"{hf_dir!r} has a config.json but no weights: expected "
                            "model.safetensors or pytorch_model.bin (or a sharded *.index.json). "
                            "Download the model's weights into it.")


def read_hf_weights(hf_dir: str | os.PathLike) -> dict[str, np.ndarray]:
    """All tensors of an HF model directory (safetensors preferred, else ``.bin`` through
    ``torch.load(weights_only=True)``), as numpy, with their checkpoint names."""
    hf_dir = os.fspath(hf_dir)
    out: dict[str, np.ndarray] = {}
    for path in _weight_files(hf_dir):
        if path.endswith(".safetensors"):
            loader = files.load_safetensors
        else:
            loader = files.load_torch_checkpoint
        try:
            out.update(loader(path))
        except (FileNotFoundError, ValueError) as e:
            if isinstance(e, FileNotFoundError) or "state_dict" in str(e):
                raise
            raise ValueError(f"Cannot read {path}: {e}. The file is corrupt or not a weight "
                             "file; re-download it.") from None
        except Exception as e:  # safetensors / pickle / zip errors of a damaged file
            first = (str(e).strip().splitlines() or [""])[0][:200]
            raise ValueError(f"Cannot read {path} ({type(e).__name__}: {first}). The file is "
                             "corrupt or not a weight file; re-download it.") from None
    return out


def abstract_model(config: Wav2Vec2Config, dtype: str = "float32") -> Wav2Vec2Model:
    """The model's structure with ShapeDtypeStruct leaves (no memory, no initialisation)."""
    return nnx.eval_shape(lambda: Wav2Vec2Model(config, rngs=nnx.Rngs(0), dtype=dtype))


def convert_hf(hf_dir: str | os.PathLike, *, dtype: str = "float32"
               ) -> tuple[Wav2Vec2Config, Wav2Vec2Model]:
    """Read a Hugging Face wav2vec2 model directory into (config, our Wav2Vec2Model).

    Raises FileNotFoundError (no directory, config.json or weights), ValueError (unsupported
    config, unreadable weight file, or tensors that do not match the config: each missing,
    unexpected and mis-shaped tensor is named)."""
    hf_dir = os.fspath(hf_dir)
    config = read_hf_config(hf_dir)
    state_dict = hf_state_dict(read_hf_weights(hf_dir))
    model = abstract_model(config, dtype)
    try:
        torch_to_flax(state_dict, model)
    except ValueError as e:
        raise ValueError(f"{hf_dir}: the weights do not match its config.json ({config.layout},"
                         f" {config.num_hidden_layers} x {config.hidden_size}): {e}") from None
    return config, model


# -- converted checkpoints (orbax) -------------------------------------------------------------

def _is_nonempty_dir(path: str) -> bool:
    return os.path.isdir(path) and bool(os.listdir(path))


def save_converted(config: Wav2Vec2Config, model: Wav2Vec2Model, out_dir: str | os.PathLike,
                   preprocessor: Mapping[str, Any] | None = None, *, overwrite: bool = False,
                   source: str | None = None) -> str:
    """Write ``out_dir/params`` (an orbax checkpoint of the model's parameters) and
    ``out_dir/wav2vec2.json`` (format tag, config, preprocessor settings, parameter count,
    ``source``), atomically: everything goes to a temporary sibling directory that is then
    renamed to ``out_dir``. A non-empty ``out_dir`` is replaced only with ``overwrite``
    (else FileExistsError). ``preprocessor`` defaults to ``{"do_normalize": True, ...}``
    (``read_preprocessor`` of a directory without preprocessor_config.json). Returns out_dir."""
    import orbax.checkpoint as ocp

    out_dir = os.path.abspath(os.fspath(out_dir))
    if _is_nonempty_dir(out_dir) and not overwrite:
        raise FileExistsError(f"{out_dir} exists and is not empty; choose another directory or "
                              "overwrite it (--force).")
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise FileExistsError(f"{out_dir} exists and is a file, not a directory.")
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    prep = dict(DEFAULT_PREPROCESSOR)
    prep.update(preprocessor or {})
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.tmp-", dir=parent)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; the result is a normal dir
    try:
        params = nnx.state(model, nnx.Param)
        ckptr = ocp.StandardCheckpointer()
        ckptr.save(os.path.join(tmp, PARAMS_DIR), nnx.to_pure_dict(params))
        ckptr.wait_until_finished()
        ckptr.close()
        meta = {"format": FORMAT, "config": config.to_dict(), "preprocessor": dict(prep),
                "num_params": num_params(params), "source": source}
        with open(os.path.join(tmp, CONVERTED_JSON), "w") as f:
            json.dump(meta, f, indent=1)
        old = None
        if os.path.exists(out_dir):
            old = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.old-", dir=parent)
            os.rmdir(old)
            os.rename(out_dir, old)
        os.rename(tmp, out_dir)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def _flat_by_name(tree: Any) -> dict[str, Any]:
    """{dotted path: leaf} of a nested dict (of arrays, ShapeDtypeStructs or orbax metadata)."""
    if tree is None:
        return {}
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        out[".".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)] = leaf
    return out


def load_converted(out_dir: str | os.PathLike, *, dtype: str = "float32"
                   ) -> tuple[Wav2Vec2Config, Wav2Vec2Model, dict[str, Any]]:
    """(config, model, preprocessor settings) of a ``save_converted`` directory; needs no torch.
    ``dtype`` is the compute dtype of the returned model. Raises FileNotFoundError / ValueError
    naming the fix (re-run ``vasa-jax convert wav2vec2``) for a missing or damaged directory."""
    import orbax.checkpoint as ocp

    out_dir = os.path.abspath(os.fspath(out_dir))
    fix = FIX.format(out=out_dir)
    meta_path = os.path.join(out_dir, CONVERTED_JSON)
    if not os.path.isfile(meta_path):
        raise FileNotFoundError(f"No converted wav2vec2 checkpoint at {out_dir} (no "
                                f"{CONVERTED_JSON}). Convert a Hugging Face model first: `{fix}`.")
    try:
        with open(meta_path) as f:
            meta = json.load(f)
        if meta.get("format") != FORMAT:
            raise ValueError(f"unknown format {meta.get('format')!r} (expected {FORMAT!r})")
        config = Wav2Vec2Config.from_hf_dict(meta["config"])
        preprocessor = dict(meta.get("preprocessor") or {})
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{meta_path} is damaged ({type(e).__name__}: {e}). Re-create the "
                         f"directory: `{fix} --force`.") from None
    model = abstract_model(config, dtype)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    target = nnx.to_pure_dict(params)
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), target)
    params_dir = os.path.join(out_dir, PARAMS_DIR)
    if not os.path.isdir(params_dir):
        raise FileNotFoundError(f"{out_dir} has no {PARAMS_DIR}/ (the weights). Re-create it: "
                                f"`{fix} --force`.")
    ckptr = ocp.StandardCheckpointer()
    damaged = (f"Cannot read the wav2vec2 weights in {params_dir}{{}}. The checkpoint is "
               f"damaged; re-create it: `{fix} --force`.")
    try:
        stored = _flat_by_name(getattr(ckptr.metadata(params_dir), "item_metadata", None))
    except Exception as e:  # unreadable metadata: a damaged checkpoint
        raise ValueError(damaged.format(f" ({type(e).__name__}: {str(e)[:300]})")) from None
    if not stored:
        raise ValueError(damaged.format(" (no readable array metadata)"))
    want = {k: tuple(v.shape) for k, v in _flat_by_name(target).items()}
    try:  # names and shapes first: a clear report instead of failed reads
        files.check_state_dict(stored, want, "converted checkpoint")
    except ValueError as e:
        raise ValueError(f"The weights in {params_dir} do not match {CONVERTED_JSON} ({e}) "
                         f"Re-create the directory: `{fix} --force`.") from None
    try:
        values = ckptr.restore(params_dir, target)
        ckptr.close()
    except Exception as e:  # orbax raises many types for damaged or mismatched checkpoints
        raise ValueError(f"Cannot restore the wav2vec2 weights in {params_dir} "
                         f"({type(e).__name__}: {str(e)[:500]}). The checkpoint is damaged or "
                         f"does not match {CONVERTED_JSON}; re-create it: `{fix} --force`."
                         ) from None
    nnx.replace_by_pure_dict(params, values)
    return config, nnx.merge(graphdef, params, rest), preprocessor
