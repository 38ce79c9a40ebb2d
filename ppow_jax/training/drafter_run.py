"""What token-level (SFT) and PPOW training of an EAGLE-3 drafter share: the frozen target, the
self-distillation data, the drafter's initial weights, the optimizer, export and a tau check."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import flax.nnx as nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from jax.experimental import multihost_utils

from ppow_jax.data import conversations, datasets, features, magpie
from ppow_jax.data import prompts as prompt_files
from ppow_jax.data import selfdistill
from ppow_jax.decoding import runner
from ppow_jax.eagle3 import model as e3
from ppow_jax.eagle3.checkpoint import load_eagle3, save_eagle3
from ppow_jax.eagle3.engine_adapter import Eagle3EngineDrafter
from ppow_jax.eagle3 import vocab
from ppow_jax.eagle3.vocab import build_vocab_maps
from ppow_jax import run_files, user_errors
from ppow_jax.models import hf_checkpoint, registry, transformer
from ppow_jax.parallel import sharding
from ppow_jax.training import loop
from ppow_jax.training.checkpoints import Checkpointer
from ppow_jax.training.metrics import MetricWriter
from ppow_jax.user_errors import ConfigValueError, UserError


@dataclasses.dataclass
class Target:
  model: Any
  tokenizer: Any

  @property
  def cfg(self):
    return self.model.cfg

  def params(self):
    return self.model.params()


def start_up(config):
  """Multi-host start-up (config.distributed) and the named TPU topology (if any), before any
  device is touched."""
  if config.get("distributed"):
    sharding.initialize_distributed(config.distributed)  # num_processes -1: pod auto-discovery
  sharding.apply_topology(config)  # configs/targets/*: mesh, rules, batch size of the slice


def prepare_start(config, workdir: str):
  """What must hold before the data is generated (minutes at the defaults): the prompt files
  parse, the target loads, `drafter.aux_layers` exist in it, `drafter.init_from` (if set) is an
  EAGLE-3 drafter that fits it. Then the run's config is recorded. Returns (target, the
  init_from drafter or None)."""
  start_up(config)
  files = [*_split_paths(config.data.get("prompts")), *_split_paths(config.eval.get("prompts"))]
  for path in files:
    prompt_files.load_prompts(path)  # PromptFileError names the file and line
  for path in conversation_files(config):  # fetched now; a file with no usable chat refused
    prompt_files.load_conversations(path)
  target = load_target(config)
  if config.drafter.get("aux_layers") and not config.drafter.init_from:
    parse_aux_layers(config.drafter.aux_layers, target.cfg.num_layers)
  start = None
  if config.drafter.init_from:
    try:
      start = load_eagle3(config.drafter.init_from, target.cfg)
    except UserError as e:
      raise ConfigValueError(f"config.drafter.init_from={config.drafter.init_from}: "
                             f"{user_errors.message(e)}") from None
  run_files.record_config(workdir, config)
  return target, start


def config_mesh(config):
  """The device mesh of config.mesh (over the first mesh.num_devices devices, 0 = all)."""
  n = config.mesh.get("num_devices", 0)
  return sharding.make_mesh(sharding.mesh_shape(config), jax.devices()[:n] if n else None)


def load_target(config) -> Target:
  """The frozen target. When the config's mesh and rules split its weights, each weight goes
  straight to its shards as it is read, so a target larger than one chip or one host loads;
  otherwise it loads onto the default device (replicated later, with the train state)."""
  if not config.target.path:
    raise ConfigValueError("config.target.path is empty: give a Hugging Face checkpoint directory")
  mesh, rules = config_mesh(config), sharding.rules_from_config(config)

  def place(abstract):
    shardings = sharding.tree_shardings(abstract, transformer.LOGICAL_AXES, mesh, rules)
    split = not all(sh.is_fully_replicated for sh in jax.tree.leaves(shardings))
    return shardings if split else None

  model = hf_checkpoint.load_model(config.target.path, dtype=config.target.dtype or None,
                                   shardings=place)
  return Target(model, hf_checkpoint.load_tokenizer(config.target.path))


def data_dir(config, workdir: str) -> str:
  return config.data.dir or os.path.join(workdir, "data")


def data_seed(config) -> int:
  """The seed the prompts and answers are sampled with: data.seed, or the run's seed if < 0."""
  seed = config.data.get("seed", -1)
  return config.seed if seed is None or seed < 0 else int(seed)


