"""research/data/text.py: tokenizer, vocabulary, padding/truncation, batch encoding, LM windows.

Every expected value is written out by hand from the documented rules.
"""

import numpy as np
import pytest

from research.data import text
from research.data.text import OOV, OOV_ID, PAD, PAD_ID, Vocabulary
from research.errors import ConfigError, DataError

REVIEW = "Hello, World! It's<br />GREAT<br/>fun."
REVIEW_TOKENS = ["hello", ",", "world", "!", "it", "'", "s", "great", "fun", "."]
# Counts: a 3, c 2, then b, d, e once each (ties in alphabetical order).
HAND_LISTS = [["b", "a", "c", "a"], ["c", "d", "a"], ["e"]]


def test_word_tokenizer_splits_punctuation_and_line_breaks():
    assert text.tokenize(REVIEW) == REVIEW_TOKENS
    assert text.tokenize("a<BR>b <br/>c") == ["a", "b", "c"]
    assert text.tokenize("  ") == []


def test_word_tokenizer_lowercase_optional():
    assert text.tokenize("Big DOG.", lowercase=False) == ["Big", "DOG", "."]
    assert text.tokenize("Big DOG.") == ["big", "dog", "."]


def test_tokenizer_accepts_utf8_bytes():
    assert text.tokenize(REVIEW.encode()) == REVIEW_TOKENS
    assert text.tokenize("Café au lait".encode()) == ["café", "au", "lait"]
    assert text.tokenize(b"To be,\nor", level="char") == list("to be,\nor")


def test_char_tokenizer_keeps_whitespace():
    assert text.tokenize("Ab c\n", level="char") == ["a", "b", " ", "c", "\n"]
    assert text.tokenize("Ab c", level="char", lowercase=False) == ["A", "b", " ", "c"]
    # Line breaks are only special for words; characters come through untouched.
    assert text.tokenize("x<br />", level="char") == list("x<br />")


def test_vocabulary_order_from_hand_counts():
    vocab = Vocabulary.build(HAND_LISTS)
    assert vocab.tokens == (PAD, OOV, "a", "c", "b", "d", "e")
    assert len(vocab) == 7
    assert (vocab.tokens[PAD_ID], vocab.tokens[OOV_ID]) == (PAD, OOV)


def test_vocabulary_min_count_and_max_size():
    assert Vocabulary.build(HAND_LISTS, min_count=2).tokens == (PAD, OOV, "a", "c")
    assert Vocabulary.build(HAND_LISTS, min_count=4).tokens == (PAD, OOV)
    assert Vocabulary.build(HAND_LISTS, max_size=4).tokens == (PAD, OOV, "a", "c")
    assert Vocabulary.build(HAND_LISTS, max_size=3).tokens == (PAD, OOV, "a")
    assert len(Vocabulary.build(HAND_LISTS, max_size=100)) == 7


def test_vocabulary_reserved_tokens_keep_ids_0_and_1():
    # Literal "<pad>"/"<unk>" in the data must not get a second id.
    vocab = Vocabulary.build([[OOV, "x", PAD, PAD, "x"]])
    assert vocab.tokens == (PAD, OOV, "x")


def test_encode_decode_round_trip_and_oov():
    vocab = Vocabulary.build(HAND_LISTS)
    tokens = ["e", "a", "c", "a"]
    ids = vocab.encode(tokens)
    assert ids.dtype == np.int32
    np.testing.assert_array_equal(ids, [6, 2, 3, 2])
    assert vocab.decode(ids) == tokens
    np.testing.assert_array_equal(vocab.encode(["a", "zebra"]), [2, OOV_ID])
    assert vocab.decode(vocab.encode(["zebra", "b"])) == [OOV, "b"]
    assert vocab.encode([]).shape == (0,)


def test_decode_skips_padding_unless_asked():
    vocab = Vocabulary.build(HAND_LISTS)
    assert vocab.decode([2, 4, 0, 0]) == ["a", "b"]
    assert vocab.decode(np.array([2, 0]), skip_padding=False) == ["a", PAD]


@pytest.mark.parametrize(
    ("length", "truncate", "expected", "n"),
    [
        (3, "post", [5, 6, 7], 3),
        (3, "pre", [7, 8, 9], 3),
        (5, "pre", [5, 6, 7, 8, 9], 5),
        (7, "post", [5, 6, 7, 8, 9, 0, 0], 5),
        (7, "pre", [5, 6, 7, 8, 9, 0, 0], 5),
    ],
)
def test_pad_or_truncate(length, truncate, expected, n):
    out, real = text.pad_or_truncate(np.array([5, 6, 7, 8, 9]), length, truncate=truncate)
    assert out.dtype == np.int32
    np.testing.assert_array_equal(out, expected)
    assert real == n


def test_pad_or_truncate_empty_input_is_all_padding():
    out, real = text.pad_or_truncate(np.array([], np.int32), 2)
    np.testing.assert_array_equal(out, [PAD_ID, PAD_ID])
    assert real == 0


