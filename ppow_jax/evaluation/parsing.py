"""Evaluation settings read from the config: the comma-separated lists of temperatures, windows,
drafters and trees, and the benchmark prompts; every error names the config field.

Shared by the eval mode, the pipeline's window choice and `config_checks` (which checks the same
fields before any work starts), so a value is read one way everywhere.
"""

from __future__ import annotations

import math
import os

from ppow_jax.data import prompts as prompt_files
from ppow_jax.decoding import tree as draft_tree
from ppow_jax.evaluation.report import AUTOREGRESSIVE
from ppow_jax.user_errors import UserError


class EvalSetupError(UserError, ValueError):
  """A bad eval config, benchmark or drafter, found before decoding; the message names it."""


def split(value) -> list[str]:
  """Items of a comma-separated string (or a list/tuple/number), stripped, blanks dropped."""
  if value is None:
    return []
  items = [str(v) for v in value] if isinstance(value, (list, tuple)) else str(value).split(",")
  return [s.strip() for s in items if s.strip()]


def parse_numbers(field: str, value, kind, minimum) -> list:
  """`kind` values (int or float) >= minimum from a comma-separated config field, in order."""
  out = []
  for s in split(value):
    try:
      x = kind(float(s)) if kind is float else int(s)
    except ValueError:
      what = "an int" if kind is int else "a number"
      raise EvalSetupError(f"{field}: {s!r} is not {what}") from None
    if not math.isfinite(x):
      raise EvalSetupError(f"{field}: {s!r} is not a finite number")
    if x < minimum:
      raise EvalSetupError(f"{field}: {s!r} is below the minimum {minimum}")
    if x not in out:
      out.append(x)
  return out


def parse_drafters(spec) -> dict[str, str]:
  """'name=path,name=path' -> {name: path}; a bare path is named after its last component."""
  out: dict[str, str] = {}
  for item in split(spec):
    name, sep, path = item.partition("=")
    if not sep:
      name, path = os.path.basename(os.path.normpath(item)), item
    name, path = name.strip(), path.strip()
    if not name or not path:
      raise EvalSetupError(f"config.drafters: entry {item!r} is not 'name=path'")
    if name == AUTOREGRESSIVE:
      raise EvalSetupError(f"config.drafters: the name {AUTOREGRESSIVE!r} is reserved for the "
                           "baseline, which is always included")
    if "|" in name:
      raise EvalSetupError(f"config.drafters: name {name!r} may not contain '|'")
    if name in out:
      raise EvalSetupError(f"config.drafters: name {name!r} given twice")
    out[name] = path
  return out


def parse_trees(tree_field: str, tree_value, sweep_field: str, sweep_value):
  """(TreeSpec or None, [num_nodes of the sweep]) from "depth,topk,num_nodes" and "n,n,..";
  every swept tree is validated, errors name the field."""
  try:
    tree = draft_tree.parse(tree_field, tree_value)
  except ValueError as e:
    raise EvalSetupError(str(e)) from None
  sweep = parse_numbers(sweep_field, sweep_value, int, 2)
  if sweep and tree is None:
    raise EvalSetupError(f"{sweep_field}={sweep_value!r} needs {tree_field} (its depth and topk)")
  for n in sweep:
    try:
      draft_tree.TreeSpec(tree.depth, tree.topk, n)
    except ValueError as e:
      raise EvalSetupError(f"{sweep_field}: {e}") from None
  return tree, sorted(sweep)


def tree_row(name: str, tree) -> str:
  """report.json's row name of a drafter decoded with a tree."""
  return f"{name} tree {tree}"


def load_benchmarks(paths: list[str], categories: list[str],
                    limit_per_category: int | None) -> list[prompt_files.Prompt]:
  """The prompts of every file (each must load), filtered to `categories` (all if empty), then the
  first `limit_per_category` of each category (over all files), grouped by category."""
  if not paths:
    raise EvalSetupError("config.data.benchmarks is empty: give comma-separated prompt files")
  prompts = []
  for path in paths:
    prompts.extend(prompt_files.load_prompts(path))  # PromptFileError names the file and line
  present = list(dict.fromkeys(p.category for p in prompts))
  if categories:
    missing = [c for c in categories if c not in present]
    if missing:
      raise EvalSetupError(f"config.data.categories: {missing} not in {', '.join(paths)}; "
                           f"found {present}")
    present = categories
  by_cat = {c: [p for p in prompts if p.category == c] for c in present}
  return [p for c in present for p in by_cat[c][:limit_per_category]]