def _split_paths(value) -> list[str]:
  return [x.strip() for x in str(value or "").split(",") if x.strip()]


def training_prompts(config, target: Target, out: str) -> list[prompt_files.Prompt]:
  """The prompts the target answers: `data.prompts` files plus, with `data.synthesize` > 0,
  prompts the target writes itself (Magpie, cached in out/synthesized_prompts.jsonl); read
  through the `datasets.Prompts` tfds dataset, which drops duplicates and any prompt sharing an
  8-word n-gram with an evaluation file of `data.exclude`."""
  d = config.data
  files, exclude = _split_paths(d.prompts), _split_paths(d.get("exclude", ""))
  if d.get("synthesize", 0):
    synth = os.path.join(out, "synthesized_prompts.jsonl")
    if not os.path.exists(synth):
      s = d.synthesis
      settings = magpie.MagpieSettings(
          num_prompts=d.synthesize, max_tokens=s.max_tokens, temperature=s.temperature,
          top_p=s.top_p, min_chars=s.min_chars, batch_size=d.gen_batch_size,
          seed=data_seed(config), openings=tuple(s.get("openings", ())))
      guard = magpie.Decontaminator.from_files(exclude) if exclude else None
      texts, stats = magpie.synthesize(target.cfg, target.params(), target.tokenizer, settings,
                                       decontaminator=guard)
      print(f"prompt synthesis: kept {stats.kept} of {stats.sampled} samples (runaway "
            f"{stats.runaway}, short {stats.too_short}, duplicate {stats.duplicate}, "
            f"evaluation overlap {stats.contaminated})")
      run_files.write_jsonl(synth, [{"id": f"synth/{i}", "category": "synthesized", "prompt": t}
                                    for i, t in enumerate(texts)])
    files.append(synth)
  builder = datasets.Prompts(files=files, exclude=exclude, data_dir=out)
  if builder.is_prepared():
    have = builder.info.metadata
    want = {"files": [os.path.abspath(f) for f in files],
            "exclude": [os.path.abspath(f) for f in exclude]}
    stale = [k for k in want if list(have.get(k, [])) != want[k]]
    if stale:
      logging.warning("%s: reusing cached prompts made from %s; this config asks for %s (use "
                      "another data.dir to rebuild)", builder.data_dir,
                      {k: have.get(k) for k in stale}, {k: want[k] for k in stale})
  else:
    builder.download_and_prepare()
  src = builder.as_data_source()["train"]
  return [prompt_files.Prompt(str(r["id"]), str(r["category"]), (str(r["text"]),))
          for r in (src[i] for i in range(len(src)))]


def conversation_files(config) -> list[str]:
  """The files of `data.conversations`; registry names (e.g. "sharegpt") are fetched first."""
  return [registry.fetch_data(registry.KNOWN_DATA[f]) if f in registry.KNOWN_DATA else f
          for f in _split_paths(config.data.get("conversations", ""))]


def training_conversations(config) -> list[prompt_files.Conversation]:
  """The first `data.num_samples` conversations of `data.conversations`, without duplicates
  (normalised first user turn) and without any whose user turns share an 8-word n-gram with an
  evaluation file of `data.exclude`."""
  d = config.data
  exclude = _split_paths(d.get("exclude", ""))
  guard = magpie.Decontaminator.from_files(exclude) if exclude else None
  out, seen, dup, overlap = [], set(), 0, 0
  for path in conversation_files(config):
    convs, stats = prompt_files.load_conversations(path)
    for c in convs:
      if d.num_samples and len(out) >= d.num_samples:
        break
      key = magpie.normalize(c.user_turns[0])
      if key in seen:
        dup += 1
      elif guard is not None and any(guard.contaminated(u) for u in c.user_turns):
        overlap += 1
      else:
        seen.add(key)
        out.append(c)
    print(f"conversations from {path}: {stats.kept} of {stats.records} records have a user and "
          f"an assistant turn; using {len(out)} (duplicate {dup}, evaluation overlap {overlap})",
          flush=True)
  return out


