"""Weight converters between vasa_jax's Flax NNX models and other frameworks' checkpoints
(PyTorch ``state_dict``s, safetensors files). Importing these modules needs no torch; only the
``.pt`` loaders import it."""
