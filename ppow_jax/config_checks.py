"""Every config value checked before any work starts, for every mode.

`check(config)` raises a ConfigValueError naming the field's full name, the value and what
would be accepted (`config.decode.window=-1: must be an integer >= 1`), so a bad value never
surfaces minutes later deep inside JAX. It checks what the config alone determines: kinds,
ranges, choices, and that the files and directories it names exist. What needs the target's
weights (vocabulary, layer count, context length against the actual prompts) is checked by the
modes once they have loaded it, before decoding or training.
"""

from __future__ import annotations

import math
import os

from ppow_jax.user_errors import ConfigValueError

MODES = ("decode", "sft", "ppow", "eval", "pipeline", "dryrun", "convert")
DTYPES = ("", "float32", "bfloat16")  # "" = the checkpoint's own
FEATURE_MODES = ("online", "cached")  # the target's features for drafter training
ANSWERS = ("given", "regenerate", "mix")  # data.answers: see data/conversations.py
VOCAB_SELECTIONS = ("frequency", "target_argmax")  # drafter.vocab_selection: eagle3/vocab.py


class Fields:
  """A config section read by field name; each check raises naming `prefix.name=value`."""

  def __init__(self, config, prefix: str = "config"):
    self.config, self.prefix = config, prefix

  def has(self, name: str) -> bool:
    return name in self.config

  def __getitem__(self, name: str):
    return self.config[name]

  def section(self, name: str) -> "Fields | None":
    return Fields(self.config[name], f"{self.prefix}.{name}") if name in self.config else None

  def fail(self, name: str, what: str):
    value = self.config[name] if name in self.config else None
    raise ConfigValueError(f"{self.prefix}.{name}={value!r}: {what}")

  def int(self, name: str, minimum: int | None = None, maximum: int | None = None,
          also: tuple = ()):
    """An integer in [minimum, maximum] (either open when None), or one of `also`."""
    if name not in self.config:
      return
    v = self.config[name]
    ok = isinstance(v, int) and not isinstance(v, bool)
    if ok and v in also:
      return
    if ok and (minimum is None or v >= minimum) and (maximum is None or v <= maximum):
      return
    alt = "".join(f"{a} or " for a in also)
    if maximum is None:
      self.fail(name, f"must be {alt}an integer >= {minimum}")
    self.fail(name, f"must be {alt}an integer in [{minimum}, {maximum}]")

  def number(self, name: str, minimum: float | None = None, maximum: float | None = None, *,
             above: bool = False, below: bool = False):
    """A finite number >= minimum (> with `above`) and <= maximum (< with `below`)."""
    if name not in self.config:
      return
    v = self.config[name]
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    if ok and minimum is not None:
      ok = v > minimum if above else v >= minimum
    if ok and maximum is not None:
      ok = v < maximum if below else v <= maximum
    if ok:
      return
    kind = "a finite number" if isinstance(v, float) and not math.isfinite(v) else "a number"
    if maximum is None:
      self.fail(name, f"must be {kind} {'>' if above else '>='} {minimum}")
    lo, hi = "(" if above else "[", ")" if below else "]"
    self.fail(name, f"must be {kind} in {lo}{minimum}, {maximum}{hi}")

  def bool(self, name: str):
    if name in self.config and not isinstance(self.config[name], bool):
      self.fail(name, "must be True or False")

  def choice(self, name: str, choices):
    if name in self.config and self.config[name] not in choices:
      self.fail(name, f"must be one of {', '.join(map(repr, choices))}")

  def path(self, name: str, kind: str, *, required: str | None = None):
    """An existing `kind` ("file", "dir" or "model": a directory with config.json); an empty
    value is refused with `required` (what to give) when set, else allowed."""
    if name not in self.config:
      return
    v = self.config[name]
    if not isinstance(v, str):
      self.fail(name, "must be a path (a string)")
    if not v:
      if required:
        self.fail(name, f"is empty: give {required}")
      return
    if kind == "file" and not os.path.isfile(v):
      self.fail(name, "is a directory, not a file" if os.path.isdir(v) else "no such file")
    if kind in ("dir", "model") and not os.path.isdir(v):
      self.fail(name, "is a file, not a directory" if os.path.exists(v) else "no such directory")
    if kind == "model" and not os.path.isfile(os.path.join(v, "config.json")):
      self.fail(name, "has no config.json (expected a Hugging Face checkpoint directory)")

  def files(self, name: str, *, required: str | None = None):
    """A comma-separated list of existing files."""
    if name not in self.config:
      return
    v = self.config[name]
    items = [s.strip() for s in str(v or "").split(",") if s.strip()]
    if not items and required:
      self.fail(name, f"is empty: give {required}")
    for p in items:
      if not os.path.isfile(p):
        raise ConfigValueError(f"{self.prefix}.{name}: no such file {p!r}")


