"""Conversation files and conversations as training sequences: the streaming reader (cut-off
files), chat-template tokenization, the assistant-only loss mask, truncation, the answer sources
and the dataset that carries the mask into training."""

import dataclasses
import json
import logging
import os
import re

import numpy as np
import pytest

from ppow_jax.data import conversations, datasets, selfdistill
from ppow_jax.data import prompts as prompt_files
from ppow_jax.data.prompts import Conversation, PromptFileError, load_conversations, load_prompts
from ppow_jax.models.hf_checkpoint import load_model, load_tokenizer

SHAREGPT = [
    {"id": "a", "conversations": [{"from": "human", "value": "Name a red fruit."},
                                  {"from": "gpt", "value": "An apple."},
                                  {"from": "human", "value": "And a yellow one?"},
                                  {"from": "gpt", "value": "A banana \u2014 ripe \U0001f34c."}]},
    {"id": "b", "conversations": [{"from": "system", "value": "Answer in one word."},
                                  {"from": "human", "value": "Capital of France?"},
                                  {"from": "gpt", "value": "Paris."}]},
    {"id": "c", "conversations": [{"from": "human", "value": "What is 2+2?"},
                                  {"from": "gpt", "value": "4, since two and two make four."}]},
]
TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def _cut_json(tmp_path, records, keep: int, name="cut.json"):
  """A JSON list of `records` cut off in the middle of record `keep` (a partial download)."""
  text = json.dumps(records, indent=2)
  start = text.index(json.dumps(records[keep]["id"]), text.index(json.dumps(records[keep - 1]
                                                                              ["id"])) + 1)
  path = tmp_path / name
  path.write_text(text[:start + 40])
  return str(path)


def _warnings(caplog):
  return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


@pytest.fixture(scope="module")
def smol_tok(smollm2_path):
  return load_tokenizer(smollm2_path)


# --- Reading -----------------------------------------------------------------------------------

def test_truncated_sharegpt_file_yields_its_complete_records_and_one_warning(tmp_path, caplog):
  path = _cut_json(tmp_path, SHAREGPT, keep=2)
  with caplog.at_level(logging.WARNING):
    convs, stats = load_conversations(path)
  assert [c.id for c in convs] == ["a", "b"] and stats.records == 2
  assert convs[0].messages == (("user", "Name a red fruit."), ("assistant", "An apple."),
                               ("user", "And a yellow one?"),
                               ("assistant", "A banana \u2014 ripe \U0001f34c."))
  assert convs[1].messages[0] == ("system", "Answer in one word.")
  [warning] = _warnings(caplog)
  assert path in warning and "ends early" in warning and "2 complete records" in warning
  # The prompt reader reads the same file the same way (it refused it whole before).
  caplog.clear()
  with caplog.at_level(logging.WARNING):
    assert [p.id for p in load_prompts(path)] == ["a", "b"]
  assert len(_warnings(caplog)) == 1
  # JSONL cut inside its last line: the same.
  jsonl = tmp_path / "cut.jsonl"
  jsonl.write_text("".join(json.dumps(r) + "\n" for r in SHAREGPT[:2])
                   + json.dumps(SHAREGPT[2])[:30])
  caplog.clear()
  with caplog.at_level(logging.WARNING):
    assert [c.id for c in load_conversations(str(jsonl))[0]] == ["a", "b"]
  assert len(_warnings(caplog)) == 1 and "2 complete records" in _warnings(caplog)[0]


def test_streaming_reads_across_chunk_boundaries(tmp_path, monkeypatch, caplog):
  """Records read a few characters at a time (every cut: inside escapes, strings, numbers,
  between records) equal json.load's, with no warning for a whole file."""
  records = SHAREGPT * 3 + [{"id": 7, "messages": [{"role": "user", "content": "q\\\"\u00e9"},
                                                   {"role": "assistant", "content": "x" * 50}]}]
  path = tmp_path / "whole.json"
  path.write_text(json.dumps(records, indent=1))
  for size in (1, 3, 7, 64):
    monkeypatch.setattr(prompt_files, "_CHUNK_CHARS", size)
    with caplog.at_level(logging.WARNING):
      got = list(prompt_files._json_records(str(path)))
    assert [obj for _, obj in got] == records, size
  assert not _warnings(caplog)


