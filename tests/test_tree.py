"""Dynamic draft trees: construction against a brute-force EAGLE-2 reference, the ancestor mask
against decoding each root path alone, acceptance on hand-built trees, the KV commit in both
cache containers, greedy losslessness (stories260k and tiny llama / qwen2 / qwen3 / mistral
targets; LM, self and EAGLE-3 drafters; batch 1 and 4), full-path acceptance when the target
drafts for itself, a chain being a tree with topk = 1, the distribution at temperature 1
(chi-square, with a wrong residual rule caught), and the settings' validation.
"""

import functools

import flax.nnx as nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from ppow_jax.decoding import engine, sampling, tree
from ppow_jax.decoding.drafter import DraftContext, LMDrafter, window_slice
from ppow_jax.eagle3 import Eagle3Config, Eagle3Drafter
from ppow_jax.eagle3.engine_adapter import Eagle3EngineDrafter
from ppow_jax.eagle3.model import forward as e3_forward
from ppow_jax.models import transformer
from ppow_jax.models.config import ModelConfig
from ppow_jax.models.kv_cache import KVCache

from conftest import (GREEDY, MAX_NEW, NEW, PROMPTS, T1, TINY, TINY_PROMPT, N, check_accounting,
                      chisquare_pvalues, greedy_reference, pad)

SPEC = tree.TreeSpec(depth=4, topk=3, num_nodes=12)


_fwd = jax.jit(transformer.forward, static_argnums=0, static_argnames=("hidden_layers",))
_e3_fwd = jax.jit(e3_forward, static_argnums=0)


@pytest.fixture(scope="module")
def reference(target):
  return greedy_reference(*target, PROMPTS, MAX_NEW)


@pytest.fixture(scope="module")
def drafters(target):
  """name -> (drafter, params): the target's first 4 layers (a real drafter with partial
  acceptance); the target itself; a randomly initialised EAGLE-3 drafter."""
  cfg, params = target
  trunc = dict(params, layers=jax.tree.map(lambda w: w[:4], params["layers"]))
  e3cfg = Eagle3Config.from_target(cfg, draft_vocab_size=128)
  e3 = Eagle3Drafter(e3cfg, rngs=nnx.Rngs(0))
  return {
      "trunc": (LMDrafter(cfg.replace(num_layers=4)), trunc),
      "self": (LMDrafter(cfg), params),
      "eagle3": (Eagle3EngineDrafter(e3cfg), Eagle3EngineDrafter.bind(e3, params)),
  }


# --- 1. Construction ------------------------------------------------------------------------------


def _bigram_expand(table):
  """A drafter whose logits for a node's children depend on the node's token only."""
  def expand(carry, depth, tokens, parents, mask):
    assert mask.shape == tokens.shape + (tokens.shape[1] * (SMALL.depth - 1),)
    return carry + 1, table[tokens]
  return expand


SMALL = tree.TreeSpec(depth=4, topk=3, num_nodes=20)


def _reference_paths(root, table, spec):
  """EAGLE-2 by brute force: frontier = the topk best children of the last one; then the best
  num_nodes - 1 candidates. Returns the set of root paths (token tuples) kept."""
  lp = lambda t: np.minimum(jax.nn.log_softmax(table[t]), 0.0)  # noqa: E731
  top = lambda v: np.argsort(-v, kind="stable")[:spec.topk]  # noqa: E731
  front = [((int(t),), float(lp(root)[t])) for t in top(lp(root))]
  cands = list(front)
  for _ in range(spec.depth - 1):
    kids = [(path + (int(t),), s + float(lp(path[-1])[t])) for path, s in front
            for t in top(lp(path[-1]))]
    cands += kids
    front = sorted(kids, key=lambda x: -x[1])[:spec.topk]
  return {p for p, _ in sorted(cands, key=lambda x: -x[1])[:spec.num_nodes - 1]}


def _paths(tr, b):
  tokens, parent = np.asarray(tr.tokens[b]), np.asarray(tr.parent[b])
  out = set()
  for i in range(1, len(tokens)):
    path, j = [], i
    while j > 0:
      path.append(int(tokens[j]))
      j = parent[j]
    out.add(tuple(path[::-1]))
  return out