def check(config):
  """Checks the config of any mode; raises ConfigValueError on the first bad value."""
  f = Fields(config)
  f.choice("mode", MODES)
  f.int("seed", 0)
  {"decode": _decode, "sft": _sft, "ppow": _ppow, "eval": _eval, "pipeline": _pipeline,
   "dryrun": _dryrun, "convert": _convert}[config.mode](f)


def usable_dir(path: str, field: str, role: str, *, make: bool = False):
  """Checks that `path`, a directory the run writes (`role`, e.g. "the run directory"), is one or
  can be made (with `make`, makes it); a ConfigValueError names `field` when it is a file, lies
  under a file, or cannot be written or made."""
  path = os.path.expanduser(path)
  if os.path.isdir(path):
    if not os.access(path, os.W_OK | os.X_OK):
      raise ConfigValueError(f"{field}={path}: {role} is not writable")
    return
  if os.path.lexists(path):
    raise ConfigValueError(f"{field}={path}: {role} is a file, not a directory")
  parent = os.path.dirname(os.path.abspath(path))
  while not os.path.lexists(parent):
    parent = os.path.dirname(parent)
  if not os.path.isdir(parent):
    raise ConfigValueError(f"{field}={path}: {role} cannot be made: {parent} is a file, not a "
                           "directory")
  if not os.access(parent, os.W_OK | os.X_OK):
    raise ConfigValueError(f"{field}={path}: {role} cannot be made: {parent} is not writable")
  if make:
    try:
      os.makedirs(path, exist_ok=True)
    except OSError as e:
      raise ConfigValueError(f"{field}={path}: {role} cannot be made ({e.strerror or e})") from None


# --- shared sections -------------------------------------------------------------------------

def _target(f: Fields, *, required: bool = True):
  t = f.section("target")
  if t is None:
    if required:
      f.fail("target", "is missing: the config needs target.path")
    return
  t.path("path", "model", required="a Hugging Face checkpoint directory" if required else None)
  t.choice("dtype", DTYPES)


def _sampling(s: Fields):
  s.number("temperature", 0.0)
  s.int("top_k", 0)
  s.number("top_p", 0.0, 1.0, above=True)


def _prompt_data(d: Fields):
  from ppow_jax.data.prompts import TRUNCATIONS
  d.int("max_prompt_len", 1)
  d.choice("truncation", TRUNCATIONS)


def _windows(f: Fields, name: str):
  """A tuple/list of window sizes (or a comma-separated string), each an integer >= 1."""
  if not f.has(name):
    return
  v = f[name]
  items = [s for s in str(v).split(",") if s.strip()] if isinstance(v, str) else list(v or ())
  for x in items:
    try:
      k = int(x) if isinstance(x, str) else x
    except ValueError:
      k = None
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
      f.fail(name, "must be window sizes, each an integer >= 1 (e.g. 6,10)")


# --- modes -----------------------------------------------------------------------------------

def _decode(f: Fields):
  _target(f)
  dr = f.section("drafter")
  if dr is not None:
    dr.path("path", "dir")
  d = f.section("data")
  d.path("prompts", "file", required="a prompt file (.jsonl, .json or .txt, optionally .gz)")
  d.int("limit", 0)
  _prompt_data(d)
  s = f.section("decode")
  s.int("window", 1)
  s.int("max_new_tokens", 1)
  s.int("batch_size", 1)
  _sampling(s)
  from ppow_jax.decoding import tree as draft_tree
  if draft_tree.parse(f"{s.prefix}.tree", s.config.get("tree", "")) is not None and not (
      dr is not None and dr.config.get("path")):
    s.fail("tree", "needs a drafter: config.drafter.path is empty")


