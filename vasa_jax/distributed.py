"""Joining a multi-process JAX job (TPU pod, SLURM, GKE, or local CPU processes)."""

from __future__ import annotations

import os

import jax
from absl import logging


def detected_cluster() -> str | None:
    """Name of a multi-process environment JAX can auto-configure, if we are inside one."""
    if int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        return "slurm"
    if "," in os.environ.get("TPU_WORKER_HOSTNAMES", ""):
        return "tpu"
    if int(os.environ.get("OMPI_COMM_WORLD_SIZE", "1")) > 1:
        return "openmpi"
    return None


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, *, heartbeat_timeout_seconds: int = 100,
               initialization_timeout: int = 300) -> bool:
    """``jax.distributed.initialize`` when several processes are configured or detected.

    Explicit arguments win; otherwise TPU pods, SLURM and Open MPI are detected. On CPU the
    collectives go through gloo. Returns True if this process joined a multi-process job.
    A peer that dies stops heartbeating; the others then fail after at most
    ``heartbeat_timeout_seconds`` instead of hanging.
    """
    explicit = bool(coordinator_address) or (num_processes or 1) > 1
    cluster = None if explicit else detected_cluster()
    if not explicit and cluster is None:
        return False
    # Cross-process collectives on the CPU backend (local development, CI) go through gloo;
    # accelerators use their own and ignore this.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    kwargs = dict(heartbeat_timeout_seconds=heartbeat_timeout_seconds,
                  initialization_timeout=initialization_timeout)
    if explicit:
        if not (coordinator_address and num_processes and process_id is not None):
            raise ValueError("Multi-process runs need --coordinator_address, --num_processes and "
                             "--process_id together (or run under SLURM/TPU for auto-detection).")
        jax.distributed.initialize(coordinator_address, num_processes, process_id, **kwargs)
    else:
        jax.distributed.initialize(**kwargs)
    logging.info("Joined %s job: process %d of %d, %d local / %d global devices",
                 cluster or "explicit", jax.process_index(), jax.process_count(),
                 jax.local_device_count(), jax.device_count())
    return True
