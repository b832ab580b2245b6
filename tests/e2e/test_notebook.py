"""``colabs/inference.ipynb`` runs headless (nbclient) against tiny trained checkpoints."""

import os

import nbformat
import pytest
from nbclient import NotebookClient
from PIL import Image

from data_pipeline.synthtalk.generate import generate_clip
from vasa_jax.safety.provenance import read_manifest

NOTEBOOK = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "colabs",
                        "inference.ipynb")


@pytest.mark.slow
def test_inference_notebook_runs_headless(generation_workdirs, tmp_path, monkeypatch):
    latent, motion = generation_workdirs
    photo = tmp_path / "face.png"
    Image.fromarray(generate_clip(0, 950, 1, 1, 256)["frames"][0]).save(photo)
    nb = nbformat.read(NOTEBOOK, as_version=4)
    (params,) = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    params.source = (f"INSTALL = False\nLATENT_CKPT = {latent!r}\nMOTION_CKPT = {motion!r}\n"
                     f"IMAGE = {str(photo)!r}\nAUDIO = None\nOUT = 'talk.mp4'\nGAZE = None\n"
                     f"EMOTION = 'happy'\nSTEPS = 3\nSEED = 0")
    monkeypatch.setenv("VASA_JAX_C2PA_DIR", str(tmp_path / "c2pa"))
    NotebookClient(nb, timeout=900, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    html = [o for o in outputs if o.output_type == "display_data" and "text/html" in o.data]
    assert html and "data:video/mp4;base64," in html[-1].data["text/html"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "C2PA manifest: VALID" in text and "watermark: DETECTED" in text
    assert read_manifest(tmp_path / "talk.mp4").status == "valid"
