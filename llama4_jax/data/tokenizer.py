"""Llama 4's tokenizer and chat format, on tiktoken.

Llama 4's `tokenizer.model` is a tiktoken rank file: one `base64(token_bytes) rank` line per mergeable token (200,000
of them), used with the o200k pre-tokenisation regex. After the mergeable ranks come `num_reserved_special_tokens`
(2048) special-token slots, so special token k has id `len(ranks) + k` and the model's vocabulary is
`len(ranks) + 2048` = 202,048. The slot names and their order follow Meta's reference `models/llama4/tokenizer.py`
(llama-models), including its block-wise numbering of reserved slots.

The same class loads the shipped 3840-rank tiny tokenizer (`Tokenizer.default()`, 256 special slots, vocabulary
4096) so that every test and example runs offline with the real special-token layout, only smaller.

Chat format (spec section 6):
  <|begin_of_text|> then per message <|header_start|>{role}<|header_end|>\\n\\n{content}<|eot|>
  then, to prompt a reply, <|header_start|>assistant<|header_end|>\\n\\n
"""

from __future__ import annotations

import base64
import binascii
import os
import pathlib
import re
from typing import AbstractSet, Iterator, Literal, Mapping, Sequence

import tiktoken

_ASSETS = pathlib.Path(__file__).resolve().parent / "assets"
TINY_TOKENIZER = str(_ASSETS / "tiny_tokenizer.model")

# o200k pre-tokenisation (tiktoken's o200k_base, used unchanged by Llama 4): letter runs with an optional leading
# non-letter and English contractions (two variants for case), 1-3 digit groups, punctuation runs with trailing
# newlines or slashes, newline runs, whitespace not followed by non-space, and any remaining whitespace.
_O200K_ALTERNATIVES = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    r"\p{N}{1,3}",
    r" ?[^\s\p{L}\p{N}]+[\r\n/]*",
    r"\s*[\r\n]+",
    r"\s+(?!\S)",
    r"\s+",
)
O200K_PATTERN = "|".join(_O200K_ALTERNATIVES)

# Named special tokens by offset from the first special id (Meta: 200000 + offset).
_NAMED_SPECIALS = {
    0: "begin_of_text", 1: "end_of_text", 2: "fim_prefix", 3: "fim_middle", 4: "fim_suffix",
    5: "header_start", 6: "header_end", 7: "eom", 8: "eot", 9: "step",
    16: "python_start", 17: "python_end", 18: "finetune_right_pad",
    80: "image_start", 81: "image_end", 84: "tile_x_separator", 85: "tile_y_separator", 90: "image", 92: "patch",
    1142: "reasoning_thinking_start", 1143: "reasoning_thinking_end",
}
# Reserved slots inside Meta's text-post-train, vision and reasoning blocks: (first offset, last offset, block name,
# number of the first slot). Meta's numbering skips text_post_train 6 and 7; it is reproduced as is.
_RESERVED_BLOCKS = (
    (10, 15, "text_post_train", 0), (19, 79, "text_post_train", 8),
    (82, 83, "vision", 0), (86, 89, "vision", 2), (91, 91, "vision", 6), (93, 1133, "vision", 7),
    (1134, 1141, "reasoning", 0),
)
_FIRST_GENERIC_RESERVED = 1144  # From here on: <|reserved_special_token_{offset - 1144}|>.
# The special tokens the tokenizer and chat format cannot work without all sit below this offset.
_MIN_SPECIAL_SLOTS = 19

# tiktoken workarounds from Meta's tokenizer: its Rust core panics on very long inputs and is quadratic on very long
# runs of whitespace or of non-whitespace (openai/tiktoken#195), so inputs are cut before encoding.
TIKTOKEN_MAX_ENCODE_CHARS = 400_000
MAX_NO_WHITESPACES_CHARS = 25_000
_RUNS = re.compile(r"\s+|\S+")  # For str patterns, \s is the same predicate as str.isspace().