def _check_structure(tr, spec):
  """Parents precede children; depth, ancestors, children and drafter slots agree."""
  tokens, depth, parent, anc, kids, slot = map(np.asarray, tr)
  n = spec.num_nodes
  for b in range(tokens.shape[0]):
    assert parent[b, 0] == -1 and depth[b, 0] == 0
    assert all(0 <= parent[b, i] < i for i in range(1, n))
    assert all(depth[b, i] == depth[b, parent[b, i]] + 1 for i in range(1, n))
    for i in range(n):
      chain, j = {i}, i
      while j > 0:
        j = parent[b, j]
        chain.add(j)
      assert set(np.flatnonzero(anc[b, i])) == chain
      want = [j for j in range(n) if parent[b, j] == i]
      assert list(kids[b, i][kids[b, i] >= 0]) == want and len(want) <= spec.topk
      assert len({tokens[b, j] for j in want}) == len(want)  # siblings are distinct tokens
    # Every expanded node has a drafter slot; slots are distinct, in [0, (depth-1)*topk).
    fed = slot[b][slot[b] >= 0]
    assert len(set(fed)) == len(fed) and (fed < (spec.depth - 1) * spec.topk).all()
    assert all(slot[b, parent[b, i]] >= 0 for i in range(1, n) if parent[b, i] > 0)


def test_build_matches_bruteforce_eagle2():
  v = 16
  table = jnp.asarray(2.0 * np.random.default_rng(0).standard_normal((v, v)), jnp.float32)
  roots = jnp.asarray([3, 7], jnp.int32)
  steps, tr = jax.jit(lambda r: tree.build(SMALL, GREEDY, r, table[r], _bigram_expand(table), 0))(
      roots)
  assert int(steps) == SMALL.depth - 1
  _check_structure(tr, SMALL)
  for b, r in enumerate(np.asarray(roots)):
    assert np.asarray(tr.tokens)[b, 0] == r
    assert _paths(tr, b) == _reference_paths(int(r), np.asarray(table), SMALL)


def test_build_stays_connected_under_ties():
  """Peaked rows (log-prob 0: a child ties its parent) and exactly tied rows."""
  v = 12
  table = np.zeros((v, v), np.float32)  # rows 0-5: all tied
  table[6:] = np.where(np.arange(v)[None] == np.arange(6, v)[:, None] - 5, 200.0, 0.0)
  table = jnp.asarray(table)
  spec = tree.TreeSpec(depth=4, topk=3, num_nodes=25)
  roots = jnp.asarray([0, 6, 8, 11], jnp.int32)
  expand = lambda c, d, t, p, m: (c, table[t])  # noqa: E731
  _, tr = jax.jit(lambda r: tree.build(spec, GREEDY, r, table[r], expand, 0))(roots)
  _check_structure(tr, spec)


# --- 2. The ancestor mask ---------------------------------------------------------------------------

TINY_FAMILIES = {
    "llama": dict(),
    "qwen2": dict(model_type="qwen2", attention_bias=True),
    "qwen3": dict(model_type="qwen3", qk_norm=True),
    "mistral": dict(model_type="mistral", sliding_window=5),
}


def _random_params(cfg, seed, std=0.08):
  """Random weights (numpy, no per-shape compilations): matrices N(0, std^2), norms near 1,
  biases N(0, 0.5^2) so that they matter. std 0.08 is peaked enough for clear greedy winners."""
  rng = np.random.default_rng(seed)
  shapes = nnx.to_pure_dict(nnx.state(nnx.eval_shape(
      lambda: transformer.Transformer(cfg, rngs=nnx.Rngs(0))), nnx.Param))

  def init(path, x):
    name = str(path[-1].key)
    if name.endswith("norm"):
      return jnp.asarray(1.0 + 0.3 * rng.standard_normal(x.shape), x.dtype)
    return jnp.asarray((0.5 if name.endswith("bias") else std) * rng.standard_normal(x.shape),
                       x.dtype)
  return jax.tree_util.tree_map_with_path(init, shapes)


def _tiny(family, vocab=64, seed=0):
  cfg = ModelConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_layers=2,
                    num_heads=4, num_kv_heads=2, head_dim=8, **TINY_FAMILIES[family])
  return cfg, _random_params(cfg, seed)