def _conversation_data(d: Fields):
  """data.conversations (files or a registry name), data.answers and data.mix_ratio."""
  from ppow_jax.models.registry import KNOWN_DATA
  d.choice("answers", ANSWERS)
  d.number("mix_ratio", 0.0, 1.0)
  names = [x.strip() for x in str(d.config.get("conversations") or "").split(",") if x.strip()]
  for name in names:
    if name not in KNOWN_DATA and not os.path.isfile(name):
      d.fail("conversations", f"no such file {name!r} (give ShareGPT / OpenAI-chat JSON(L) "
             f"files or one of {', '.join(KNOWN_DATA)})")
  if names and (d.config.get("prompts") or d.config.get("synthesize")):
    d.fail("conversations", "cannot be combined with data.prompts or data.synthesize (train on "
           "conversations or on prompts the target answers)")
  if not names and d.config.get("answers", "regenerate") != "regenerate":
    d.fail("answers", "needs data.conversations (prompts have no answers of their own: the "
           "target writes them)")


def _training(f: Fields, *, in_pipeline: bool = False, needs_init: bool = False):
  """What sft and ppow share: target, drafter, data, optimiser, train loop, mesh, eval."""
  if not in_pipeline:
    _target(f)
  dr = f.section("drafter")
  if dr is not None:
    if not in_pipeline:
      dr.path("init_from", "model", required="the token-level drafter to start from (an SFT "
              "run's export/ directory or an imported EAGLE-3 checkpoint)" if needs_init else None)
    dr.int("draft_vocab_size", 0)
    dr.bool("init_head_from_target")
    dr.bool("feature_scaling")
    dr.choice("vocab_selection", VOCAB_SELECTIONS)
    dr.int("vocab_sample", 1)
    if dr.has("aux_layers") and dr["aux_layers"]:
      parts = str(dr["aux_layers"]).replace(" ", "").split(",")
      if len(parts) != 3 or not all(p.isdigit() and int(p) >= 1 for p in parts):
        dr.fail("aux_layers", "must be three comma-separated layer indices >= 1, e.g. '2,4,7'")
  d = f.section("data")
  if d is not None:
    if not in_pipeline:
      d.files("prompts")
      if d.config.get("dir"):
        usable_dir(d["dir"], f"{d.prefix}.dir", "the data directory")
    d.files("exclude")
    d.int("synthesize", 0)
    _conversation_data(d)
    syn = d.section("synthesis")
    if syn is not None:
      syn.int("max_tokens", 1)
      syn.int("min_chars", 0)
      if syn.has("openings") and not (isinstance(syn["openings"], (tuple, list)) and all(
          isinstance(o, str) for o in syn["openings"])):
        syn.fail("openings", "must be a tuple of strings (task openings of synthesized "
                 "prompts; '' = none)")
      _sampling(syn)
    for name in ("num_samples", "max_prompt_len", "max_new_tokens", "gen_batch_size"):
      d.int(name, 1)
    d.int("num_heldout", 0)
    d.int("seed", 0, also=(-1,))
    d.int("seq_len", 2)
    d.choice("features", FEATURE_MODES)
    d.bool("loss_on_prompt")
    d.number("temperature", 0.0)
    d.number("heldout_temperature", 0.0)
    from_bos = not d.config.get("prompts") and not d.config.get("synthesize")
    if (from_bos and d.has("num_samples") and d.has("num_heldout")
        and d["num_heldout"] >= d["num_samples"]):
      d.fail("num_heldout", f"must be below data.num_samples={d['num_samples']} (the rest "
             "is the training data)")
  t = f.section("ttt")
  if t is not None:
    t.int("steps", 1)
    t.number("decay", 0.0, above=True)
    from ppow_jax.eagle3.ttt import LOSSES
    t.choice("loss", LOSSES)
    t.number("lk_kl_scale", 0.0, 1.0)
    t.number("lk_kl_decay", 0.0)
  o = f.section("optim")
  if o is not None:
    o.number("learning_rate", 0.0, above=True)
    o.int("warmup_steps", 0)
    o.number("final_lr_fraction", 0.0, 1.0)
    o.number("b1", 0.0, 1.0, below=True)
    o.number("b2", 0.0, 1.0, below=True)
    o.number("weight_decay", 0.0)
    o.number("grad_clip", 0.0, above=True)
  tr = f.section("train")
  if tr is not None:
    tr.int("num_steps", 1)
    # 0 = the batch size of config.topology's slice (configs/targets/*).
    tr.int("batch_size", 1, also=(0,) if f.config.get("topology") else ())
    tr.number("max_seconds", 0.0)
    tr.number("max_cpu_seconds", 0.0)
    tr.int("log_every", 1)
    tr.int("checkpoint_every", 1)
    tr.int("keep_checkpoints", 1)
    tr.choice("compute_dtype", DTYPES[1:])
  m = f.section("mesh")
  if m is not None:
    for axis in ("data", "fsdp", "tensor"):
      m.int(axis, 1, also=(-1,))
    m.int("num_devices", 0)
  dist = f.section("distributed")
  if dist is not None:
    dist.int("num_processes", 1, also=(-1,))
    n = dist.config.get("num_processes", 1)
    dist.int("process_id", 0, n - 1 if isinstance(n, int) and n > 1 else None)
  if f.config.get("topology"):
    from ppow_jax.parallel.sharding import TOPOLOGIES
    f.choice("topology", ["", *TOPOLOGIES])
  e = f.section("eval")
  if e is not None:
    if not in_pipeline:
      e.path("prompts", "file")
    for name in ("num_prompts", "prompt_len", "max_new_tokens", "batch_size"):
      e.int(name, 1)
    _windows(e, "windows")


