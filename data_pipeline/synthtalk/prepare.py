"""Build (or reuse) a SynthTalk dataset by name or by resolution, size and overrides, printing
what it builds: what ``vasa-jax data build synthtalk`` and the quickstart run."""

from __future__ import annotations

import time

from data_pipeline.synthtalk import synthtalk_dataset_builder as stb


class SynthtalkConfigError(ValueError):
    """An unknown config name, conflicting options or a field value SynthTalk cannot build."""


def synthtalk_builder(config: str | None = None, *, resolution: int | None = None,
                      size: str | None = None, data_dir: str | None = None, workers: int = 0,
                      **overrides) -> stb.Synthtalk:
    """The builder of the registered config ``config`` (e.g. ``res64_small``) or of
    ``resolution`` (default 64) and ``size`` (default small); ``overrides`` (num_identities,
    clips_per_identity, num_frames, seed, encoding; None = the size's) make a custom config."""
    if config:
        names = {c.name: c for c in stb.Synthtalk.BUILDER_CONFIGS}
        if config not in names:
            raise SynthtalkConfigError(
                f"Unknown SynthTalk config {config!r}. Known configs: {', '.join(names)}; or "
                f"give --resolution/--size and overrides.")
        if resolution is not None or size is not None:
            raise SynthtalkConfigError("Give either --config or --resolution/--size, not both.")
        resolution, size = names[config].resolution, config.split("_", 1)[1]
    try:
        cfg = stb.make_config(resolution or 64, size or "small", **overrides)
    except ValueError as e:
        raise SynthtalkConfigError(str(e)) from None
    registered = {c.name for c in stb.Synthtalk.BUILDER_CONFIGS}
    return stb.Synthtalk(config=cfg.name if cfg.name in registered else cfg,
                         data_dir=data_dir, workers=workers)


def prepare_synthtalk(config: str | None = None, *, overwrite: bool = False, **options) -> str:
    """Build the SynthTalk dataset that ``synthtalk_builder(config, **options)`` describes
    unless it is prepared (``overwrite`` rebuilds); returns its config name. Raises
    ``SynthtalkConfigError``, or ``PermissionError`` when the data dir is not writable."""
    import tensorflow_datasets as tfds

    builder = synthtalk_builder(config, **options)
    c = builder.builder_config
    n = c.num_identities * c.clips_per_identity
    if builder.is_prepared() and not overwrite:
        print(f"SynthTalk {c.name} is already prepared at {builder.data_dir} "
              f"(use --overwrite to rebuild).")
        return c.name
    print(f"Building SynthTalk {c.name}: {n} clips of {c.num_frames} frames at "
          f"{c.resolution} px into {builder.data_dir}")
    mode = (tfds.download.GenerateMode.FORCE_REDOWNLOAD if overwrite
            else tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS)
    t0 = time.time()
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(download_mode=mode))
    dt = time.time() - t0
    splits = ", ".join(f"{k} {v.num_examples}" for k, v in builder.info.splits.items())
    print(f"Built {n} clips in {dt:.1f} s ({n / dt:.1f} clips/s): {splits}.")
    return c.name
