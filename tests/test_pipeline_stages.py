"""The pipeline's stage plumbing that needs no training: configs/default.py and its variants,
the CPU-time budget of the token-level control, held-out prompts for a user's target."""

import importlib.util
import json
import os

import pytest

from ppow_jax import config_checks, run_files
from ppow_jax.modes import pipeline
from ppow_jax.user_errors import ConfigValueError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(name, *args):
  spec = importlib.util.spec_from_file_location(f"cfg_{name.replace('/', '_')}",
                                                os.path.join(ROOT, "configs", f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(*args)


def test_default_is_the_smollm2_quick_recipe_and_toy_a_variant():
  c = _config("default")
  assert c.target.source == "smollm2-135m-instruct" and c.workdir == "runs/default"
  assert c.sft.data.synthesize > 0 and not c.control.enabled and tuple(c.ppow_seeds) == ()
  config_checks.check(c)
  toy = _config("default", "toy")
  assert toy.target.source == "toy" and toy.workdir == "runs/toy" and "target_lm" in toy
  config_checks.check(toy)
  full = _config("targets/smollm2_135m")
  assert full.control.enabled and tuple(full.ppow_seeds) == (0, 1)
  config_checks.check(full)
  with pytest.raises(ValueError, match="unknown variant"):
    _config("default", "tiny")


def test_bad_control_settings_name_the_field():
  c = _config("targets/smollm2_135m")
  c.control.learning_rate = 0.0
  with pytest.raises(ConfigValueError, match=r"config\.control\.learning_rate=0\.0"):
    config_checks.check(c)
  c = _config("targets/smollm2_135m")
  c.ppow_seeds = (0, "one")
  with pytest.raises(ConfigValueError, match=r"config\.ppow_seeds"):
    config_checks.check(c)


def test_loss_on_prompt_is_token_level_only():
  """The recipe trains token-level on prompt tokens too, PPOW never: a PPOW stage asked to is
  refused, naming the field, rather than silently ignoring it."""
  c = _config("targets/smollm2_135m", "quick")
  assert c.sft.data.loss_on_prompt and not c.ppow.data.loss_on_prompt
  c.ppow.data.loss_on_prompt = True
  with pytest.raises(ConfigValueError, match=r"config\.ppow\.data\.loss_on_prompt=True"):
    config_checks.check(c)


def test_control_budget_is_ppow_training_cpu_time(tmp_path):
  # Logged every 2nd step: the mean logged step cost times the steps trained.
  run_files.write_jsonl(str(tmp_path / "metrics.jsonl"), [
      {"step": 2, "loss": 1.0, "step_cpu_time": 3.0},
      {"step": 4, "step_cpu_time": 5.0},
      {"step": 4, "eval_tau": 2.0}])
  assert pipeline._training_cpu_seconds(str(tmp_path)) == pytest.approx(16.0)
  (tmp_path / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 2.0}) + "\n")
  with pytest.raises(RuntimeError, match="no step_cpu_time"):
    pipeline._training_cpu_seconds(str(tmp_path))
