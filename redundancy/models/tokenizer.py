"""The tokenizer protocol every adapter exposes, and the word-level tokenizer of the embedded zoo."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Protocol, Sequence, runtime_checkable

SPECIAL_TOKENS = ("<pad>", "<mask>", "<end>", "<bos>", "<sep>", "<image>", "<unk>")


@runtime_checkable
class Tokenizer(Protocol):
    """What the toolkit needs from any tokenizer (word-level or a real model's)."""

    mask_id: int
    pad_id: int
    end_id: int
    vocab_size: int

    def encode(self, text: str) -> list[int]:
        """Text to token ids, without special tokens."""

    def decode(self, ids: Sequence[int], skip_special: bool = True) -> str:
        """Token ids to text; with ``skip_special`` padding, end and mask tokens are dropped."""


class WordTokenizer:
    """Whitespace word tokenizer with ``<pad> <mask> <end> <bos> <sep> <image> <unk>`` specials.

    >>> tok = WordTokenizer(["red", "square"])
    >>> tok.decode(tok.encode("red square"))
    'red square'
    """

    def __init__(self, words: Sequence[str]):
        dup = [w for w in words if w in SPECIAL_TOKENS]
        if dup:
            raise ValueError(f"words {dup} clash with the special tokens {SPECIAL_TOKENS}")
        self.vocab: list[str] = list(SPECIAL_TOKENS) + [w for w in dict.fromkeys(words)]
        self.index = {w: i for i, w in enumerate(self.vocab)}
        self.pad_id, self.mask_id, self.end_id = 0, 1, 2
        self.bos_id, self.sep_id, self.image_id, self.unk_id = 3, 4, 5, 6
        self.vocab_size = len(self.vocab)

    @property
    def special_ids(self) -> frozenset[int]:
        """Ids that never count as answer content."""
        return frozenset(range(len(SPECIAL_TOKENS)))

    def encode(self, text: str) -> list[int]:
        """Split on whitespace; unknown words map to ``<unk>``."""
        return [self.index.get(w, self.unk_id) for w in text.split()]

    def decode(self, ids: Sequence[int], skip_special: bool = True) -> str:
        """Join words; with ``skip_special`` stop at the first ``<end>`` and drop other specials."""
        out = []
        for i in ids:
            i = int(i)
            if skip_special:
                if i == self.end_id:
                    break
                if i in self.special_ids:
                    continue
            out.append(self.vocab[i] if 0 <= i < self.vocab_size else "<unk>")
        return " ".join(out)

    def save(self, path: str | Path) -> None:
        """Write the vocabulary as JSON."""
        Path(path).write_text(json.dumps({"type": "word", "vocab": self.vocab}, indent=0))

    @classmethod
    def load(cls, path: str | Path) -> "WordTokenizer":
        """Read a vocabulary written by :meth:`save`."""
        data = json.loads(Path(path).read_text())
        vocab = data["vocab"]
        if tuple(vocab[: len(SPECIAL_TOKENS)]) != SPECIAL_TOKENS:
            raise ValueError(f"{path}: vocabulary does not start with the special tokens {SPECIAL_TOKENS}")
        return cls(vocab[len(SPECIAL_TOKENS):])
