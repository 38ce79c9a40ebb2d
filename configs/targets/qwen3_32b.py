"""PPOW for Qwen3-32B with an EAGLE-3 drafter (32000-token draft vocabulary), bf16.
Qwen3's head_dim (128) is not hidden_size / heads (5120 / 64 = 80).

Dry run: no weights; lowers and compiles the PPOW train step for the slice on simulated CPU
devices and prints per-chip memory and every parameter's sharding (writes dryrun.json):

  python -m ppow_jax.main --config configs/targets/qwen3_32b.py --config.mode=dryrun \
    --workdir runs/dryrun/qwen3_32b --config.topology=v5p-64

On a TPU slice (launch/README.md: create_tpu.sh, setup_tpu.sh, then this on every worker):

  launch/run_tpu.sh --name ppow-qwen32b --zone us-east5-a --topology v5p-64 -- \
    --config configs/targets/qwen3_32b.py --workdir /mnt/gcs/runs/qwen3_32b \
    --config.target.path=/mnt/gcs/models/Qwen3-32B \
    --config.drafter.init_from=/mnt/gcs/models/Qwen3-32B_eagle3 \
    --config.data.dir=/mnt/gcs/data/qwen3_32b

which runs `python -m ppow_jax.main --config configs/targets/qwen3_32b.py ...
--config.topology=v5p-64 --config.distributed.num_processes=-1` on each host. Other slices:
--config.topology=v6e-64 / v6e-256 (or `--config=configs/targets/qwen3_32b.py:v5p-64`).
"""

from configs.targets import _base


# Qwen/Qwen3-32B config.json.
ARCH = dict(
    architectures=["Qwen3ForCausalLM"], model_type="qwen3", hidden_act="silu",
    hidden_size=5120, intermediate_size=25600, num_hidden_layers=64, num_attention_heads=64,
    num_key_value_heads=8, head_dim=128, vocab_size=151936, max_position_embeddings=40960,
    max_window_layers=64, rms_norm_eps=1e-6, rope_theta=1000000.0, rope_scaling=None,
    attention_bias=False, use_sliding_window=False, sliding_window=None,
    tie_word_embeddings=False, torch_dtype="bfloat16", bos_token_id=151643, eos_token_id=151645)


def get_config(topology="v5p-64"):
  b = _base
  return b.make(ARCH, topology_name=topology, workdir="runs/qwen3_32b",
                drafter_from="AngelSlim/Qwen3-32B_eagle3",
                topologies={
                    "v5p-64": b.topology(data=4, fsdp=2, tensor=4, batch_size=32),
                    "v6e-64": b.topology(data=4, fsdp=4, tensor=4, batch_size=32),
                    "v6e-256": b.topology(data=16, fsdp=4, tensor=4, batch_size=128),
                })
