"""`jaxvision detect-faces`: a face-detection cascade, compiled end to end, on image files.

  jaxvision detect-faces IMAGE|FOLDER... --json OUT.json [--draw DIR] [--model mtcnn|cascade-cnn]
                         [--checkpoint WORKDIR] [--weights auto|mtcnn|facenet-pytorch|PATH]

jax and the nets are imported when the command runs, so that `jaxvision --help` stays fast.
"""
from __future__ import annotations

import collections
import itertools
import json
import os
import time

from jaxvision.core.errors import UserError, first_line
from jaxvision.core.inputs import positive_int
from jaxvision.core.registry import register_commands, register_face_detector


def start_reading(args) -> None:
  """The command's `early` hook (`jaxvision` calls it before it imports JAX): checks the
  flags, lists the inputs and starts decoding them on two threads (`inputs.ReadAhead`),
  so that the photos are read while JAX imports and the programs load."""
  from jaxvision.core import inputs, io

  if getattr(args, "reader", None) is not None:
    return
  if args.batch < 1:
    raise UserError(f"--batch {args.batch}: must be at least 1")
  if not args.json.lower().endswith(".json"):
    raise UserError(f"{args.json}: --json must name a .json file")
  if os.path.isdir(args.json):
    raise UserError(f"{args.json}: is a folder, not an output file")
  out_dir = os.path.dirname(os.path.abspath(args.json))
  if not os.path.isdir(out_dir):
    raise UserError(f"{args.json}: output folder {out_dir} does not exist")
  if args.draw and os.path.exists(args.draw) and not os.path.isdir(args.draw):
    raise UserError(f"{args.draw}: --draw must be a folder")
  if args.draw:  # before any work: a folder that cannot be made is the first thing said
    try:
      os.makedirs(args.draw, exist_ok=True)
    except OSError as e:
      raise UserError(f"{args.draw}: cannot create the --draw folder ({e.strerror or e})") \
          from None
  # Folders stand for their image files; grey, palette, RGBA (on white) -> RGB uint8.
  args.reader = inputs.ReadAhead(inputs.image_files(args.inputs), io.load_image_file,
                                 threads=2)


