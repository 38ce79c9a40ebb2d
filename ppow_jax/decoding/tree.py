"""Dynamic draft trees: EAGLE-2 construction (arXiv 2406.16858), masks, acceptance and commit.

A tree of `num_nodes` tokens is verified by one target forward. Node 0 is the root (the newest
committed token, `last`); every other node is a draft token whose parent comes before it, at
position prefix length + depth, attending to its ancestors only (`Tree.ancestors`).

Construction, with static shapes: the drafter's top-`topk` tokens at the root are the first
candidates and the first frontier; each later step feeds the `topk` frontier nodes to the drafter
(over its own tree slots, with the same ancestor mask), takes each one's top-`topk` children and
keeps the `topk` children with the highest cumulative draft log-probability as the next frontier.
After `depth` steps the 1 + topk + (depth-1)*topk^2 candidates are reranked by cumulative
log-probability and the best `num_nodes` (the root included) are verified. A child never scores
above its parent and comes after it, so a stable rerank keeps the subtree connected.

Acceptance walks the tree from the root. Greedy: move to the child equal to the target's argmax
while there is one, then emit the argmax (the bonus). Sampling: the children at a node are
deterministic given the prefix (the drafter's top-k), so each is a draft with q = point mass; try
them in order, accepting x with probability p(x) under the current residual and otherwise
removing x from it (the residual max(p - q, 0) of SpecInfer, arXiv 2305.09781, for q = delta_x,
and EAGLE's `evaluate_posterior`); when no child is accepted, sample the residual. Each emitted
token then follows the target's distribution exactly. (Sampling the children instead, with the
drafter's q in the ratio, would not be lossless here: the dynamic top-k selection makes the tree
shape depend on the sampled tokens.) Commit moves the accepted path's KV entries to contiguous
slots.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ppow_jax.decoding import sampling
from ppow_jax.models.kv_cache import KVCache
from ppow_jax.user_errors import ConfigValueError


@dataclasses.dataclass(frozen=True)
class TreeSpec:
  """Static tree budget; hashable (a static jit argument). A chain of K is (K, 1, K + 1)."""
  depth: int  # draft steps = the deepest node's depth = most tokens accepted per step
  topk: int  # children per expanded node, and nodes expanded per step
  num_nodes: int  # tokens the target verifies, the root included

  def __post_init__(self):
    for name in ("depth", "topk", "num_nodes"):
      value = getattr(self, name)
      if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
        raise ValueError(f"{name}={value!r} is not an int")
    if self.depth < 1:
      raise ValueError(f"depth={self.depth} must be >= 1")
    if self.topk < 1:
      raise ValueError(f"topk={self.topk} must be >= 1")
    if self.num_nodes < 2:
      raise ValueError(f"num_nodes={self.num_nodes} must be >= 2 (the root and one draft token)")
    if self.num_nodes > self.num_candidates:
      raise ValueError(
          f"num_nodes={self.num_nodes} exceeds 1 + topk + (depth-1)*topk^2 = "
          f"{self.num_candidates}, the candidates of depth={self.depth}, topk={self.topk}")

  @property
  def num_candidates(self) -> int:
    return 1 + self.topk + (self.depth - 1) * self.topk ** 2

  @property
  def scratch(self) -> int:
    """Cache slots a step writes from the root's slot on: the verified nodes, the frontier nodes
    the drafter feeds after the root, or an ingested path (depth + 1)."""
    return max(self.num_nodes, 1 + (self.depth - 1) * self.topk, self.depth + 1)

  def __str__(self):
    return f"{self.depth},{self.topk},{self.num_nodes}"


def parse(field: str, value) -> TreeSpec | None:
  """"depth,topk,num_nodes" -> TreeSpec; "" (or None) -> None, i.e. chain decoding. The one
  check of a tree setting (decode, eval, the pipeline's drafting choice): errors are
  ConfigValueErrors naming `field` (e.g. "config.decode.tree") and the value."""
  if value is None or (isinstance(value, str) and not value.strip()):
    return None
  parts = [s.strip() for s in value.split(",")] if isinstance(value, str) else list(value)
  if len(parts) != 3:
    raise ConfigValueError(f"{field}: {value!r} is not 'depth,topk,num_nodes' (e.g. '6,4,24'; "
                           "'' = chain)")
  try:
    nums = [int(s) for s in parts]
  except (TypeError, ValueError):
    raise ConfigValueError(f"{field}: {value!r} is not three ints 'depth,topk,num_nodes'") from None
  try:
    return TreeSpec(*nums)
  except ValueError as e:
    raise ConfigValueError(f"{field}: {e}") from None


class Tree(NamedTuple):
  """A batch of draft trees, nodes in topological order (a parent before its children)."""
  tokens: jax.Array  # [B, N] int32; node 0 is the root
  depth: jax.Array  # [B, N] int32; the root's is 0
  parent: jax.Array  # [B, N] int32 node index; -1 for the root
  ancestors: jax.Array  # [B, N, N] bool: [i, j] iff j is i or an ancestor of i
  children: jax.Array  # [B, N, topk] int32 node indices in the drafter's rank order; -1 = none
  draft_slot: jax.Array  # [B, N] int32: where the drafter fed the node among its tree slots; -1


def _scores(logits, sp):
  """Draft log-probabilities of the processed distribution, clamped to <= 0 so that a child never
  scores above its parent (float rounding)."""
  return jnp.minimum(sampling.log_probs(logits, sp), 0.0)


def _rows(x, idx):
  """x[b, idx[b, ...]] for x [B, M, ...] and integer idx [B, ...]."""
  return jax.vmap(lambda r, i: r[i])(x, idx)


Expand = Callable[[Any, jax.Array, jax.Array, jax.Array, jax.Array], tuple[Any, jax.Array]]


def build(spec: TreeSpec, sp: sampling.SamplingParams, root_token: jax.Array,
          root_logits: jax.Array, expand: Expand, carry: Any) -> tuple[Any, Tree]:
  """EAGLE-2 tree expansion (`topK_genrate` in EAGLE's cnets.py) and rerank.

  root_token [B]; root_logits [B, V]: the drafter's logits for the token after the root.
  `expand(carry, depth, tokens, parents, mask) -> (carry, logits)` feeds the frontier (under
  `lax.scan`, so `depth` is a traced int32): `tokens` [B, topk] at depth 1 .. spec.depth-1 go to
  the drafter's tree slots (depth-1)*topk ..; `parents` [B, topk] are their parents' indices in
  the previous frontier (zeros at depth 1: the root); `mask` [B, topk, (spec.depth-1)*topk] is
  the wide `self_mask` (`transformer.cache_mask`) over the last (spec.depth-1)*topk slots up to
  these tokens: their ancestors among the tree slots, and True on the committed slots before
  them. Returns the drafter's logits [B, topk, V] for their children. -> (carry, tree).
  """
  k, d, n = spec.topk, spec.depth, spec.num_nodes
  b = root_token.shape[0]
  c = spec.num_candidates
  w = (d - 1) * k  # the drafter's tree slots
  f_score, f_tok = jax.lax.top_k(_scores(root_logits, sp), k)
  frontier = dict(score=f_score, tok=f_tok.astype(jnp.int32), par=jnp.zeros((b, k), jnp.int32),
                  idx=jnp.broadcast_to(jnp.arange(1, k + 1, dtype=jnp.int32), (b, k)),
                  amask=jnp.zeros((b, k, w), bool))
  own = jnp.arange(k)
  cols = jnp.arange(w)

  def step(st, depth):
    carry, f = st
    # The frontier goes to tree slots (depth-1)*k + i; its ancestor rows are its parent's row
    # plus itself (EAGLE's tree_mask).
    amask = _rows(f["amask"], f["par"]) | (cols[None, None] == ((depth - 1) * k + own)[None, :, None])
    off = (d - 1 - depth) * k  # window columns before the tree slots: committed, visible
    win = (cols < off)[None, None] | jnp.take_along_axis(
        amask, jnp.broadcast_to(jnp.clip(cols - off, 0, w - 1), amask.shape), axis=2)
    carry, logits = expand(carry, depth, f["tok"], f["par"], win)
    c_score, c_tok = jax.lax.top_k(_scores(logits, sp), k)  # [B, k, k]
    cum = (f["score"][:, :, None] + c_score).reshape(b, k * k)
    c_tok = c_tok.reshape(b, k * k).astype(jnp.int32)
    score, sel = jax.lax.top_k(cum, k)
    base = 1 + k + (depth - 1) * k * k  # candidate index of this step's first child
    new = dict(score=score, tok=_rows(c_tok, sel), par=(sel // k).astype(jnp.int32),
               idx=(base + sel).astype(jnp.int32), amask=amask)
    # Per step: the children (tokens, scores, parents) and where the fed frontier sits.
    out = (c_tok, cum, jnp.repeat(f["idx"], k, axis=1), f["idx"], (depth - 1) * k + own)
    return (carry, new), out

  toks = [root_token[:, None].astype(jnp.int32), frontier["tok"]]
  scores = [jnp.zeros((b, 1), jnp.float32), frontier["score"]]
  parents = [jnp.full((b, 1), -1, jnp.int32), jnp.zeros((b, k), jnp.int32)]
  slot = jnp.full((b, c), -1, jnp.int32)
  if d > 1:
    (carry, _), (c_tok, cum, c_par, fed, fed_slot) = jax.lax.scan(
        step, (carry, frontier), jnp.arange(1, d, dtype=jnp.int32))
    flat = lambda x: jnp.moveaxis(x, 0, 1).reshape(b, -1)  # noqa: E731  [D-1, B, M] -> [B, ..]
    toks.append(flat(c_tok))
    scores.append(flat(cum))
    parents.append(flat(c_par))
    slot = jax.vmap(lambda s, i: s.at[i].set(fed_slot.reshape(-1)))(slot, flat(fed))
  cand_tok, cand_score, cand_par = (jnp.concatenate(x, axis=1) for x in (toks, scores, parents))
  cand_depth = jnp.asarray([0] + [1] * k + [i for i in range(2, d + 1) for _ in range(k * k)],
                           jnp.int32)

  # Rerank: the best n-1 candidates by cumulative log-probability; a stable sort puts a parent
  # (never lower, and earlier) before its children, so the kept set is connected.
  order = jnp.argsort(-cand_score[:, 1:], axis=1, stable=True)[:, :n - 1] + 1
  node = jnp.concatenate([jnp.zeros((b, 1), jnp.int32), jnp.sort(order, axis=1)], axis=1)
  inv = jax.vmap(lambda i: jnp.zeros((c,), jnp.int32).at[i].set(jnp.arange(n, dtype=jnp.int32)))(
      node)
  cpar = _rows(cand_par, node)
  parent = jnp.where(cpar < 0, -1, _rows(inv, jnp.maximum(cpar, 0)))
  return carry, _make_tree(_rows(cand_tok, node), cand_depth[node], parent, _rows(slot, node), k, d)


def _make_tree(tokens, depth, parent, draft_slot, topk: int, max_depth: int) -> Tree:
  """Tree from tokens/depth/parent/draft_slot [B, N]; adds the ancestor and children tables."""
  b, n = tokens.shape
  up = jnp.maximum(parent, 0)  # the root is its own parent: a fixed point of the jumps
  cur = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), (b, n))
  anc = jnp.broadcast_to(jnp.eye(n, dtype=bool), (b, n, n))
  for _ in range(max_depth):
    cur = _rows(up, cur)
    anc = anc | jax.nn.one_hot(cur, n, dtype=bool)
  # Rank among siblings = earlier nodes with the same parent.
  same = (parent[:, :, None] == parent[:, None, :]) & jnp.tril(jnp.ones((n, n), bool), -1)[None]
  rank = jnp.sum(same, axis=2)
  slot_of = jnp.where(parent < 0, n, parent)  # the root is no one's child: dropped
  children = jax.vmap(lambda p, r: jnp.full((n, topk), -1, jnp.int32).at[p, r].set(
      jnp.arange(n, dtype=jnp.int32), mode="drop"))(slot_of, jnp.minimum(rank, topk - 1))
  return Tree(tokens=tokens, depth=depth, parent=parent, ancestors=anc, children=children,
              draft_slot=draft_slot)


def reject(resid: jax.Array, x: jax.Array) -> jax.Array:
  """Residual after the target rejects draft token x [B] drawn with q = point mass at x:
  max(p - q, 0) up to normalisation, i.e. p with x removed. resid [B, V] unnormalised."""
  return jnp.where(jnp.arange(resid.shape[-1])[None] == x[:, None], 0.0, resid)


def accept(rng: jax.Array, tr: Tree, target_logits: jax.Array, sp: sampling.SamplingParams,
           depth: int):
  """Walks each row's tree from the root (see the module docstring).

  target_logits [B, N, V]: the target's next-token logits at every node. Returns (path [B,
  depth+1] node indices from the root, repeating the last accepted node past it; n [B] accepted
  draft tokens; next_token [B], the target's token after the path).
  """
  if sp.greedy:
    return _accept_greedy(tr, target_logits, depth)
  b = target_logits.shape[0]
  topk = tr.children.shape[-1]
  r_u, r_tok = jax.random.split(rng)
  u = jax.random.uniform(r_u, (depth, topk, b))
  probs = jnp.exp(sampling.log_probs(target_logits, sp))

  def level(st, u_level):
    cur, alive, resid = st
    kids = _rows(tr.children, cur)  # [B, topk]

    def child(i, inner):
      moved, nxt, resid = inner
      c = kids[:, i]
      has = alive & ~moved & (c >= 0)
      x = _rows(tr.tokens, jnp.maximum(c, 0))
      # Accept with probability p'(x) = resid[x] / sum(resid) (q(x) = 1).
      ok = has & (u_level[i] * jnp.sum(resid, axis=-1) < _rows(resid, x))
      resid = jnp.where((has & ~ok)[:, None], reject(resid, x), resid)
      return moved | ok, jnp.where(ok, c, nxt), resid

    moved, cur, resid = jax.lax.fori_loop(0, topk, child, (jnp.zeros((b,), bool), cur, resid))
    resid = jnp.where(moved[:, None], _rows(probs, cur), resid)  # a fresh node's own p
    return (cur, moved, resid), cur

  cur0 = jnp.zeros((b,), jnp.int32)
  (cur, _, resid), steps = jax.lax.scan(level, (cur0, jnp.ones((b,), bool), probs[:, 0]), u)
  path = jnp.concatenate([cur0[:, None], steps.T], axis=1)
  n = _rows(tr.depth, cur)
  # If the residual vanished (a probability-zero event), fall back to the node's p.
  resid = jnp.where(jnp.sum(resid, -1, keepdims=True) > 0, resid, _rows(probs, cur))
  nxt = sampling.draw(r_tok, resid)
  return path, n, nxt.astype(jnp.int32)


def _accept_greedy(tr: Tree, target_logits: jax.Array, depth: int):
  """Greedy acceptance without a walk: a node is accepted iff every node on its root path equals
  the target's argmax at its parent; siblings are distinct tokens, so the accepted nodes form one
  path, ending at the deepest."""
  best = jnp.argmax(target_logits, axis=-1).astype(jnp.int32)
  ok = (tr.tokens == _rows(best, jnp.maximum(tr.parent, 0))) | (tr.parent < 0)
  accepted = ~jnp.any(tr.ancestors & ~ok[:, None, :], axis=2)
  cur = jnp.argmax(jnp.where(accepted, tr.depth, -1), axis=1).astype(jnp.int32)
  n = _rows(tr.depth, cur)
  # path[d] = the ancestor of `cur` at depth d, for d <= n; `cur` past it.
  anc = _rows(tr.ancestors, cur)  # [B, N]
  at = anc[:, None, :] & (tr.depth[:, None, :] == jnp.arange(depth + 1)[None, :, None])
  path = jnp.where(jnp.arange(depth + 1)[None] <= n[:, None],
                   jnp.argmax(at, axis=2).astype(jnp.int32), cur[:, None])
  return path, n, _rows(best, cur)


def move_slots(cache: KVCache, src: jax.Array, dst: jax.Array) -> KVCache:
  """Copies slots src[b, 0..W-1] of each row to slots dst[b] .. dst[b]+W-1 (all read first), in
  every layer of either cache container. Lengths are unchanged."""
  if src.shape[1] == 0:
    return cache
  src = jnp.clip(src, 0, cache.max_len - 1)

  def one(x):  # [B, H, S, D]
    vals = jnp.take_along_axis(x, src[:, None, :, None], axis=2)
    return jax.vmap(lambda c, v, s: jax.lax.dynamic_update_slice(c, v, (0, s, 0)))(x, vals, dst)

  f = one if cache.per_layer else jax.vmap(one)
  return cache.replace(k=jax.tree.map(f, cache.k), v=jax.tree.map(f, cache.v))