def test_malformed_json_messages_name_line_and_column(tmp_path):
  # A defect inside the file (not at its end) stays an error; "at" is not doubled.
  text = json.dumps(SHAREGPT[:2], indent=2).replace('"Paris."', '"Paris.\n"')
  bad = tmp_path / "bad.json"
  bad.write_text(text)
  line = text[:text.index('"Paris.')].count("\n") + 1
  column = text.index('"Paris.') - text.rfind("\n", 0, text.index('"Paris.'))
  with pytest.raises(PromptFileError, match=re.escape(
      f"{bad}:{line}: malformed JSON (Invalid control character at column {column + 7})")):
    load_conversations(str(bad))
  with pytest.raises(PromptFileError) as e:
    load_prompts(str(bad))
  assert " at at " not in str(e.value)
  # JSONL: the column of the defect in its own line.
  jsonl = tmp_path / "bad.jsonl"
  jsonl.write_text('{"prompt": "ok"}\n{"prompt": "fine", oops}\n{"prompt": "x"}\n')
  with pytest.raises(PromptFileError, match=re.escape(
      f"{jsonl}:2: malformed JSON (Expecting property name enclosed in double quotes at column "
      "20)")):
    load_prompts(str(jsonl))
  # An incomplete line that is not the last one is a defect, not a cut-off file.
  jsonl.write_text('{"prompt": "ok"}\n{"prompt": "cut\n{"prompt": "x"}\n')
  with pytest.raises(PromptFileError, match=re.escape(f"{jsonl}:2: malformed JSON")):
    load_prompts(str(jsonl))


def test_records_without_user_or_assistant_are_skipped_and_counted(tmp_path):
  records = [
      SHAREGPT[0],
      {"conversations": [{"from": "gpt", "value": "Hello, how can I help?"}]},  # no user
      {"messages": [{"role": "user", "content": "Anyone there?"}]},  # no assistant
      {"messages": [{"role": "system", "content": "sys"}, {"role": "user", "content": "Hi"},
                    {"role": "user", "content": "Hello?"}, {"role": "tool", "content": "{}"},
                    {"role": "assistant", "content": ""}, {"role": "assistant",
                                                           "content": "Hi!"}]},
  ]
  path = tmp_path / "mixed.jsonl"
  path.write_text("".join(json.dumps(r) + "\n" for r in records))
  convs, stats = load_conversations(str(path))
  assert (stats.records, stats.kept, stats.no_user, stats.no_assistant) == (4, 2, 1, 1)
  # Consecutive user turns merge; the tool turn and the empty answer are dropped.
  assert convs[1] == Conversation("3", (("system", "sys"), ("user", "Hi\n\nHello?"),
                                        ("assistant", "Hi!")))


def test_prompt_reader_skips_conversations_without_a_user_turn(tmp_path, caplog):
  """Real chat logs hold empty turns and model-only records: the prompt reader skips them with
  one warning instead of refusing the file (a file of nothing else stays an error)."""
  records = [SHAREGPT[0], {"id": "e", "conversations": []},
             {"id": "f", "conversations": [{"from": "human", "value": " "},
                                           {"from": "gpt", "value": "Hi"}]}, SHAREGPT[2]]
  path = tmp_path / "chats.json"
  path.write_text(json.dumps(records))
  with caplog.at_level(logging.WARNING):
    got = load_prompts(str(path))
  assert [p.id for p in got] == ["a", "c"] and got[0].turns == ("Name a red fruit.",
                                                                "And a yellow one?")
  [warning] = _warnings(caplog)
  assert "skipped 2 conversations without a user turn" in warning and "record 1" in warning


def test_a_file_without_assistant_turns_is_a_clear_error(tmp_path):
  path = tmp_path / "questions.json"
  path.write_text(json.dumps([{"conversations": [{"from": "human", "value": "Why?"}]},
                              {"messages": [{"role": "user", "content": "How?"}]}]))
  with pytest.raises(PromptFileError, match=re.escape(
      f"{path}: no conversation with both a user and an assistant turn (2 records: 2 without an "
      "assistant turn, 0 without a user turn)")):
    load_conversations(str(path))
  other = tmp_path / "alpaca.jsonl"
  other.write_text(json.dumps({"instruction": "x", "output": "y"}) + "\n")
  with pytest.raises(PromptFileError, match=r"alpaca\.jsonl:1: not a conversation"):
    load_conversations(str(other))


