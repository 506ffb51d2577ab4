"""`jaxvision compress`, `decompress` and `rd`: the command-line face of the codecs.

Each command loads a `configs/compress.py` workdir (`core.checkpoint.load_model`, task
"compression") and its integer CDF tables (`tables.checkpoint_tables`: built once per
checkpoint step, saved beside it, then always read from there), so every file coded
with one step uses the very same integers. User mistakes raise `UserError` kinds with
one-line messages (the cli prints them and exits 1).
"""
from __future__ import annotations

import os

from jaxvision.core.errors import ConfigError, DataError, OutputError, UserError, first_line
from jaxvision.core.inputs import nonnegative_int
from jaxvision.core.registry import register_commands


# ---------------------------------------------------------------- compress / decompress
def _codec_from_checkpoint(workdir):
  from jaxvision.compression import tables as T
  from jaxvision.core import checkpoint
  config, model, variables, step = checkpoint.load_model(workdir, "compression", "a codec")
  # Integer CDF tables of this checkpoint step: built once (float64 host arithmetic,
  # deterministic) and saved beside the checkpoint, then always read from there.
  try:
    tables = T.checkpoint_tables(workdir, step, model, variables)
  except UserError:  # a damaged tables file (FileFormatError)
    raise
  except (ValueError, OSError) as e:
    raise UserError(first_line(e, 1000)) from None
  return config, model, variables, tables


def _jobs(args, ext: str, extensions=None):
  """[(input, output)] and whether the input is a folder: IN OUT, or DIR OUT_DIR (each
  input's name with `ext`, see `core.inputs`)."""
  from jaxvision.core import inputs
  if not os.path.isdir(args.input):
    return [(args.input, args.output)], False
  inputs.check_output_folder(args.output, args.input, ext)
  sources = inputs.image_files([args.input], extensions or inputs.IMAGE_EXTENSIONS)
  return list(zip(sources, inputs.folder_outputs(sources, args.output, ext))), True


def compress(args) -> None:
  import numpy as np
  from jaxvision.compression import coding, files
  from jaxvision.compression.models import STRIDE
  from jaxvision.core import inputs, io

  jobs, folder = _jobs(args, ".jvc")
  config, model, variables, tables = _codec_from_checkpoint(args.checkpoint)

  def one(job):
    src, dst = job
    try:
      image, _ = io.read_image(src)  # alpha composited on white and dropped
      channels = 1 if io.is_grey(src) else 3  # grey stays grey on decoding
    except OSError as e:
      raise DataError(f"{src}: {e.strerror or e}") from None
    h, w = image.shape[:2]
    x = image[None].astype(np.float32) / 255.0
    info = {}  # the model's estimate, from the encoder's own latents (no second pass)
    header, strings = files.compress_image(model, variables, tables, x,
                                           model_name=config.model.name,
                                           quality=config.model.kwargs.quality,
                                           channels=channels, info=info, what=src,
                                           device=device_of(coding.bucket_for(h, w)))
    try:
      n = files.write_jvc(dst, header, strings)
    except OSError as e:
      if isinstance(e, UserError):  # the writer's own line already names the file
        raise
      raise DataError(f"{dst}: {e.strerror or e}") from None
    est = info["estimated_bits"]["total"]
    inputs.say(f"{src} -> {dst}: {w}x{h}, {n} bytes, {8 * n / (h * w):.4f} bpp; "
               f"the model estimated {est / 8:.0f} bytes ({est / (h * w):.4f} bpp; latents "
               f"of the image padded to a multiple of {STRIDE})")

  if folder:
    inputs.make_folder(args.output)
  # Every bucket's program at once (compiled in parallel when missing), from the image
  # headers; an unreadable image is left to `one` to report. The buckets are shared out
  # over the devices (one per core on a CPU), whose lanes run at once.
  sizes = [_image_size(job) for job in jobs]
  device_of, lanes = _lanes(sizes)
  coding.prepare_programs(model, variables, [s for s in sizes if s], encode=True,
                          estimate=True, device_of=device_of)
  inputs.for_each(jobs, one, command=args.command, strict=not folder,
                  lanes=lanes).raise_if_failed()