def _last_logits(cfg, params, seqs):
  """Plain (cache-free, causal) next-token logits after each token list, in one forward: right
  padding cannot reach a causal query."""
  x = np.zeros((len(seqs), max(map(len, seqs))), np.int32)
  for i, q in enumerate(seqs):
    x[i, :len(q)] = q
  logits = _fwd(cfg, params, jnp.asarray(x)).logits
  return np.asarray(logits)[np.arange(len(seqs)), [len(q) - 1 for q in seqs]]


@pytest.mark.parametrize("family", ["llama", "mistral"])
def test_tree_mask_equals_each_root_path_alone(target, family):
  """Target logits at every node of a tree (one forward on a prefilled cache, positions =
  prefix + depth, ancestor mask) equal a plain forward over the prompt and that node's path; so
  do the logits of a second tree level fed with the wide self_mask over the first level."""
  cfg, params = target if family == "llama" else _tiny(family)
  v, k = cfg.vocab_size, 2
  rng = np.random.default_rng(1)
  prompts = [list(rng.integers(3, v, 9)), list(rng.integers(3, v, 6))]
  toks, lens = pad(prompts, 10, vocab=v)
  table = jnp.asarray(rng.standard_normal((v, v)), jnp.float32)
  spec = tree.TreeSpec(depth=3, topk=k, num_nodes=7)
  root = jnp.asarray([5, 9], jnp.int32)
  lvl1 = jnp.asarray([[11, 12], [13, 14]], jnp.int32)
  lvl2 = jnp.asarray([[21, 22], [23, 24]], jnp.int32)
  par2 = np.array([[1, 0], [0, 0]])  # level-2 node j is a child of level-1 node par2[b, j]
  wide = np.zeros((2, k, 2 * k), bool)  # over the last 2k slots: level 1, then level 2
  for b in range(2):
    for j in range(k):
      wide[b, j, par2[b, j]] = wide[b, j, k + j] = True

  @jax.jit
  def run(params):
    _, tr = tree.build(spec, GREEDY, root, table[root], lambda c, d, t, p, m: (c, table[t]), 0)
    fwd = functools.partial(transformer.forward, cfg, params)
    cache = fwd(toks, cache=KVCache.init(cfg, 2, 32)).cache.with_lengths(lens)
    out = fwd(tr.tokens, cache=cache, positions=lens[:, None] + tr.depth, self_mask=tr.ancestors)
    # Two levels in two forwards after the root: the second sees the first through `wide`.
    pos1 = jnp.broadcast_to(lens[:, None] + 1, (2, k))
    o1 = fwd(lvl1, cache=fwd(root[:, None], cache=cache).cache, positions=pos1,
             self_mask=jnp.eye(k, dtype=bool))
    o2 = fwd(lvl2, cache=o1.cache, positions=pos1 + 1, self_mask=jnp.asarray(wide))
    return tr, out.logits, o2.logits

  tr, tree_logits, lvl2_logits = run(params)
  seqs = [prompts[b] + [int(t) for t, a in zip(tr.tokens[b], tr.ancestors[b, i]) if a]
          for b in range(2) for i in range(spec.num_nodes)]
  seqs += [prompts[b] + [int(root[b]), int(lvl1[b, par2[b, j]]), int(lvl2[b, j])]
           for b in range(2) for j in range(k)]
  got = np.concatenate([tree_logits.reshape(-1, v), lvl2_logits.reshape(-1, v)])
  np.testing.assert_allclose(got, _last_logits(cfg, params, seqs), atol=2e-4, rtol=1e-4)


# --- 3. Acceptance and commit on hand-built trees -----------------------------------------------


_make_tree = jax.jit(tree._make_tree, static_argnums=(4, 5))


def _hand_tree():
  """Root 0 -> (1: tok 5, 2: tok 6); 1 -> (3: tok 7); 2 -> (4: tok 7, 5: tok 8); 3 -> (6: tok 9)."""
  parent = jnp.asarray([[-1, 0, 0, 1, 2, 2, 3]], jnp.int32)
  tokens = jnp.asarray([[1, 5, 6, 7, 7, 8, 9]], jnp.int32)
  depth = jnp.asarray([[0, 1, 1, 2, 2, 2, 3]], jnp.int32)
  return _make_tree(tokens, depth, parent, jnp.full((1, 7), -1, jnp.int32), 2, 3)


