"""PPOW fine-tuning of a token-level EAGLE-3 drafter.

  python -m ppow_jax.main --config configs/ppow.py --workdir runs/ppow \
    --config.target.path=ppow_jax/assets/stories260k \
    --config.drafter.init_from=runs/sft/export --config.data.dir=runs/sft/data

Ablations: --config.ppow.use_proximity=False (no R_dist), --config.ppow.windowing=False
(uniform windows), both. Every value below is overridable with --config.x=y.
"""

import ml_collections


def get_config():
  c = ml_collections.ConfigDict()
  c.mode = "ppow"
  c.workdir = ""
  c.seed = 0
  c.target = ml_collections.ConfigDict(dict(path="", dtype=""))
  # aux_layers: see configs/sft.py (used only for a fresh drafter; an export keeps its own).
  c.drafter = ml_collections.ConfigDict(dict(init_from="", draft_vocab_size=0, aux_layers="",
                                             init_head_from_target=False,
                                             vocab_selection="frequency", vocab_sample=256))
  c.data = ml_collections.ConfigDict(dict(
      # Prompts: comma-separated files (any format data.prompts reads) and/or `synthesize` > 0
      # prompts the target writes itself (Magpie); prompts overlapping the `exclude` files
      # (evaluation sets, comma-separated) are dropped. Neither: a base LM samples from BOS.
      exclude="", synthesize=0,
      # Conversations instead of prompts, and where their answers come from: see configs/sft.py.
      conversations="", answers="regenerate", mix_ratio=0.5,
      synthesis=ml_collections.ConfigDict(dict(max_tokens=96, temperature=1.0, top_p=1.0,
                                               min_chars=12, openings=())),
      dir="", prompts="", num_samples=1024, num_heldout=32, max_prompt_len=128,
      max_new_tokens=127, heldout_temperature=1.0,
      seed=-1,  # sampling seed of prompts and answers; -1 = the run's seed
      temperature=1.0, gen_batch_size=64, seq_len=128,
      features="online"))  # or "cached": the target's features computed once (data/features.py)
  c.ppow = ml_collections.ConfigDict(dict(
      # K draft tokens per window. On stories260k, K=6 windows beat more token-level training
      # at both K=6 and K=10 deployment; K=10 windows only at K=10 (README, "PPOW against
      # token-level training").
      window=10,
      group_size=8,  # G windows sampled per prefix
      prefixes_per_seq=2,  # prefixes chosen per sequence each step
      min_prefix=1,
      # Windows lie wholly on answer slots (the batch's loss mask), as deployment drafts only
      # answers; "any" also lets them start in prompts and user turns (the study before 12-07).
      windows_in="response",
      gamma=0.12,  # drafter/target cost ratio in R_speedup = k / (k*gamma + 1) (the paper's)
      measure_gamma=False,  # True: gamma = this machine's measured ratio (decoding/step_cost.py)
      eta=0.5, epsilon=2.0,  # R_dist = eta * 1[delta < epsilon] for windows with k = 0
      use_proximity=True,
      windowing=True, windowing_mode="proportional",  # or "top"
      windowing_start=20,  # uniform prefixes before this step
      clip_eps=0.2, beta=0.1,  # PPO clip; KL(P_target || Q) coefficient
      policy_coef=1.0,  # RL term's weight; 0 keeps only the anchors (isolates the RL gradient)
      aux_coef=1.0,  # token-level soft cross-entropy on the window tokens
      loss_tokens="through_first_reject",  # policy-gradient tokens: or "all"
      # KL / soft-CE tokens: "all" also anchors the slots after the first rejection to the
      # target (the target verified them; the drafter conditions on them in longer windows).
      anchor_tokens="through_first_reject",
      # Token-level auxiliary loss: "window" (soft CE on window tokens) or "ttt" (EAGLE-3's
      # training-time-test loss over the batch sequences, ttt_steps steps weighted ttt_decay^i).
      aux_loss="window", ttt_steps=7, ttt_decay=0.8,
      ppo_epochs=2, temperature=1.0))
  c.optim = ml_collections.ConfigDict(dict(
      learning_rate=5e-5, warmup_steps=10, final_lr_fraction=0.1, b1=0.9, b2=0.95,
      weight_decay=0.0, grad_clip=1.0))
  c.train = ml_collections.ConfigDict(dict(
      num_steps=200, batch_size=8, max_seconds=0.0,  # > 0: also stop after this much wall-clock time
      max_cpu_seconds=0.0,  # > 0: ... or this much CPU time of the process
      log_every=5, checkpoint_every=25, keep_checkpoints=2))
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1,
                                           num_devices=0))  # 0 = all; N = the first N
  c.distributed = ml_collections.ConfigDict(dict(num_processes=1, process_id=0,
                                                 coordinator="127.0.0.1:12355"))
  c.eval = ml_collections.ConfigDict(dict(
      prompts="", num_prompts=32, prompt_len=16, windows=(6, 10), max_new_tokens=96,
      batch_size=8))
  return c
