"""The embedded small dMLLMs: SigLIP tower + 2-layer MLP projector + bidirectional Llama or Qwen2 decoder.

(a) ``decoder="llama"``: the LLaDA-V shape, family ``from_scratch``, logit shift 0.
(b) ``decoder="qwen2"``: the Dream / LaViDa-Dream shape, family ``ar_to_diffusion``, logit shift 1.
Every part is a transformers module; the sizes are configurable and saved as JSON next to safetensors.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from transformers import (
    LlamaConfig,
    LlamaModel,
    Qwen2Config,
    Qwen2Model,
    SiglipVisionConfig,
    SiglipVisionModel,
)

from .base import FAMILIES, ImageLike, Prompt, TransformersDecoder, load_image
from .tokenizer import WordTokenizer

DECODERS = ("llama", "qwen2")


@dataclass
class ToyConfig:
    """Sizes and layout of a toy dMLLM (every field is saved in ``config.json``)."""

    decoder: str = "llama"
    family: str = "from_scratch"
    logit_shift: int = 0
    words: list[str] = field(default_factory=list)
    image_size: int = 72
    patch_size: int = 8
    vision_hidden: int = 128
    vision_layers: int = 2
    vision_heads: int = 4
    vision_intermediate: int = 256
    hidden: int = 128
    layers: int = 4
    heads: int = 4
    kv_heads: int = 4
    intermediate: int = 256
    question_len: int = 10
    rope_theta: float = 10000.0
    visual_positions: bool = False  # a learned embedding per visual position, added after the projector

    def __post_init__(self) -> None:
        if self.decoder not in DECODERS:
            raise ValueError(f"unknown decoder {self.decoder!r}; choose one of: {', '.join(DECODERS)}")
        if self.family not in FAMILIES:
            raise ValueError(f"unknown family {self.family!r}; choose one of: {', '.join(FAMILIES)}")
        if self.logit_shift not in (0, 1):
            raise ValueError(f"logit_shift must be 0 or 1, got {self.logit_shift!r}")
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")

    @property
    def grid(self) -> tuple[int, int]:
        g = self.image_size // self.patch_size
        return (g, g)

    @classmethod
    def from_dict(cls, d: dict) -> "ToyConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown ToyConfig keys {unknown}; valid keys: {sorted(known)}")
        return cls(**d)


class ToyDMLLM(TransformersDecoder):
    """A small dMLLM built from transformers modules; it is its own adapter."""

    def __init__(self, config: ToyConfig, name: str = "toy"):
        super().__init__()
        self.config = config
        self.name = name
        self.family = config.family
        self.logit_shift = config.logit_shift
        self.tokenizer = WordTokenizer(config.words)
        vc = SiglipVisionConfig(
            hidden_size=config.vision_hidden,
            intermediate_size=config.vision_intermediate,
            num_hidden_layers=config.vision_layers,
            num_attention_heads=config.vision_heads,
            image_size=config.image_size,
            patch_size=config.patch_size,
            vision_use_head=False,
        )
        vc._attn_implementation = "eager"
        self.vision = SiglipVisionModel(vc)
        self.projector = nn.Sequential(
            nn.Linear(config.vision_hidden, config.hidden), nn.GELU(), nn.Linear(config.hidden, config.hidden)
        )
        n_vis = config.grid[0] * config.grid[1]
        self.visual_pos = nn.Parameter(torch.zeros(n_vis, config.hidden)) if config.visual_positions else None
        common = dict(
            vocab_size=self.tokenizer.vocab_size,
            hidden_size=config.hidden,
            intermediate_size=config.intermediate,
            num_hidden_layers=config.layers,
            num_attention_heads=config.heads,
            num_key_value_heads=config.kv_heads,
            max_position_embeddings=1024,
            rope_theta=config.rope_theta,
            tie_word_embeddings=False,
            pad_token_id=self.tokenizer.pad_id,
        )
        if config.decoder == "llama":
            dc = LlamaConfig(**common)
            dc._attn_implementation = "eager"
            self.lm = LlamaModel(dc)
        else:
            dc = Qwen2Config(**common, use_sliding_window=False)
            dc._attn_implementation = "eager"
            self.lm = Qwen2Model(dc)
        self.head = nn.Linear(config.hidden, self.tokenizer.vocab_size, bias=False)
        mean = torch.tensor([0.5, 0.5, 0.5]).view(3, 1, 1)
        self.register_buffer("pixel_mean", mean, persistent=False)

    # -- images ---------------------------------------------------------------------------------
    def preprocess(self, images: Sequence[ImageLike]) -> Tensor:
        """Images to normalised pixels [batch, 3, H, W] at the model's size."""
        size = self.config.image_size
        arrs = []
        for im in images:
            pil = load_image(im)
            if pil.size != (size, size):
                pil = pil.resize((size, size), resample=3)
            arrs.append(np.asarray(pil, dtype=np.float32) / 255.0)
        x = torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2).to(self.device)
        return ((x - 0.5) / 0.5).to(self.dtype)

    def pixels_from_uint8(self, images: np.ndarray | Tensor) -> Tensor:
        """A uint8 batch [batch, H, W, 3] at the model's size to normalised pixels (fast path)."""
        x = torch.as_tensor(images).to(self.device).permute(0, 3, 1, 2).float() / 255.0
        return ((x - 0.5) / 0.5).to(self.dtype)

    def vision_features(self, pixels: Tensor) -> Tensor:
        """Patch features of the (frozen) vision tower [batch, n_patches, vision_hidden]."""
        return self.vision(pixel_values=pixels).last_hidden_state

    def encode_images(self, pixels: Tensor) -> Tensor:
        """Projected visual tokens [batch, n_visual, hidden]."""
        return self.project(self.vision_features(pixels))

    def project(self, features: Tensor) -> Tensor:
        """Vision features to the decoder's width (plus the learned position table, if any)."""
        out = self.projector(features)
        return out if self.visual_pos is None else out + self.visual_pos

    # -- prompt ---------------------------------------------------------------------------------
    def layout(self, answer_length: int) -> dict[str, Tensor]:
        """Positions of the parts of ``[bos | visual | question (left-padded) | sep | answer]``."""
        n_vis = self.config.grid[0] * self.config.grid[1]
        q = self.config.question_len
        vis = torch.arange(1, 1 + n_vis)
        text = torch.arange(1 + n_vis, 1 + n_vis + q + 1)  # question slot and <sep>
        start = 2 + n_vis + q
        ans = torch.arange(start, start + answer_length)
        return {"visual": vis, "text": text, "answer": ans, "seq_len": torch.tensor(start + answer_length)}

    def question_ids(self, questions: Sequence[str]) -> tuple[Tensor, Tensor]:
        """Left-padded question ids [batch, question_len] and their validity."""
        q = self.config.question_len
        ids = torch.full((len(questions), q), self.tokenizer.pad_id, dtype=torch.long)
        valid = torch.zeros((len(questions), q), dtype=torch.bool)
        for i, text in enumerate(questions):
            toks = self.tokenizer.encode(text)
            if len(toks) > q:
                raise ValueError(f"question {text!r} has {len(toks)} tokens; this model's question slot holds {q}")
            if toks:
                ids[i, q - len(toks):] = torch.tensor(toks)
                valid[i, q - len(toks):] = True
        return ids, valid

    def build_prompt(
        self, images: Sequence[ImageLike], questions: Sequence[str], answer_length: int, visual_embeds: Tensor | None = None
    ) -> Prompt:
        """Lay out a batch; ``visual_embeds`` may be passed in when cached."""
        if len(images) != len(questions):
            raise ValueError(f"{len(images)} images but {len(questions)} questions")
        if answer_length < 1:
            raise ValueError(f"answer_length must be >= 1, got {answer_length}")
        b = len(questions)
        lay = self.layout(answer_length)
        n = int(lay["seq_len"])
        tok = self.tokenizer
        q_ids, q_valid = self.question_ids(questions)
        ids = torch.full((b, n), tok.pad_id, dtype=torch.long)
        valid = torch.ones((b, n), dtype=torch.bool)
        ids[:, 0] = tok.bos_id
        ids[:, lay["visual"]] = tok.image_id
        qs = lay["text"][:-1]
        ids[:, qs] = q_ids
        valid[:, qs] = q_valid
        ids[:, lay["text"][-1]] = tok.sep_id
        ids[:, lay["answer"]] = tok.mask_id
        if visual_embeds is None:
            with torch.no_grad():
                visual_embeds = self.encode_images(self.preprocess(images))
        dev = self.device
        return Prompt(
            input_ids=ids.to(dev),
            visual_embeds=visual_embeds.to(dev),
            visual_index=lay["visual"].to(dev),
            answer_index=lay["answer"].to(dev),
            key_valid=valid.to(dev),
            position_ids=torch.arange(n, device=dev).expand(b, n).clone(),
            mask_id=tok.mask_id,
            grid=self.config.grid,
            text_index=lay["text"].to(dev),
        )

    # -- persistence ----------------------------------------------------------------------------
    def save_pretrained(self, path: str | Path, metrics: dict | None = None) -> None:
        """Write ``model.safetensors`` and ``config.json`` (and ``metrics.json`` when given)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        save_file(state, str(path / "model.safetensors"))
        (path / "config.json").write_text(json.dumps(asdict(self.config), indent=1))
        if metrics is not None:
            (path / "metrics.json").write_text(json.dumps(metrics, indent=1))

    @classmethod
    def from_pretrained(cls, path: str | Path, name: str | None = None) -> "ToyDMLLM":
        """Load a directory written by :meth:`save_pretrained`."""
        path = Path(path)
        cfg_file, weights = path / "config.json", path / "model.safetensors"
        for f in (cfg_file, weights):
            if not f.is_file():
                raise ValueError(f"missing checkpoint file {f}")
        config = ToyConfig.from_dict(json.loads(cfg_file.read_text()))
        model = cls(config, name=name or path.name)
        state = load_file(str(weights))
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(f"{weights}: missing keys {missing[:5]}, unexpected keys {unexpected[:5]}")
        model.eval()
        return model
