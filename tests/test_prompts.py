"""Prompt-file readers (real benchmark files and synthetic edge cases) and prompt tokenization."""

import collections
import gzip
import json
import pathlib
import re

import pytest

from ppow_jax.data import Prompt, PromptFileError, encode_prompt, encode_prompts, load_prompts
from ppow_jax.models.hf_checkpoint import load_tokenizer

BENCH = pathlib.Path(__file__).resolve().parents[2] / "shared" / "benchmarks"
SPEC_BENCH = BENCH / "spec_bench" / "question.jsonl"
HUMAN_EVAL = BENCH / "human_eval" / "HumanEval.jsonl.gz"
GSM8K = BENCH / "gsm8k" / "test.jsonl"
TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def _shared(path):
  if not path.exists():
    pytest.skip(f"{path} not present")
  return str(path)


def _write(path, lines):
  path.write_text("".join(line + "\n" for line in lines))
  return str(path)


@pytest.fixture(scope="module")
def tok(stories_path):
  return load_tokenizer(stories_path)


@pytest.fixture
def chat_tok(stories_path):
  t = load_tokenizer(stories_path)  # A fresh object: the shared `tok` must keep no template.
  t.chat_template = TEMPLATE
  return t


# --- Reading files ------------------------------------------------------------------------------

def test_spec_bench():
  prompts = load_prompts(_shared(SPEC_BENCH))
  assert len(prompts) == 480
  counts = collections.Counter(p.category for p in prompts)
  assert len(counts) == 13
  assert counts["writing"] == 10 and counts["translation"] == 80
  assert prompts[0].id == "81" and prompts[0].category == "writing"
  assert len(prompts[0].turns) == 2 and prompts[0].turns[0].startswith("Compose an engaging")
  assert len({p.id for p in prompts}) == 480


def test_spec_bench_filters():
  path = _shared(SPEC_BENCH)
  every = load_prompts(path)
  picked = load_prompts(path, categories=["qa", "writing"], limit_per_category=3)
  expected = ([p for p in every if p.category == "writing"][:3]
              + [p for p in every if p.category == "qa"][:3])
  # File order (writing precedes qa there), not the order of `categories`.
  assert picked == sorted(expected, key=every.index)
  assert load_prompts(path, categories=["qa"], limit=5) == [
      p for p in every if p.category == "qa"][:5]
  per_cat = load_prompts(path, limit_per_category=2)
  assert len(per_cat) == 26
  assert load_prompts(path, limit_per_category=2, limit=3) == per_cat[:3]
  with pytest.raises(PromptFileError, match="nonexistent"):
    load_prompts(path, categories=["qa", "nonexistent"])


def test_human_eval_gz():
  prompts = load_prompts(_shared(HUMAN_EVAL))
  assert len(prompts) == 164
  assert {p.category for p in prompts} == {"humaneval"}
  assert prompts[0].id == "HumanEval/0" and prompts[-1].id == "HumanEval/163"
  assert prompts[0].turns[0].startswith("from typing import List")


def test_gsm8k():
  prompts = load_prompts(_shared(GSM8K))
  assert len(prompts) == 1319
  assert {p.category for p in prompts} == {"gsm8k"}
  assert prompts[0].id == "gsm8k/0" and prompts[-1].id == "gsm8k/1318"
  assert prompts[0].turns == (json.loads(open(GSM8K).readline())["question"],)


def test_plain_jsonl_gz_defaults_and_blank_lines(tmp_path):
  path = tmp_path / "p.jsonl.gz"
  with gzip.open(path, "wt") as f:
    f.write('{"prompt": "first"}\n\n   \n{"prompt": "second", "id": 7, "category": "c"}\n'
            '{"prompt": "third"}\n')
  assert load_prompts(str(path)) == [
      Prompt("0", "default", ("first",)), Prompt("7", "c", ("second",)),
      Prompt("2", "default", ("third",))]


def test_mixed_formats_detected_per_line(tmp_path):
  path = _write(tmp_path / "m.jsonl", [
      json.dumps({"question_id": 1, "category": "math", "turns": ["a", "b"]}),
      json.dumps({"task_id": "HumanEval/3", "prompt": "def f():", "test": "x"}),
      json.dumps({"question": "q?", "answer": "42"}),
  ])
  assert load_prompts(path) == [Prompt("1", "math", ("a", "b")),
                                Prompt("HumanEval/3", "humaneval", ("def f():",)),
                                Prompt("gsm8k/2", "gsm8k", ("q?",))]