def _sft(f: Fields, in_pipeline: bool = False):
  _training(f, in_pipeline=in_pipeline)


def _ppow(f: Fields, in_pipeline: bool = False):
  from ppow_jax.ppow.objective import TOKEN_MASK_MODES
  from ppow_jax.ppow.step import AUX_LOSSES, WINDOW_REGIONS
  from ppow_jax.ppow.windowing import SELECTION_MODES
  _training(f, in_pipeline=in_pipeline, needs_init=f.config.mode == "ppow")
  d = f.section("data")
  if d is not None and d.config.get("loss_on_prompt"):
    d.fail("loss_on_prompt", "PPOW drafts its windows in responses only; the option is for "
           "token-level training (sft)")
  p = f.section("ppow")
  p.int("window", 1)
  p.int("group_size", 2)  # group-relative advantages need at least two windows per prefix
  p.int("prefixes_per_seq", 1)
  p.int("min_prefix", 1)
  for name in ("gamma", "eta", "epsilon", "beta", "aux_coef", "policy_coef"):
    p.number(name, 0.0)
  p.bool("measure_gamma")
  p.bool("use_proximity")
  p.bool("windowing")
  p.choice("windowing_mode", SELECTION_MODES)
  p.choice("windows_in", WINDOW_REGIONS)
  p.int("windowing_start", 0)
  p.number("clip_eps", 0.0, above=True)
  p.choice("loss_tokens", TOKEN_MASK_MODES)
  p.choice("anchor_tokens", TOKEN_MASK_MODES)
  p.choice("aux_loss", AUX_LOSSES)
  p.int("ttt_steps", 1)
  p.number("ttt_decay", 0.0, above=True)
  p.int("ppo_epochs", 1)
  p.number("temperature", 0.0, above=True)


def _eval(f: Fields, in_pipeline: bool = False):
  from ppow_jax.evaluation import parsing
  if not in_pipeline:
    _target(f)
    for name, path in parsing.parse_drafters(f.config.get("drafters")).items():
      if not os.path.isdir(path):
        raise ConfigValueError(f"config.drafters: drafter {name!r}: no such directory {path!r}")
  d = f.section("data")
  d.files("benchmarks", required=None if in_pipeline else "comma-separated prompt files")
  d.int("limit_per_category", 0)
  _prompt_data(d)
  e = f.section("eval")
  parsing.parse_numbers(f"{e.prefix}.temperatures", e.config.get("temperatures"), float, 0.0)
  parsing.parse_numbers(f"{e.prefix}.windows", e.config.get("windows"), int, 1)
  e.int("window", 1, also=(0,))  # 0: every drafter decodes as eval.tree only
  tree, _ = parsing.parse_trees(f"{e.prefix}.tree", e.config.get("tree", ""),
                                f"{e.prefix}.tree_num_nodes", e.config.get("tree_num_nodes", ""))
  if e.config.get("window") == 0 and tree is None:
    e.fail("window", "is 0 (every drafter decodes as a tree) but eval.tree is empty: give "
           "'depth,topk,num_nodes' or a window >= 1")
  e.int("max_new_tokens", 1)
  e.int("batch_size", 1)
  e.bool("progress")
  e.bool("print_tables")
  _sampling(e)