def _onehot_logits(best, v=12):
  return jnp.where(jax.nn.one_hot(jnp.asarray(best), v) > 0, 0.0, -1e30)


_accept = jax.jit(tree.accept, static_argnames=("sp", "depth"))


@pytest.mark.parametrize("sp", [GREEDY, sampling.SamplingParams(temperature=1.0)])
def test_accept_hand_cases(sp):
  tr = _hand_tree()
  # The target's (only) token at each node -> expected (path, n, next).
  cases = [
      ([5, 7, 0, 9, 0, 0, 4], [0, 1, 3, 6], 3, 4),  # the full left branch, bonus 4
      ([6, 0, 8, 0, 0, 3, 0], [0, 2, 5, 5], 2, 3),  # second child, then its second child
      ([6, 0, 10, 0, 0, 0, 0], [0, 2, 2, 2], 1, 10),  # a token no child holds
      ([11, 0, 0, 0, 0, 0, 0], [0, 0, 0, 0], 0, 11),  # rejected at the root
  ]
  for best, path, n, nxt in cases:
    for seed in range(3):
      p, m, t = _accept(jax.random.key(seed), tr, _onehot_logits([best]), sp, 3)
      np.testing.assert_array_equal(p[0], path)
      assert (int(m[0]), int(t[0])) == (n, nxt)


def test_accept_sampling_one_node_is_lossless():
  """Two deterministic children at the root: P(child i) = p(x_i); the emitted token ~ p."""
  m = 40000
  p0 = np.array([0.1, 0.4, 0.2, 0.3])
  parent = jnp.asarray([[-1, 0, 0]], jnp.int32)
  tr = _make_tree(jnp.asarray([[0, 1, 3]], jnp.int32), jnp.asarray([[0, 1, 1]], jnp.int32),
                  parent, jnp.full((1, 3), -1, jnp.int32), 2, 1)
  tr = jax.tree.map(lambda x: jnp.broadcast_to(x, (m,) + x.shape[1:]), tr)
  logits = jnp.broadcast_to(jnp.log(jnp.asarray(p0, jnp.float32)), (m, 3, 4))
  path, n, nxt = map(np.asarray, _accept(jax.random.key(0), tr, logits,
                                         sampling.SamplingParams(temperature=1.0), 1))
  emitted = np.where(n == 1, np.asarray(tr.tokens)[0, path[:, 1]], nxt)
  assert stats.chisquare(np.bincount(emitted, minlength=4), p0 * m).pvalue > 1e-3
  for node, tok in ((1, 1), (2, 3)):  # each child accepted with probability p(its token)
    share = (path[:, 1] == node).mean()
    assert abs(share - p0[tok]) < 4 * np.sqrt(p0[tok] / m)


@pytest.mark.parametrize("per_layer", [False, True])
def test_move_slots_both_containers(per_layer):
  cfg = ModelConfig(vocab_size=8, hidden_size=8, intermediate_size=8, num_layers=3, num_heads=2,
                    num_kv_heads=1, head_dim=4)
  cache = KVCache.init(cfg, 2, 10, per_layer=per_layer)
  rng = np.random.default_rng(0)
  fill = lambda x: jnp.asarray(rng.standard_normal(x.shape), x.dtype)  # noqa: E731
  cache = cache.replace(k=jax.tree.map(fill, cache.k), v=jax.tree.map(fill, cache.v))
  src = jnp.asarray([[3, 5, 8], [2, 2, 6]], jnp.int32)
  dst = jnp.asarray([3, 1], jnp.int32)
  moved = jax.jit(tree.move_slots)(cache, src, dst)
  for name in ("k", "v"):
    before = np.stack(getattr(cache, name)) if per_layer else np.asarray(getattr(cache, name))
    after = np.stack(getattr(moved, name)) if per_layer else np.asarray(getattr(moved, name))
    want = before.copy()
    for b in range(2):
      for j in range(3):
        want[:, b, :, dst[b] + j] = before[:, b, :, src[b, j]]
    np.testing.assert_array_equal(after, want)


