"""Continuous batching for autoregressive sampling: rows that finish are refilled with new prompts.

Self-distillation and prompt synthesis sample thousands of answers whose lengths differ by 10x;
a static batch runs until its longest row ends, so most rows idle. Here a jitted segment of
`segment` decoding steps runs the batch (exiting early once every row is done); between
segments the host collects finished rows and prefills the next prompts into them (a jitted
prefill of a sub-batch of `refill_rows` rows, scattered into their slots of the KV cache and
token buffer). Shapes are static: batch, refill sub-batch and prompt bucket.

Greedy outputs equal `engine.generate`'s for each prompt (tests check it); sampled outputs
follow the same distribution (each row draws from its own key stream).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ppow_jax.decoding import sampling
from ppow_jax.models import transformer
from ppow_jax.models.config import ModelConfig
from ppow_jax.models.kv_cache import KVCache
from ppow_jax.progress import Progress


@dataclasses.dataclass(frozen=True)
class StreamSettings:
  max_new_tokens: int = 128
  batch_size: int = 32
  refill_rows: int = 8  # prompts prefilled together when rows free up
  segment: int = 16  # decoding steps per jitted call between refills
  sp: sampling.SamplingParams = sampling.SamplingParams(temperature=1.0)
  seed: int = 0
  prompt_bucket: int = 0  # 0 = the longest prompt, rounded up to a multiple of 16


def _row_keys(seed: int, prompt_index: jax.Array) -> jax.Array:
  """One key stream per prompt (independent of which row or batch decodes it)."""
  return jax.vmap(lambda i: jax.random.fold_in(jax.random.key(seed), i))(prompt_index)


@functools.partial(jax.jit, static_argnames=("cfg", "sp", "seed"), donate_argnums=(2,))
def _refill(cfg: ModelConfig, params, state: dict, rows, prompts, lens, prompt_index, *,
            sp: sampling.SamplingParams, seed: int):
  """Prefills prompts [R, P] (right-padded, lens [R]) into batch rows `rows` [R] (a row index
  >= batch size is a padding entry and is dropped)."""
  r, p = prompts.shape
  s = state["buf"].shape[1]
  cache = KVCache.init(cfg, r, s, per_layer=transformer.is_unstacked(params))
  out = transformer.forward(cfg, params, prompts, cache=cache, return_logits=False)
  last = jnp.take_along_axis(out.last_hidden, (lens - 1)[:, None, None], axis=1)[:, 0]
  keys = _row_keys(seed, prompt_index)
  first = jax.vmap(lambda k, l: sampling.sample(jax.random.fold_in(k, 0), l, sp)[0])(
      keys, transformer.lm_head(params, last))
  buf = jnp.zeros((r, s), jnp.int32).at[:, :p].set(prompts)
  buf = buf.at[jnp.arange(r), lens].set(first)
  put = lambda big, small: big.at[rows].set(small, mode="drop")
  new_cache = state["cache"].replace(
      k=jax.tree.map(put, state["cache"].k, out.cache.k),
      v=jax.tree.map(put, state["cache"].v, out.cache.v),
      lengths=put(state["cache"].lengths, lens))
  return dict(cache=new_cache, buf=put(state["buf"], buf), pos=put(state["pos"], lens),
              ngen=put(state["ngen"], jnp.ones_like(lens)),
              done=put(state["done"], jnp.zeros_like(lens, bool)),
              prompt_index=put(state["prompt_index"], prompt_index),
              plen=put(state["plen"], lens))


@functools.partial(jax.jit, static_argnames=("cfg", "sp", "seed", "segment", "max_new_tokens",
                                             "eos_ids"), donate_argnums=(2,))
def _decode_segment(cfg: ModelConfig, params, state: dict, *, sp, seed: int, segment: int,
                    max_new_tokens: int, eos_ids: tuple[int, ...]):
  """Up to `segment` autoregressive steps for every unfinished row."""
  b = state["buf"].shape[0]
  eos = jnp.asarray(eos_ids if eos_ids else (-1,), jnp.int32)
  state = dict(state, done=state["done"] | (state["ngen"] >= max_new_tokens)
               | jnp.isin(jnp.take_along_axis(state["buf"], state["pos"][:, None], 1)[:, 0], eos))

  def cond(carry):
    st, i = carry
    return (i < segment) & ~jnp.all(st["done"])

  def body(carry):
    st, i = carry
    pos = st["pos"]
    last = jnp.take_along_axis(st["buf"], pos[:, None], axis=1)
    out = transformer.forward(cfg, params, last, cache=st["cache"].with_lengths(pos))
    keys = _row_keys(seed, st["prompt_index"])
    nxt = jax.vmap(lambda k, n, l: sampling.sample(jax.random.fold_in(k, n), l, sp)[0])(
        keys, st["ngen"], out.logits[:, 0])
    active = ~st["done"]
    new_pos = jnp.where(active, pos + 1, pos)
    buf = st["buf"].at[jnp.arange(b), new_pos].set(
        jnp.where(active, nxt, jnp.take_along_axis(st["buf"], new_pos[:, None], 1)[:, 0]))
    ngen = st["ngen"] + active.astype(jnp.int32)
    done = st["done"] | (active & (jnp.isin(nxt, eos) | (ngen >= max_new_tokens)))
    st = dict(st, cache=out.cache.with_lengths(new_pos), buf=buf, pos=new_pos, ngen=ngen,
              done=done)
    return st, i + 1

  state, _ = jax.lax.while_loop(cond, body, (state, jnp.zeros((), jnp.int32)))
  return state


def bucket(n: int, multiple: int = 16) -> int:
  return -(-n // multiple) * multiple


def generate(target_cfg: ModelConfig, target_params, prompt_ids: Sequence[Sequence[int]],
             settings: StreamSettings, *, desc: str = "generate", progress: bool = True
             ) -> list[list[int]]:
  """Samples a continuation of every prompt (list of token ids); returns them in prompt order.

  A continuation ends after its first EOS (kept) or at max_new_tokens.
  """
  n = len(prompt_ids)
  if n == 0:
    return []
  params = transformer.unstack(target_params)
  b = min(settings.batch_size, n)
  r = max(1, min(settings.refill_rows, b))
  p = settings.prompt_bucket or bucket(max(len(x) for x in prompt_ids))
  if max(len(x) for x in prompt_ids) > p:
    raise ValueError(f"a prompt is longer than prompt_bucket={p}")
  s = p + settings.max_new_tokens + 2
  state = dict(
      cache=KVCache.init(target_cfg, b, s, per_layer=True),
      buf=jnp.zeros((b, s), jnp.int32), pos=jnp.zeros((b,), jnp.int32),
      ngen=jnp.zeros((b,), jnp.int32), done=jnp.ones((b,), bool),
      prompt_index=jnp.full((b,), -1, jnp.int32), plen=jnp.zeros((b,), jnp.int32))
  kw = dict(sp=settings.sp, seed=settings.seed)
  outputs: list[list[int] | None] = [None] * n
  free = list(range(b))  # rows with no prompt (or a collected one)
  next_prompt = 0
  bar = Progress(n, desc, unit="prompt", enabled=progress)

  def refill(state, free, next_prompt):
    while free and next_prompt < n:
      take = min(len(free), r, n - next_prompt)
      rows = np.full((r,), b, np.int32)  # b = out of range: dropped padding entries
      toks = np.zeros((r, p), np.int32)
      lens = np.ones((r,), np.int32)
      idx = np.zeros((r,), np.int32)
      for j in range(take):
        ids = prompt_ids[next_prompt + j]
        rows[j], toks[j, :len(ids)], lens[j], idx[j] = free[j], ids, len(ids), next_prompt + j
      state = _refill(target_cfg, params, state, jnp.asarray(rows), jnp.asarray(toks),
                      jnp.asarray(lens), jnp.asarray(idx), **kw)
      free, next_prompt = free[take:], next_prompt + take
    return state, free, next_prompt

  state, free, next_prompt = refill(state, free, next_prompt)
  while True:
    state = _decode_segment(target_cfg, params, state, segment=settings.segment,
                            max_new_tokens=settings.max_new_tokens, eos_ids=target_cfg.eos_ids,
                            **kw)
    done, idx, plen, pos = jax.device_get((state["done"], state["prompt_index"], state["plen"],
                                           state["pos"]))
    finished = [row for row in range(b) if done[row] and idx[row] >= 0]
    if finished:
      buf = np.asarray(jax.device_get(state["buf"]))
      for row in finished:
        outputs[idx[row]] = buf[row, plen[row]:pos[row] + 1].tolist()
        bar.update(1)
      state["prompt_index"] = state["prompt_index"].at[jnp.asarray(finished)].set(-1)
      free = sorted(set(free) | set(finished))
    if next_prompt >= n and all(o is not None for o in outputs):
      break
    # Refill once enough rows are free (or nothing else is left to run).
    if next_prompt < n and (len(free) >= r or len(free) == b):
      state, free, next_prompt = refill(state, free, next_prompt)
  bar.close()
  return outputs
