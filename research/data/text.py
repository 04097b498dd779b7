"""Text preparation: tokenizer, vocabulary with padding and out-of-vocabulary ids, LM windows.

Word level serves review classification (imdb_reviews), character level serves language
modelling (tiny_shakespeare). TFDS hands text over as `bytes` or `str`; both are accepted (utf-8).
Id 0 is padding and id 1 stands for any unknown token, so every vocabulary shares that layout and
recurrent models can build their masks from the padding id alone.
"""

import collections
import dataclasses
import json
import re
from collections.abc import Iterable, Sequence

import numpy as np

from research.errors import ConfigError, DataError

PAD, OOV = "<pad>", "<unk>"
PAD_ID, OOV_ID = 0, 1
LEVELS = ("char", "word")
TRUNCATE_SIDES = ("post", "pre")

# IMDB reviews keep the HTML line breaks of their web pages; they are layout, not words.
_LINE_BREAK = re.compile(r"<br\s*/?>", re.IGNORECASE)
_WORD_TOKEN = re.compile(r"\w+|[^\w\s]")


def _as_str(text: str | bytes) -> str:
    """Decode TFDS `bytes` as utf-8; `str` passes through."""
    if isinstance(text, str):
        return text
    if isinstance(text, bytes | bytearray):
        try:
            return bytes(text).decode("utf-8")
        except UnicodeDecodeError as error:
            raise DataError(
                f"text is not valid utf-8 ({error}); decode it before tokenizing"
            ) from None
    raise DataError(f"text must be str or bytes, got {type(text).__name__}")


def _check_level(level: str) -> None:
    if level not in LEVELS:
        raise ConfigError(f"text level={level!r} is unknown; use one of {LEVELS}")


def tokenize(text: str | bytes, *, level: str = "word", lowercase: bool = True) -> list[str]:
    """Split `text` into word tokens (runs of word characters, or single punctuation marks, with
    HTML line breaks read as spaces) or into characters (whitespace included)."""
    _check_level(level)
    text = _as_str(text)
    if lowercase:
        text = text.lower()
    if level == "char":
        return list(text)
    return _WORD_TOKEN.findall(_LINE_BREAK.sub(" ", text))


