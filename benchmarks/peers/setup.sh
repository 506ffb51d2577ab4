#!/usr/bin/env bash
# Dev-only peer venv for comparing jaxvision's MTCNN with facenet-pytorch (benchmarks and
# tests/faces/test_small_faces.py) and its codecs with CompressAI (benchmarks/compression.py,
# tests/compression/test_compress_convert.py). Never a runtime dependency of jaxvision.
#
#   bash benchmarks/peers/setup.sh            # creates or completes <repo>/.venv-peers
#   PEERS_VENV=/some/dir bash benchmarks/peers/setup.sh
#
# What it installs (idempotent: re-running checks and skips what is already there):
#   - a Python 3.11 venv at .venv-peers/ (git-ignored) next to .venv/
#   - torch==2.13.0, CPU build: pip takes the local wheel (find-links /opt/wheels); the
#     PyTorch CUDA index is never consulted, and the script fails if a non-CPU build
#     ends up installed
#   - facenet-pytorch with --no-deps (its pins, torch<2.3 and torchvision<0.18, do not fit),
#     plus the deps it really imports: numpy, Pillow, requests, tqdm
#   - instead of torchvision, benchmarks/peers/torchvision_standin/ on the path through a
#     .pth file: pure-torch `ops.boxes.nms/batched_nms` (torchvision's CPU kernel, step for
#     step) and `transforms.functional.to_tensor` — all facenet-pytorch imports from it
#   - compressai with --no-deps (its pins, numpy<2 and torchvision, do not fit; its image
#     models and C++ rANS need neither), plus what it imports at top level: scipy, einops,
#     pytorch-msssim (--no-deps: its only dep is torch), pandas, matplotlib, torch-geometric
#   - dlib-bin (dlib's own wheel), face-recognition-models (dlib's .dat model files), bm3d
#   - ai-edge-litert (Google's TFLite interpreter: the reference for the face mesh,
#     tests/landmarks/test_facemesh.py and benchmarks/landmarks.py --model facemesh)
# Then it checks: MTCNN(keep_all=True).detect on a small image runs, and a CompressAI
# hyperprior codes and decodes a small image after update().
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
VENV="${PEERS_VENV:-$ROOT/.venv-peers}"
PY311="${PYTHON311:-$(command -v python3.11 || true)}"

if [ ! -x "$VENV/bin/python" ]; then
  [ -n "$PY311" ] || { echo "python3.11 not found (set PYTHON311=...)" >&2; exit 1; }
  "$PY311" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
have() { "$VENV/bin/python" - "$@" <<'PY' 2>/dev/null
import sys
from importlib.metadata import version
name, want = sys.argv[1], (sys.argv[2] if len(sys.argv) > 2 else None)
v = version(name)
sys.exit(0 if want is None or v.split("+")[0] == want else 1)
PY
}

for dep in numpy Pillow requests tqdm; do
  have "$dep" || "${PIP[@]}" install "$dep"
done
if ! have torch 2.13.0; then
  # CPU wheel from the local find-links; --index-url would not help (no CUDA index here)
  "${PIP[@]}" install "torch==2.13.0"
fi
"$VENV/bin/python" - <<'PY'
import sys, torch
if torch.version.cuda is not None or torch.version.hip is not None:
  sys.exit(f"torch {torch.__version__} is a CUDA build; remove {sys.prefix} and re-run")
PY
have facenet-pytorch || "${PIP[@]}" install --no-deps facenet-pytorch
have compressai || "${PIP[@]}" install --no-deps compressai
have pytorch-msssim || "${PIP[@]}" install --no-deps pytorch-msssim
for dep in scipy einops pandas matplotlib torch-geometric; do
  have "$dep" || "${PIP[@]}" install "$dep"
done
# dlib itself (the reference for the dlib face-recognition ResNet and the ERT shape
# predictors, tests/recognition and tests/landmarks), its model files, and BM3D (the
# classical denoising baseline, benchmarks/denoise.py)
have dlib-bin || "${PIP[@]}" install dlib-bin
have face-recognition-models || "${PIP[@]}" install face-recognition-models
have bm3d || "${PIP[@]}" install bm3d
have ai-edge-litert || "${PIP[@]}" install ai-edge-litert

SITE="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
echo "$HERE/torchvision_standin" > "$SITE/jaxvision_torchvision_standin.pth"

"$VENV/bin/python" - <<'PY'
import numpy as np, torch, torchvision, facenet_pytorch
from importlib.metadata import version
from facenet_pytorch import MTCNN
assert torchvision.__version__.endswith("+standin"), torchvision.__file__
boxes, probs, points = MTCNN(keep_all=True, device="cpu").detect(
    np.full((64, 80, 3), 128, np.uint8), landmarks=True)
print(f"peer venv ok: torch {torch.__version__}, facenet-pytorch {version('facenet-pytorch')}, "
      f"numpy {np.__version__}, torchvision stand-in at {torchvision.__file__}")
PY
"$VENV/bin/python" - <<'PY'
import torch
from importlib.metadata import version
import compressai.models as cm
net = cm.ScaleHyperprior(8, 12).eval()
net.update(force=True)
with torch.no_grad():
  out = net.compress(torch.rand(1, 3, 64, 64))
  x = net.decompress(out["strings"], out["shape"])["x_hat"]
assert x.shape == (1, 3, 64, 64), x.shape
print(f"peer venv ok: compressai {version('compressai')}")
PY