def _lanes(sizes):
  """(device_of(bucket), a lane per job) for jobs of `sizes` [(h, w) or None]: whole
  buckets to each device (coding.device_lanes); one device: (None for all, no lanes)."""
  from jaxvision.compression import coding
  devs = coding.devices()
  if len(devs) < 2:
    return (lambda bucket: None), None
  lane_of = coding.device_lanes([s for s in sizes if s], len(devs))
  lanes = [lane_of[coding.bucket_for(*s)] if s else 0 for s in sizes]
  return (lambda bucket: devs[lane_of.get(bucket, 0)]), lanes


def _image_size(job):
  """(h, w) of an image from its header, or None when it does not open."""
  from PIL import Image
  from jaxvision.core.io import check_pixels
  try:
    with Image.open(job[0]) as im:
      check_pixels(job[0], *im.size)
      return im.size[1], im.size[0]
  except Exception:  # noqa: BLE001 - reported by the command itself
    return None


def _jvc_size(job):
  from jaxvision.compression import files
  from jaxvision.core.io import check_pixels
  try:
    header, _ = files.read_jvc(job[0])
    check_pixels(job[0], header.width, header.height)  # none compiled for a refused one
    return header.height, header.width
  except Exception:  # noqa: BLE001 - reported by the command itself
    return None


def decompress(args) -> None:
  import numpy as np
  from jaxvision.compression import coding, files
  from jaxvision.compression import tables as T
  from jaxvision.core import inputs
  from jaxvision.core.io import check_pixels, write_png

  if os.path.isdir(args.input):
    jobs, folder = _jobs(args, ".png", extensions={".jvc"})
  else:
    if not args.output.lower().endswith(".png"):
      raise DataError(f"{args.output}: output must be a .png file")
    jobs, folder = [(args.input, args.output)], False

  def read(path):
    try:
      header, strings = files.read_jvc(path)
      # the declared size against the pixel limit, before anything is allocated for it
      check_pixels(path, header.width, header.height)
      return header, strings
    except files.JvcError as e:
      raise files.JvcError(f"{path}: {e}") from None
    except OSError as e:
      raise DataError(f"{path}: {e.strerror or e}") from None

  first = read(jobs[0][0]) if not folder else None  # a single file is read before the codec
  config, model, variables, tables = _codec_from_checkpoint(args.checkpoint)
  crc = T.tables_crc(tables)

  def one(job):
    src, dst = job
    header, strings = first if first is not None else read(src)
    if (header.model, header.quality) != (config.model.name,
                                          int(config.model.kwargs.quality)):
      raise UserError(f"{src} was written by {header.model} quality {header.quality}; "
                      f"{args.checkpoint} holds {config.model.name} quality "
                      f"{config.model.kwargs.quality}")
    if header.tables_crc is not None and header.tables_crc != crc:
      raise UserError(f"{src} was coded with other CDF tables (CRC "
                      f"{header.tables_crc:08x}) than {args.checkpoint} holds "
                      f"({crc:08x}): another checkpoint step or training run, or a "
                      "hyperprior file from a jaxvision older than its fixed-point coding")
    try:
      x = coding.decompress(model, variables, tables, strings, header.latent_shapes,
                            header.height, header.width, what=src,
                            device=device_of(coding.bucket_for(header.height, header.width)))
    except ValueError as e:
      raise files.JvcError(f"{src}: {first_line(e, 1000)}") from None
    y = (x[0] * 255.0 + 0.5).astype(np.uint8)
    if header.channels == 1:
      y = y.mean(axis=-1).round().astype(np.uint8)
    write_png(dst, y)
    inputs.say(f"{src} -> {dst}: {header.width}x{header.height}")

  device_of, lanes = (lambda bucket: None), None
  if folder:
    inputs.make_folder(args.output)
    sizes = [_jvc_size(job) for job in jobs]
    device_of, lanes = _lanes(sizes)
    coding.prepare_programs(model, variables, [s for s in sizes if s], decode=True,
                            device_of=device_of)
  inputs.for_each(jobs, one, command=args.command, strict=not folder,
                  lanes=lanes).raise_if_failed()


def _rd_images(args):
  import numpy as np
  from jaxvision.core import data
  from jaxvision.core.io import load_image_file
  images = []
  try:
    for path in args.inputs:
      images.append((os.path.basename(path), load_image_file(path)))
    if args.data:
      src = data.get_source(args.data, args.split, args.data_dir or None)
      for i in range(min(len(src), args.max_images or len(src))):
        rec = src[i]
        images.append((f"{args.data}[{args.split}][{rec['name']}]", rec["image"]))
  except (DataError, OSError) as e:
    raise DataError(first_line(e, 1000)) from None
  if args.max_images:
    images = images[:args.max_images]
  if not images:
    raise DataError("no images: give image files and/or --data (a TFDS name, photos or "
                   "folder:/path)")
  return [(n, np.ascontiguousarray(im[..., :3])) for n, im in images]


