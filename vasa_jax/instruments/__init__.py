"""The measuring instruments: networks trained to read a property off generated video, used by
the evaluation as fixed rulers. ``probe`` (motion and emotion off single frames), ``syncnet``
(lip sync, LSE-C/LSE-D) and ``capp`` (audio-pose alignment); ``load`` loads any of them with
its held-out accuracy; ``mfcc`` and ``syncnet_convert`` serve SyncNet."""
