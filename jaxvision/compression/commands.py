"""`jaxvision compress`, `decompress` and `rd`."""
from __future__ import annotations

import os

from jaxvision.core.errors import UserError as CliError
from jaxvision.core.io import write_png as _atomic_save_png
from jaxvision.core.registry import register_commands


# ---------------------------------------------------------------- compress / decompress
def _codec_from_checkpoint(workdir):
  from jaxvision import checkpoint as jv_ckpt
  from jaxvision import models
  from jaxvision.models import compression as C
  try:
    config, variables, step = jv_ckpt.load_variables(workdir)
  except jv_ckpt.CheckpointError as e:
    raise CliError(str(e)) from None
  if config.get("task") != "compression":
    raise CliError(f"{workdir}: a {config.get('task')!r} model, not a codec")
  model = models.create(config.model.name, **config.model.kwargs)
  # Integer CDF tables of this checkpoint step: built once (float64 host arithmetic,
  # deterministic) and saved beside the checkpoint, then always read from there.
  try:
    tables = C.checkpoint_tables(workdir, step, model, variables)
  except (ValueError, OSError) as e:
    raise CliError(str(e).splitlines()[0]) from None
  return config, model, variables, tables


def compress(args) -> None:
  import numpy as np
  from PIL import Image
  from jaxvision import codec, data
  from jaxvision.models import compression as C

  config, model, variables, tables = _codec_from_checkpoint(args.checkpoint)
  try:
    image = data.load_image_file(args.input)
  except (data.DataError, OSError) as e:
    raise CliError(str(e)) from None
  with Image.open(args.input) as im:  # grey stays grey on decoding; alpha is dropped
    channels = 1 if im.mode in ("1", "L", "I", "I;16", "F", "LA") else 3
  h, w = image.shape[:2]
  x = image[None].astype(np.float32) / 255.0
  strings, shapes = C.compress(model, variables, tables, x)
  header = codec.JvcHeader(model=config.model.name, quality=int(config.model.kwargs.quality),
                           height=h, width=w, channels=channels,
                           latent_shapes=[tuple(int(d) for d in s) for s in shapes],
                           tables_crc=C.tables_crc(tables))
  n = codec.write_jvc(args.output, header, strings)
  est = C.estimate_bits(model, variables, x)["total"]
  print(f"{args.input} -> {args.output}: {w}x{h}, {n} bytes, {8 * n / (h * w):.4f} bpp; "
        f"the model estimated {est / 8:.0f} bytes ({est / (h * w):.4f} bpp; latents of "
        f"the image padded to a multiple of {C.STRIDE})")


def decompress(args) -> None:
  import numpy as np
  from jaxvision import codec
  from jaxvision.models import compression as C

  if not args.output.lower().endswith(".png"):
    raise CliError(f"{args.output}: output must be a .png file")
  try:
    header, strings = codec.read_jvc(args.input)
  except codec.JvcError as e:
    raise CliError(f"{args.input}: {e}") from None
  except OSError as e:
    raise CliError(f"{args.input}: {e.strerror or e}") from None
  config, model, variables, tables = _codec_from_checkpoint(args.checkpoint)
  if (header.model, header.quality) != (config.model.name, int(config.model.kwargs.quality)):
    raise CliError(f"{args.input} was written by {header.model} quality {header.quality}; "
                   f"{args.checkpoint} holds {config.model.name} quality "
                   f"{config.model.kwargs.quality}")
  if header.tables_crc is not None and header.tables_crc != C.tables_crc(tables):
    raise CliError(f"{args.input} was coded with other CDF tables (CRC "
                   f"{header.tables_crc:08x}) than {args.checkpoint} holds "
                   f"({C.tables_crc(tables):08x}): another checkpoint step or training run, or a "
                   "hyperprior file from a jaxvision older than its fixed-point coding")
  try:
    x = C.decompress(model, variables, tables, strings, header.latent_shapes,
                     header.height, header.width)
  except ValueError as e:
    raise CliError(f"{args.input}: {str(e).splitlines()[0]}") from None
  y = (x[0] * 255.0 + 0.5).astype(np.uint8)
  if header.channels == 1:
    y = y.mean(axis=-1).round().astype(np.uint8)
  _atomic_save_png(y, args.output)
  print(f"{args.input} -> {args.output}: {header.width}x{header.height}")


def _rd_images(args):
  import numpy as np
  from jaxvision import data
  images = []
  try:
    for path in args.inputs:
      images.append((os.path.basename(path), data.load_image_file(path)))
    if args.data:
      src = data.get_source(args.data, args.split, args.data_dir or None)
      for i in range(min(len(src), args.max_images or len(src))):
        rec = src[i]
        images.append((f"{args.data}[{args.split}][{rec['name']}]", rec["image"]))
  except (data.DataError, OSError) as e:
    raise CliError(str(e).splitlines()[0]) from None
  if args.max_images:
    images = images[:args.max_images]
  if not images:
    raise CliError("no images: give image files and/or --data (a TFDS name, photos or "
                   "folder:/path)")
  return [(n, np.ascontiguousarray(im[..., :3])) for n, im in images]


