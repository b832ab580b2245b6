"""TPU chips and slices for ahead-of-time plans: the figures of each chip generation, slice
names (``v5p-64``) -> topologies (``v5p:2x4x4``), and the devices of a topology compiled for on
this machine (``libtpu``'s topology description; no TPU needed).

Chip figures are Google Cloud's published per-chip numbers (cloud.google.com/tpu/docs: "TPU
v5e", "TPU v5p", "TPU v6e" system architecture pages): peak bf16 dense matmul rate, HBM capacity
and bandwidth. Slice names count chips for v5e / v6e (``v5e-16`` = 16 chips) and TensorCores for
v5p (``v5p-8`` = 4 chips of 2 cores; JAX sees one device per v5p chip, "megacore").
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import re

GiB = 1024 ** 3


@dataclasses.dataclass(frozen=True)
class Chip:
    generation: str
    peak_bf16_flops: float  # per chip, dense
    hbm_bytes: int  # per chip
    hbm_bandwidth: float  # bytes/s per chip
    cores_per_name_unit: int  # slice name counts chips (1) or TensorCores (2)
    dims: int  # torus dimensions of its topologies


CHIPS = {
    "v5e": Chip("v5e", 197e12, 16 * GiB, 819e9, 1, 2),
    "v5p": Chip("v5p", 459e12, 95 * GiB, 2765e9, 2, 3),
    "v6e": Chip("v6e", 918e12, 32 * GiB, 1640e9, 1, 2),
}

# Chips -> torus shape of the standard slices.
_SHAPES_2D = {1: "1x1", 4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16",
              256: "16x16"}
_SHAPES_3D = {4: "2x2x1", 8: "2x2x2", 16: "2x2x4", 32: "2x4x4", 64: "4x4x4", 128: "4x4x8",
              256: "4x8x8", 512: "8x8x8", 1024: "8x8x16", 2048: "8x16x16", 4096: "16x16x16"}


class PlanError(ValueError):
    """A slice this planner does not know, or no TPU compiler (libtpu) installed."""


def parse_slice(name: str) -> tuple[Chip, str, int]:
    """``v5p-64`` or ``v5p:2x4x4`` -> (chip, topology ``v5p:2x4x4``, number of chips)."""
    m = re.fullmatch(r"(v\d+[a-z]*)[-:](.+)", name.strip())
    gen = m.group(1) if m else ""
    if gen not in CHIPS:
        raise PlanError(f"Unknown TPU slice {name!r}; use <generation>-<size> or "
                        f"<generation>:<topology> with a generation of {sorted(CHIPS)}, e.g. "
                        f"v5e-16, v5p-128, v5e:4x4.")
    chip, rest = CHIPS[gen], m.group(2)
    shapes = _SHAPES_3D if chip.dims == 3 else _SHAPES_2D
    if re.fullmatch(r"\d+(x\d+)+", rest):
        dims = [int(d) for d in rest.split("x")]
        if len(dims) != chip.dims:
            raise PlanError(f"{gen} topologies have {chip.dims} dimensions; got {rest!r}.")
        return chip, f"{gen}:{rest}", math.prod(dims)
    if not rest.isdigit() or int(rest) % chip.cores_per_name_unit:
        raise PlanError(f"Bad slice size in {name!r}.")
    chips = int(rest) // chip.cores_per_name_unit
    if chips not in shapes:
        raise PlanError(f"No standard {gen} slice of {chips} chips ({name!r}); sizes: "
                        f"{', '.join(f'{gen}-{c * chip.cores_per_name_unit}' for c in shapes)}.")
    return chip, f"{gen}:{shapes[chips]}", chips


def topology_devices(name: str) -> tuple[Chip, list]:
    """(chip, the TPU devices of slice ``name``) to build a mesh on and compile for. Needs
    ``libtpu`` (``pip install -e '.[tpu]'``), not a TPU. Raises ``PlanError``."""
    chip, topology, chips = parse_slice(name)
    try:
        import libtpu  # noqa: F401
    except ImportError:
        raise PlanError("Compiling for TPU needs the TPU compiler: pip install -e '.[tpu]' "
                        "(libtpu; no TPU is needed).") from None
    # No metadata server to ask on a machine that is not a TPU VM; and only compiling, so
    # several plans may load libtpu at once (it otherwise holds a lock file per machine). On
    # a machine without TPUs libtpu logs that it cannot find the TPU hosts: expected here.
    os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    from jax.experimental import topologies

    # A TPU host holds a 2x2 block of chips; a smaller slice (v5e-1) is described with host
    # bounds of its own size (libtpu 0.0.42 refuses it otherwise).
    dims = [int(d) for d in topology.split(":")[1].split("x")] + [1]
    host = tuple(min(d, 2) for d in dims[:2]) + (1,)
    kwargs = {"chips_per_host_bounds": host} if host != (2, 2, 1) else {}
    desc = topologies.get_topology_desc(topology_name=topology, platform="tpu", **kwargs)
    devices = list(desc.devices)
    if len(devices) != chips:
        raise PlanError(f"{topology} gave {len(devices)} devices, expected {chips}.")
    return chip, devices


@contextlib.contextmanager
def tpu_compiles():
    """Compile for TPU here without JAX's persistent compilation cache: its entries for a TPU
    executable cannot be read back by this machine's CPU client (a warning on every later
    read), and an ahead-of-time plan is never run, so caching it gains nothing."""
    import jax

    was = jax.config.jax_enable_compilation_cache
    jax.config.update("jax_enable_compilation_cache", False)
    try:
        yield
    finally:
        jax.config.update("jax_enable_compilation_cache", was)


def libtpu_version() -> str:
    """The TPU compiler's version (plans record it: results differ between versions)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("libtpu")
    except PackageNotFoundError:
        return "none"