def _pipeline(f: Fields):
  from ppow_jax.toy_target import target_lm
  _target(f, required=False)
  from ppow_jax.models import registry
  source = f.config.target.get("source", "toy")
  f.section("target").choice("source", ["toy", *registry.KNOWN])
  if source != "toy" and not f.config.target.get("path"):
    _model_cache(None)
  if not f.config.target.get("path") and source == "toy":
    tl = f.section("target_lm")
    for name in ("corpus_bytes", "vocab_size", "hidden_size", "intermediate_size", "num_layers",
                 "num_heads", "num_kv_heads", "max_position_embeddings", "seq_len", "batch_size",
                 "steps", "log_every", "eval_rows", "sample_tokens"):
      tl.int(name, 1)
    tl.int("warmup_steps", 0)
    tl.number("holdout_fraction", 0.0, 1.0, above=True, below=True)
    tl.number("short_seq_fraction", 0.0, 1.0)
    tl.number("time_budget_s", 0.0)
    tl.number("learning_rate", 0.0, above=True)
    tl.number("min_lr_ratio", 0.0, 1.0)
    tl.number("weight_decay", 0.0)
    tl.number("grad_clip", 0.0, above=True)
    try:  # What relates several fields (heads divide hidden_size, even seq_len, ...).
      target_lm.TargetLMSettings(**tl.config.to_dict())
    except (TypeError, ValueError) as e:
      raise ConfigValueError(str(e).replace("TargetLMSettings.", f"{tl.prefix}.")) from None
    p = f.section("prompts")
    for name in ("num_train", "num_eval", "prompt_chars"):
      p.int(name, 1)
  for name, check_section in (("sft", _sft), ("ppow", _ppow), ("eval", _eval)):
    check_section(f.section(name), in_pipeline=True)
  seeds = f.config.get("ppow_seeds", ())
  if not isinstance(seeds, (tuple, list)) or not all(isinstance(x, int) for x in seeds):
    raise ConfigValueError(f"config.ppow_seeds={seeds!r}: must be a tuple of integer seeds")
  if "window_choice" in f.config:
    from ppow_jax.evaluation import parsing
    w = f.section("window_choice")
    parsing.parse_numbers(f"{w.prefix}.candidates", w.config.get("candidates"), int, 1)
    parsing.parse_trees(f"{w.prefix}.tree", w.config.get("tree", ""),
                        f"{w.prefix}.tree_num_nodes", w.config.get("tree_num_nodes", ""))
    w.int("num_prompts", 1)
    w.int("max_new_tokens", 1)
  if "control" in f.config:
    c = f.section("control")
    c.bool("enabled")
    c.number("learning_rate", 0.0, above=True)
    c.int("warmup_steps", 0)


def _dryrun(f: Fields):
  if not f.config.target.get("arch"):
    _target(f)
  dr = f.section("dryrun")
  if dr is not None:
    dr.choice("platform", ("cpu", ""))
    dr.bool("tiny")
    dr.bool("print_params")
  _ppow(f, in_pipeline=True)


def _convert(f: Fields):
  from ppow_jax.models import gguf_import, registry
  src = f.config.get("source")
  if not src:
    f.fail("source", f"is empty: give a .gguf file or one of {', '.join(registry.KNOWN)}")
  if src not in registry.KNOWN:
    if not src.endswith(".gguf"):
      f.fail("source", f"must be a .gguf file or one of {', '.join(registry.KNOWN)}")
    f.path("source", "file")
  f.choice("dtype", gguf_import.DTYPES)
  if src in registry.KNOWN:
    _model_cache(f.config.get("cache_dir"))


def _model_cache(cache_dir: str | None):
  """The cache a registry model is fetched into: config.cache_dir, $PPOW_JAX_CACHE or the
  default, named as the user set it."""
  from ppow_jax.models import registry
  if cache_dir:
    usable_dir(cache_dir, "config.cache_dir", "the model cache")
  else:
    field = ("PPOW_JAX_CACHE" if os.environ.get("PPOW_JAX_CACHE")
             else "the default model cache (config.cache_dir and $PPOW_JAX_CACHE unset)")
    usable_dir(registry.default_cache_dir(), field, "the model cache")
