"""The start the instrument tests (SyncNet, CAPP, probe) share (a helper module the tests
import): a copy of the run conftest trained once per session, to write a held-out file into."""

import os
import shutil


def copied_run(run, tmp_path, name: str, eval_keys) -> tuple[str, object, list[dict]]:
    """Copy a session run's workdir (``run`` = (workdir, config, fit result), e.g. conftest's
    ``capp_run``) to ``tmp_path/name``, check that the fit's final evaluation reports every key
    of ``eval_keys``, and return (the copy, the config, the metric rows of the copy that log a
    training loss)."""
    from vasa_jax.train.trainer import read_metrics

    src, c, result = run
    wd = os.path.join(str(tmp_path), name)
    shutil.copytree(src, wd)  # the test writes the held-out file into its own copy
    missing = set(eval_keys) - set(result)
    assert not missing, f"the fit's evaluation lacks {sorted(missing)}"
    return wd, c, [r for r in read_metrics(wd) if "loss" in r]
