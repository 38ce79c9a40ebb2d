"""PPOW for Qwen3-8B with an EAGLE-3 drafter (32000-token draft vocabulary), bf16.

Dry run: no weights; lowers and compiles the PPOW train step for the slice on simulated CPU
devices and prints per-chip memory and every parameter's sharding (writes dryrun.json):

  python -m ppow_jax.main --config configs/targets/qwen3_8b.py --config.mode=dryrun \
    --workdir runs/dryrun/qwen3_8b --config.topology=v5e-8

On a TPU slice (launch/README.md: create_tpu.sh, setup_tpu.sh, then this on every worker):

  launch/run_tpu.sh --name ppow-qwen8b --zone us-west4-a --topology v5e-8 -- \
    --config configs/targets/qwen3_8b.py --workdir /mnt/gcs/runs/qwen3_8b \
    --config.target.path=/mnt/gcs/models/Qwen3-8B \
    --config.drafter.init_from=/mnt/gcs/models/Qwen3-8B_eagle3 \
    --config.data.dir=/mnt/gcs/data/qwen3_8b

which runs `python -m ppow_jax.main --config configs/targets/qwen3_8b.py ...
--config.topology=v5e-8 --config.distributed.num_processes=-1` on each host. Other slices:
--config.topology=v5p-64 / v6e-256 (or `--config=configs/targets/qwen3_8b.py:v5e-8`).
"""

from configs.targets import _base


# Qwen/Qwen3-8B config.json.
ARCH = dict(
    architectures=["Qwen3ForCausalLM"], model_type="qwen3", hidden_act="silu",
    hidden_size=4096, intermediate_size=12288, num_hidden_layers=36, num_attention_heads=32,
    num_key_value_heads=8, head_dim=128, vocab_size=151936, max_position_embeddings=40960,
    max_window_layers=36, rms_norm_eps=1e-6, rope_theta=1000000.0, rope_scaling=None,
    attention_bias=False, use_sliding_window=False, sliding_window=None,
    tie_word_embeddings=False, torch_dtype="bfloat16", bos_token_id=151643, eos_token_id=151645)


def get_config(topology="v5e-8"):
  b = _base
  return b.make(ARCH, topology_name=topology, workdir="runs/qwen3_8b",
                drafter_from="AngelSlim/Qwen3-8B_eagle3",
                topologies={
                    # batch 8 would peak at ~14-15 GiB of the 16 GiB (dry run): keep a margin.
                    "v5e-8": b.topology(data=1, fsdp=2, tensor=4, batch_size=4),
                    # No fsdp axis: the drafter's fused-feature input dim goes to tensor.
                    "v5p-64": b.topology(data=8, fsdp=1, tensor=4, batch_size=64,
                                         rules="fused=tensor"),
                    "v6e-256": b.topology(data=32, fsdp=2, tensor=4, batch_size=256),
                })
