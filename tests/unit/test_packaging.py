"""What a non-editable install (a wheel, a git URL) contains: every folder of Python modules
that the code imports must be a package ``setup.py`` finds, or the wheel lacks it (stage 1 once
was: ``vasa_jax/latent`` had no ``__init__.py``, so the Colab notebook failed on import)."""

import os

from setuptools import find_packages

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_every_module_folder_is_a_package_the_wheel_takes():
    found = set(find_packages(ROOT, include=["vasa_jax", "vasa_jax.*", "data_pipeline",
                                             "data_pipeline.*", "configs"]))
    folders = set()
    for top in ("vasa_jax", "data_pipeline", "configs"):
        for d, _, files in os.walk(os.path.join(ROOT, top)):
            if "__pycache__" not in d and any(f.endswith(".py") for f in files):
                folders.add(os.path.relpath(d, ROOT).replace(os.sep, "."))
    assert folders - found == set(), "add an __init__.py to these folders"
    with open(os.path.join(ROOT, "setup.py")) as f:
        assert '"vasa_jax.*"' in f.read()  # the include pattern checked above is setup.py's