@dataclasses.dataclass(frozen=True)
class Vocabulary:
    """Token <-> id map; id 0 is padding, id 1 stands for any out-of-vocabulary token."""

    tokens: tuple[str, ...]  # tokens[i] is id i; tokens[0] == PAD, tokens[1] == OOV
    _index: dict[str, int] = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        tokens = tuple(self.tokens)
        if tokens[:2] != (PAD, OOV):
            raise DataError(
                f"vocabulary must start with {PAD!r}, {OOV!r} (ids 0 and 1), got {tokens[:2]}"
            )
        if len(set(tokens)) != len(tokens):
            repeated = sorted(t for t, n in collections.Counter(tokens).items() if n > 1)
            raise DataError(f"vocabulary repeats tokens {repeated[:5]}; each token needs one id")
        # Frozen dataclass: set the derived lookup table once, at construction.
        object.__setattr__(self, "tokens", tokens)
        object.__setattr__(self, "_index", {token: i for i, token in enumerate(tokens)})

    @classmethod
    def build(
        cls,
        token_lists: Iterable[Sequence[str]],
        *,
        min_count: int = 1,
        max_size: int | None = None,
    ) -> "Vocabulary":
        """Keep tokens seen at least min_count times, most frequent first (ties: alphabetical,
        so the result is deterministic), at most max_size ids in all (PAD and OOV included)."""
        if min_count < 1:
            raise ConfigError(f"vocabulary min_count={min_count} must be at least 1")
        if max_size is not None and max_size < 3:
            raise ConfigError(
                f"vocabulary max_size={max_size} must be at least 3 (PAD, OOV and one token)"
            )
        counts = collections.Counter(token for tokens in token_lists for token in tokens)
        for reserved in (PAD, OOV):  # they already own ids 0 and 1
            counts.pop(reserved, None)
        kept = sorted(
            (t for t, n in counts.items() if n >= min_count), key=lambda t: (-counts[t], t)
        )
        if max_size is not None:
            kept = kept[: max_size - 2]
        return cls((PAD, OOV, *kept))

    def __len__(self) -> int:
        """Number of ids, PAD and OOV included."""
        return len(self.tokens)

    def encode(self, tokens: Sequence[str]) -> np.ndarray:
        """Ids of `tokens` as int32 [len(tokens)]; unknown tokens become OOV_ID."""
        return np.array([self._index.get(token, OOV_ID) for token in tokens], np.int32)

    def decode(self, ids: Sequence[int] | np.ndarray, *, skip_padding: bool = True) -> list[str]:
        """Tokens of `ids`, dropping PAD_ID unless skip_padding is False."""
        ids = np.asarray(ids).reshape(-1)
        bad = ids[(ids < 0) | (ids >= len(self))]
        if bad.size:
            raise DataError(f"ids {bad[:5].tolist()} are outside this vocabulary of {len(self)}")
        return [self.tokens[i] for i in ids.tolist() if not (skip_padding and i == PAD_ID)]

    def to_json(self) -> str:
        """The vocabulary as JSON, to save next to a run (workdir/vocab.json)."""
        return json.dumps({"tokens": list(self.tokens)}, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> "Vocabulary":
        """Read `to_json` output back; PAD and OOV must hold ids 0 and 1."""
        try:
            tokens = json.loads(text)["tokens"]
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise DataError(f'vocabulary JSON needs {{"tokens": [...]}} ({error!r})') from None
        if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
            raise DataError("vocabulary JSON 'tokens' must be a list of strings")
        return cls(tuple(tokens))


def _check_length(length: int, name: str = "length") -> None:
    if length < 1:
        raise ConfigError(f"{name}={length} must be at least 1")


def pad_or_truncate(
    ids: np.ndarray, length: int, *, truncate: str = "post"
) -> tuple[np.ndarray, int]:
    """(ids cut or right-padded with PAD_ID to `length`, number of real ids); truncate "post"
    keeps the first `length` ids, "pre" keeps the last `length` (review endings often carry the
    verdict). Padding is always on the right (recurrent models take right-padded masks)."""
    _check_length(length)
    if truncate not in TRUNCATE_SIDES:
        raise ConfigError(f"truncate={truncate!r} is unknown; use one of {TRUNCATE_SIDES}")
    ids = np.asarray(ids, np.int32)
    if ids.ndim != 1:
        raise DataError(f"pad_or_truncate takes one id sequence (1-D), got shape {ids.shape}")
    kept = ids[:length] if truncate == "post" else ids[max(len(ids) - length, 0) :]
    out = np.full(length, PAD_ID, np.int32)
    out[: len(kept)] = kept
    return out, len(kept)


def encode_texts(
    texts: Iterable[str | bytes],
    vocab: Vocabulary,
    *,
    level: str,
    lowercase: bool,
    max_length: int,
    truncate: str = "post",
) -> dict[str, np.ndarray]:
    """{"tokens": int32 [N, max_length], "length": int32 [N]}; an empty text gets one OOV id
    (length >= 1: recurrent models need a real step)."""
    _check_length(max_length, "max_length")
    rows, lengths = [], []
    for text in texts:
        ids = vocab.encode(tokenize(text, level=level, lowercase=lowercase))
        if ids.size == 0:
            ids = np.array([OOV_ID], np.int32)
        row, n = pad_or_truncate(ids, max_length, truncate=truncate)
        rows.append(row)
        lengths.append(n)
    tokens = np.stack(rows) if rows else np.zeros((0, max_length), np.int32)
    return {"tokens": tokens, "length": np.array(lengths, np.int32)}


def lm_windows(ids: np.ndarray, length: int, stride: int | None = None) -> dict[str, np.ndarray]:
    """Language-model examples from one long id stream: inputs ids[s : s+length], targets
    ids[s+1 : s+length+1], for s = 0, stride, 2*stride, ... (stride None = length: consecutive,
    non-overlapping windows, as truncated BPTT needs). int32 arrays [W, length]."""
    _check_length(length)
    stride = length if stride is None else stride
    _check_length(stride, "stride")
    ids = np.asarray(ids, np.int32)
    if ids.ndim != 1:
        raise DataError(f"lm_windows takes one id stream (1-D), got shape {ids.shape}")
    if len(ids) < length + 1:
        raise DataError(
            f"id stream of {len(ids)} is too short for one window of length={length} "
            f"(needs {length + 1}: targets are shifted by one); use a shorter length"
        )
    starts = np.arange(0, len(ids) - length, stride)
    index = starts[:, None] + np.arange(length)[None, :]
    return {"inputs": ids[index], "targets": ids[index + 1]}
