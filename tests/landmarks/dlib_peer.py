"""Runs dlib's own shape predictors on the test photos (in the peer venv: `import dlib`).

    .venv-peers/bin/python tests/landmarks/dlib_peer.py SKIMAGE_DATA MODELS_DIR OUT.json

Rectangles: dlib's frontal face detector (upsampling once) on each photo plus the fixed
ones of photos.fixed_rects(). Writes {photo: [{"rect": [l, t, r, b], "p68": [[x, y]...],
"p5": [...]}]}; the points are dlib's (integers).
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dlib  # noqa: E402
import numpy as np  # noqa: E402

import photos as P  # noqa: E402


def main():
  data, models, out = sys.argv[1:4]
  sp68 = dlib.shape_predictor(os.path.join(models, "shape_predictor_68_face_landmarks.dat"))
  sp5 = dlib.shape_predictor(os.path.join(models, "shape_predictor_5_face_landmarks.dat"))
  det = dlib.get_frontal_face_detector()
  fixed = P.fixed_rects()
  res = {}
  for name, img in P.photos(data).items():
    img = np.ascontiguousarray(img)
    rects = [[r.left(), r.top(), r.right(), r.bottom()] for r in det(img, 1)]
    rects += fixed.get(name, [])
    faces = []
    for l, t, r, b in rects:
      rect = dlib.rectangle(l, t, r, b)
      faces.append({"rect": [l, t, r, b],
                    "p68": [[p.x, p.y] for p in sp68(img, rect).parts()],
                    "p5": [[p.x, p.y] for p in sp5(img, rect).parts()]})
    res[name] = faces
  with open(out, "w") as f:
    json.dump(res, f)


if __name__ == "__main__":
  main()