def _prepare_conversations(config, target: Target, out: str):
  """Train / held-out records of `data.conversations` (conversations.prepare)."""
  d = config.data
  convs = training_conversations(config)
  if len(convs) <= d.num_heldout:
    raise ConfigValueError(f"config.data.conversations: {len(convs)} usable conversations, not "
                           f"more than config.data.num_heldout={d.num_heldout}")
  n = len(convs) - d.num_heldout
  seed = data_seed(config)
  # Held-out conversations give evaluation prompts (their first user turn) only: their own
  # answers are kept, nothing is generated for them.
  specs = {"train": conversations.SplitSpec(convs[:n], d.get("answers", "regenerate"),
                                            d.get("mix_ratio", 0.5), seed),
           "heldout": conversations.SplitSpec(convs[n:], "given", 0.0, seed + 7919)}
  records = conversations.prepare(target.cfg, target.params(), target.tokenizer, out, specs,
                                  seq_len=d.seq_len, max_new_tokens=d.max_new_tokens,
                                  temperature=d.temperature, batch_size=d.gen_batch_size)
  return records["train"], records["heldout"]


def prepare_data(config, target: Target, workdir: str):
  """Generates (once, cached) and reads the train / held-out self-distillation records.

  With prompt files (`data.prompts`) or prompt synthesis (`data.synthesize`) the target answers
  those prompts (the last `data.num_heldout` are held out); without, a base LM samples
  `data.num_samples` sequences from BOS. With `data.conversations` the records are whole
  conversations (data/conversations.py) with their given or regenerated answers.
  """
  d = config.data
  out = data_dir(config, workdir)
  os.makedirs(out, exist_ok=True)
  if d.get("conversations"):
    return _prepare_conversations(config, target, out)
  if d.prompts or d.get("synthesize", 0):
    prompts = training_prompts(config, target, out)[:d.num_samples or None]
    ids = prompt_files.encode_prompts(target.tokenizer, prompts, d.max_prompt_len)
  else:
    bos = target.cfg.bos_token_id
    if bos is None:
      raise ConfigValueError("config.data.prompts is empty and the target has no bos_token_id to "
                             "sample from: give a prompt file")
    ids = [[bos]] * d.num_samples
  if len(ids) <= d.num_heldout:
    raise ConfigValueError(f"config.data.prompts: {len(ids)} prompts, not more than "
                           f"config.data.num_heldout={d.num_heldout} (the rest is the training "
                           "data)")
  # Held-out sequences use their own temperature (default 1): sampled at a low data temperature
  # they would mostly repeat training openings and flatter the drafter.
  specs = {
      "train": selfdistill.SplitSpec(ids[:len(ids) - d.num_heldout], d.max_new_tokens,
                                     d.temperature, data_seed(config)),
      "heldout": selfdistill.SplitSpec(ids[len(ids) - d.num_heldout:], d.max_new_tokens,
                                       d.get("heldout_temperature", d.temperature),
                                       data_seed(config) + 7919)}
  records = selfdistill.prepare(target.cfg, target.params(), out, specs,
                                batch_size=d.gen_batch_size)
  return records["train"], records["heldout"]


def eval_prompts(config, target: Target, heldout) -> list[list[int]]:
  """Evaluation prompts: a prompt file if `eval.prompts` is set, else held-out prefixes."""
  e = config.eval
  if e.prompts:
    prompts = prompt_files.load_prompts(e.prompts, limit=e.num_prompts or None)
    return prompt_files.encode_prompts(target.tokenizer, prompts, config.data.max_prompt_len)
  # Prefixes of held-out sequences: never trained on, drawn from the target's own distribution.
  return [r[1:1 + max(int(r[0]), e.prompt_len)].tolist() for r in heldout[:e.num_prompts]]