def rd(args) -> None:
  from jaxvision import rd as jv_rd

  codecs = [c.strip() for c in args.codecs.split(",") if c.strip()]
  bad = [c for c in codecs if c not in jv_rd.CODECS]
  if bad:
    raise CliError(f"--codecs: unknown codec {bad[0]!r}; choose from {', '.join(jv_rd.CODECS)}")
  qualities = {}
  for spec in args.qualities or []:
    codec_name, _, qs = spec.partition("=")
    try:
      qualities[codec_name] = [float(q) if codec_name == "jpeg2000" else int(q)
                               for q in qs.split(":")]
    except ValueError:
      raise CliError(f"--qualities {spec!r}: expected CODEC=Q1:Q2:...") from None
    if codec_name not in jv_rd.CODECS or not qs:
      raise CliError(f"--qualities {spec!r}: expected CODEC=Q1:Q2:... with CODEC one of "
                     f"{', '.join(jv_rd.CODECS)}")
  images = _rd_images(args)
  neural = []
  for work in args.checkpoint or []:
    config, model, variables, tables = _codec_from_checkpoint(work)
    q = int(config.model.kwargs.quality)
    neural.append((f"jaxvision {config.model.name}", model, variables, tables,
                   config.model.name, q))
  try:
    ours = jv_rd.neural_rd_curves(images, neural)
    result = jv_rd.evaluate(images, codecs, args.out, qualities,
                            extra={k: v["points"] for k, v in ours.items()},
                            extra_per_image={k: v["per_image"] for k, v in ours.items()})
  except ValueError as e:
    raise CliError(str(e).splitlines()[0]) from None
  for name, pts in {**{c: r["points"] for c, r in result["curves"].items()},
                    **result["extra"]}.items():
    print(f"{name}: " + ", ".join(f"{p['bpp']:.3f} bpp {p['psnr']:.2f} dB" for p in pts))
  for name, entries in result["bd"].items():
    parts = [f"{a} {e['bd_rate_percent']:+.1f}%" for a, e in entries.items()
             if e["bd_rate_percent"] is not None]
    if parts:
      print(f"BD-rate of {name} vs " + ", ".join(parts))
  for c, why in result["skipped"].items():
    print(f"skipped {c}: {why}")
  print(f"{len(images)} image(s) -> {os.path.join(args.out, 'rd.json')}, "
        f"{os.path.join(args.out, 'rd.png')}")


def _add_codec(sub):
  p = sub.add_parser("compress", help="compress an image into a .jvc file with a trained codec")
  p.add_argument("--checkpoint", required=True, metavar="WORKDIR",
                 help="workdir of a configs/compress.py run")
  p.add_argument("input", metavar="IN")
  p.add_argument("output", metavar="OUT.jvc")
  p.set_defaults(func=compress)
  p = sub.add_parser("decompress", help="decode a .jvc file into a PNG")
  p.add_argument("--checkpoint", required=True, metavar="WORKDIR",
                 help="the codec that wrote the file (its workdir)")
  p.add_argument("input", metavar="IN.jvc")
  p.add_argument("output", metavar="OUT.png")
  p.set_defaults(func=decompress)
  p = sub.add_parser("rd", help="rate-distortion of learned codecs vs JPEG/WebP/JPEG 2000/AVIF",
                     description="bpp, PSNR and MS-SSIM per image and averaged; writes "
                     "OUT/rd.json and OUT/rd.png; BD-rates vs JPEG and the CompressAI curves.")
  p.add_argument("inputs", nargs="*", metavar="IMAGE", help="image files")
  p.add_argument("--data", default="", help="photos, folder:/path or a prepared TFDS name")
  p.add_argument("--split", default="test", help="split of --data (default test)")
  p.add_argument("--data-dir", default="", help="TFDS data_dir")
  p.add_argument("--max-images", type=int, default=0, help="use the first N images only")
  p.add_argument("--checkpoint", action="append", metavar="WORKDIR",
                 help="a codec workdir (repeatable; one RD point each, one curve per model)")
  p.add_argument("--codecs", default="jpeg,webp,jpeg2000,avif",
                 help="Pillow codecs to sweep (comma list; '' for none)")
  p.add_argument("--qualities", action="append", metavar="CODEC=Q1:Q2:...",
                 help="sweep of one codec, e.g. jpeg=10:50:90 (jpeg2000: target bpp)")
  p.add_argument("--out", required=True, metavar="DIR", help="output folder")
  p.set_defaults(func=rd)


register_commands(_add_codec)
