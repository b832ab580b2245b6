"""Stage 2: audio frontends, the motion diffusion transformer, diffusion and sampling."""
