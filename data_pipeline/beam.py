"""Apache Beam, imported only when a builder runs through it (the ``beam`` extra)."""

from __future__ import annotations

BEAM_INSTALL = "pip install 'vasa-jax[beam]'"


def import_beam(needs: str, fallback: str):
    """The ``apache_beam`` module, or an ImportError: ``needs`` (what needs Beam), how to install
    it, and ``fallback`` (how to build without it)."""
    try:
        import apache_beam as beam
    except ImportError as e:
        raise ImportError(f"{needs}, which is not installed: {BEAM_INSTALL}  ({fallback}).") from e
    return beam
