"""Model registry: every family registers factories by name.

    >>> from jaxvision import models
    >>> net = models.create("can24")          # a flax.linen Module
    >>> models.list_models()

Factories take keyword arguments (variants by argument, not subclasses) and return
an un-initialised linen module; parameters live in explicit pytrees from `init`.
"""
from __future__ import annotations

import difflib
from typing import Callable

import flax.linen as nn

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register(name: str):
  """Decorator: registers `fn(**kwargs) -> nn.Module` under `name`."""

  def deco(fn):
    if name in _REGISTRY:
      raise ValueError(f"model {name!r} is registered twice")
    _REGISTRY[name] = fn
    return fn

  return deco


def list_models() -> list[str]:
  return sorted(_REGISTRY)


def create(name: str, **kwargs) -> nn.Module:
  """Returns the registered model `name` built with `kwargs`."""
  if name not in _REGISTRY:
    close = difflib.get_close_matches(name, _REGISTRY, n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    raise ValueError(f"unknown model {name!r}{hint}; registered: {', '.join(list_models())}")
  return _REGISTRY[name](**kwargs)


# Families register themselves on import.
from jaxvision.models import can  # noqa: E402,F401
from jaxvision.models import compression  # noqa: E402,F401
from jaxvision.models import mtcnn  # noqa: E402,F401
from jaxvision.models import resnet  # noqa: E402,F401
from jaxvision.models import stylenets  # noqa: E402,F401
from jaxvision.models import superres  # noqa: E402,F401
from jaxvision.models import vgg  # noqa: E402,F401
