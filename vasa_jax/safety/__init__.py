"""Safety measures for generated media: provenance manifests and watermarks."""
