"""PPOW for LLaMA-3.3-70B-Instruct with an EAGLE-3 drafter (32000-token draft vocabulary), bf16.

Dry run: no weights; lowers and compiles the PPOW train step for the slice on simulated CPU
devices and prints per-chip memory and every parameter's sharding (writes dryrun.json):

  python -m ppow_jax.main --config configs/targets/llama33_70b.py --config.mode=dryrun \
    --workdir runs/dryrun/llama33_70b --config.topology=v5p-64

On a TPU slice (launch/README.md: create_tpu.sh, setup_tpu.sh, then this on every worker):

  launch/run_tpu.sh --name ppow-llama70b --zone us-east5-a --topology v5p-64 -- \
    --config configs/targets/llama33_70b.py --workdir /mnt/gcs/runs/llama33_70b \
    --config.target.path=/mnt/gcs/models/Llama-3.3-70B-Instruct \
    --config.drafter.init_from=/mnt/gcs/models/EAGLE3-LLaMA3.3-Instruct-70B \
    --config.data.dir=/mnt/gcs/data/llama33_70b

which runs `python -m ppow_jax.main --config configs/targets/llama33_70b.py ...
--config.topology=v5p-64 --config.distributed.num_processes=-1` on each host. Other slices:
--config.topology=v5p-128 / v6e-256 (or `--config=configs/targets/llama33_70b.py:v5p-64`).
"""

from configs.targets import _base


# meta-llama/Llama-3.3-70B-Instruct config.json.
ARCH = dict(
    architectures=["LlamaForCausalLM"], model_type="llama", hidden_act="silu",
    hidden_size=8192, intermediate_size=28672, num_hidden_layers=80, num_attention_heads=64,
    num_key_value_heads=8, head_dim=128, vocab_size=128256, max_position_embeddings=131072,
    rms_norm_eps=1e-5, rope_theta=500000.0,
    rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                      original_max_position_embeddings=8192),
    attention_bias=False, mlp_bias=False, tie_word_embeddings=False, torch_dtype="bfloat16",
    bos_token_id=128000, eos_token_id=[128001, 128008, 128009])


def get_config(topology="v5p-64"):
  b = _base
  return b.make(ARCH, topology_name=topology, workdir="runs/llama33_70b",
                drafter_from="yuhuili/EAGLE3-LLaMA3.3-Instruct-70B",
                topologies={
                    "v5p-64": b.topology(data=2, fsdp=4, tensor=4, batch_size=16),
                    "v5p-128": b.topology(data=4, fsdp=4, tensor=4, batch_size=32),
                    "v6e-256": b.topology(data=8, fsdp=4, tensor=8, batch_size=64),
                })
