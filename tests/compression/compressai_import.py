"""Importing CompressAI (a dev-only peer) without the optional packages it imports at top
level: shared by the parity tests and benchmarks/compression.py (which imports this file)."""
from __future__ import annotations

import importlib.machinery
import sys
import types


def import_compressai(on_fail=None):
  """compressai.models with stubs for the optional packages it imports at top level
  (torch_geometric, torchvision, pandas, ...), which its image models never use.
  `on_fail(message)`: called (it should raise, e.g. pytest.skip) when it cannot import;
  default: ImportError."""
  def fail(msg):
    if on_fail is not None:
      on_fail(msg)
    raise ImportError(msg)

  class Stub(types.ModuleType):
    def __getattr__(self, name):
      if name.startswith("__"):
        raise AttributeError(name)
      m = Stub(f"{self.__name__}.{name}")
      m.__path__ = []
      sys.modules[m.__name__] = m
      setattr(self, name, m)
      return m

    def __call__(self, *a, **k):
      return self

    def __mro_entries__(self, bases):
      return (object,)

  stubbed = set()

  class Finder:
    def find_spec(self, name, path=None, target=None):
      if name.split(".")[0] in stubbed:
        return importlib.machinery.ModuleSpec(name, self, is_package=True)

    def create_module(self, spec):
      m = Stub(spec.name)
      m.__path__ = []
      return m

    def exec_module(self, m):
      pass

  finder = Finder()
  sys.meta_path.insert(0, finder)
  try:
    for _ in range(20):
      try:
        import compressai.models as cm
        return cm
      except ModuleNotFoundError as e:
        root = (e.name or "").split(".")[0]
        if root in stubbed or root in ("compressai", "torch", ""):
          fail(f"compressai does not import: {e}")
        stubbed.add(root)
        for k in [k for k in sys.modules if k.startswith("compressai")]:
          del sys.modules[k]
    fail("compressai does not import")
  finally:
    sys.meta_path.remove(finder)
