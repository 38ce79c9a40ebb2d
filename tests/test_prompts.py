"""Prompt-file readers (real benchmark files and synthetic edge cases) and prompt tokenization."""

import collections
import gzip
import json
import re

import pytest

from ppow_jax import assets
from ppow_jax.data import Prompt, PromptFileError, encode_prompt, encode_prompts, load_prompts
from ppow_jax.models.hf_checkpoint import load_tokenizer

SPEC_BENCH, HUMAN_EVAL, GSM8K = assets.SPEC_BENCH, assets.HUMAN_EVAL, assets.GSM8K
TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>{% endif %}")


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
  prompts = load_prompts(SPEC_BENCH)
  assert len(prompts) == 480
  counts = collections.Counter(p.category for p in prompts)
  assert len(counts) == 13
  assert counts["writing"] == 10 and counts["translation"] == 80
  assert prompts[0].id == "81" and prompts[0].category == "writing"
  assert len(prompts[0].turns) == 2 and prompts[0].turns[0].startswith("Compose an engaging")
  assert len({p.id for p in prompts}) == 480


def test_spec_bench_filters():
  path = SPEC_BENCH
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
  prompts = load_prompts(HUMAN_EVAL)
  assert len(prompts) == 164
  assert {p.category for p in prompts} == {"humaneval"}
  assert prompts[0].id == "HumanEval/0" and prompts[-1].id == "HumanEval/163"
  assert prompts[0].turns[0].startswith("from typing import List")


def test_gsm8k():
  prompts = load_prompts(GSM8K)
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
  with pytest.raises(PromptFileError, match=r":2: duplicate prompt id 'x' \(first seen at .*d\.jsonl:1\)"):
    load_prompts(dup)
  with pytest.raises(PromptFileError, match="extension"):
    load_prompts(_write(tmp_path / "p.csv", ["a"]))


def test_chat_dataset_formats_jsonl_and_json(tmp_path):
  sharegpt = {"id": "sg1", "conversations": [
      {"from": "system", "value": "be brief"}, {"from": "human", "value": "Hi there"},
      {"from": "gpt", "value": "Hello!"}, {"from": "human", "value": "Tell me a joke"}]}
  messages = {"messages": [{"role": "system", "content": "sys"},
                           {"role": "user", "content": "What is 2+2?"},
                           {"role": "assistant", "content": "4"}]}
  alpaca = {"instruction": "Summarize the text.", "input": "Cats sleep a lot.", "output": "..."}
  alpaca_no_input = {"instruction": "Name a color.", "input": "", "output": "red"}
  dolly = {"instruction": "Who wrote it?", "context": "Hamlet is a play.", "response": "x",
           "category": "closed_qa"}
  path = _write(tmp_path / "mix.jsonl", [json.dumps(r) for r in
                                         (sharegpt, messages, alpaca, alpaca_no_input, dolly)])
  ps = load_prompts(path)
  assert [p.id for p in ps] == ["sg1", "1", "2", "3", "4"]
  assert ps[0].turns == ("Hi there", "Tell me a joke") and ps[0].category == "sharegpt"
  assert ps[1].turns == ("What is 2+2?",) and ps[1].category == "chat"
  assert ps[2].turns == ("Summarize the text.\n\nCats sleep a lot.",) and ps[2].category == "alpaca"
  assert ps[3].turns == ("Name a color.",)
  assert ps[4].turns == ("Who wrote it?\n\nHamlet is a play.",) and ps[4].category == "closed_qa"
  # The same records as a JSON list (alpaca_data.json style) read the same.
  as_json = tmp_path / "mix.json"
  as_json.write_text(json.dumps([sharegpt, messages, alpaca, alpaca_no_input, dolly], indent=1))
  assert load_prompts(str(as_json)) == ps


def test_chat_dataset_format_errors(tmp_path):
  no_user = _write(tmp_path / "a.jsonl", [json.dumps(
      {"conversations": [{"from": "gpt", "value": "only the model talks"}]})])
  with pytest.raises(PromptFileError, match=r"a\.jsonl:1: no user turn"):
    load_prompts(no_user)
  bad_turn = _write(tmp_path / "b.jsonl", [json.dumps({"messages": [{"role": "user"}]})])
  with pytest.raises(PromptFileError, match=r"b\.jsonl:1: turn 0 must be an object with 'role' and 'content'"):
    load_prompts(bad_turn)
  not_list = tmp_path / "c.json"
  not_list.write_text(json.dumps({"instruction": "x"}))
  with pytest.raises(PromptFileError, match=r"c\.json: a \.json prompt file must hold a list"):
    load_prompts(str(not_list))
  broken = tmp_path / "d.json"
  broken.write_text('[{"instruction": "x"},\n {"instruction": ]')
  with pytest.raises(PromptFileError, match=r"d\.json:2: malformed JSON"):
    load_prompts(str(broken))
  empty_instr = tmp_path / "e.json"
  empty_instr.write_text(json.dumps([{"instruction": "ok"}, {"instruction": ""}]))
  with pytest.raises(PromptFileError, match=r"e\.json: record 1: field 'instruction' must be a non-empty"):
    load_prompts(str(empty_instr))


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
