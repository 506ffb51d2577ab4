"""CompressAI peer of `jaxvision compress DIR OUT` + `jaxvision decompress OUT PNGS`, in one
process, for benchmarks/compression.py (dev-only peer venv: benchmarks/peers/setup.sh).

    python compressai_codec.py --model NAME --quality Q [--weights W.npz] IN_DIR OUT_DIR
    python compressai_codec.py --model NAME --quality Q --export-weights W.npz [--seed S]
    python compressai_codec.py --model NAME --quality Q [--weights W.npz] --latency WxH

Folder mode does what the two jaxvision commands do: every PNG of IN_DIR (sorted) is read
with Pillow (grey and RGB; coded as RGB), edge-padded to a multiple of 64, coded with
`net.compress` (CompressAI's `update()` tables and C++ rANS) and written to OUT_DIR/x.bin
(sizes, shapes and the strings); then every .bin is read back, `net.decompress`ed, cropped,
rounded to uint8 and written as OUT_DIR/x.png (grey sources back as grey). It prints one
JSON line: seconds for imports and set-up, compress, decompress (measured inside; the
caller times the whole process).

--export-weights writes the state dict of a freshly initialised model (torch.manual_seed)
as an .npz, which jaxvision converts (`compression.convert.from_compressai`), so that the
two codecs run the same weights. --latency: warmed-up encode / decode seconds of one
image (median of 5): --image X.npy, (1, H, W, 3) float32, or uniform noise.
"""
import argparse
import json
import os
import struct
import sys
import time

T0 = time.perf_counter()
import numpy as np  # noqa: E402
import torch  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))
from tests.compression.compressai_import import import_compressai  # noqa: E402

CLASSES = {"bmshj2018-factorized": "FactorizedPrior", "bmshj2018-hyperprior": "ScaleHyperprior",
           "mbt2018-mean": "MeanScaleHyperprior",
           "mbt2018": "JointAutoregressiveHierarchicalPriors"}


def _nm(name, quality):  # the zoo's (N, M), as jaxvision.compression.models
  split = {"bmshj2018-factorized": 5, "bmshj2018-hyperprior": 5, "mbt2018-mean": 4,
           "mbt2018": 4}[name]
  low = (192, 192) if name == "mbt2018" else (128, 192)
  return low if quality <= split else (192, 320)


def make(name, quality, weights=None, seed=0):
  cm = import_compressai()
  torch.manual_seed(seed)
  net = getattr(cm, CLASSES[name])(*_nm(name, quality)).eval()
  if weights:
    sd = {k: torch.from_numpy(v) for k, v in np.load(weights).items()}
    net.load_state_dict(sd)  # strict: the export holds every key, buffers included
  net.update(force=True)
  return net


def _pad(x):  # (1, 3, h, w) -> edge-padded to multiples of 64, as jaxvision does
  h, w = x.shape[2:]
  return torch.nn.functional.pad(x, (0, -w % 64, 0, -h % 64), mode="replicate")


def _write(path, h, w, grey, out):
  strings = [s[0] for s in out["strings"]]
  shape = tuple(out["shape"])
  head = struct.pack("<IIBB", h, w, grey, len(shape)) + struct.pack(f"<{len(shape)}I", *shape)
  head += struct.pack(f"<B{len(strings)}I", len(strings), *map(len, strings))
  with open(path, "wb") as f:
    f.write(head + b"".join(strings))


def _read(path):
  data = open(path, "rb").read()
  h, w, grey, nd = struct.unpack_from("<IIBB", data)
  p = 10
  shape = struct.unpack_from(f"<{nd}I", data, p)
  p += 4 * nd
  (n,) = struct.unpack_from("<B", data, p)
  lens = struct.unpack_from(f"<{n}I", data, p + 1)
  p += 1 + 4 * n
  strings = []
  for k in lens:
    strings.append([data[p:p + k]])
    p += k
  return h, w, grey, list(shape), strings


def folder(net, src, dst):
  from PIL import Image
  os.makedirs(dst, exist_ok=True)
  names = sorted(n for n in os.listdir(src) if n.lower().endswith(".png"))
  t = time.perf_counter()
  with torch.no_grad():
    for n in names:
      im = Image.open(os.path.join(src, n))
      grey = im.mode in ("L", "I;16", "1")
      a = np.asarray(im.convert("RGB"))
      x = torch.from_numpy(a.copy()).permute(2, 0, 1)[None].float() / 255.0
      out = net.compress(_pad(x))
      _write(os.path.join(dst, n[:-4] + ".bin"), a.shape[0], a.shape[1], grey, out)
    t1 = time.perf_counter()
    for n in names:
      h, w, grey, shape, strings = _read(os.path.join(dst, n[:-4] + ".bin"))
      x_hat = net.decompress(strings, shape)["x_hat"][0, :, :h, :w].clamp(0, 1)
      y = (x_hat.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
      im = Image.fromarray(y.mean(-1).round().astype(np.uint8) if grey else y)
      im.save(os.path.join(dst, n))
  t2 = time.perf_counter()
  return {"images": len(names), "compress_s": round(t1 - t, 3), "decompress_s": round(t2 - t1, 3)}


def latency(net, w, h, reps=5, image=""):
  if image:  # (1, h, w, 3) float32 in [0, 1], as jaxvision's benchmark codes it
    x = torch.from_numpy(np.load(image).transpose(0, 3, 1, 2).copy())
  else:
    x = torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(0))
  enc, dec = [], []
  with torch.no_grad():
    out = net.compress(x)
    net.decompress(out["strings"], out["shape"])
    for _ in range(reps):
      t = time.perf_counter()
      out = net.compress(x)
      t1 = time.perf_counter()
      net.decompress(out["strings"], out["shape"])
      enc.append(t1 - t)
      dec.append(time.perf_counter() - t1)
  return {"encode_s": round(float(np.median(enc)), 4), "decode_s": round(float(np.median(dec)), 4),
          "bytes": sum(len(s[0]) for s in out["strings"])}


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--model", required=True, choices=sorted(CLASSES))
  ap.add_argument("--quality", type=int, default=3)
  ap.add_argument("--weights", default="")
  ap.add_argument("--export-weights", default="")
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--latency", default="", metavar="WxH")
  ap.add_argument("--image", default="", help="--latency: code this .npy image instead")
  ap.add_argument("dirs", nargs="*")
  a = ap.parse_args()
  net = make(a.model, a.quality, a.weights or None, a.seed)
  info = {"torch": torch.__version__, "threads": torch.get_num_threads(),
          "setup_s": round(time.perf_counter() - T0, 3)}
  if a.export_weights:
    sd = {k: v.detach().numpy() for k, v in net.state_dict().items()}  # buffers too
    np.savez(a.export_weights, **sd)
    print(json.dumps({**info, "weights": a.export_weights, "keys": len(sd)}))
  elif a.latency:
    w, h = map(int, a.latency.lower().split("x"))
    print(json.dumps({**info, **latency(net, w, h, image=a.image)}))
  else:
    src, dst = a.dirs
    print(json.dumps({**info, **folder(net, src, dst)}))


if __name__ == "__main__":
  main()