# --- 4. Greedy tree decoding is lossless -----------------------------------------------------------


def _generate(cfg, params, prompts, lens, drafter, dparams, spec, sp=GREEDY, max_new=MAX_NEW,
              seed=1):
  return engine.generate(cfg, params, prompts, lens, jax.random.key(seed), drafter=drafter,
                         drafter_params=dparams, max_new_tokens=max_new, sp=sp, tree=spec)


@pytest.mark.parametrize("bsz,kind", [(4, "trunc"), (4, "eagle3"), (1, "trunc")])
def test_greedy_tree_is_lossless(target, reference, drafters, bsz, kind):
  cfg, params = target
  rows = list(range(bsz)) if bsz == 4 else [2]
  prompts, lens = pad([PROMPTS[i] for i in rows], 12)
  drafter, dparams = drafters[kind]
  if bsz == 1 and kind == "trunc":  # the runner's decode layout: per-layer caches
    params, dparams = transformer.unstack(params), transformer.unstack(dparams)
  out = _generate(cfg, params, prompts, lens, drafter, dparams, SPEC)
  np.testing.assert_array_equal(np.asarray(out.tokens), reference[rows])
  assert (np.asarray(out.num_tokens) == MAX_NEW).all()
  check_accounting(out, MAX_NEW)
  acc = np.asarray(out.accept_lengths)
  tau = acc[acc > 0].mean()
  if kind == "trunc":  # a real drafter: deep acceptances happen, not always
    assert 1.8 < tau < SPEC.depth + 1 and acc.max() >= SPEC.depth
  else:
    assert tau < 1.5