# --- Tokenization and the loss mask ------------------------------------------------------------

def _messages(conv):
  return conv.as_messages()


def test_multi_turn_conversation_tokenizes_as_apply_chat_template(smol_tok):
  for conv in (SHAREGPT[0], SHAREGPT[1]):
    msgs = [{"role": {"human": "user", "gpt": "assistant"}.get(t["from"], t["from"]),
             "content": t["value"]} for t in conv["conversations"]]
    want = prompt_files._as_id_list(smol_tok.apply_chat_template(msgs, tokenize=True))
    got = conversations.encode_conversation(smol_tok, msgs)
    assert got.ids.tolist() == want
    gen = conversations.encode_conversation(smol_tok, msgs[:-1], add_generation_prompt=True)
    assert gen.ids.tolist() == prompt_files._as_id_list(smol_tok.apply_chat_template(
        msgs[:-1], tokenize=True, add_generation_prompt=True))
  # No system turn given: SmolLM2's template supplies its default system prompt, without loss.
  text = smol_tok.decode(conversations.encode_conversation(
      smol_tok, [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]).ids)
  assert text.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")


def test_loss_only_on_assistant_turns_with_their_end_of_turn_token(smol_tok):
  """The runs of loss tokens decode to exactly the answers, each closed by <|im_end|>: a user,
  system or role-header token with loss would add or lengthen a run."""
  msgs = [{"role": "system", "content": "Answer briefly."},
          {"role": "user", "content": "Name a red fruit."},
          {"role": "assistant", "content": "An apple."},
          {"role": "user", "content": "And a yellow one?"},
          {"role": "assistant", "content": "A banana."}]
  for m in (msgs, msgs[1:]):  # with a system turn, and with the template's default one
    enc = conversations.encode_conversation(smol_tok, m)
    runs, cur = [], []
    for tok, on in zip(enc.ids.tolist(), enc.loss_mask.tolist()):
      if on:
        cur.append(tok)
      elif cur:
        runs.append(cur)
        cur = []
    runs += [cur] if cur else []
    assert [smol_tok.decode(r) for r in runs] == ["An apple.<|im_end|>", "A banana.<|im_end|>"]
    # Every token outside the runs is a system/user/header token: none has loss.
    user_sys = smol_tok.decode(enc.ids[~enc.loss_mask].tolist())
    assert "Name a red fruit." in user_sys and "apple" not in user_sys
  # The mask reaches training: a slot's target distribution (over the next token) is trained
  # exactly where that next token is an assistant token.
  records = _MaskRecords([(enc.ids, enc.loss_mask)])
  batch = selfdistill.SequenceData(records, seq_len=len(enc.ids) + 3, batch_size=1).batch(0)
  trained = np.flatnonzero(batch["loss_mask"][0])
  assert trained.tolist() == (np.flatnonzero(enc.loss_mask) - 1).tolist()
  predicted = smol_tok.decode(enc.ids[trained + 1].tolist())
  assert predicted == "An apple.<|im_end|>A banana.<|im_end|>"


class _MaskRecords(list):
  """Records in the [prompt_len, tokens...] layout with loss masks, as MaskedRecords reads."""

  def __init__(self, seqs):
    super().__init__(np.concatenate([[np.argmax(m)], ids]).astype(np.int32) for ids, m in seqs)
    self._masks = [np.asarray(m, bool) for _, m in seqs]

  def loss_mask(self, i):
    return self._masks[i]


def test_truncation_keeps_whole_exchanges(smol_tok):
  msgs = [{"role": "user", "content": "Name a red fruit."},
          {"role": "assistant", "content": "An apple."},
          {"role": "user", "content": "And a yellow one?"},
          {"role": "assistant", "content": "A banana, which is long and curved."}]
  enc = conversations.encode_conversation(smol_tok, msgs)
  first = enc.exchange_ends[0]
  ids, mask = conversations.truncate(enc, len(enc.ids) - 1)  # the second answer does not fit
  assert ids.tolist() == enc.ids[:first].tolist()
  assert smol_tok.decode(ids[mask].tolist()) == "An apple.<|im_end|>"
  ids, mask = conversations.truncate(enc, first - 3)  # not even the first: cut inside it
  assert len(ids) == first - 3 and mask[-1]
  user_end = int(np.argmax(enc.loss_mask))
  assert conversations.truncate(enc, user_end) is None  # no answer token left
  ids, _ = conversations.truncate(enc, 10 ** 6)
  assert ids.tolist() == enc.ids.tolist()