def rd(args) -> None:
  from jaxvision.compression import rd as jv_rd

  codecs = [c.strip() for c in args.codecs.split(",") if c.strip()]
  bad = [c for c in codecs if c not in jv_rd.CODECS]
  if bad:
    raise ConfigError(f"--codecs: unknown codec {bad[0]!r}; choose from "
                      f"{', '.join(jv_rd.CODECS)}")
  qualities = {}
  for spec in args.qualities or []:
    codec_name, _, qs = spec.partition("=")
    try:
      qualities[codec_name] = [float(q) if codec_name == "jpeg2000" else int(q)
                               for q in qs.split(":")]
    except ValueError:
      raise ConfigError(f"--qualities {spec!r}: expected CODEC=Q1:Q2:...") from None
    if codec_name not in jv_rd.CODECS or not qs:
      raise ConfigError(f"--qualities {spec!r}: expected CODEC=Q1:Q2:... with CODEC one of "
                        f"{', '.join(jv_rd.CODECS)}")
  if os.path.exists(args.out) and not os.path.isdir(args.out):
    raise OutputError(f"{args.out}: --out must be a folder (rd.json and rd.png go in it)")
  parent = os.path.dirname(os.path.abspath(args.out))
  if not os.path.isdir(parent):  # made at the end, when there is something to write
    raise OutputError(f"{args.out}: cannot create the --out folder ({parent} is not a folder)")
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
    if isinstance(e, UserError):
      raise
    raise UserError(first_line(e, 1000)) from None
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


def add(sub) -> None:
  """Adds compress, decompress and rd to the `jaxvision` subparsers."""
  p = sub.add_parser("compress", help="compress an image into a .jvc file with a trained codec")
  p.add_argument("--checkpoint", required=True, metavar="WORKDIR",
                 help="workdir of a configs/compress.py run")
  p.add_argument("input", metavar="IN", help="an image, or a folder of them")
  p.add_argument("output", metavar="OUT.jvc",
                 help="the .jvc file; a folder (existing or new) when IN is a folder")
  p.set_defaults(func=compress)
  p = sub.add_parser("decompress", help="decode a .jvc file into a PNG")
  p.add_argument("--checkpoint", required=True, metavar="WORKDIR",
                 help="the codec that wrote the file (its workdir)")
  p.add_argument("input", metavar="IN.jvc", help="a .jvc file, or a folder of them")
  p.add_argument("output", metavar="OUT.png",
                 help="the PNG; a folder (existing or new) when IN is a folder")
  p.set_defaults(func=decompress)
  p = sub.add_parser("rd", help="rate-distortion of learned codecs vs JPEG/WebP/JPEG 2000/AVIF",
                     description="bpp, PSNR and MS-SSIM per image and averaged; writes "
                     "OUT/rd.json and OUT/rd.png; BD-rates vs JPEG and the CompressAI curves.")
  p.add_argument("inputs", nargs="*", metavar="IMAGE", help="image files")
  p.add_argument("--data", default="", help="photos, folder:/path or a prepared TFDS name")
  p.add_argument("--split", default="test", help="split of --data (default test)")
  p.add_argument("--data-dir", default="", help="TFDS data_dir")
  p.add_argument("--max-images", type=nonnegative_int, default=0,
                 help="use the first N images only (0: all)")
  p.add_argument("--checkpoint", action="append", metavar="WORKDIR",
                 help="a codec workdir (repeatable; one RD point each, one curve per model)")
  p.add_argument("--codecs", default="jpeg,webp,jpeg2000,avif",
                 help="Pillow codecs to sweep (comma list; '' for none)")
  p.add_argument("--qualities", action="append", metavar="CODEC=Q1:Q2:...",
                 help="sweep of one codec, e.g. jpeg=10:50:90 (jpeg2000: target bpp)")
  p.add_argument("--out", required=True, metavar="DIR", help="output folder")
  p.set_defaults(func=rd)


register_commands(add)
