"""Real tokenizers behind the toolkit's :class:`~redundancy.models.tokenizer.Tokenizer` protocol."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from .checkpoint import CheckpointError


def load_hf_tokenizer(path: str | Path):
    """A transformers tokenizer from the checkpoint's own files, never with remote code.

    ``tokenizer.json`` is read directly; otherwise a BPE ``vocab.json`` + ``merges.txt`` pair (the
    Qwen2 files Dream and Dimple ship) is read with transformers' Qwen2 tokenizer.
    """
    from transformers import PreTrainedTokenizerFast

    path = Path(path)
    if (path / "tokenizer.json").is_file():
        return PreTrainedTokenizerFast(tokenizer_file=str(path / "tokenizer.json"))
    if (path / "vocab.json").is_file() and (path / "merges.txt").is_file():
        from transformers import Qwen2Tokenizer

        return Qwen2Tokenizer(vocab_file=str(path / "vocab.json"), merges_file=str(path / "merges.txt"))
    raise CheckpointError(f"no tokenizer files in {path}: expected tokenizer.json, or vocab.json and merges.txt")


class HFTokenizer:
    """Adapts a transformers tokenizer to the toolkit's protocol with the model's special ids.

    ``end_ids`` end an answer (decoding stops at the first); ``end_id`` is what fills the answer slot
    after the answer; ``special_ids`` never count as answer content.
    """

    def __init__(self, tok, *, mask_id: int, pad_id: int, end_id: int, end_ids: Sequence[int],
                 special_ids: Sequence[int] = (), vocab_size: int | None = None):
        self.tok = tok
        self.mask_id, self.pad_id, self.end_id = int(mask_id), int(pad_id), int(end_id)
        self.end_ids = frozenset(int(i) for i in (*end_ids, end_id))
        self.special_ids = frozenset(int(i) for i in (*special_ids, mask_id, pad_id, *self.end_ids))
        self.vocab_size = int(vocab_size if vocab_size is not None else len(tok))

    def encode(self, text: str) -> list[int]:
        return list(self.tok.encode(text, add_special_tokens=False))

    def decode(self, ids: Sequence[int], skip_special: bool = True) -> str:
        ids = [int(i) for i in ids]
        if skip_special:
            cut = next((k for k, i in enumerate(ids) if i in self.end_ids), len(ids))
            ids = [i for i in ids[:cut] if i not in self.special_ids]
        return self.tok.decode(ids, skip_special_tokens=skip_special).strip()
