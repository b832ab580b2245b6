"""TFDS builder ``latents``: stage-1 motion latents and audio features of a talking-face dataset."""