def with_cached_features(config, target: Target, workdir: str, train_records, data, dcfg):
  """get_batch for data.features=cached: builds the target's feature cache of the training
  records once (`data.features`), then adds each batch's rows of it as `features`."""
  path = features.cache_path(data_dir(config, workdir), "train", dcfg.aux_layers,
                             config.data.seq_len)
  features.build(target.cfg, target.params(), train_records, path, aux_layers=dcfg.aux_layers,
                 seq_len=config.data.seq_len, batch_size=config.data.get("feature_batch_size", 8))
  cache = features.load(path)
  if cache.shape[0] != len(train_records):
    raise ValueError(f"{path}: holds {cache.shape[0]} sequences, the training data "
                     f"{len(train_records)}; delete it to rebuild")

  def get_batch(step):
    batch = data.batch(step)
    rows = data.rows(step)
    order = np.argsort(rows)  # memory-mapped reads in file order
    got = np.empty((len(rows), *cache.shape[1:]), cache.dtype)
    got[order] = cache[np.asarray(rows)[order]]
    batch["features"] = got
    return batch

  return get_batch


def parse_aux_layers(spec, num_layers: int) -> tuple[int, int, int]:
  """drafter.aux_layers "1,3,5" -> (1, 3, 5): three residual streams, each in [1, num_layers]."""
  try:
    layers = tuple(int(x) for x in str(spec).replace(" ", "").split(",") if x)
  except ValueError:
    raise ConfigValueError(f"config.drafter.aux_layers={spec!r}: expected three comma-separated "
                           "integers") from None
  if len(layers) != 3 or not all(1 <= i <= num_layers for i in layers):
    raise ConfigValueError(f"config.drafter.aux_layers={spec!r}: expected three layer indices in "
                           f"[1, {num_layers}] (the residual stream after that many target "
                           "layers)")
  return layers


def init_drafter(config, target: Target, train_records, start=None) -> e3.Eagle3Drafter:
  """A fresh drafter (vocabulary maps from the data's token counts), or `drafter.init_from`
  (`start`, when `prepare_start` loaded it already)."""
  if start is not None:
    return start
  if config.drafter.init_from:
    return load_eagle3(config.drafter.init_from, target.cfg)
  v = target.cfg.vocab_size
  vd = config.drafter.draft_vocab_size or v
  overrides = {}
  if config.drafter.get("aux_layers"):
    overrides["aux_layers"] = parse_aux_layers(config.drafter.aux_layers, target.cfg.num_layers)
  cfg = e3.Eagle3Config.from_target(target.cfg, draft_vocab_size=vd, **overrides)
  drafter = e3.Eagle3Drafter(cfg, rngs=nnx.Rngs(config.seed))
  if config.drafter.get("vocab_selection", "frequency") == "target_argmax" and vd < v:
    sample = train_records[:config.drafter.get("vocab_sample", 256)]
    counts = vocab.argmax_counts(target.cfg, target.params(), sample,
                                 seq_len=config.data.seq_len)
    print(f"draft vocabulary: the {vd} tokens the target predicts most often at "
          f"{int(counts.sum())} response positions of {len(sample)} training sequences "
          f"({vocab.coverage(counts, counts, [vd])[vd]:.1%} of them), then the most frequent",
          flush=True)
    counts = vocab.by_argmax_then_frequency(counts, selfdistill.token_counts(train_records, v))
  else:
    counts = selfdistill.token_counts(train_records, v)
  d2t, t2d = build_vocab_maps(counts, vd)
  drafter.set_vocab_maps(d2t, t2d)
  if config.drafter.get("init_head_from_target") and cfg.hidden_size == target.cfg.hidden_size:
    # Start the output side where EAGLE-1 left it for good (it reuses the target's head): the
    # target's final norm and LM head columns of the draft vocabulary, so the drafter only has
    # to learn to produce a state like the target's final one for the token after next.
    tp = target.params()
    head = np.asarray(tp["lm_head"] if "lm_head" in tp else np.asarray(tp["embed"]).T)
    ids = np.arange(vd) + np.asarray(d2t)
    drafter.lm_head[...] = jnp.asarray(head[:, ids], cfg.jnp_dtype)
    # Copies, never views: the train step donates the drafter's buffers while the target's
    # stay live, and a shared buffer would be donated and read in the same call.
    drafter.norm[...] = jnp.array(np.asarray(tp["final_norm"]), cfg.jnp_dtype, copy=True)
  return drafter


