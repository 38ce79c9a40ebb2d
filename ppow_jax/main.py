"""Entry point: `python -m ppow_jax.main --config configs/X.py [--workdir DIR] [--config.a.b=v]`.

The config's `mode` picks what runs: decode, sft, ppow, eval, pipeline (the default config's
end-to-end story), dryrun or convert. Every hyperparameter lives in the config file and is
overridable on the command line; only --config, --workdir and --debug are flags. Every config
value is checked before any work starts (`config_checks`); a mistake the user can fix ends in one
line on stderr and exit status 2 (`cli`); --debug (or PPOW_DEBUG=1) shows tracebacks for all.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # Never reach for a hub at run time.
# transformers' "PyTorch was not found" advice reads like a failure; ppow_jax never needs torch.
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from ppow_jax import cli, config_checks, run_files  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to an ml_collections config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for outputs and checkpoints "
                               "(default: the config's `workdir`).")
flags.DEFINE_bool("debug", False, f"Show the traceback of every error (also {cli.DEBUG_ENV}=1).")
flags.mark_flags_as_required(["config"])


@cli.run_main
def main(argv):
  del argv
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # Progress bars and printed summaries; -v 0 for INFO.
  config = _CONFIG.value
  workdir = _WORKDIR.value or config.get("workdir")
  if not workdir:
    raise config_checks.ConfigValueError(
        "no --workdir given and the config sets no `workdir`: pass --workdir DIR")
  config_checks.check(config)
  config_checks.usable_dir(workdir, "--workdir" if _WORKDIR.value else "config.workdir",
                           "the run directory", make=True)
  logging.info("mode=%s workdir=%s", config.mode, workdir)
  # The resolved config (file + overrides), so every number in the workdir can be reproduced. An
  # earlier run's config.json is replaced only once this run has passed its checks: the modes
  # record it then (before their expensive work), and every finished run records it here.
  if not os.path.exists(os.path.join(workdir, "config.json")):
    run_files.record_config(workdir, config)
  import importlib  # Import the mode lazily: each pulls in only what it needs.
  module = importlib.import_module(f"ppow_jax.modes.{config.mode}")
  module.run(config, workdir)
  run_files.record_config(workdir, config)


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
