"""The run configs (`python -m ppow_jax.main --config configs/X.py`), importable as a package so
configs build on each other: `configs.load("ppow")` is configs/ppow.py's config, and
`configs.targets._base` holds what the target configs share. `ppow_jax.cli` puts the folder
above configs/ on sys.path before a config file is read, wherever the command runs from.
"""

import importlib


def load(name: str, *args):
  """A fresh ConfigDict from configs/<name>.py's get_config(*args); name e.g. "sft" or
  "targets/smollm2_135m"."""
  return importlib.import_module(f"{__name__}.{name.replace('/', '.')}").get_config(*args)
