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

        # from_pretrained reads tokenizer_config.json too, which holds the added special tokens
        # (Dimple's DimpleTokenizer files: lmms-eval models/dimple.py 148)
        return Qwen2Tokenizer.from_pretrained(str(path))
    raise CheckpointError(f"no tokenizer files in {path}: expected tokenizer.json, or vocab.json and merges.txt")


def tokenizer_settings(path: str | Path) -> dict:
    """``bos_token`` and ``add_bos_token`` as the checkpoint's ``tokenizer_config.json`` (or
    ``special_tokens_map.json``) declares them; ``{}`` when neither file exists."""
    import json

    out: dict = {}
    for name in ("special_tokens_map.json", "tokenizer_config.json"):  # the config wins
        f = Path(path) / name
        if f.is_file():
            cfg = json.loads(f.read_text())
            bos = cfg.get("bos_token")
            if isinstance(bos, dict):
                bos = bos.get("content")
            if bos is not None:
                out["bos_token"] = bos
            if "add_bos_token" in cfg:
                out["add_bos_token"] = bool(cfg["add_bos_token"])
    return out


class HFTokenizer:
    """Adapts a transformers tokenizer to the toolkit's protocol with the model's special ids.

    ``end_ids`` end an answer (decoding stops at the first); ``end_id`` is what fills the answer slot
    after the answer; ``special_ids`` never count as answer content.
    """

    def __init__(self, tok, *, mask_id: int, pad_id: int, end_id: int, end_ids: Sequence[int],
                 special_ids: Sequence[int] = (), vocab_size: int | None = None, bos_id: int | None = None,
                 add_bos: bool = False):
        self.tok = tok
        self.bos_id, self.add_bos = (None if bos_id is None else int(bos_id)), bool(add_bos)
        self.literal: dict[str, int] = {}  # text markers encoded as fixed ids (ModelSpec.literal_ids)
        self.mask_id, self.pad_id, self.end_id = int(mask_id), int(pad_id), int(end_id)
        self.end_ids = frozenset(int(i) for i in (*end_ids, end_id))
        self.special_ids = frozenset(int(i) for i in (*special_ids, mask_id, pad_id, *self.end_ids))
        self.vocab_size = int(vocab_size if vocab_size is not None else len(tok))

    def encode(self, text: str) -> list[int]:
        """Ids of ``text``; the markers of :attr:`literal` become their fixed ids."""
        if not self.literal:
            return list(self.tok.encode(text, add_special_tokens=False))
        import re

        out: list[int] = []
        for part in re.split("(" + "|".join(map(re.escape, self.literal)) + ")", text):
            if part in self.literal:
                out.append(self.literal[part])
            elif part:
                out.extend(self.tok.encode(part, add_special_tokens=False))
        return out

    def encode_around_image(self, before: str, after: str, llava_rule: bool) -> tuple[list[int], list[int]]:
        """The ids of the text before and after the image, each chunk encoded on its own (with the
        tokenizer's BOS when ``add_bos_token`` is set).

        ``llava_rule`` mirrors LLaVA's ``tokenizer_image_token`` (llava ``mm_utils.py`` 342-355): when
        the first chunk starts with the BOS id, the first id of every later chunk is dropped (meant to
        drop a repeated BOS; with LLaDA-V's template it drops the newline after the image).
        """
        bos = [self.bos_id] if self.add_bos and self.bos_id is not None else []
        a, b = bos + self.encode(before), bos + self.encode(after)
        if llava_rule and a and self.bos_id is not None and a[0] == self.bos_id:
            b = b[1:]
        return a, b

    def decode(self, ids: Sequence[int], skip_special: bool = True) -> str:
        ids = [int(i) for i in ids]
        if skip_special:
            cut = next((k for k, i in enumerate(ids) if i in self.end_ids), len(ids))
            ids = [i for i in ids[:cut] if i not in self.special_ids]
        return self.tok.decode(ids, skip_special_tokens=skip_special).strip()