def detect_faces_cmd(args) -> None:
  import numpy as np

  from jaxvision.core import inputs, io

  start_reading(args)  # (done already when `jaxvision` ran the command)
  reader = args.reader
  given = reader.items
  # One unreadable file among many is one line and the others go on (core.inputs); one
  # file alone is the command's error, as before, said before the detector loads.
  strict = len(given) == 1 and not inputs.any_folder(args.inputs)
  outcome = inputs.Outcome(total=len(given))
  photos = inputs.read_each(reader, command=args.command, strict=strict, outcome=outcome)
  first = next(photos, None) if strict else None

  from jaxvision.faces import detector
  try:
    if args.checkpoint:
      det = detector.detector_from_workdir(args.checkpoint)
      if args.model and args.model != det.config.kind:
        raise UserError(f"{args.checkpoint}: holds a {det.config.kind} cascade, not {args.model}")
    elif (args.model or "mtcnn") == "mtcnn":
      det = detector.mtcnn_detector(args.weights)
    else:
      raise UserError("--model cascade-cnn needs --checkpoint WORKDIR (a trained cascade; "
                      "there are no released Cascade CNN weights)")
  except ValueError as e:  # weights or workdirs that do not fit: one line
    if isinstance(e, UserError):
      raise
    raise UserError(first_line(e)) from None
  if first is not None:
    photos = itertools.chain([first], photos)

  t = time.time()
  result: dict[str, list] = {}
  drawn: set[str] = set()

  def draw(p, image, faces):
    stem = os.path.splitext(os.path.basename(p))[0]
    name, n = stem, 1
    while name in drawn:
      n += 1
      name = f"{stem}_{n}"
    drawn.add(name)
    io.write_png(os.path.join(args.draw, name + ".png"), detector.draw_faces(image, faces))

  if det.config.kind == "mtcnn":
    # Any sizes: MTCNN's programs depend on fixed tile and crop batches, not on the image
    # size; up to --batch images (one per core) are detected at once, each photo decoded
    # just ahead of its turn and dropped once its faces (and drawing) are out.
    queued: collections.deque = collections.deque()

    def feed():
      for p, im in photos:
        queued.append((p, im if args.draw else None))
        yield im

    det.prepare(len(given), args.batch)
    with inputs.progress(len(given), unit="image") as bar:
      for faces in det.detect_each(feed(), args.batch, count=len(given)):
        p, im = queued.popleft()
        result[p] = faces
        if args.draw:
          draw(p, im, faces)
        bar.update(len(result) + len(outcome.failed) - bar.n)  # unreadable files count too
      bar.update(len(given) - bar.n)  # (failures after the last readable photo)
  else:  # Cascade CNN: one program per image size, a batch per size
    images = dict(photos)
    by_size: dict[tuple, list[str]] = {}
    for p, im in images.items():
      by_size.setdefault(im.shape, []).append(p)
    for shape, paths in by_size.items():
      for i in range(0, len(paths), args.batch):
        chunk = paths[i:i + args.batch]
        for p, faces in zip(chunk, det.detect(np.stack([images[p] for p in chunk]))):
          result[p] = faces
          if args.draw:
            draw(p, images[p], faces)
  if not result:
    outcome.raise_if_failed()  # nothing to detect in: no JSON either
  result = {p: result[p] for p in given if p in result}  # the order given
  io.atomic_write_text(args.json, json.dumps(result, indent=1))
  n = sum(len(v) for v in result.values())
  print(f"{len(result)} image(s), {n} face(s) -> {args.json}"
        + (f", drawings in {args.draw}" if args.draw else "") + f" ({time.time() - t:.2f}s)")
  outcome.raise_if_failed()


@register_commands
def add_commands(sub) -> None:
  """Adds this family's subcommands to the `jaxvision` parser."""
  p = sub.add_parser(
      "detect-faces", help="find faces (boxes, scores, five landmarks) with MTCNN or Cascade CNN",
      description="Runs a face-detection cascade, compiled end to end, on image files. Without "
      "--checkpoint it uses MTCNN with the original weights from the installed `mtcnn` package "
      "(pip install mtcnn).")
  p.add_argument("inputs", nargs="+", metavar="IN",
                 help="image files (grey and RGBA work too), or folders of them")
  p.add_argument("--json", required=True, metavar="OUT.json",
                 help='writes {input path: [{"box": [x1, y1, x2, y2], "score", "landmarks"}]}')
  p.add_argument("--draw", metavar="OUT_DIR", help="also write PNGs with the detections drawn")
  p.add_argument("--model", choices=("mtcnn", "cascade-cnn"), default=None,
                 help="cascade family (default mtcnn; cascade-cnn needs --checkpoint)")
  p.add_argument("--checkpoint", metavar="WORKDIR",
                 help="a trained last-stage workdir (earlier stages come from its config's "
                 "data.previous_stages), or a `jaxvision convert --model mtcnn` workdir")
  p.add_argument("--weights", default="auto",
                 help="MTCNN weights: auto (default), mtcnn, facenet-pytorch, or a folder/file "
                 "of .pt/.npz/.safetensors")
  p.add_argument("--batch", type=positive_int, default=8,
                 help="images run together (default 8; MTCNN: at most one per CPU core, any "
                 "sizes; Cascade CNN: a batch of one size)")
  p.set_defaults(func=detect_faces_cmd, early=start_reading)


def _mtcnn_face_detector(weights: str = "auto", **config):
  """MTCNN with the original weights, for other families' commands (core.registry)."""
  from jaxvision.faces import detector
  return detector.mtcnn_detector(weights, **config)


register_face_detector("mtcnn", _mtcnn_face_detector)