def test_self_draft_accepts_full_paths(target, reference):
  """The target drafting for itself accepts a whole root-to-leaf path (depth tokens) each step.
  Its logits are scaled x4 (same argmax, so the same greedy output) so that the greedy child
  always wins the frontier and the rerank: EAGLE-2's selection does not promise that for flat
  distributions, where a deep greedy node can score below shallow siblings."""
  cfg, params = target
  params = dict(params, final_norm=4.0 * params["final_norm"])
  prompts, lens = pad(PROMPTS, 12)
  out = _generate(cfg, params, prompts, lens, LMDrafter(cfg), params, SPEC)
  np.testing.assert_array_equal(np.asarray(out.tokens), reference)
  steps, acc = np.asarray(out.num_steps), np.asarray(out.accept_lengths)
  assert (steps == -(-(MAX_NEW - 1) // (SPEC.depth + 1))).all()
  for a, s in zip(acc, steps):
    assert (a[:s - 1] == SPEC.depth + 1).all()


def test_topk1_tree_is_the_chain(target, drafters):
  """A tree (K, 1, K+1) proposes, verifies and accepts exactly as a chain of K."""
  cfg, params = target
  prompts, lens = pad(PROMPTS, 12)
  drafter, dparams = drafters["trunc"]
  k = 5
  chain = engine.generate(cfg, params, prompts, lens, jax.random.key(0), drafter=drafter,
                          drafter_params=dparams, window=k, max_new_tokens=MAX_NEW)
  as_tree = _generate(cfg, params, prompts, lens, drafter, dparams, tree.TreeSpec(k, 1, k + 1))
  for a, b in zip(chain, as_tree):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def _first_proposal(cfg, params, drafter, dparams, prompts, lens, depth):
  """(drafter state, DraftContext) before the engine's first proposal, as engine.generate sets
  them up: prefills, the target's first token at slot lens, fresh slots from lens - 1."""
  b, p = prompts.shape
  out = transformer.forward(cfg, params, prompts, cache=KVCache.init(cfg, b, 64),
                            hidden_layers=drafter.target_hidden_layers)
  first = jnp.argmax(out.logits[jnp.arange(b), lens - 1], -1).astype(jnp.int32)
  buf = jnp.zeros((b, 64), jnp.int32).at[:, :p].set(prompts).at[jnp.arange(b), lens].set(first)
  state = drafter.prefill(dparams, drafter.init_state(dparams, b, 64), prompts, lens - 1,
                          out.hidden)
  hidden = tuple(window_slice(jnp.pad(h, ((0, 0), (0, depth + 1), (0, 0))), lens - 1, depth + 1)
                 for h in out.hidden)
  return state, DraftContext(buf=buf, pos=lens, fresh_start=lens - 1, target_hidden=hidden)


def _paths_logits(kind, drafter, dparams, state, ctx, queries):
  """The drafter's logits after each (row, draft tokens below the root) fed alone: an LM over the
  committed tokens and the path in one plain forward; EAGLE-3 from its ingest, one token at a
  time, feeding back its own hidden state as the chain does."""
  if kind == "trunc":
    return _last_logits(drafter.cfg, dparams, [
        [int(t) for t in ctx.buf[b, :int(ctx.pos[b]) + 1]] + path for b, path in queries])
  cache, root_logits, hidden = jax.jit(lambda s, c: drafter._ingest(dparams, s, c, 4))(state, ctx)
  out = []
  for b, path in queries:
    c, feat, logits = cache.rows(jnp.asarray([b]), ctx.pos[b:b + 1]), hidden[b:b + 1], None
    for t in path:
      o = _e3_fwd(drafter.cfg, dparams["draft"], dparams["embed"], jnp.asarray([[t]]),
                  feat[:, None], cache=c)
      c, feat, logits = o.cache, o.hidden[:, 0], o.logits[:, 0]
    out.append(root_logits[b] if logits is None else drafter._target_logits(dparams, logits)[0])
  return np.asarray(jnp.stack(out))


@pytest.mark.parametrize("kind", ["trunc", "eagle3"])
def test_drafter_tree_expands_each_path_as_alone(target, drafters, kind):
  """Every expanded node's children are the drafter's top-k after its root path fed alone (the
  ancestor mask, positions and EAGLE-3 feature feeding of `propose_tree`); with topk = 1 the
  tree is the chain `propose` drafts. Batch 2, rows of different lengths."""
  cfg, params = target
  drafter, dparams = drafters[kind]
  prompts, lens = pad([PROMPTS[0], PROMPTS[2]], 12)
  state, ctx = jax.jit(lambda: _first_proposal(cfg, params, drafter, dparams, prompts, lens, 3))()
  spec = tree.TreeSpec(depth=3, topk=2, num_nodes=11)  # every candidate kept
  chain_spec = tree.TreeSpec(depth=3, topk=1, num_nodes=4)
  key = jax.random.key(0)

  @jax.jit
  def propose(state, ctx):
    return (drafter.propose_tree(dparams, state, ctx, key, spec, GREEDY)[1],
            drafter.propose(dparams, state, ctx, key, 3, GREEDY)[1],
            drafter.propose_tree(dparams, state, ctx, key, chain_spec, GREEDY)[1])

  tr, chain, as_tree = propose(state, ctx)
  tokens, kids, parent = map(np.asarray, (tr.tokens, tr.children, tr.parent))
  queries, expect = [], []
  for b in range(2):
    for u in np.flatnonzero(kids[b, :, 0] >= 0):
      path, j = [], u
      while j > 0:
        path.insert(0, int(tokens[b, j]))
        j = parent[b, j]
      queries.append((b, path))
      expect.append(tokens[b, kids[b, u]])
  assert len(queries) == 2 * (1 + spec.topk * (spec.depth - 1))  # the root and the frontiers
  logits = _paths_logits(kind, drafter, dparams, state, ctx, queries)
  np.testing.assert_array_equal(np.stack(expect), np.argsort(-logits, axis=1)[:, :spec.topk])
  np.testing.assert_array_equal(as_tree.tokens[:, 1:], chain)


@pytest.mark.parametrize("family", sorted(TINY_FAMILIES))
def test_greedy_tree_is_lossless_per_family(family):
  """Tiny random targets of each family; the drafter is the target plus noise (partial
  acceptance), batch 4 with rows of different lengths."""
  cfg, params = _tiny(family)
  noise = _random_params(cfg, 7, std=0.02)
  dparams = jax.tree.map(lambda a, b: a + 0.3 * b, params, noise)
  rng = np.random.default_rng(3)
  rows = [list(rng.integers(3, cfg.vocab_size, n)) for n in (7, 3, 11, 5)]
  prompts, lens = pad(rows, 12, vocab=cfg.vocab_size)
  max_new = 16
  out = _generate(cfg, params, prompts, lens, LMDrafter(cfg), dparams,
                  tree.TreeSpec(depth=3, topk=3, num_nodes=10), max_new=max_new)
  np.testing.assert_array_equal(np.asarray(out.tokens),
                                greedy_reference(cfg, params, rows, max_new))
  check_accounting(out, max_new)
  acc = np.asarray(out.accept_lengths)
  assert 1.3 < acc[acc > 0].mean() < 4  # drafts are accepted, and rejected


# --- 5. Sampling at temperature 1 follows the target's distribution ---------------------------------

T1_SPEC = tree.TreeSpec(depth=2, topk=3, num_nodes=7)


def _sample_tiny(tparams, dparams):
  prompts = jnp.asarray(np.broadcast_to(TINY_PROMPT, (N, len(TINY_PROMPT))), jnp.int32)
  return _generate(TINY, tparams, prompts, jnp.full((N,), len(TINY_PROMPT), jnp.int32),
                   LMDrafter(TINY), dparams, T1_SPEC, sp=T1, max_new=NEW, seed=0)


def test_tree_sampling_follows_target_distribution(tiny):
  tparams, dparams, joint = tiny
  out = _sample_tiny(tparams, dparams)
  assert (np.asarray(out.num_tokens) == NEW).all()
  # Every outcome of the first step is frequent: rejection at the root, one, two accepted.
  first = np.bincount(np.asarray(out.accept_lengths)[:, 0], minlength=T1_SPEC.depth + 2)[1:]
  assert (first > 0.1 * N).all(), first
  pvals = chisquare_pvalues(np.asarray(out.tokens), joint)
  assert min(pvals) > 1e-3, pvals


def test_wrong_residual_rule_is_caught(tiny, monkeypatch):
  """Keeping a rejected child in the residual (no removal after a rejection) is caught."""
  tparams, dparams, joint = tiny
  monkeypatch.setattr(tree, "reject", lambda resid, x: resid)
  engine.generate.clear_cache()
  try:
    out = _sample_tiny(tparams, dparams)
  finally:
    engine.generate.clear_cache()
  assert min(chisquare_pvalues(np.asarray(out.tokens), joint)) < 1e-3


# --- 6. Settings ----------------------------------------------------------------------------------


def test_spec_validation_names_the_field():
  assert tree.parse("decode.tree", "") is None and tree.parse("decode.tree", None) is None
  assert tree.parse("decode.tree", " 6, 4,24 ") == tree.TreeSpec(6, 4, 24)
  assert tree.TreeSpec(6, 4, 24).num_candidates == 1 + 4 + 5 * 16
  for bad, msg in [
      ("4,4,70", r"decode.tree: num_nodes=70 exceeds 1 \+ topk \+ \(depth-1\)\*topk\^2 = 53"),
      ("0,4,8", "decode.tree: depth=0 must be >= 1"),
      ("3,0,8", "decode.tree: topk=0 must be >= 1"),
      ("3,2,1", "decode.tree: num_nodes=1 must be >= 2"),
      ("3,2", "decode.tree: '3,2' is not 'depth,topk,num_nodes'"),
      ("3,x,2", "decode.tree: '3,x,2' is not three ints"),
  ]:
    with pytest.raises(ValueError, match=msg):
      tree.parse("decode.tree", bad)


def test_decode_config_tree_setting():
  import configs
  from ppow_jax.modes import decode as decode_mode
  c = configs.load("decode")
  assert decode_mode.settings_from_config(c).tree is None  # the default: a chain
  c.drafter.path = "/some/drafter"
  c.decode.tree = "6,4,24"
  assert decode_mode.settings_from_config(c).tree == tree.TreeSpec(6, 4, 24)
  c.decode.tree = "6,4,99"
  with pytest.raises(ValueError, match=r"decode.tree: num_nodes=99 exceeds .* = 85"):
    decode_mode.settings_from_config(c)
  c.decode.tree, c.drafter.path = "6,4,24", ""
  with pytest.raises(ValueError, match="decode.tree='6,4,24' needs a drafter"):
    decode_mode.settings_from_config(c)
