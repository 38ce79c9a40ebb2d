"""What the configs/targets/*.py PPOW configs share (not a config itself: no get_config).

Each target config embeds its model's Hugging Face `config.json` fields (`target.arch`) so the
dry run (`--config.mode=dryrun`) needs no weights, and names the TPU slices it was sized for:
`topologies[name]` = mesh sizes (data x fsdp x tensor = chips), global batch size and sharding
rule overrides ("embed=fsdp+data,vocab=tensor"; "" = sharding.DEFAULT_RULES), picked by
`topology` (ppow_jax.parallel.sharding.apply_topology).
"""

import ml_collections

import configs


def topology(data, fsdp, tensor, batch_size, rules=""):
  """One slice's entry; `rules` as sharding.parse_rules reads it, e.g. "embed=fsdp+data"."""
  return dict(data=data, fsdp=fsdp, tensor=tensor, batch_size=batch_size, rules=rules)


def make(arch: dict, *, topologies: dict, topology_name: str, drafter_from: str,
         workdir: str) -> ml_collections.ConfigDict:
  """configs/ppow.py for `arch` in bfloat16 with a 32000-token EAGLE-3 draft vocabulary."""
  if topology_name not in topologies:
    raise ValueError(f"topology {topology_name!r}: this config knows {', '.join(topologies)}")
  c = configs.load("ppow")
  c.workdir = workdir
  c.target.update(path="", dtype="bfloat16")
  c.target.arch = ml_collections.ConfigDict(arch)  # HF config.json fields; the dry run's model
  c.drafter.update(init_from="", draft_vocab_size=32000)
  c.drafter.published = drafter_from  # the public EAGLE-3 checkpoint to start from (download it)
  c.data.update(prompts="", num_samples=65536, num_heldout=256, max_prompt_len=512,
                max_new_tokens=511, temperature=1.0, gen_batch_size=64, seq_len=1024)
  c.train.update(num_steps=2000, batch_size=0, log_every=10, checkpoint_every=200,
                 keep_checkpoints=2)  # batch_size 0: the topology's
  c.optim.update(learning_rate=1e-5, warmup_steps=50)
  c.eval.update(num_prompts=80, prompt_len=64, windows=(6, 10), max_new_tokens=512, batch_size=16)
  c.distributed.num_processes = -1  # TPU slices: jax.distributed.initialize() discovers the hosts
  c.topology = topology_name
  c.topologies = ml_collections.ConfigDict(topologies)
  c.rules = ""  # overrides of sharding.DEFAULT_RULES; set from the topology (apply_topology)
  c.mesh.update({k: topologies[topology_name][k] for k in ("data", "fsdp", "tensor")})
  c.dryrun = ml_collections.ConfigDict(dict(
      platform="cpu",  # "cpu": simulate the slice's chips on host CPU devices; "": devices present
      tiny=False,  # shrink the model (same structure) to check the plan in seconds
      print_params=True))
  return c
