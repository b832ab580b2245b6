"""One trainer for every network: the two stages (``latent``, ``motion``) and the measuring
instruments (``probe``, ``syncnet``, ``capp``) each contribute a ``Task`` (data, loss,
evaluation); mesh, sharding, optimisation, EMA, metrics, checkpoints and multi-host handling live
in ``trainer.py``; ``run.py`` is the one entry point."""
