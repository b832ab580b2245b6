"""Ahead-of-time plans for TPU slices: compile a stage's train step or the generation sampler
for a topology on this machine (``libtpu``, no TPU) and report fit, memory and projected
speed (``vasa-jax plan``)."""
