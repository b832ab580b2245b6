"""Layers shared by the models. Every parameter carries logical axis names (see
``vasa_jax.parallel``).

Flax's creation-time ("eager") sharding is switched off package-wide in ``vasa_jax/__init__.py``.
"""
