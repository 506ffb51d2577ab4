"""The codecs' compiled programs, kept as executables beside the compilation cache
(jaxvision.core.executables: why, where, and how a file is read safely).

  call(jitted, static, *args)   jitted(*static, *args) through a cached executable
  prepare([(jitted, static, args), ...])   the missing ones compiled in parallel
"""
from __future__ import annotations

from jaxvision.core.executables import Executables

# Modules whose source decides what the codec programs compute.
_CACHE = Executables("jaxvision.compression.coding", "jaxvision.compression.fxdevice",
                     "jaxvision.compression.layers", "jaxvision.compression.models",
                     "jaxvision.core.buckets", "jaxvision.compression.programs",
                     load_threads=2)  # large programs: two files load at once
call = _CACHE.call
prepare = _CACHE.prepare