def test_text_file(tmp_path):
  path = _write(tmp_path / "p.txt", ["Once upon a time", "", "  The cat sat  ", ""])
  assert load_prompts(path) == [Prompt("0", "default", ("Once upon a time",)),
                                Prompt("1", "default", ("The cat sat",))]


# --- Errors -------------------------------------------------------------------------------------

def test_malformed_line_reports_line_number(tmp_path):
  path = _write(tmp_path / "bad.jsonl", ['{"prompt": "ok"}', "", '{"prompt": "broken"', "{}"])
  with pytest.raises(PromptFileError, match=f"^{re.escape(path)}:3: malformed JSON"):
    load_prompts(path)


def test_unknown_format_names_line_and_keys(tmp_path):
  path = _write(tmp_path / "u.jsonl", ['{"prompt": "ok"}', '{"text": "hi", "label": 1}'])
  with pytest.raises(PromptFileError, match=f"^{re.escape(path)}:2: unknown prompt format") as e:
    load_prompts(path)
  assert "'label'" in str(e.value) and "'text'" in str(e.value)


def test_missing_file(tmp_path):
  path = str(tmp_path / "nope.jsonl")
  with pytest.raises(PromptFileError, match="nope.jsonl"):
    load_prompts(path)


def test_empty_file(tmp_path):
  path = _write(tmp_path / "e.jsonl", ["", "  "])
  with pytest.raises(PromptFileError, match="no prompts"):
    load_prompts(path)


def test_bad_fields_and_duplicates(tmp_path):
  turns = _write(tmp_path / "t.jsonl", ['{"question_id": 1, "category": "x", "turns": []}'])
  with pytest.raises(PromptFileError, match=r":1: field 'turns'"):
    load_prompts(turns)
  dup = _write(tmp_path / "d.jsonl", ['{"prompt": "a", "id": "x"}', '{"prompt": "b", "id": "x"}'])
  with pytest.raises(PromptFileError, match=r":2: duplicate prompt id 'x' \(first seen on line 1"):
    load_prompts(dup)
  with pytest.raises(PromptFileError, match="extension"):
    load_prompts(_write(tmp_path / "p.csv", ["a"]))


# --- Tokenization -------------------------------------------------------------------------------

def test_encode_prompt_plain(tok):
  text = "Once upon a time, there was a cat."
  ids = encode_prompt(tok, Prompt("0", "default", (text,)))
  assert ids == list(tok(text)["input_ids"])
  assert ids[0] == 1 and len(ids) > 5
  assert all(type(t) is int for t in ids)
  second = encode_prompt(tok, Prompt("0", "default", ("a", "The dog ran.")), turn=1)
  assert second == list(tok("The dog ran.")["input_ids"])
  with pytest.raises(IndexError, match="turn 1"):
    encode_prompt(tok, Prompt("0", "default", ("a",)), turn=1)


def test_encode_prompt_chat_template(chat_tok):
  ids = encode_prompt(chat_tok, Prompt("0", "default", ("Hello world",)))
  expected = chat_tok("<|user|>Hello world<|assistant|>", add_special_tokens=False)["input_ids"]
  assert ids == list(expected)
  assert type(ids) is list and all(type(t) is int for t in ids)
  assert ids != list(chat_tok("Hello world")["input_ids"])


def test_truncation_left_keeps_bos(tok):
  prompt = Prompt("p1", "default", ("Once upon a time, there was a little cat who liked fish.",))
  full = encode_prompt(tok, prompt)
  assert full[0] == 1 and len(full) > 8
  assert encode_prompts(tok, [prompt], max_prompt_len=6) == [[1] + full[-5:]]
  assert encode_prompts(tok, [prompt], max_prompt_len=len(full)) == [full]


def test_truncation_left_without_bos(chat_tok):
  prompt = Prompt("p1", "default", ("Once upon a time, there was a little cat.",))
  full = encode_prompt(chat_tok, prompt)
  assert full[0] != chat_tok.bos_token_id
  assert encode_prompts(chat_tok, [prompt], max_prompt_len=6) == [full[-6:]]


def test_truncation_error_and_unknown(tok):
  short, long = Prompt("s", "d", ("Hi.",)), Prompt("long-one", "d", ("Once upon a time " * 5,))
  n = len(encode_prompt(tok, long))
  assert encode_prompts(tok, [short], 8, truncation="error") == [encode_prompt(tok, short)]
  with pytest.raises(ValueError, match=f"'long-one' is {n} tokens.*max_prompt_len=8"):
    encode_prompts(tok, [short, long], 8, truncation="error")
  with pytest.raises(ValueError, match="'right'"):
    encode_prompts(tok, [short], 8, truncation="right")
