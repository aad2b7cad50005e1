"""The runtime's tokenizer against transformers' RobertaTokenizer, the one diffusers' pipeline uses."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from audioldm_trt.engine.tokenizer import PromptTokenizer

from conftest import ModelUnderTest

TEXTS = [
    "a dog barking",
    "",
    " ",
    "  leading and trailing spaces  ",
    "tabs\tand\nnewlines\r\nand\x0bvertical\x0cfeeds",
    "unicode: ünïcödé, Ελληνικά, 中文, 日本語, العربية, हिन्दी",
    "emoji 🐶🎵🔥 and ZWJ 👩‍👩‍👧 sequences, flags 🇫🇷",
    "A\u00a0non-breaking\u200bzero-width\ufeffBOM",
    "<s> literal special tokens </s> <pad> <unk> <mask> and<mask>glued",
    "x" * 3000,
    " ".join(["word"] * 700),
    "Punctuation!!! ...??? -- (brackets) [and] {braces} 'quotes' \"double\"",
]


@pytest.fixture(scope="module")
def reference(tiny: ModelUnderTest):  # type: ignore[no-untyped-def]
    from transformers import RobertaTokenizer

    return RobertaTokenizer.from_pretrained(tiny.checkpoint / "tokenizer")


def _assert_same(ours: PromptTokenizer, reference, texts: list[str], max_length: int = 512) -> None:  # type: ignore[no-untyped-def]
    expected = reference(texts, padding="longest", truncation=True, max_length=max_length, return_tensors="np")
    ids, mask = ours(texts, max_length)
    np.testing.assert_array_equal(ids, expected.input_ids)
    np.testing.assert_array_equal(mask, expected.attention_mask)


@pytest.mark.parametrize("text", TEXTS, ids=range(len(TEXTS)))
def test_each_text_matches_transformers(tiny: ModelUnderTest, reference, text: str) -> None:  # type: ignore[no-untyped-def]
    _assert_same(PromptTokenizer.from_directory(tiny.export / "tokenizer"), reference, [text])


def test_batch_pads_to_longest_not_512(tiny: ModelUnderTest, reference) -> None:  # type: ignore[no-untyped-def]
    ours = PromptTokenizer.from_directory(tiny.export / "tokenizer")
    short = ["a dog", "rain on a tin roof at night"]
    ids, _ = ours(short)
    assert ids.shape[1] == max(len(reference(t).input_ids) for t in short) < 64
    _assert_same(ours, reference, TEXTS)
    _assert_same(ours, reference, TEXTS, max_length=16)


def test_over_long_prompt_is_truncated_with_a_warning(tiny: ModelUnderTest, caplog: pytest.LogCaptureFixture) -> None:
    ours = PromptTokenizer.from_directory(tiny.export / "tokenizer")
    ids, _ = ours([" ".join(["word"] * 700)])
    assert ids.shape == (1, 512) and ids[0, -1] == 2
    assert "truncated to 512 tokens" in caplog.text


def test_tokenizer_json_layout_gives_the_same_ids(tiny: ModelUnderTest, reference, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Checkpoints saved by newer transformers carry a tokenizer.json; it must load to the same tokenizer."""
    reference.save_pretrained(tmp_path)
    assert (tmp_path / "tokenizer.json").is_file()
    for name in ("vocab.json", "merges.txt"):
        (tmp_path / name).unlink(missing_ok=True)
    _assert_same(PromptTokenizer.from_directory(tmp_path), reference, TEXTS)


def test_missing_vocabulary_is_a_clear_error(tiny: ModelUnderTest, tmp_path: Path) -> None:
    shutil.copytree(tiny.export / "tokenizer", tmp_path / "tok")
    (tmp_path / "tok" / "merges.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"merges\.txt"):
        PromptTokenizer.from_directory(tmp_path / "tok")
    assert json.loads((tiny.export / "tokenizer" / "tokenizer_config.json").read_text())["model_max_length"] == 512
