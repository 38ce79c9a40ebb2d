"""Evaluate drafters for one target on benchmark prompts: tau and speedup per category.

  python -m ppow_jax.main --config configs/eval.py --workdir runs/eval \
    --config.target.path=ppow_jax/assets/stories260k \
    --config.drafters="self=ppow_jax/assets/stories260k,eagle3=runs/sft" \
    --config.data.limit_per_category=10 --config.eval.temperatures=0,1

drafters: comma-separated "name=path" (an HF LM sharing the target's vocabulary, an EAGLE-3
export, or a run directory holding export/); the autoregressive baseline is always included.
The prompts default to Spec-Bench as shipped in ppow_jax/assets (480 prompts, 13 categories).
With --config.eval.tree=depth,topk,num_nodes (e.g. 6,4,24) every drafter is also decoded with
that dynamic draft tree (a row "NAME tree d,k,n" beside its chain row), and
--config.eval.tree_num_nodes=16,24,40,60 sweeps num_nodes at the first temperature.
Writes WORKDIR/report.md, report.json and PNG plots.
"""

import ml_collections

from ppow_jax import assets


def get_config():
  c = ml_collections.ConfigDict()
  c.mode = "eval"
  c.workdir = ""
  c.seed = 0  # the same sampling seed for every drafter, temperature and category
  c.target = ml_collections.ConfigDict(dict(path="", dtype=""))  # dtype "" = checkpoint's own
  c.drafters = ""  # "name=path,name=path"; "" = autoregressive only
  c.data = ml_collections.ConfigDict(dict(
      # Comma-separated prompt files; categories come from their records. "" in a pipeline
      # config: the pipeline's own held-out prompts.
      benchmarks=assets.SPEC_BENCH,
      categories="",  # comma-separated subset; "" = every category found
      limit_per_category=0,  # first N prompts of each category; 0 = all
      max_prompt_len=256, truncation="left"))
  c.eval = ml_collections.ConfigDict(dict(
      temperatures="0,1",  # comma-separated; one table each
      window=6,  # draft length K of the main tables
      windows="2,4,6,8",  # K sweep for the speedup-vs-K plot, at the first temperature; "" = none
      tree="",  # "depth,topk,num_nodes": also decode every drafter with this tree; "" = none
      tree_num_nodes="",  # num_nodes sweep of eval.tree at the first temperature; "" = none
      top_k=0, top_p=1.0, max_new_tokens=128, batch_size=1, progress=True,
      print_tables=True))  # per-category tables on stdout (the pipeline prints a summary)
  return c