# --- Answer sources and the dataset ------------------------------------------------------------

def _convs():
  return [Conversation(str(i), (("user", f"Tell me about topic {i}."),
                                ("assistant", f"Topic {i} is interesting."),
                                ("user", "More?"), ("assistant", "That is all.")))
          for i in range(6)]


def test_given_answers_dataset_carries_the_mask(smol_tok, tmp_path):
  convs = _convs()
  specs = {"train": conversations.SplitSpec(convs[:4], "given", 0.0, 0),
           "heldout": conversations.SplitSpec(convs[4:], "given", 0.0, 0)}
  recs = conversations.prepare(None, None, smol_tok, str(tmp_path), specs, seq_len=256,
                               max_new_tokens=8, temperature=0.0, batch_size=2, progress=False)
  train = recs["train"]
  assert len(train) == 4 and len(recs["heldout"]) == 2
  want = conversations.encode_conversation(smol_tok, convs[0].as_messages())
  assert train[0][1:].tolist() == want.ids.tolist()
  assert train.loss_mask(0).tolist() == want.loss_mask.tolist()
  assert int(train[0][0]) == int(np.argmax(want.loss_mask))  # prompt_len: the first answer token
  counts = selfdistill.token_counts(train, smol_tok.vocab_size)
  assert counts.sum() == sum(int(train.loss_mask(i).sum()) for i in range(4))
  user_tok = smol_tok("More", add_special_tokens=False)["input_ids"][0]
  assert counts[user_tok] == 0  # user-turn tokens are not counted for the draft vocabulary
  # Reused as it is; another answer source asks for a rebuild.
  again = conversations.prepare(None, None, smol_tok, str(tmp_path), specs, seq_len=256,
                                max_new_tokens=8, temperature=0.0, batch_size=2, progress=False)
  assert again["train"][3].tolist() == train[3].tolist()


def test_mix_share_is_seeded():
  m = conversations.regenerate_mask(1000, "mix", 0.3, seed=1)
  assert 250 < m.sum() < 350
  assert (m == conversations.regenerate_mask(1000, "mix", 0.3, seed=1)).all()
  assert not conversations.regenerate_mask(5, "given", 0.3, 0).any()
  assert conversations.regenerate_mask(5, "regenerate", 0.0, 0).all()
  with pytest.raises(ValueError, match="unknown answers"):
    conversations.regenerate_mask(5, "both", 0.5, 0)


def test_regeneration_is_turn_by_turn_and_resumable(stories_path, tmp_path, monkeypatch):
  """stories260k with a chat template answers each user turn; the first greedy token of each
  first answer is made an end-of-sequence token, so the first answers are one token and the
  second turns are answered on the regenerated history. A rerun reads the round files and
  generates nothing."""
  tok = load_tokenizer(stories_path)
  tok.chat_template = TEMPLATE
  model = load_model(stories_path)
  cfg, params = model.cfg, model.params()
  convs = _convs()[:3]
  from ppow_jax.decoding import continuous, sampling
  firsts = [conversations.encode_conversation(tok, c.as_messages()[:1],
                                              add_generation_prompt=True).ids.tolist()
            for c in convs]
  stops = [s for [s] in continuous.generate(cfg, params, firsts, continuous.StreamSettings(
      max_new_tokens=1, batch_size=3, sp=sampling.SamplingParams(temperature=0.0)),
      progress=False)]
  cfg = dataclasses.replace(cfg, eos_token_id=tuple(sorted(set(stops))))
  kw = dict(out_dir=str(tmp_path), split="train", seq_len=96, max_new_tokens=6, temperature=0.0,
            top_p=1.0, seed=0, batch_size=2, progress=False)
  got = conversations.regenerated_sequences(cfg, params, tok, convs, **kw)
  for (ids, mask), conv, stop in zip(got, convs, stops):
    history = conversations.encode_conversation(tok, [
        {"role": "user", "content": conv.user_turns[0]},
        {"role": "assistant", "content": tok.decode([stop], skip_special_tokens=True)},
        {"role": "user", "content": conv.user_turns[1]}], add_generation_prompt=True)
    n = len(history.ids)
    assert ids[:n].tolist() == history.ids.tolist()  # turn 2 answered on the new history
    assert mask[:n].tolist() == history.loss_mask.tolist() and mask[n:].all() and len(ids) > n
    assert "interesting" not in tok.decode(ids.tolist())  # the file's answers are replaced
  assert len(list(tmp_path.glob("train-r01-*.npz"))) == 1
  monkeypatch.setattr(continuous, "generate", lambda *a, **k: pytest.fail("generated again"))
  again = conversations.regenerated_sequences(cfg, params, tok, convs, **kw)
  assert all((a[0] == b[0]).all() and (a[1] == b[1]).all() for a, b in zip(got, again))


