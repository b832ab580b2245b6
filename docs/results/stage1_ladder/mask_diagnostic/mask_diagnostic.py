"""Where the pixel path loses the mouth: the output split into G2D's own colour and its mask.

Cross-reenacts held-out clips (source: a clip's first frame, drivers: the next identity's clip,
every 3rd frame) and reads jaw_open with the shipped probe on G2D's colour (rgb), the carried
source pixels (pix) and the blend (out), against the driver's ground truth (gt) and the source
frame's (src); plus the mask's mean in the 11 x 7 px box at the driver's mouth and its r with the
driver's jaw. Writes RUN_NAME.json and RUN_NAME.png (rows: driver, rgb, pix, out, mask) here.

  python docs/results/stage1_ladder/mask_diagnostic/mask_diagnostic.py runs/pix/oracle [clips]
"""
import json, os, sys

import jax.numpy as jnp
import numpy as np
from flax import nnx
from data_pipeline.views import read_clips
from vasa_jax.instruments.load import load_probe
from vasa_jax.instruments.probe import SHIPPED_PROBE, pearson_or_nan
from vasa_jax.models import restore_model
from vasa_jax.latent.generator import blend
from vasa_jax.latent.model import to_unit, to_uint8
from data_pipeline.synthtalk.render import mouth_centre_pixels
HERE = os.path.dirname(os.path.abspath(__file__))
wd = sys.argv[1]; n = int(sys.argv[2]) if len(sys.argv) > 2 else 16
run = restore_model(wd); step, cfg, model = run.step, run.config, run.model
probe = load_probe(SHIPPED_PROBE); J = list(probe.motion_fields).index("jaw_open")
clips = read_clips(cfg, "test", n, frames=True)
def parts(model, src, smot, drv, dmot):
    """G2D's colour, its mask and the carried source pixels of the source driven by drv."""
    x = to_unit(src)
    app, zid = model.encode_appearance(x, *model.motion_of(x, smot))
    return model.decode_parts(app, zid, *model.motion_of(to_unit(drv), dmot))


f = nnx.jit(parts)
R = {k: [] for k in ("gt", "rgb", "pix", "out", "m_mouth", "m_all", "src")}
for k, c in enumerate(clips):
    other = clips[(k + 1) % n] if clips[(k + 1) % n]["identity"] != c["identity"] else clips[(k + 2) % n]
    dm = other["motion"][::3].astype(np.float32); drv = other["frames"][::3]; T = len(dm)
    src = np.repeat(c["frames"][:1], T, 0); sm = np.repeat(c["motion"][:1], T, 0).astype(np.float32)
    rgb, m, pix = f(model, src, sm, drv, dm)
    out = blend(m, pix, rgb)
    for key, im in (("rgb", rgb), ("pix", pix), ("out", out)):
        R[key].append(probe.predict(np.asarray(to_uint8(im)))["motion"][:, J])
    R["gt"].append(dm[:, J]); R["src"].append(sm[:, J])
    mc = mouth_centre_pixels(dm, 64).round().astype(int); m = np.asarray(m)[..., 0]
    R["m_mouth"].append(np.array([m[t, max(r-3,0):r+4, max(cc-5,0):cc+6].mean() for t, (cc, r) in enumerate(mc)]))
    R["m_all"].append(m.mean((1, 2)))
    if k == 0:
        import PIL.Image
        PIL.Image.fromarray(np.concatenate([np.concatenate(list(np.asarray(to_uint8(x))[:8]), 1) for x in (jnp.asarray(to_unit(drv)), rgb, pix, out, jnp.repeat(m[..., None]*2-1, 3, -1))], 0)).resize((8*128, 5*128), 0).save(os.path.join(HERE, os.path.basename(wd.rstrip("/")) + ".png"))
R = {k: np.concatenate(v) for k, v in R.items()}
o = {"workdir": wd, "step": step}
for k in ("rgb", "pix", "out"):
    o[f"r_{k}_vs_gt"] = pearson_or_nan(R[k], R["gt"]); o[f"r_{k}_vs_src"] = pearson_or_nan(R[k], R["src"])
o["mask_mouth_mean"] = float(R["m_mouth"].mean()); o["mask_all_mean"] = float(R["m_all"].mean())
o["r_mask_mouth_vs_gtjaw"] = pearson_or_nan(R["m_mouth"], R["gt"])
print(json.dumps(o, indent=1))
with open(os.path.join(HERE, os.path.basename(wd.rstrip("/")) + ".json"), "w") as fh:
    json.dump(o, fh, indent=1)
