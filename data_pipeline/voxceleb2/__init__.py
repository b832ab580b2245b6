"""TFDS builder ``voxceleb2`` over a manual VoxCeleb2 download (plain or Apache Beam), its
per-utterance decoder, quality filter hook, build report, and a fake-download writer for tests
and benchmarks."""
