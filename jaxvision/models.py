"""Model registry facade for users: every family's models by name.

    >>> from jaxvision import models
    >>> net = models.create("can24")          # a flax.linen Module
    >>> models.list_models()

Factories take keyword arguments (variants by argument, not subclasses) and return
an un-initialised linen module; parameters live in explicit pytrees from `init`.
The registry itself is `jaxvision.core.registry`; this module imports every family's
`models.py` (`jaxvision.families`) so that the list is complete.
"""
from __future__ import annotations

from jaxvision import families
from jaxvision.core.registry import create_model as create, list_models, register_model as register

families.load("models")

__all__ = ["create", "list_models", "register"]
