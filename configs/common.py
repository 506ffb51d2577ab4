"""What every experiment config shares: the argument parser of `--config FILE.py:ARG`.

    opts = parse_arg(arg, first="operator", operator="dehaze", preset="cpu")

ARG is comma-separated `key=value`; keys must be among the defaults. A bare first word
sets the key named by `first` (the operator, model, stage, ...); a bare word listed in
`bare` sets the key it maps to (e.g. `bare={"cpu": "preset", "paper": "preset"}`).
Values stay strings: each config converts and checks its own.
"""
from __future__ import annotations


def parse_arg(arg: str | None, *, first: str | None = None, bare: dict | None = None,
              **defaults) -> dict:
  opts = dict(defaults)
  for i, part in enumerate(p for p in (arg or "").split(",") if p.strip()):
    part = part.strip()
    if "=" in part:
      k, v = (s.strip() for s in part.split("=", 1))
      if k not in defaults:
        raise ValueError(f"unknown config argument {k!r}; choose from: {', '.join(defaults)}")
      opts[k] = v
    elif bare and part in bare:
      opts[bare[part]] = part
    elif i == 0 and first:
      opts[first] = part
    else:
      raise ValueError(f"config argument {part!r}: expected key=value")
  return opts