def feature_scale(target: Target, aux_layers, records, seq_len: int, rows: int = 8) -> np.ndarray:
  """Per input dimension of fc, min(1, median RMS of its aux layer / its RMS) [3H].

  Pretrained LMs carry "massive activations" (Sun et al. 2024, arXiv 2402.17762): a few
  residual-stream dimensions hundreds of times larger than the rest (SmolLM2-135M: RMS ~20 at
  layer 27 but one dimension ~400, and ~25000 at the first token). EAGLE-3's fc reads the raw
  states, so those dimensions swamp the fused feature and take Adam's full step size. Scaling
  their fc columns and updates by this factor is a preconditioning of fc alone; the drafter's
  function and exported layout are unchanged. Measured on `rows` training sequences, without
  their first token.
  """
  data = selfdistill.SequenceData(records, seq_len=seq_len, batch_size=min(rows, len(records)),
                                  seed=0)
  batch = data.batch(0)
  out = transformer.forward(target.cfg, target.params(), jnp.asarray(batch["tokens"]),
                            key_valid=jnp.asarray(batch["valid"]), hidden_layers=aux_layers,
                            return_logits=False)
  valid = np.asarray(batch["valid"]).copy()
  valid[:, 0] = False
  scales = []
  for h in out.hidden:
    rms = np.sqrt((np.asarray(h, np.float32)[valid] ** 2).mean(0))
    scales.append(np.minimum(1.0, np.median(rms) / np.maximum(rms, 1e-12)))
  return np.concatenate(scales).astype(np.float32)


def scale_fc_updates(scale) -> optax.GradientTransformation:
  """Multiplies the fc update's rows by `scale` [3H] (see feature_scale)."""
  s = np.asarray(scale, np.float32)[:, None]

  def update_fn(updates, state, params=None):
    del params
    return {**updates, "fc": updates["fc"] * s}, state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


def with_params(drafter: e3.Eagle3Drafter, params) -> e3.Eagle3Drafter:
  """The drafter module carrying trained `params`."""
  state = nnx.state(drafter, nnx.Param)
  # Arrays sharded across hosts are gathered first (a collective: every process calls this).
  params = jax.tree.map(lambda x: x if getattr(x, "is_fully_addressable", True)
                        else multihost_utils.process_allgather(x, tiled=True), params)
  nnx.replace_by_pure_dict(state, jax.device_get(params))
  nnx.update(drafter, state)
  return drafter


def make_optimizer(o, num_steps: int, fc_scale=None) -> optax.GradientTransformation:
  """AdamW with linear warmup and cosine decay, after global-norm clipping (and fc's update
  rows scaled by `fc_scale`, see feature_scale)."""
  schedule = optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=o.learning_rate, warmup_steps=min(o.warmup_steps, num_steps),
      decay_steps=max(num_steps, o.warmup_steps + 1), end_value=o.learning_rate * o.final_lr_fraction)
  chain = [optax.clip_by_global_norm(o.grad_clip),
           optax.adamw(schedule, b1=o.b1, b2=o.b2, weight_decay=o.weight_decay)]
  if fc_scale is not None:
    chain.append(scale_fc_updates(fc_scale))
  return optax.chain(*chain)


