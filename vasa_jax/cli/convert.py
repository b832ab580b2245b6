"""``vasa-jax convert``: pretrained weights from other frameworks -> our checkpoints."""

from __future__ import annotations

import os
import time

from vasa_jax.cli.common import UserError, user_errors


def convert_wav2vec2(args) -> str:
    """``convert wav2vec2``: a Hugging Face wav2vec2 directory -> our orbax checkpoint
    (written to a temporary directory, then renamed to --out)."""
    from vasa_jax.interop import wav2vec2 as w2v
    from vasa_jax.motion.wav2vec2 import num_params

    out = os.path.abspath(args.out)
    if os.path.exists(out) and not os.path.isdir(out):
        raise UserError(f"--out {args.out} is a file; give a directory.")
    if os.path.isdir(out) and os.listdir(out) and not args.force:
        raise UserError(f"--out {args.out} exists and is not empty; choose another directory "
                        "or pass --force to replace it.")
    t0 = time.time()
    with user_errors(FileNotFoundError, FileExistsError, ValueError):
        config, model = w2v.convert_hf(args.hf_dir)
        preprocessor = w2v.read_preprocessor(args.hf_dir)
        w2v.save_converted(config, model, out, preprocessor, overwrite=args.force,
                           source=os.path.abspath(args.hf_dir))
    print(f"Converted {args.hf_dir}: wav2vec2, {config.layout}; {config.num_hidden_layers} "
          f"layers x {config.hidden_size} ({config.num_attention_heads} heads), "
          f"{num_params(model) / 1e6:.1f}M parameters; preprocessor {preprocessor}.")
    print(f"Wrote {out} in {time.time() - t0:.1f} s (load it with "
          "vasa_jax.interop.wav2vec2.load_converted).")
    return out


def add_parser(sub) -> None:
    """``convert wav2vec2``."""
    cv = sub.add_parser("convert", help="convert pretrained weights from other frameworks")
    cvsub = cv.add_subparsers(dest="model", required=True)
    cw = cvsub.add_parser("wav2vec2", help="a Hugging Face wav2vec2 directory (config.json + "
                          "model.safetensors or pytorch_model.bin) -> an orbax checkpoint")
    cw.add_argument("--hf-dir", required=True, help="the downloaded Hugging Face model folder")
    cw.add_argument("--out", required=True, help="output directory (must be empty or new)")
    cw.add_argument("--force", action="store_true", help="replace a non-empty --out")
    cw.set_defaults(func=convert_wav2vec2)