def llama4_special_tokens(num_slots: int = 2048) -> tuple[str, ...]:
  """Names of special-token slots 0..num_slots-1 in Meta's Llama 4 order."""
  names = [f"<|reserved_special_token_{k - _FIRST_GENERIC_RESERVED}|>" for k in range(num_slots)]
  for first, last, block, number in _RESERVED_BLOCKS:
    for k in range(first, min(last + 1, num_slots)):
      names[k] = f"<|{block}_reserved_special_token_{number + k - first}|>"
  for k, name in _NAMED_SPECIALS.items():
    if k < num_slots:
      names[k] = f"<|{name}|>"
  return tuple(names)


LLAMA4_SPECIAL_TOKENS = llama4_special_tokens(2048)


def load_ranks(path: str | os.PathLike) -> dict[bytes, int]:
  """Reads a tiktoken rank file; a malformed line raises ValueError naming the file and the 1-based line number."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"tokenizer rank file not found: {path}")
  ranks: dict[bytes, int] = {}
  with open(path, "rb") as f:
    for line_no, line in enumerate(f, start=1):
      if not line.strip():
        continue  # tiktoken skips blank lines too.
      fields = line.split()
      try:
        if len(fields) != 2:
          raise ValueError(f"expected 2 fields, got {len(fields)}")
        token, rank = base64.b64decode(fields[0], validate=True), int(fields[1])
      except (ValueError, binascii.Error) as e:
        raise ValueError(f"{path}:{line_no}: malformed line {line[:80]!r} ({e}); expected 'base64 rank'") from e
      if token in ranks:
        raise ValueError(f"{path}:{line_no}: token {token!r} already has rank {ranks[token]}")
      ranks[token] = rank
  return ranks


def split_for_tiktoken(text: str, max_chars: int = TIKTOKEN_MAX_ENCODE_CHARS,
                       max_run: int = MAX_NO_WHITESPACES_CHARS) -> Iterator[str]:
  """Cuts `text` into pieces of <= max_chars with no run of > max_run whitespace or non-whitespace characters.

  Cuts fall at the same places as in Meta's tokenizer: every max_run characters into a long run, counted from the
  run's start within each max_chars window.
  """
  for window_start in range(0, len(text), max_chars):
    window = text[window_start:window_start + max_chars]
    cuts = [0]
    for run in _RUNS.finditer(window):
      cuts.extend(range(run.start() + max_run, run.end(), max_run))
    cuts.append(len(window))
    for begin, end in zip(cuts, cuts[1:]):
      yield window[begin:end]


class Tokenizer:
  """tiktoken BPE ranks plus Llama 4's special tokens; ids >= len(ranks) are special."""

  def __init__(self, model_path: str | os.PathLike, num_reserved_special_tokens: int = 2048):
    if num_reserved_special_tokens < _MIN_SPECIAL_SLOTS:
      raise ValueError(f"num_reserved_special_tokens must be >= {_MIN_SPECIAL_SLOTS} (through "
                       f"<|finetune_right_pad|>), got {num_reserved_special_tokens}")
    self.model_path = os.fspath(model_path)
    ranks = load_ranks(self.model_path)
    if sorted(ranks.values()) != list(range(len(ranks))):
      # Special ids start right after the last rank; gaps or repeats would make them collide with BPE tokens.
      raise ValueError(f"{self.model_path}: ranks must be exactly 0..{len(ranks) - 1}")
    self.num_base_tokens = len(ranks)
    names = llama4_special_tokens(num_reserved_special_tokens)
    self.special_tokens: dict[str, int] = {name: len(ranks) + k for k, name in enumerate(names)}
    self._model = tiktoken.Encoding(name=os.path.basename(self.model_path), pat_str=O200K_PATTERN,
                                    mergeable_ranks=ranks, special_tokens=self.special_tokens)
    self.n_words = self.vocab_size = len(ranks) + num_reserved_special_tokens
    self.bos_id = self.special_tokens["<|begin_of_text|>"]
    self.eos_id = self.special_tokens["<|end_of_text|>"]
    self.pad_id = self.special_tokens["<|finetune_right_pad|>"]
    self.eot_id = self.special_tokens["<|eot|>"]
    self.eom_id = self.special_tokens["<|eom|>"]
    # Generation stops on any of these (instruct checkpoints list the same three as eos_token_id).
    self.stop_ids = (self.eos_id, self.eom_id, self.eot_id)

  @classmethod
  def default(cls) -> "Tokenizer":
    """The shipped tiny tokenizer: 3840 ranks trained on the embedded corpus + 256 special slots = 4096 ids."""
    return cls(TINY_TOKENIZER, num_reserved_special_tokens=256)

  def encode(self, text: str, bos: bool = False, eos: bool = False,
             allowed_special: AbstractSet[str] | Literal["all"] = frozenset()) -> list[int]:
    """Token ids of `text`. Special-token text is encoded as ordinary text unless listed in `allowed_special`."""
    if not isinstance(text, str):
      raise TypeError(f"encode expects str, got {type(text).__name__}")
    allowed = set(self.special_tokens) if allowed_special == "all" else set(allowed_special)
    unknown = allowed - self.special_tokens.keys()
    if unknown:
      raise ValueError(f"allowed_special names tokens this tokenizer lacks: {sorted(unknown)[:5]}")
    ids = [self.bos_id] if bos else []
    for piece in split_for_tiktoken(text):
      # disallowed_special=() makes tiktoken treat special-token text it was not allowed to use as plain text
      # instead of raising, so arbitrary user or web text can always be encoded.
      ids.extend(self._model.encode(piece, allowed_special=allowed, disallowed_special=()))
    if eos:
      ids.append(self.eos_id)
    return ids

  def decode(self, ids: Sequence[int]) -> str:
    """Text of `ids`; byte sequences that are not valid UTF-8 become U+FFFD."""
    ids = [int(i) for i in ids]
    bad = [i for i in ids if not 0 <= i < self.vocab_size]
    if bad:
      raise ValueError(f"token ids outside [0, {self.vocab_size}): {bad[:5]}")
    return self._model.decode(ids)

  def token_to_id(self, name: str) -> int:
    """Id of a special token (e.g. '<|eot|>') or of a string that is exactly one BPE token."""
    if name in self.special_tokens:
      return self.special_tokens[name]
    try:
      return self._model.encode_single_token(name)
    except KeyError:
      raise KeyError(f"{name!r} is neither a special token nor a single token of {self.model_path}") from None


