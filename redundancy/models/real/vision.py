"""Image front ends of the real models, on transformers' own vision modules.

* :class:`LlavaVision` — SigLIP tower (last layer removed, features before the post-norm), the
  ``mlp2x_gelu`` projector, LLaVA's anyres tiling with ``spatial_unpad``, one ``image_newline`` per
  row, and optionally LaViDa's 2x bilinear pooling of every tile (729 -> 196 tokens).
* :class:`QwenVision` — Dimple's Qwen2-VL / Qwen2.5-VL vision transformer with its 2x2 patch merger,
  the ``img_projector``, and the 3-D M-RoPE grid of the merged tokens.
"""

from __future__ import annotations

import ast
import math
import re
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from ..base import load_image
from .checkpoint import CheckpointError, Weights


@dataclass
class VisualTokens:
    """One image's visual tokens and where they sit in 2-D."""

    embeds: Tensor  # [n, d_model]
    grid: tuple[int, int]  # rows x cols of the main token rectangle
    newline: list[int] = field(default_factory=list)  # offsets (within the span) of newline tokens
    rope_grid: tuple[int, int] | None = None  # (h, w) of the merged grid, for M-RoPE
    token_ids: Tensor | None = None  # discrete visual tokens (MMaDA's VQ codes + offset)


# -- LLaVA-style (LLaDA-V, LaViDa) ------------------------------------------------------------------
def tile_size(config: dict, covered: int) -> int:
    """The side of the processor's tiles in pixels.

    LLaVA-OneVision's SigLIP processor resizes every tile to 384 px (llava ``siglip_encoder.py``
    ``SigLipImageProcessor``: ``size=(384, 384)``); the 14-px patch convolution then covers
    27 x 14 = 378 px and ignores the last 6. The side is ``vision_config.image_size`` when the
    checkpoint gives it, else the resolution that ends the tower's name (``mm_vision_tower``:
    ``google/siglip2-so400m-patch14-384``), else the pixels the patches cover.
    """
    vc = dict(config.get("vision_config") or {})
    if vc.get("image_size"):
        return int(vc["image_size"])
    m = re.search(r"-(\d+)$", str(config.get("mm_vision_tower") or ""))
    return int(m.group(1)) if m else covered


