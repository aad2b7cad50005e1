"""The CLAP text encoder's RoBERTa tokenizer, on the ``tokenizers`` library alone.

Gives the ids and attention masks of transformers' ``RobertaTokenizer`` (what diffusers' AudioLDMPipeline
uses), padded to the longest prompt of the batch instead of to 512 tokens: the text encoder masks padding, so
the embedding is the same and the encoder does a fraction of the work.
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import AddedToken, Tokenizer, decoders, pre_tokenizers, processors
from tokenizers.models import BPE

logger = logging.getLogger(__name__)

#: Files a tokenizer directory may hold; ``tokenizer.json`` alone, or the byte-level BPE files.
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json")
_SPECIAL_KEYS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


class PromptTokenizer:
    """Turns prompts into (input_ids, attention_mask) int64 arrays for the text encoder graph.

    Safe to share between threads: the configured ``tokenizers.Tokenizer`` objects are never changed after
    they are made (one per truncation length).
    """

    def __init__(self, tokenizer: Tokenizer, max_length: int, pad_id: int) -> None:
        tokenizer.no_truncation()
        tokenizer.enable_padding(pad_id=pad_id, pad_token=tokenizer.id_to_token(pad_id) or "<pad>")
        self._template = tokenizer.to_str()
        self._untruncated = tokenizer
        self._by_length: dict[int, Tokenizer] = {}
        self._lock = threading.Lock()
        self.max_length = max_length
        self.pad_id = pad_id

    def _truncating(self, limit: int) -> Tokenizer:
        with self._lock:
            if limit not in self._by_length:
                tokenizer = Tokenizer.from_str(self._template)
                tokenizer.enable_truncation(limit)
                self._by_length[limit] = tokenizer
            return self._by_length[limit]

    @classmethod
    def from_directory(cls, directory: str | Path) -> PromptTokenizer:
        """Load ``tokenizer.json`` where present, else build RoBERTa's byte-level BPE from the checkpoint's
        ``vocab.json`` + ``merges.txt`` + ``tokenizer_config.json`` / ``special_tokens_map.json``."""
        directory = Path(directory)
        config = _read_json(directory / "tokenizer_config.json")
        special = {
            **_read_json(directory / "special_tokens_map.json"),
            **{k: config[k] for k in _SPECIAL_KEYS if k in config},
        }
        max_length = int(config.get("model_max_length", 512))
        if max_length > 100_000:  # transformers' "no limit" sentinel: the text encoder's positions decide
            max_length = 512
        if (directory / "tokenizer.json").is_file():
            tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
        else:
            tokenizer = _byte_level_bpe(directory, config, special)
        pad = _content(special.get("pad_token", "<pad>"))
        pad_id = tokenizer.token_to_id(pad)
        if pad_id is None:
            raise ValueError(f"tokenizer in {directory} has no pad token {pad!r}")
        return cls(tokenizer, max_length, pad_id)

    def count(self, prompts: list[str]) -> list[int]:
        """Tokens of each prompt, special tokens included, before any truncation: a prompt over
        ``max_length`` loses its end (servers refuse such prompts rather than truncate them)."""
        return [sum(encoding.attention_mask) for encoding in self._untruncated.encode_batch(prompts)]

    def __call__(self, prompts: list[str], max_length: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Ids and mask, shape (len(prompts), longest), truncated at ``max_length`` (default the model's)
        with a warning naming what was cut, as diffusers warns."""
        limit = min(self.max_length, max_length or self.max_length)
        tokenizer = self._truncating(limit)
        encodings = tokenizer.encode_batch(prompts)
        for prompt, encoding in zip(prompts, encodings, strict=True):
            if encoding.overflowing:
                cut = tokenizer.decode(encoding.overflowing[0].ids)
                logger.warning(
                    "prompt %r... truncated to %d tokens; dropped %d characters: %r...",
                    prompt[:40],
                    limit,
                    len(cut),
                    cut[:40],
                )
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        return ids, mask


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _content(token: str | dict[str, Any]) -> str:
    return token["content"] if isinstance(token, dict) else token


def _added_token(token: str | dict[str, Any], lstrip: bool = False) -> AddedToken:
    """A special token with the strip flags the checkpoint declares (RoBERTa's ``<mask>`` strips left)."""
    spec: dict[str, Any] = token if isinstance(token, dict) else {"content": token, "lstrip": lstrip}
    return AddedToken(
        str(spec["content"]),
        single_word=spec.get("single_word", False),
        lstrip=spec.get("lstrip", False),
        rstrip=spec.get("rstrip", False),
        normalized=spec.get("normalized", False),
        special=True,
    )


def _byte_level_bpe(directory: Path, config: dict[str, Any], special: dict[str, Any]) -> Tokenizer:
    """RoBERTa's tokenizer as transformers builds it from the slow-tokenizer files."""
    for name in ("vocab.json", "merges.txt"):
        if not (directory / name).is_file():
            raise FileNotFoundError(f"tokenizer file missing: {directory / name}")
    vocab, merges = BPE.read_file(str(directory / "vocab.json"), str(directory / "merges.txt"))
    tokenizer = Tokenizer(
        BPE(vocab, merges, dropout=None, continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False)
    )
    add_prefix_space = bool(config.get("add_prefix_space", False))
    trim_offsets = bool(config.get("trim_offsets", True))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=add_prefix_space)
    tokenizer.decoder = decoders.ByteLevel()
    declared = {int(i): spec for i, spec in config.get("added_tokens_decoder", {}).items()}
    if declared:
        tokens = [_added_token(declared[i]) for i in sorted(declared)]
    else:
        defaults = {"bos_token": "<s>", "pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>"}
        order = ("bos_token", "pad_token", "eos_token", "unk_token", "sep_token", "cls_token", "mask_token")
        declared_special = {key: special.get(key, defaults.get(key)) for key in order}
        tokens = [
            _added_token(token, lstrip=key == "mask_token")
            for key, token in declared_special.items()
            if token is not None
        ]
    tokenizer.add_special_tokens(tokens)
    sep, cls = _content(special.get("sep_token", "</s>")), _content(special.get("cls_token", "<s>"))
    sep_id, cls_id = tokenizer.token_to_id(sep), tokenizer.token_to_id(cls)
    if sep_id is None or cls_id is None:
        raise ValueError(f"tokenizer in {directory} lacks its {sep!r}/{cls!r} tokens")
    tokenizer.post_processor = processors.RobertaProcessing(
        (sep, sep_id), (cls, cls_id), trim_offsets=trim_offsets, add_prefix_space=add_prefix_space
    )
    return tokenizer