def export(drafter: e3.Eagle3Drafter, path: str):
  """Writes the EAGLE-3 layout vLLM / SGLang load (and `--config.drafter.path` reads)."""
  save_eagle3(drafter, path)


def measure_tau(target: Target, drafter: e3.Eagle3Drafter, prompt_ids, *, windows, max_new_tokens,
                batch_size, seed=0) -> dict:
  """Greedy tau (tokens per verification step, bonus included) for each window size."""
  dr = Eagle3EngineDrafter(drafter.cfg)
  dp = Eagle3EngineDrafter.bind(drafter, target.params())
  out = {}
  for k in windows:
    s = runner.DecodeSettings(window=k, max_new_tokens=max_new_tokens, batch_size=batch_size,
                              seed=seed)
    res = runner.decode(target.cfg, target.params(), prompt_ids, s, drafter=dr, drafter_params=dp,
                        desc=f"tau K={k}")
    out[f"tau_k{k}"] = runner.summarize(res, ["all"] * len(res))["mean_accept_length"]
  return out


def train(config, workdir: str, target: Target, drafter: e3.Eagle3Drafter, make_step, get_batch,
          *, desc: str, postfix: tuple, fc_scale=None):
  """Places the drafter's train state and the frozen target on the config's mesh, then runs
  `make_step(optimizer)` (a pure step) through the resume-first loop. Returns the final state."""
  t = config.train
  rules = sharding.rules_from_config(config)
  mesh = config_mesh(config)
  optimizer = make_optimizer(config.optim, t.num_steps, fc_scale)
  drafter_sh = sharding.tree_shardings(drafter.params(), e3.LOGICAL_AXES, mesh, rules)
  state, state_sh = loop.init_state(optimizer, drafter.params(), drafter_sh, mesh)
  target_params = target.params()
  target_sh = sharding.tree_shardings(target_params, transformer.LOGICAL_AXES, mesh, rules)
  repl = sharding.replicated(mesh)
  return loop.run_loop(
      make_step(optimizer), state, state_sh,
      const_args=(jax.device_put(target_params, target_sh), jax.device_put(drafter.d2t[...], repl)),
      const_shardings=(target_sh, repl), get_batch=get_batch,
      batch_sharding=sharding.batch_sharding(mesh, 2, rules), num_steps=t.num_steps,
      max_seconds=t.max_seconds, max_cpu_seconds=t.get("max_cpu_seconds", 0.0), seed=config.seed,
      ckpt=Checkpointer(os.path.join(workdir, "checkpoints"), every_steps=t.checkpoint_every,
                        keep=t.keep_checkpoints),
      writer=MetricWriter(workdir), log_every=t.log_every, desc=desc, postfix=postfix)


def finish(config, workdir: str, target: Target, drafter: e3.Eagle3Drafter, state, heldout,
           desc: str) -> dict:
  """Exports the trained drafter and writes eval.json (greedy tau on held-out prompts)."""
  drafter = with_params(drafter, state["params"])
  if jax.process_index() == 0:
    export(drafter, os.path.join(workdir, "export"))
  result = {"num_steps": int(state["step"])}
  if config.eval.windows:
    result.update(measure_tau(
        target, drafter, eval_prompts(config, target, heldout), windows=tuple(config.eval.windows),
        max_new_tokens=config.eval.max_new_tokens, batch_size=config.eval.batch_size))
  run_files.write_json(os.path.join(workdir, "eval.json"), result)
  print(stage_summary(desc, result, os.path.join(workdir, "export")))
  return result


def stage_summary(desc: str, result: dict, export_dir: str) -> str:
  """'sft: 300 steps; greedy tau K=6 2.12, K=10 2.34 -> DIR': eval.json as one short line."""
  taus = ", ".join(f"K={k[len('tau_k'):]} {v:.2f}" for k, v in result.items()
                   if k.startswith("tau_k"))
  return (f"{desc}: {result['num_steps']} steps" + (f"; greedy tau {taus}" if taus else "")
          + f" -> {export_dir}")