ROLES = ("system", "user", "assistant", "ipython")


class ChatFormat:
  """Renders messages ({'role': ..., 'content': ...}) into Llama 4 chat token ids."""

  def __init__(self, tokenizer: Tokenizer):
    self.tokenizer = tokenizer
    self._specials = tokenizer.special_tokens

  def encode_header(self, role: str) -> list[int]:
    """<|header_start|>{role}<|header_end|>\\n\\n; role and newlines are encoded separately, as in Meta's code."""
    if role not in ROLES:
      raise ValueError(f"unknown chat role {role!r}; expected one of {ROLES}")
    return ([self._specials["<|header_start|>"]] + self.tokenizer.encode(role)
            + [self._specials["<|header_end|>"]] + self.tokenizer.encode("\n\n"))

  def encode_message(self, role: str, content: str) -> list[int]:
    """Header, content (special-token text in it stays plain text), then <|eot|>."""
    return self.encode_header(role) + self.tokenizer.encode(content) + [self.tokenizer.eot_id]

  def encode_dialog_prompt(self, messages: Sequence[Mapping[str, str]],
                           add_generation_prompt: bool = True) -> list[int]:
    """<|begin_of_text|>, every message, then (by default) an open assistant header for the model to complete."""
    ids = [self.tokenizer.bos_id]
    for message in messages:
      ids += self.encode_message(message["role"], message["content"])
    if add_generation_prompt:
      ids += self.encode_header("assistant")
    return ids

  def chat_tokens_with_mask(self, messages: Sequence[Mapping[str, str]]) -> tuple[list[int], list[int]]:
    """Dialog ids (no generation prompt) and a loss mask that is 1 exactly on assistant content and its <|eot|>.

    For supervised fine-tuning: the model learns to write replies and to end them, never to predict the prompt,
    the headers or other roles' turns.
    """
    ids, mask = [self.tokenizer.bos_id], [0]
    for message in messages:
      header = self.encode_header(message["role"])
      body = self.tokenizer.encode(message["content"]) + [self.tokenizer.eot_id]
      learn = 1 if message["role"] == "assistant" else 0
      ids += header + body
      mask += [0] * len(header) + [learn] * len(body)
    return ids, mask
