"""The `jaxvision` command line: argparse only; each family adds its subcommands.

  jaxvision enhance --checkpoint WORKDIR --input IN --output OUT.png
  jaxvision compress --checkpoint WORKDIR IN OUT.jvc
  jaxvision decompress --checkpoint WORKDIR IN.jvc OUT.png
  jaxvision rd [--checkpoint WORKDIR]... [--data photos|folder:/p|TFDS] [IMAGE...] --out DIR
  jaxvision detect-faces IMAGE... [--json OUT] [--draw DIR]
  jaxvision classify / stylize / upscale / sr-eval ...
  jaxvision convert --model NAME IN.pth OUT_WORKDIR   (other frameworks' weights)
  jaxvision models            (list registered models)
  jaxvision operators         (list image operators)

Every command reads and writes JAX's persistent compilation cache (`core.compile`:
~/.cache/jaxvision/xla, or $JAXVISION_COMPILE_CACHE; `--no-compile-cache` or
JAXVISION_COMPILE_CACHE=0 switch it off).

Every family's `commands.py` registers an `add(subparsers)` function in
`jaxvision.core.registry`; this module only builds the parser from them and catches
`jaxvision.core.errors.UserError` once: one line on stderr, exit status 1.
"""
from __future__ import annotations

import argparse
import ast
import os
import sys

from jaxvision import families
from jaxvision.core import registry
from jaxvision.core import compile as jv_compile
from jaxvision.core.errors import UserError, first_line

# Kept for code written against older jaxvision: the one error base of every command.
CliError = UserError


def list_models(args) -> None:
  families.load("models")
  print("\n".join(registry.list_models()))


def _literal(v: str):
  try:
    return ast.literal_eval(v)
  except (ValueError, SyntaxError):
    return v


def convert(args) -> None:
  from jaxvision.core import weights
  families.load("convert")
  kwargs = {}
  for part in (args.kwargs or "").split(","):
    if part.strip():
      if "=" not in part:
        raise UserError(f"--kwargs {part!r}: expected key=value")
      k, v = part.split("=", 1)
      kwargs[k.strip()] = _literal(v.strip())
  try:
    variables = weights.convert(args.model, args.input, **kwargs)
    conv = registry.get_converter(args.model)
    weights.save_workdir(args.output, variables, task=conv.task, model_name=args.model,
                         model_kwargs=kwargs,
                         source=os.path.abspath(args.input) if os.path.exists(args.input)
                         else args.input)
  except (ValueError, TypeError) as e:  # a converter's argument error
    if isinstance(e, UserError):
      raise
    raise UserError(first_line(e)) from None
  n = weights.param_count(variables["params"])
  print(f"{args.input} -> {args.output}: {args.model}, {n:,} parameters "
        f"(use it as --checkpoint {args.output})")


def _add_core_commands(sub) -> None:
  p = sub.add_parser("convert", help="convert a PyTorch/Keras/safetensors weights file into a "
                     "jaxvision workdir", description="Reads the file safely (torch "
                     "weights_only=True, safetensors, h5py, numpy without pickle) and writes a "
                     "workdir that --checkpoint options accept.")
  p.add_argument("--model", required=True, help="registered model name (see `jaxvision models`)")
  p.add_argument("--kwargs", default="", help="model arguments, e.g. num_classes=1000,scale=4")
  p.add_argument("input", metavar="IN", nargs="?", default="auto",
                 help=".pth/.pt, .safetensors, .npz or .h5 file, or a model's own format "
                 "(dlib .dat, MTCNN's files); left out or 'auto': the file of the installed "
                 "package where the model has one (mtcnn, dlib_resnet, dlib_ert_68, ...)")
  p.add_argument("output", metavar="OUT_WORKDIR")
  p.set_defaults(func=convert)
  sub.add_parser("models", help="list registered models").set_defaults(func=list_models)


def build_parser() -> argparse.ArgumentParser:
  families.load("commands")
  parser = argparse.ArgumentParser(prog="jaxvision", description=__doc__.split("\n")[0])
  sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
  for add in registry.command_adders():
    add(sub)
  _add_core_commands(sub)
  _add_common_flags(sub)
  return parser


def _add_common_flags(sub) -> None:
  """Flags every subcommand takes, added here so that no family has to know of them."""
  seen = set()
  for p in sub.choices.values():
    if id(p) in seen:  # an alias names the same parser twice
      continue
    seen.add(id(p))
    p.add_argument("--no-compile-cache", action="store_true",
                   help="do not read or write the persistent compilation cache "
                   "(also: JAXVISION_COMPILE_CACHE=0)")


def main(argv=None) -> int:
  args = build_parser().parse_args(argv)
  jv_compile.use_cpu_cores()  # before JAX starts: a CPU device per core (detect-faces)
  early = getattr(args, "early", None)
  if early is not None:  # a command's own start (reading its inputs) before JAX imports
    try:
      early(args)
    except UserError as e:
      print(f"jaxvision {args.command}: error: {first_line(e, 1000)}", file=sys.stderr)
      return 1
  # Before anything compiles: a second run on the same sizes then compiles nothing.
  jv_compile.enable_compile_cache(not args.no_compile_cache)
  from absl import logging as absl_logging
  absl_logging.set_verbosity(absl_logging.ERROR)  # orbax/tfds chatter
  ckpt = sys.modules.get("jaxvision.core.checkpoint")
  if ckpt is not None:  # (in-process callers, tests: only this command's workdirs count)
    ckpt.forget_loaded()
  try:
    # every command may read a workdir naming any model: the families' models are
    # imported at the first model the registry does not know (not for detect-faces)
    registry.load_models_on_demand(lambda: families.load("models"))
    args.func(args)
  except UserError as e:
    print(f"jaxvision {args.command}: error: {first_line(e, 1000)}", file=sys.stderr)
    return 1
  except KeyboardInterrupt:
    return 130
  except Exception:
    # A workdir whose checkpoint belongs to another model than its config.json fails deep
    # inside flax; say that in one line. Anything else is a bug: its traceback stays.
    ckpt = sys.modules.get("jaxvision.core.checkpoint")
    why = ckpt.loaded_mismatch() if ckpt is not None else None
    if why is None:
      raise
    print(f"jaxvision {args.command}: error: {why}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