def test_encode_texts_shapes_lengths_and_empty_text():
    vocab = Vocabulary.build([text.tokenize("the cat. the dog")])  # the twice; ., cat, dog once
    assert vocab.tokens == (PAD, OOV, "the", ".", "cat", "dog")
    batch = text.encode_texts(
        ["The cat.", b"", "the dog the cat the emu"],
        vocab,
        level="word",
        lowercase=True,
        max_length=4,
        truncate="pre",
    )
    assert batch["tokens"].dtype == batch["length"].dtype == np.int32
    # The last text is [the dog the cat the emu] = [2 5 2 4 2 1]; "pre" keeps its last four.
    np.testing.assert_array_equal(
        batch["tokens"], [[2, 4, 3, PAD_ID], [OOV_ID, PAD_ID, PAD_ID, PAD_ID], [2, 4, 2, OOV_ID]]
    )
    np.testing.assert_array_equal(batch["length"], [3, 1, 4])


def test_encode_texts_char_level_and_no_texts():
    vocab = Vocabulary.build([list("abba")])  # a and b twice each: alphabetical tie-break
    assert vocab.tokens == (PAD, OOV, "a", "b")
    batch = text.encode_texts(["AB c"], vocab, level="char", lowercase=True, max_length=3)
    np.testing.assert_array_equal(batch["tokens"], [[2, 3, OOV_ID]])
    np.testing.assert_array_equal(batch["length"], [3])
    empty = text.encode_texts([], vocab, level="char", lowercase=True, max_length=3)
    assert empty["tokens"].shape == (0, 3) and empty["length"].shape == (0,)


def test_json_round_trip():
    vocab = Vocabulary.build([["é", "\n", " ", '"', "b"]])
    again = Vocabulary.from_json(vocab.to_json())
    assert again == vocab
    assert again.encode(["\n", "é", "q"]).tolist() == vocab.encode(["\n", "é", "q"]).tolist()


def test_lm_windows_targets_shift_by_one():
    windows = text.lm_windows(np.arange(10), 3)
    np.testing.assert_array_equal(windows["inputs"], [[0, 1, 2], [3, 4, 5], [6, 7, 8]])
    np.testing.assert_array_equal(windows["targets"], [[1, 2, 3], [4, 5, 6], [7, 8, 9]])
    assert windows["inputs"].dtype == windows["targets"].dtype == np.int32


def test_lm_windows_stride():
    windows = text.lm_windows(np.arange(10), 3, stride=2)
    np.testing.assert_array_equal(windows["inputs"], [[0, 1, 2], [2, 3, 4], [4, 5, 6], [6, 7, 8]])
    np.testing.assert_array_equal(windows["targets"], windows["inputs"] + 1)
    assert text.lm_windows(np.arange(4), 3)["inputs"].tolist() == [[0, 1, 2]]


def test_lm_windows_consecutive_tile_the_stream():
    stream = np.random.default_rng(0).integers(0, 50, size=101)
    windows = text.lm_windows(stream, 10)
    assert windows["inputs"].shape == (10, 10)
    np.testing.assert_array_equal(windows["inputs"].reshape(-1), stream[:100])
    np.testing.assert_array_equal(windows["targets"].reshape(-1), stream[1:101])


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda: text.tokenize("x", level="sentence"), ConfigError),
        (lambda: text.tokenize(b"\xff\xfe"), DataError),
        (lambda: text.tokenize(3), DataError),
        (lambda: Vocabulary.build(HAND_LISTS, min_count=0), ConfigError),
        (lambda: Vocabulary.build(HAND_LISTS, max_size=2), ConfigError),
        (lambda: Vocabulary((OOV, PAD, "a")), DataError),
        (lambda: Vocabulary((PAD, OOV, "a", "a")), DataError),
        (lambda: Vocabulary.from_json('{"tokens": ["a", "<pad>", "<unk>"]}'), DataError),
        (lambda: Vocabulary.from_json('{"tokens": ["<pad>"]}'), DataError),
        (lambda: Vocabulary.from_json('["<pad>", "<unk>"]'), DataError),
        (lambda: Vocabulary.from_json("not json"), DataError),
        (lambda: Vocabulary.build(HAND_LISTS).decode([7]), DataError),
        (lambda: text.pad_or_truncate(np.arange(3), 0), ConfigError),
        (lambda: text.pad_or_truncate(np.arange(3), 2, truncate="middle"), ConfigError),
        (lambda: text.pad_or_truncate(np.zeros((2, 2)), 2), DataError),
        (
            lambda: text.encode_texts(
                ["a"], Vocabulary.build([]), level="word", lowercase=True, max_length=0
            ),
            ConfigError,
        ),
        (
            lambda: text.encode_texts(
                ["a"], Vocabulary.build([]), level="byte", lowercase=True, max_length=2
            ),
            ConfigError,
        ),
        (lambda: text.lm_windows(np.arange(10), 0), ConfigError),
        (lambda: text.lm_windows(np.arange(10), 3, stride=0), ConfigError),
        (lambda: text.lm_windows(np.arange(3), 3), DataError),
    ],
)
def test_errors(call, error):
    with pytest.raises(error):
        call()
