"""Entry point: `python -m ppow_jax.main --config configs/X.py [--workdir DIR] [--config.a.b=v]`.

The config's `mode` picks what runs: decode, sft, ppow, eval or pipeline (the default config's
end-to-end story). Every hyperparameter lives in the config file and is overridable on the
command line; only --config and --workdir are flags.
"""

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # Never reach for a hub at run time.

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from ppow_jax import run_files  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to an ml_collections config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for outputs and checkpoints "
                               "(default: the config's `workdir`).")
flags.mark_flags_as_required(["config"])

MODES = ("decode", "sft", "ppow", "eval", "pipeline", "dryrun", "convert")


def main(argv):
  del argv
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # Progress bars and printed summaries; -v 0 for INFO.
  config = _CONFIG.value
  workdir = _WORKDIR.value or config.get("workdir")
  if not workdir:
    raise app.UsageError("no --workdir given and the config sets no `workdir`")
  if config.mode not in MODES:
    raise app.UsageError(f"config.mode={config.mode!r}; expected one of {MODES}")
  os.makedirs(workdir, exist_ok=True)
  logging.info("mode=%s workdir=%s", config.mode, workdir)
  # The resolved config (file + overrides), so every number in the workdir can be reproduced.
  run_files.write_json(os.path.join(workdir, "config.json"), json.loads(config.to_json_best_effort()))
  import importlib  # Import the mode lazily: each pulls in only what it needs.
  module = importlib.import_module(f"ppow_jax.modes.{config.mode}")
  module.run(config, workdir)


if __name__ == "__main__":
  app.run(main)