def expand_to_square(image: Image.Image, colour: tuple[int, ...]) -> Image.Image:
    """Centre a non-square image on a square canvas of ``colour`` (llava ``mm_utils.expand2square``)."""
    w, h = image.size
    if w == h:
        return image
    side = max(w, h)
    canvas = Image.new(image.mode, (side, side), colour)
    canvas.paste(image, ((side - w) // 2, (side - h) // 2))
    return canvas


def parse_pinpoints(value, tile: int) -> list[tuple[int, int]]:
    """``image_grid_pinpoints`` as (width, height) pairs: a list of pairs, or ``"(1x1),...,(6x6)"``."""
    if isinstance(value, str):
        m = re.findall(r"\((\d+)x(\d+)\)", value)
        if m:
            (a0, b0), (a1, b1) = (tuple(map(int, m[0])), tuple(map(int, m[-1])))
            return [(i * tile, j * tile) for i in range(a0, a1 + 1) for j in range(b0, b1 + 1)]
        value = ast.literal_eval(value)
    try:
        return [(int(w), int(h)) for w, h in value]
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"cannot read image_grid_pinpoints {value!r}: {e}") from e


def select_best_resolution(size: tuple[int, int], candidates: Sequence[tuple[int, int]]) -> tuple[int, int]:
    """The candidate (w, h) keeping the most of the image's resolution, then wasting the least area."""
    w, h = size
    best, best_eff, best_waste = None, -1, math.inf
    for cw, ch in candidates:
        scale = min(cw / w, ch / h)
        dw, dh = int(w * scale), int(h * scale)
        eff = min(dw * dh, w * h)
        waste = cw * ch - eff
        if eff > best_eff or (eff == best_eff and waste < best_waste):
            best, best_eff, best_waste = (cw, ch), eff, waste
    return best


def resize_and_pad(image: Image.Image, target: tuple[int, int]) -> Image.Image:
    """Resize keeping the aspect ratio to fit ``target`` (w, h), centred on black."""
    tw, th = target
    w, h = image.size
    scale = min(tw / w, th / h)
    nw, nh = min(tw, math.ceil(w * scale)), min(th, math.ceil(h * scale))
    canvas = Image.new("RGB", (tw, th), (0, 0, 0))
    canvas.paste(image.resize((nw, nh), resample=Image.BICUBIC), ((tw - nw) // 2, (th - nh) // 2))
    return canvas


def unpad(feat: Tensor, original: tuple[int, int]) -> Tensor:
    """Crop the padding that ``resize_and_pad`` added; ``feat`` [d, H, W], ``original`` (w, h)."""
    ow, oh = original
    _, ch, cw = feat.shape
    if ow / oh > cw / ch:  # wider than the canvas: padding was added above and below
        nh = int(oh * (cw / ow))
        pad = (ch - nh) // 2
        return feat[:, pad: ch - pad, :]
    nw = int(ow * (ch / oh))
    pad = (cw - nw) // 2
    return feat[:, :, pad: cw - pad]


class LlavaVision(nn.Module):
    """SigLIP + ``mlp2x_gelu`` projector + anyres / spatial_unpad / newline layout."""

    TOWER = "model.vision_tower.vision_tower.vision_model."

    def __init__(self, weights: Weights, config: dict, d_model: int, dtype: torch.dtype, pool: bool = False):
        super().__init__()
        from transformers import SiglipVisionConfig, SiglipVisionModel

        pre = self.TOWER
        patch = weights.get(pre + "embeddings.patch_embedding.weight")
        n_pos = weights.get(pre + "embeddings.position_embedding.weight").shape[0]
        hidden, ps = patch.shape[0], patch.shape[-1]
        layers = 1 + max(int(k[len(pre + "encoder.layers."):].split(".")[0])
                         for k in weights.keys() if k.startswith(pre + "encoder.layers."))
        inter = weights.get(pre + "encoder.layers.0.mlp.fc1.weight").shape[0]
        vc = dict(config.get("vision_config") or {})
        side = int(round(math.sqrt(n_pos)))
        self.tile = tile_size(config, side * ps)
        cfg = SiglipVisionConfig(
            hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
            num_attention_heads=int(vc.get("num_attention_heads", max(1, hidden // 72))),
            image_size=self.tile, patch_size=ps, layer_norm_eps=float(vc.get("layer_norm_eps", 1e-6)),
            vision_use_head=False,
        )
        cfg._attn_implementation = "eager"
        self.tower = SiglipVisionModel(cfg).to(dtype)
        # the features are the last kept layer's hidden states: the post-norm is never used (LLaVA
        # checkpoints may or may not still hold it; it is ignored when present)
        getattr(self.tower, "vision_model", self.tower).post_layernorm = nn.Identity()
        tower_map = {pre + k.removeprefix("vision_model."): "tower." + k for k in self.tower.state_dict()}
        self.side = side
        self.projector = nn.Sequential(nn.Linear(hidden, d_model), nn.GELU(), nn.Linear(d_model, d_model)).to(dtype)
        proj_map = {f"model.mm_projector.{i}.{p}": f"projector.{i}.{p}" for i in (0, 2) for p in ("weight", "bias")}
        self.newline = nn.Parameter(torch.zeros(d_model, dtype=dtype))
        weights.load_into(self, {**tower_map, **proj_map, "model.image_newline": "newline"}, dtype)
        self.pool = pool
        self.aspect = str(config.get("image_aspect_ratio", "anyres_max_4" if not pool else "anyres"))
        self.merge = str(config.get("mm_patch_merge_type", "spatial_unpad"))
        default_pins = "(1x1),...,(6x6)" if not pool else [[384, 768], [768, 384], [768, 768], [1152, 384], [384, 1152]]
        pins = config.get("image_grid_pinpoints", default_pins)
        # pinpoints are in pixels of the processor's tile (llava mm_utils.py process_anyres_image, 257-270)
        self.pinpoints = parse_pinpoints(pins, self.tile)
        mean = config.get("image_mean", [0.5, 0.5, 0.5])
        std = config.get("image_std", [0.5, 0.5, 0.5])
        self.register_buffer("mean", torch.tensor(mean).view(3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(3, 1, 1), persistent=False)

    @property
    def unit(self) -> int:
        """Tokens per tile side after the optional pooling (27 -> 14)."""
        return math.ceil(self.side / 2) if self.pool else self.side

    def pixels(self, image: Image.Image) -> Tensor:
        """Normalised tiles [1 + grid tiles, 3, tile, tile]: the base image first.

        ``image_aspect_ratio: pad`` pads the image to a square of the processor's mean colour first
        and gives one tile (llava ``mm_utils.py`` ``process_images``, 330-334, ``expand2square``).
        """
        t = self.tile
        if self.aspect == "pad":
            image = expand_to_square(image, tuple(int(x * 255) for x in self.mean.flatten().tolist()))
        tiles = [image.resize((t, t), resample=Image.BICUBIC)]
        if self.aspect.startswith("anyres"):
            cw, ch = select_best_resolution(image.size, self.pinpoints)
            canvas = resize_and_pad(image, (cw, ch))
            for top in range(0, ch, t):
                for left in range(0, cw, t):
                    tiles.append(canvas.crop((left, top, left + t, top + t)))
        arr = torch.from_numpy(np.stack([np.asarray(x, dtype=np.float32) / 255.0 for x in tiles])).permute(0, 3, 1, 2)
        return ((arr - self.mean) / self.std).to(self.newline.device, self.newline.dtype)

    def tile_features(self, pixels: Tensor) -> Tensor:
        """Projected features per tile [tiles, unit*unit, d_model] (hidden states of the last kept layer)."""
        out = self.tower(pixel_values=pixels, output_hidden_states=True)
        feats = self.projector(out.hidden_states[-1])
        if self.pool:
            s = self.side
            x = feats.view(-1, s, s, feats.shape[-1]).permute(0, 3, 1, 2)
            x = F.interpolate(x.float(), size=(self.unit, self.unit), mode="bilinear").to(feats.dtype)
            feats = x.flatten(2).transpose(1, 2)
        return feats

    @torch.no_grad()
    def forward(self, image) -> VisualTokens:
        image = load_image(image)
        feats = self.tile_features(self.pixels(image))
        base, u, d = feats[0], self.unit, feats.shape[-1]
        if feats.shape[0] == 1:  # one tile (image_aspect_ratio pad or none): the eval's stacked-tensor path
            # (LLaDA-V eval llava_onevision_llada.py 489-491 -> llava_arch.py 516) appends no newline
            return VisualTokens(base, (u, u))
        cw, ch = select_best_resolution(image.size, self.pinpoints)
        gw, gh = cw // self.tile, ch // self.tile
        grid = feats[1:].view(gh, gw, u, u, d).permute(4, 0, 2, 1, 3).reshape(d, gh * u, gw * u)
        if "unpad" in self.merge:
            grid = unpad(grid, image.size)
            m = re.match(r"anyres_max_(\d+)", self.aspect)
            if m:
                h, w = grid.shape[1:]
                times = math.sqrt(h * w / (int(m.group(1)) * u * u))
                if times > 1.1:
                    grid = F.interpolate(grid[None].float(), size=(int(h // times), int(w // times)),
                                         mode="bilinear")[0].to(feats.dtype)
            h, w = grid.shape[1:]
            grid = torch.cat([grid, self.newline.view(d, 1, 1).expand(d, h, 1)], dim=2)
            tokens = grid.flatten(1).t()
            newline = [u * u + r * (w + 1) + w for r in range(h)]
        else:
            h, w = grid.shape[1:]
            tokens = grid.flatten(1).t()
            newline = []
        return VisualTokens(torch.cat([base, tokens]), (u, u), newline)


# -- Qwen-VL style (Dimple) -------------------------------------------------------------------------
class QwenVision(nn.Module):
    """Qwen2-VL / Qwen2.5-VL vision transformer (chosen by the checkpoint's keys) + ``img_projector``."""

    def __init__(self, weights: Weights, config: dict, d_model: int, dtype: torch.dtype):
        super().__init__()
        vc = dict(config.get("vision_config") or {})
        v25 = "visual.blocks.0.mlp.gate_proj.weight" in weights
        patch = weights.get("visual.patch_embed.proj.weight")  # [hidden, 3, t, p, p]
        hidden = patch.shape[0]
        depth = 1 + max(int(k.split(".")[2]) for k in weights.keys() if k.startswith("visual.blocks."))
        merged = weights.get("visual.merger.mlp.2.weight").shape[0]
        common = dict(depth=depth, num_heads=int(vc.get("num_heads", 16)), in_channels=patch.shape[1],
                      patch_size=patch.shape[-1], temporal_patch_size=patch.shape[2],
                      spatial_merge_size=int(vc.get("spatial_merge_size", 2)))
        if v25:
            from transformers.models.qwen2_5_vl.configuration_qwen2_5_vl import Qwen2_5_VLVisionConfig
            from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionTransformerPretrainedModel

            inter = weights.get("visual.blocks.0.mlp.gate_proj.weight").shape[0]
            cfg = Qwen2_5_VLVisionConfig(
                hidden_size=hidden, intermediate_size=inter, out_hidden_size=merged,
                window_size=int(vc.get("window_size", 112)),
                fullatt_block_indexes=list(vc.get("fullatt_block_indexes", [7, 15, 23, 31])), **common)
            cfg._attn_implementation = "eager"
            self.tower = Qwen2_5_VisionTransformerPretrainedModel._from_config(cfg)
        else:
            from transformers.models.qwen2_vl.configuration_qwen2_vl import Qwen2VLVisionConfig
            from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VisionTransformerPretrainedModel

            cfg = Qwen2VLVisionConfig(embed_dim=hidden, hidden_size=merged,
                                      mlp_ratio=weights.get("visual.blocks.0.mlp.fc1.weight").shape[0] // hidden,
                                      **common)
            cfg._attn_implementation = "eager"
            self.tower = Qwen2VisionTransformerPretrainedModel._from_config(cfg)
        self.tower.to(dtype)
        self.merge = common["spatial_merge_size"]
        self.patch = common["patch_size"]
        self.temporal = common["temporal_patch_size"]
        # the projector's activation is the language model's (Dimple modeling_dimple.py, img_projector:
        # ACT2FN[config.hidden_act], SiLU for Dimple-7B)
        from transformers.activations import ACT2FN

        act = str(config.get("hidden_act", "silu"))
        if act not in ACT2FN:
            raise CheckpointError(f"hidden_act {act!r} is not an activation transformers knows")
        self.projector = nn.Sequential(nn.Linear(merged, d_model), ACT2FN[act], nn.Linear(d_model, d_model)).to(dtype)
        mapping = {"visual." + k: "tower." + k for k in self.tower.state_dict()}
        mapping.update({f"img_projector.linear_{i}.{p}": f"projector.{j}.{p}"
                        for i, j in ((1, 0), (2, 2)) for p in ("weight", "bias")})
        weights.load_into(self, mapping, dtype)
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

        f = self.patch * self.merge
        # the image processor's settings live in preprocessor_config.json (Dimple's
        # DimpleImageProcessor.from_pretrained, lmms-eval models/dimple.py 149); config.json next
        pre = dict(config.get("preprocessor_config") or {})
        get = lambda k, d: pre.get(k, config.get(k, d))  # noqa: E731
        self.processor = Qwen2VLImageProcessorPil(
            min_pixels=int(get("min_pixels", 56 * 56)), max_pixels=int(get("max_pixels", f * f * 1280)),
            patch_size=self.patch, temporal_patch_size=self.temporal, merge_size=self.merge,
            **{k: pre[k] for k in ("image_mean", "image_std") if k in pre},
        )
        self._dtype = dtype

    @torch.no_grad()
    def forward(self, image) -> VisualTokens:
        image = load_image(image)
        out = self.processor(images=[image], return_tensors="pt")
        pv = out["pixel_values"].to(self.projector[0].weight.device, self._dtype)
        thw = out["image_grid_thw"].to(pv.device)
        feats = self.tower(pv, grid_thw=thw)
        feats = getattr(feats, "pooler_output", None) if not isinstance(feats, Tensor) else feats
        emb = self.projector(feats)
        t, h, w = (int(v) for v in thw[0])
        gh, gw = h // self.merge, w // self.merge
        if emb.shape[0] != t * gh * gw:
            raise CheckpointError(f"vision tower returned {emb.shape[0]} tokens for a {t}x{gh}x{gw} merged grid")
        return VisualTokens(emb, (gh, gw), rope_grid=(gh, gw))
