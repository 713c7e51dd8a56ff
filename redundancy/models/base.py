"""The adapter interface: what the engine needs to know about one dMLLM family.

An adapter is declarative in the spirit of pyvene's per-model tables: it builds the prompt
(embeddings, visual span, answer slots), exposes the decoder layers, final norm and head, and says
how a layer is called on a subset of live tokens that keep their original positions.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from .tokenizer import Tokenizer

Family = Literal["from_scratch", "ar_to_diffusion", "autoregressive"]
FAMILIES: tuple[str, ...] = ("from_scratch", "ar_to_diffusion", "autoregressive")

ImageLike = Any  # PIL image, path, numpy array (H, W[, C]) or tensor (C, H, W)


@dataclass
class Prompt:
    """A batch of prompts laid out identically, ready for the engine.

    Shapes: ``input_ids`` [batch, seq]; ``visual_embeds`` [batch, n_visual, d_model];
    ``visual_index`` [n_visual] and ``answer_index`` [answer_len] are positions in the sequence;
    ``key_valid`` [batch, seq] is False for padding; ``position_ids`` [batch, seq] (or
    [3, batch, seq] for M-RoPE).
    """

    input_ids: Tensor
    visual_embeds: Tensor
    visual_index: Tensor
    answer_index: Tensor
    key_valid: Tensor
    position_ids: Tensor
    mask_id: int
    grid: tuple[int, int]
    text_index: Tensor | None = None
    meta: dict = field(default_factory=dict)
    # derived from visual_index on first use; ``replace`` builds a new prompt, which starts empty
    _is_visual: Tensor | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def batch_size(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def seq_len(self) -> int:
        return int(self.input_ids.shape[1])

    @property
    def n_visual(self) -> int:
        return int(self.visual_index.numel())

    @property
    def answer_start(self) -> int:
        return int(self.answer_index[0])

    @property
    def answer_length(self) -> int:
        return int(self.answer_index.numel())

    def is_visual(self) -> Tensor:
        """Bool [seq]: True at visual positions (computed once per prompt; do not modify it)."""
        if self._is_visual is None:
            m = torch.zeros(self.seq_len, dtype=torch.bool, device=self.input_ids.device)
            m[self.visual_index] = True
            self._is_visual = m
        return self._is_visual

    def select(self, rows: Sequence[int] | Tensor) -> "Prompt":
        """The sub-batch of the given sample rows."""
        rows = torch.as_tensor(rows, dtype=torch.long, device=self.input_ids.device)
        pos = self.position_ids.index_select(-2, rows)
        return replace(
            self,
            input_ids=self.input_ids[rows],
            visual_embeds=self.visual_embeds[rows],
            key_valid=self.key_valid[rows],
            position_ids=pos,
        )

    def without_visual(self) -> "Prompt":
        """The same prompt with every visual token removed from the sequence (the blind baseline)."""
        keep = ~self.is_visual()
        idx = keep.nonzero().squeeze(1)
        remap = torch.full((self.seq_len,), -1, dtype=torch.long, device=idx.device)
        remap[idx] = torch.arange(idx.numel(), device=idx.device)
        return replace(
            self,
            input_ids=self.input_ids[:, idx],
            visual_embeds=self.visual_embeds[:, :0],
            visual_index=self.visual_index[:0],
            answer_index=remap[self.answer_index],
            key_valid=self.key_valid[:, idx],
            position_ids=self.position_ids[..., idx],
            text_index=None if self.text_index is None else remap[self.text_index],
        )


def load_image(image: ImageLike) -> Image.Image:
    """Read any supported image into an RGB PIL image, or raise ValueError naming the problem."""
    if isinstance(image, (str, Path)):
        try:
            with Image.open(image) as im:
                im.load()
                image = im.copy()
        except (OSError, ValueError) as e:
            raise ValueError(f"cannot read image {str(image)!r}: {e}") from e
    elif isinstance(image, Tensor):
        arr = image.detach().cpu()
        if arr.ndim == 3 and arr.shape[0] in (1, 3, 4):
            arr = arr.permute(1, 2, 0)
        arr = arr.numpy()
        if arr.dtype != np.uint8:
            arr = (np.clip(arr, 0, 1) * 255).round().astype(np.uint8)
        image = arr
    if isinstance(image, np.ndarray):
        if image.ndim not in (2, 3) or image.size == 0:
            raise ValueError(f"image array has shape {image.shape}; expected (H, W) or (H, W, C) with H, W > 0")
        if image.ndim == 3 and image.shape[2] == 1:
            image = image[..., 0]
        image = Image.fromarray(image.astype(np.uint8) if image.dtype != np.uint8 else image)
    if not isinstance(image, Image.Image):
        raise ValueError(
            f"unsupported image type {type(image).__name__}; give a PIL image, a path, a numpy array or a tensor"
        )
    if image.width == 0 or image.height == 0:
        raise ValueError(f"image has zero size {image.size}")
    return image.convert("RGB")


class Adapter(nn.Module):
    """Base class of every model adapter.

    Subclasses set ``name``, ``family``, ``logit_shift``, ``tokenizer`` and implement
    :meth:`build_prompt`, :meth:`embed` and the layer accessors. The engine uses nothing else.
    """

    name: str = "?"
    family: Family = "from_scratch"
    logit_shift: int = 0
    tokenizer: Tokenizer

    # -- prompt ---------------------------------------------------------------------------------
    def build_prompt(self, images: Sequence[ImageLike], questions: Sequence[str], answer_length: int) -> Prompt:
        """Embed images and lay out [prefix | visual | question | answer slots (mask id)]."""
        raise NotImplementedError

    def embed(self, input_ids: Tensor, prompt: Prompt) -> Tensor:
        """Input embeddings [batch, seq, d] with the visual features placed at the visual span."""
        emb = self.embed_tokens(input_ids)
        if prompt.n_visual:
            emb = emb.clone()
            emb[:, prompt.visual_index] = prompt.visual_embeds.to(emb.dtype)
        return emb

    def embed_tokens(self, input_ids: Tensor) -> Tensor:
        """Token embeddings only."""
        raise NotImplementedError

    # -- the decoder ----------------------------------------------------------------------------
    @property
    def layers(self) -> nn.ModuleList:
        """The decoder layers, in order."""
        raise NotImplementedError

    @property
    def final_norm(self) -> nn.Module:
        raise NotImplementedError

    @property
    def lm_head(self) -> nn.Module:
        raise NotImplementedError

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def rotary(self, hidden: Tensor, position_ids: Tensor) -> tuple[Tensor, Tensor]:
        """(cos, sin) for the given original position ids."""
        raise NotImplementedError

    def call_layer(
        self,
        index: int,
        hidden: Tensor,
        position_embeddings: tuple[Tensor, Tensor],
        attention_mask: Tensor,
        cache: Any = None,
    ) -> Tensor:
        """Run decoder layer ``index`` on the live tokens; ``attention_mask`` is additive [b, 1, q, k]."""
        out = self.layers[index](
            hidden, attention_mask=attention_mask, position_embeddings=position_embeddings, cache=cache
        )
        return out[0] if isinstance(out, tuple) else out

    # Parts that probes use to recompute attention rows; Llama/Qwen2-shaped layers share them.
    def attention_module(self, index: int) -> nn.Module:
        return self.layers[index].self_attn

    def input_norm(self, index: int) -> nn.Module:
        return self.layers[index].input_layernorm

    @property
    def attn_implementation(self) -> str:
        return "eager"

    def set_attn_implementation(self, impl: str) -> None:
        """Switch the attention kernel of the decoder live (``eager`` or ``sdpa``)."""
        valid = ("eager", "sdpa")
        if impl not in valid:
            raise ValueError(f"unknown attention implementation {impl!r}; choose one of: {', '.join(valid)}")

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device


class TransformersDecoder(Adapter):
    """An adapter whose decoder is a transformers ``LlamaModel`` / ``Qwen2Model`` at ``self.lm`` and
    whose head is ``self.head``: the zoo models and the re-hosted real models."""

    lm: nn.Module
    head: nn.Module

    def embed_tokens(self, input_ids: Tensor) -> Tensor:
        return self.lm.embed_tokens(input_ids)

    @property
    def layers(self) -> nn.ModuleList:
        return self.lm.layers

    @property
    def final_norm(self) -> nn.Module:
        return self.lm.norm

    @property
    def lm_head(self) -> nn.Module:
        return self.head

    def rotary(self, hidden: Tensor, position_ids: Tensor) -> tuple[Tensor, Tensor]:
        return self.lm.rotary_emb(hidden, position_ids=position_ids)

    @property
    def attn_implementation(self) -> str:
        return self.lm.config._attn_implementation

    def set_attn_implementation(self, impl: str) -> None:
        super().set_attn_implementation(impl)
        self.lm.config._attn_implementation = impl
