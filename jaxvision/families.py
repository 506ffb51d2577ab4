"""The one list of family packages, and the loader that fills the registry from them.

Each family is a package with the same file names (`models.py`, `convert.py`,
`task.py`, `commands.py`, ...). Importing a family's `models.py` registers its models,
`convert.py` its weight converters, `task.py` its trainer tasks, `commands.py` its
subcommands of `jaxvision`. The entry points load only the parts they need, so that
`jaxvision --help` does not import the data stack:

    families.load("models")            # the facade jaxvision.models
    families.load("commands")          # jaxvision.cli
    families.load("task", "models")    # python -m train

Adding a family is one folder and one line in FAMILIES.
"""
from __future__ import annotations

import importlib
import importlib.util

FAMILIES = (
    "jaxvision.can",
    "jaxvision.compression",
    "jaxvision.faces",
    "jaxvision.classification",
    "jaxvision.style",
    "jaxvision.superres",
    "jaxvision.recognition",
    "jaxvision.landmarks",
    "jaxvision.denoise",
)
PARTS = ("models", "convert", "task", "commands")
# File names of a part: style's architectures are generators (ARCHITECTURE.md).
_FILES = {"models": ("models", "generators")}
_CORE_PARTS = {"models": ("jaxvision.core.perceptual",),   # the VGG descriptors
               "convert": ("jaxvision.core.perceptual",)}


def load(*parts: str) -> None:
  """Imports `<family>.<part>` of every family that has that part (idempotent)."""
  for part in parts or PARTS:
    if part not in PARTS:
      raise ValueError(f"unknown family part {part!r}; choose from {', '.join(PARTS)}")
    for name in _CORE_PARTS.get(part, ()):
      importlib.import_module(name)
    for family in FAMILIES:
      for file in _FILES.get(part, (part,)):
        module = f"{family}.{file}"
        if importlib.util.find_spec(module) is not None:
          importlib.import_module(module)
