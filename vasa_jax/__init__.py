"""vasa_jax: VASA-1 in JAX/Flax.

Parameters are placed on devices by ``jax.jit(..., out_shardings=...)`` at initialisation
(shape-first, see ``vasa_jax.train.trainer.Trainer``), so Flax's creation-time ("eager")
sharding of annotated variables, which needs a mesh in context, is switched off for every model
of the package (the stage models and the instruments alike): they can be built anywhere and
placed on any mesh later.
"""

import flax

flax.config.update("flax_always_shard_variable", False)
