"""The drafter a run starts from and its optimizer: a fresh EAGLE-3 drafter (vocabulary maps from
the data, optionally the target's head) or `drafter.init_from`, the fc feature scaling, AdamW.
"""

from __future__ import annotations

import flax.nnx as nnx
import jax.numpy as jnp
import numpy as np
import optax

from ppow_jax.data import selfdistill
from ppow_jax.eagle3 import model as e3
from ppow_jax.eagle3 import vocab
from ppow_jax.eagle3.checkpoint import load_eagle3
from ppow_jax.eagle3.vocab import build_vocab_maps
from ppow_jax.models import transformer
from ppow_jax.training.startup import Target, parse_aux_layers


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


def make_optimizer(o, num_steps: int, fc_scale=None) -> optax.GradientTransformation:
  """AdamW with linear warmup and cosine decay, after global-norm clipping (and fc's update
  rows scaled by `fc_scale`, see feature_scale)."""
  schedule = optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=o.learning_rate, warmup_steps=min(o.warmup_steps, num_steps),
      decay_steps=max(num_steps, o.warmup_steps + 1),
      end_value=o.learning_rate * o.final_lr_fraction)
  chain = [optax.clip_by_global_norm(o.grad_clip),
           optax.adamw(schedule, b1=o.b1, b2=o.b2, weight_decay=o.weight_decay)]
  if fc_scale is not None:
    chain.append(scale_fc_updates(fc_scale))
  return optax.chain(*chain)
