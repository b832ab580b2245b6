"""PyTorch baseline of vasa_jax's models: the same architectures and objectives, written as
idiomatic ``torch.nn`` modules, for parity tests and convergence comparison.

Parameters convert both ways with ``vasa_jax.interop`` (e.g. ``vasa_jax.interop.motion_dit``).
"""
