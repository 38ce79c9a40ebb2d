"""PPOW for LLaMA-3.1-8B-Instruct with an EAGLE-3 drafter (32000-token draft vocabulary), bf16.

Dry run: no weights; lowers and compiles the PPOW train step for the slice on simulated CPU
devices and prints per-chip memory and every parameter's sharding (writes dryrun.json):

  python -m ppow_jax.main --config configs/targets/llama31_8b.py --config.mode=dryrun \
    --workdir runs/dryrun/llama31_8b --config.topology=v5e-8

On a TPU slice (launch/README.md: create_tpu.sh, setup_tpu.sh, then this on every worker):

  launch/run_tpu.sh --name ppow-llama8b --zone us-west4-a --topology v5e-8 -- \
    --config configs/targets/llama31_8b.py --workdir /mnt/gcs/runs/llama31_8b \
    --config.target.path=/mnt/gcs/models/Llama-3.1-8B-Instruct \
    --config.drafter.init_from=/mnt/gcs/models/EAGLE3-LLaMA3.1-Instruct-8B \
    --config.data.dir=/mnt/gcs/data/llama31_8b

which runs `python -m ppow_jax.main --config configs/targets/llama31_8b.py ...
--config.topology=v5e-8 --config.distributed.num_processes=-1` on each host. Other slices:
--config.topology=v5p-64 / v6e-256 (or `--config=configs/targets/llama31_8b.py:v5p-64`).
"""

from configs.targets import _base


# meta-llama/Llama-3.1-8B-Instruct config.json.
ARCH = dict(
    architectures=["LlamaForCausalLM"], model_type="llama", hidden_act="silu",
    hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
    num_key_value_heads=8, head_dim=128, vocab_size=128256, max_position_embeddings=131072,
    rms_norm_eps=1e-5, rope_theta=500000.0,
    rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                      original_max_position_embeddings=8192),
    attention_bias=False, mlp_bias=False, tie_word_embeddings=False, torch_dtype="bfloat16",
    bos_token_id=128000, eos_token_id=[128001, 128008, 128009])


def get_config(topology="v5e-8"):
  b = _base
  return b.make(ARCH, topology_name=topology, workdir="runs/llama31_8b",
                drafter_from="yuhuili/EAGLE3-LLaMA3.1-Instruct-8B",
                topologies={
                    # batch 8 would peak at ~14-15 GiB of the 16 GiB (dry run): keep a margin.
                    "v5e-8": b.topology(data=1, fsdp=2, tensor=4, batch_size=4),
                    # No fsdp axis: the drafter's fused-feature input dim goes to tensor.
                    "v5p-64": b.topology(data=8, fsdp=1, tensor=4, batch_size=64,
                                         rules="fused=tensor"),
                    "v6e-256": b.topology(data=32, fsdp=2, tensor=4, batch_size=256),
                })
