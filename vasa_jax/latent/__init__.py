"""Stage 1: the face latent model (encoders, warping, generators, losses, discriminator)."""
