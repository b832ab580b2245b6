"""Train a stage: ``python launch/train.py --config=configs/motion.py:synthtalk --workdir=DIR``.

The multi-host entry point; ``vasa-jax train`` is the one-host one, and both call
``vasa_jax.train.run.run(config, workdir)``.

Config overrides: ``--config.train.steps=1000 --config.data.batch_size=64``. Resuming a workdir
with a config that changes what is trained needs ``--allow_config_change``. Multi-process: pass
``--coordinator_address/--num_processes/--process_id`` (or run under SLURM / on a TPU pod, where
they are detected); ``launch/local_multihost.py`` starts several local CPU processes.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (path:variant).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Checkpoints, metrics and TensorBoard logs.")
_COORD = flags.DEFINE_string("coordinator_address", None, "host:port of process 0.")
_NPROC = flags.DEFINE_integer("num_processes", None, "Number of processes in the job.")
_PID = flags.DEFINE_integer("process_id", None, "This process's index.")
_HEARTBEAT = flags.DEFINE_integer("heartbeat_timeout", 100,
                                  "Seconds after which a silent peer fails the job.")
_ALLOW_CHANGE = flags.DEFINE_bool(
    "allow_config_change", False,
    "Resume the workdir even though the config changes what is trained (batch size, data, "
    "learning rate, ...); without it such a resume stops and prints the diff.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    del argv
    from vasa_jax import distributed
    from vasa_jax.xla_cpu import prefer_fast_cpu_compiles

    prefer_fast_cpu_compiles()  # before JAX creates its backends

    distributed.initialize(_COORD.value, _NPROC.value, _PID.value,
                           heartbeat_timeout_seconds=_HEARTBEAT.value)
    from vasa_jax.train.run import run

    run(_CONFIG.value, _WORKDIR.value, allow_config_change=_ALLOW_CHANGE.value)


if __name__ == "__main__":
    app.run(main)