# --- Training on conversations, and the draft vocabulary ---------------------------------------

@pytest.fixture(scope="module")
def chat_stories(stories_path, tmp_path_factory):
  """stories260k with a chat template (its tokenizer has none), as a checkpoint directory."""
  import shutil
  out = tmp_path_factory.mktemp("chat_stories") / "model"
  shutil.copytree(stories_path, out)
  cfg_file = out / "tokenizer_config.json"
  cfg = json.loads(cfg_file.read_text())
  cfg["chat_template"] = TEMPLATE
  cfg_file.write_text(json.dumps(cfg))
  return str(out)


def _chat_file(tmp_path, n=24):
  words = ["cat", "dog", "bird", "fish", "frog", "lion"]
  recs = [{"id": f"s{i}", "conversations": [
      {"from": "human", "value": f"Tell me a story about a {words[i % 6]} number {i}."},
      {"from": "gpt", "value": f"Once upon a time there was a {words[i % 6]}. It was happy."},
      {"from": "human", "value": "What happened next?"},
      {"from": "gpt", "value": "The sun came out and they played all day."}]}
      for i in range(n)]
  path = tmp_path / "chats.json"
  path.write_text(json.dumps(recs))
  return str(path)


def test_sft_trains_on_conversations_with_mixed_answers(chat_stories, tmp_path, capsys):
  """configs/sft.py on a conversation file: a quarter regenerated, the rest as given; the
  training batches' loss sits on the assistant turns, the draft vocabulary is chosen from the
  target's argmaxes, and a run finishes with its export."""
  import configs
  from ppow_jax.modes import sft
  from ppow_jax import config_checks
  c = configs.load("sft")
  c.target.path = chat_stories
  c.data.update(dir=str(tmp_path / "data"), conversations=_chat_file(tmp_path), answers="mix",
                mix_ratio=0.25, num_samples=24, num_heldout=4, max_new_tokens=12, seq_len=64,
                gen_batch_size=8)
  c.drafter.update(draft_vocab_size=64, vocab_selection="target_argmax", vocab_sample=8)
  c.ttt.steps = 1
  c.train.update(num_steps=2, batch_size=8, log_every=1, checkpoint_every=2)
  c.eval.update(windows=(), num_prompts=2, max_new_tokens=8, batch_size=2)
  config_checks.check(c)
  (tmp_path / "run").mkdir()
  sft.run(c, str(tmp_path / "run"))
  out = capsys.readouterr().out
  assert "conversations train: 20 sequences of 20 conversations" in out
  assert "draft vocabulary: the 64 tokens the target predicts most often" in out
  train = datasets.MaskedRecords(datasets.ConversationData(
      data_dir=str(tmp_path / "data")).as_data_source()["train"])
  tok = load_tokenizer(chat_stories)
  given = [i for i in range(len(train))
           if "It was happy." in tok.decode(train[i][1:].tolist())]
  assert 10 <= len(given) < 20  # some regenerated, most given
  for i in range(len(train)):
    text = tok.decode(train[i][1:][train.loss_mask(i)].tolist())
    assert "Tell me" not in text and "What happened" not in text and "<|user|>" not in text
  assert (tmp_path / "run" / "export").is_dir()


