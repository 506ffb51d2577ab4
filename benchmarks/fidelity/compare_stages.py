"""Main venv: jaxvision's MTCNN geometry and nets against facenet_stages.py's arrays.

    .venv/bin/python benchmarks/fidelity/compare_stages.py STAGES.npz

Stage by stage, on the same inputs (facenet's) so that each difference is the stage's own:
pyramid scales and level sizes; each resampled level (jaxvision's area_crops from the
integral image vs torch's interpolate(mode='area')); P-Net maps on each level alone and
packed in jaxvision's canvas; stage-1 candidates; crop regions and crops of R-Net/O-Net
for facenet's boxes; the nets' outputs on facenet's crops. Investigation tool.
"""
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path[:] = [p for p in sys.path if not p.rstrip("/").endswith("benchmarks")]
from jaxvision.faces import boxes as B  # noqa: E402
from jaxvision.faces.convert import load_mtcnn_weights  # noqa: E402
from jaxvision.faces.models import ONet, PNet, RNet, normalize  # noqa: E402


def maxabs(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.abs(a - b).max()) if a.size else 0.0


def main(npz, weights="auto"):
  d = dict(np.load(npz))
  img = d["image"]
  h, w = img.shape[:2]
  v = load_mtcnn_weights(weights)
  pnet, rnet, onet = PNet(), RNet(), ONet()
  sat = B.integral_image(img)
  levels = B.pyramid_scales(h, w)
  print(f"image {w}x{h}; levels: jaxvision {len(levels)}, facenet {len(d['scales'])}; "
        f"scales equal: {np.array_equal([s for s, _, _ in levels], d['scales'])}")
  for i, (s, hs, ws) in enumerate(levels):
    ref = d[f"L{i}_image"]
    ours = B.area_crops(sat, np.array([[0, h, 0, w]], np.int32), (hs, ws))[0]
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    diff = np.abs(ours - ref)
    p_alone = pnet.apply(v["pnet"], jnp.asarray(normalize(ref))[None])
    prob = np.asarray(jax.nn.softmax(p_alone["logits"][0], -1)[..., 1])
    reg = np.asarray(p_alone["box"][0])
    p_ours = pnet.apply(v["pnet"], jnp.asarray(normalize(ours))[None])
    prob_o = np.asarray(jax.nn.softmax(p_ours["logits"][0], -1)[..., 1])
    ref_prob = d[f"L{i}_prob"]
    near = np.abs(ref_prob - 0.6) < 2e-3
    print(f" L{i} scale {s:.5f} {ws}x{hs}: pixels max|diff| {diff.max():.2e} "
          f"({(diff > 0).sum()} of {diff.size} differ, {np.count_nonzero(diff > 1e-4)} by >1e-4); "
          f"P-Net prob on facenet's level {maxabs(prob, ref_prob):.2e}, reg {maxabs(reg, d[f'L{i}_reg']):.2e}; "
          f"on ours {maxabs(prob_o, ref_prob):.2e}; candidates {len(d[f'L{i}_cand'])} "
          f"({near.sum()} within 2e-3 of the 0.6 threshold)")
  # later stages: facenet's boxes -> our regions and crops; our nets on facenet's crops
  for stage, net, var, size in (("s2", rnet, v["rnet"], 24), ("s3", onet, v["onet"], 48)):
    bx = d[f"{stage}_in"][:, :4].astype(np.float32)
    reg, ok = B.crop_regions(bx, h, w)
    same_reg = np.array_equal(reg[ok], d[f"{stage}_regions"][ok])
    crops = B.area_crops(sat, reg, size)
    ref = d[f"{stage}_crops"]
    out = net.apply(var, jnp.asarray(normalize(ref)))
    sc = np.asarray(jax.nn.softmax(out["logits"], -1)[..., 1])
    out_o = net.apply(var, jnp.asarray(normalize(crops[ok])))
    sc_o = np.asarray(jax.nn.softmax(out_o["logits"], -1)[..., 1])
    print(f"{stage}: {len(bx)} boxes; regions equal {same_reg}; crops max|diff| "
          f"{maxabs(crops[ok], ref):.2e}; net on facenet's crops: score {maxabs(sc, d[f'{stage}_score']):.2e}, "
          f"reg {maxabs(out['box'], d[f'{stage}_reg']):.2e}"
          + (f", landmarks {maxabs(out['landmarks'], d['s3_lm']):.2e}" if stage == "s3" else "")
          + f"; on our crops: score {maxabs(sc_o, d[f'{stage}_score']):.2e}")


if __name__ == "__main__":
  main(*sys.argv[1:])


def trace(image, cfg=None):
  """jaxvision's (HEAD-style, one-jit) MTCNN flow run eagerly with the buffers of `cfg`
  (a DetectorConfig), keeping each stage's candidates -> dict of numpy arrays."""
  from jaxvision.faces import detector as D
  cfg = cfg or D.DetectorConfig()
  v = load_mtcnn_weights("auto")
  pnet, rnet, onet = PNet(), RNet(), ONet()
  h, w = image.shape[:2]
  sat = B.integral_image(jnp.asarray(image))
  out = {}

  def apply_p(x, pool_mask):
    o = pnet.apply(v["pnet"], x, pool_mask=pool_mask)
    return D._prob(o["logits"])[0], o["box"][0]

  boxes, sc, r, keep = D._stage1(apply_p, sat, h, w, cfg)
  keep = np.asarray(keep)
  out["s1_kept"] = np.concatenate([np.asarray(boxes)[keep], np.asarray(sc)[keep][:, None]], 1)
  b = B.rerec(B.bbreg(boxes, r, plus_one=False))
  ok, sc, b = D._compact(cfg.stage2, sc, keep, b)
  out["s2_in"] = np.asarray(b)[np.asarray(ok)]
  reg, cok = B.crop_regions(b, h, w)
  o = rnet.apply(v["rnet"], normalize(B.area_crops(sat, reg, 24)))
  s2 = D._prob(o["logits"])
  ok = ok & cok & (s2 > cfg.thresholds[1])
  keep = B.nms(b, s2, ok, cfg.nms[2])
  ok, s2, b = D._compact(cfg.stage3, s2, keep, B.rerec(B.bbreg(b, o["box"])))
  out["s3_in"] = np.asarray(b)[np.asarray(ok)]
  return out
