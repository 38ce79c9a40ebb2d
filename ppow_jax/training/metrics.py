"""Per-step metrics to JSON lines and TensorBoard, and the NaN guard."""

from __future__ import annotations

import json
import math
import os

import numpy as np

from ppow_jax import run_files
from ppow_jax.user_errors import UserError


class NonFiniteLossError(UserError, RuntimeError):
  """The loss became NaN or inf; the run stops and the last good checkpoint is kept."""


class MetricWriter:
  """Appends `{"step": s, ...}` to `workdir/metrics.jsonl` and scalars to TensorBoard."""

  def __init__(self, workdir: str, *, tensorboard: bool = True):
    os.makedirs(workdir, exist_ok=True)
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._tb = None
    if tensorboard:
      from tensorboardX import SummaryWriter  # Deferred: only runs that log pay the import.
      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def write(self, step: int, metrics: dict):
    row = {"step": int(step)}
    for k, v in metrics.items():
      v = np.asarray(v)
      row[k] = v.tolist() if v.ndim else float(v)
    with open(self.path, "a") as f:
      f.write(json.dumps(row) + "\n")
    if self._tb is not None:
      for k, v in row.items():
        if k == "step":
          continue
        if isinstance(v, list):
          for i, x in enumerate(v):
            self._tb.add_scalar(f"{k}/{i}", x, step)
        else:
          self._tb.add_scalar(k, v, step)

  def truncate_after(self, step: int):
    """Drops rows past `step` (a resumed run rewrites them, so the file stays one history)."""
    if not os.path.exists(self.path):
      return
    with open(self.path) as f:
      rows = [line for line in f if line.strip() and json.loads(line)["step"] <= step]
    with run_files.atomic_open(self.path) as f:
      f.writelines(rows)

  def close(self):
    if self._tb is not None:
      self._tb.close()


def check_finite(step: int, loss: float, last_checkpoint: int | None,
                 params_finite: bool = True):
  """Raises before step `step` is checkpointed if its loss or its updated weights are not finite
  (NaN gradients or an infinite learning rate can leave a finite loss but broken weights)."""
  if not math.isfinite(loss) or not params_finite:
    weights = "" if params_finite else " and the updated weights are not finite"
    kept = ("no checkpoint was written before it" if last_checkpoint is None else
            f"the last good checkpoint (step {last_checkpoint}) is kept")
    raise NonFiniteLossError(
        f"loss is {loss} at step {step}{weights}; stopping: {kept}; lower the learning rate or "
        "check the data.")


def read_metrics(workdir: str) -> list[dict]:
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]