def test_config_checks_for_conversations(tmp_path):
  import configs
  from ppow_jax import config_checks
  from ppow_jax.user_errors import ConfigValueError
  base = configs.load("sft")
  base.target.path = str(tmp_path)
  (tmp_path / "config.json").write_text("{}")
  cases = [
      (dict(conversations="nope.json"), r"data\.conversations='nope\.json': no such file"),
      (dict(answers="both"), r"data\.answers='both': must be one of 'given', 'regenerate'"),
      (dict(answers="given"), r"data\.answers='given': needs data\.conversations"),
      (dict(conversations="sharegpt", mix_ratio=1.5), r"data\.mix_ratio=1\.5"),
      (dict(conversations="sharegpt", synthesize=8), r"cannot be combined"),
  ]
  for fields, message in cases:
    c = base.copy_and_resolve_references()
    c.data.update(fields)
    with pytest.raises(ConfigValueError, match=message):
      config_checks.check(c)
  c = base.copy_and_resolve_references()
  c.drafter.vocab_selection = "rare"
  with pytest.raises(ConfigValueError, match=r"drafter\.vocab_selection='rare'"):
    config_checks.check(c)


def test_vocab_coverage_and_target_argmax(stories_path):
  from ppow_jax.eagle3 import vocab
  choice = np.array([5, 0, 3, 3, 1])
  seen = np.array([1, 6, 2, 0, 1])
  # size 1 holds token 0; size 2 adds token 2 (tie with 3 broken by the lower id); all: 1.
  assert vocab.coverage(choice, seen, [1, 2, 5]) == {1: 0.1, 2: 0.3, 5: 1.0}
  # target_argmax: argmax counts first, then response frequency (unseen argmaxes are not ranked
  # by id).
  ranked = vocab.by_argmax_then_frequency([0, 2, 0, 2, 0], [9, 1, 0, 5, 7])
  d2t, _ = vocab.build_vocab_maps(ranked, 3)
  assert (np.arange(3) + d2t).tolist() == [0, 1, 3]
  model = load_model(stories_path)
  cfg, params = model.cfg, model.params()
  seqs = [(np.array([1, 5, 9, 14, 30, 2, 7], np.int32),
           np.array([0, 0, 0, 1, 1, 0, 1], bool)),
          (np.array([1, 8, 8, 8], np.int32), np.array([0, 1, 1, 1], bool))]
  records = _MaskRecords(seqs)
  got = vocab.target_argmax(cfg, params, records, seq_len=6, batch_size=4)
  from ppow_jax.models import transformer
  for (ids, mask), (am, nxt) in zip(seqs, got):
    ids, mask = ids[:6], mask[:6]
    logits = transformer.forward(cfg, params, ids[None]).logits[0]
    pos = np.flatnonzero(mask[1:])  # positions whose next token is a response token
    assert am.tolist() == np.argmax(np.asarray(logits), -1)[pos].tolist()
    assert nxt.tolist() == ids[pos + 1].tolist()
  counts = vocab.argmax_counts(cfg, params, records, seq_len=6)
  assert counts.sum() == sum(len(a) for a, _ in got) == 2 + 3


def test_a_cached_conversation_dataset_is_not_read_again(chat_stories, tmp_path, capsys, caplog):
  """Every stage after the first finds the dataset cached: it neither reads the conversation
  file (here deleted) nor rebuilds, and a config that asks for other conversations is warned
  by field name."""
  import configs
  from ppow_jax.training import data_feed, startup
  c = configs.load("sft")
  c.target.path = chat_stories
  chats = _chat_file(tmp_path, n=12)
  c.data.update(dir=str(tmp_path / "data"), conversations=chats, answers="given",
                num_samples=12, num_heldout=2, seq_len=64)
  target = startup.load_target(c)
  train, held = data_feed.prepare_data(c, target, str(tmp_path))
  assert "conversations from" in capsys.readouterr().out
  assert (len(train), len(held)) == (10, 2)
  os.remove(chats)
  again, _ = data_feed.prepare_data(c, target, str(tmp_path))
  assert "conversations from" not in capsys.readouterr().out
  assert [again[i].tolist() for i in range(10)] == [train[i].tolist() for i in range(10)]
  assert not [r for r in caplog.records if "reusing cached" in r.getMessage()]
  c.data.num_samples = 8
  data_feed.prepare_data(c, target, str(tmp_path))
  assert any("num_samples=12" in r.getMessage() and "num_samples=8" in r.getMessage()
             for r in caplog.records)
