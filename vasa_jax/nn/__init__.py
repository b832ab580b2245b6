"""Layers shared by the models. Every parameter carries logical axis names (see
``vasa_jax.parallel``).

Parameters are placed on devices by ``jax.jit(..., out_shardings=...)`` at initialisation
(shape-first, see ``vasa_jax.train.trainer.Trainer``), so Flax's creation-time ("eager")
sharding of annotated variables, which needs a mesh in context, is switched off: models can then
be built anywhere (a notebook, a test) and placed on any mesh later. The switch itself is made
in ``vasa_jax/__init__.py`` so that models outside this package (the instruments) get it too.
"""
