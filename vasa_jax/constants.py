"""Audio/video timing shared by every dataset, model and the pipeline.

Video runs at 25 fps and audio at 16 kHz, so one video frame spans exactly 640 audio samples:
frame ``k`` owns samples ``[640 k, 640 (k + 1))``.
"""

FPS = 25
SAMPLE_RATE = 16_000
SAMPLES_PER_FRAME = SAMPLE_RATE // FPS  # 640

assert SAMPLES_PER_FRAME * FPS == SAMPLE_RATE
