"""One trainer for both stages: each stage contributes a ``Task`` (model, loss, evaluation);
mesh, sharding, optimisation, EMA, metrics, checkpoints and multi-host handling live here."""
