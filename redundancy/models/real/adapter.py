"""One adapter class for the five real dMLLMs; a :class:`ModelSpec` holds what differs between them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from ..base import ImageLike, Prompt, TransformersDecoder
from .checkpoint import CheckpointError, Weights, parse_dtype, read_config
from .lm import load_lm
from .text import HFTokenizer, load_hf_tokenizer, tokenizer_settings
from .vision import LlavaVision, QwenVision, VisualTokens


@dataclass(frozen=True, kw_only=True)
class ModelSpec:
    """Everything model-specific, as a keyed table: layout of the weights, vision front end, template
    and special tokens. Every field is given by keyword."""

    name: str
    repo: str  # the public checkpoint this format comes from
    layout: str  # llama | olmo | qwen2 (redundancy.models.real.lm)
    vision: str  # llava | llava-pool | qwen | vq
    family: str
    logit_shift: int
    mask_token: str
    pad_token: str
    end_tokens: tuple[str, ...]  # the first ends the answer and pads the slot after it
    template: str  # with {system}, {image} and {question}
    system: str = ""
    image_token: str | None = None  # id written at every visual position (None: pad)
    forbidden_tokens: tuple[str, ...] = ()  # never proposed at answer slots (LLaDA-V's sampler)
    ignore_prefixes: tuple[str, ...] = ()  # checkpoint keys the adapter does not read
    #: how the text around the image is tokenised: ``plain`` (each side on its own) or ``llava``
    #: (LLaVA's ``tokenizer_image_token``: :meth:`~.text.HFTokenizer.encode_around_image`)
    prompt_chunks: str = "plain"
    #: template markers written as fixed ids, not through the tokenizer (MMaDA's reserved ids)
    literal_ids: tuple[tuple[str, int], ...] = ()
    #: the loader cuts the embeddings and the head to ``len(tokenizer)`` rows (LLaDA-V's llava
    #: ``builder.py`` 303, ``resize_token_embeddings(len(tokenizer))``)
    resize_to_tokenizer: bool = False
    #: the image newline is held in bfloat16 whatever the run's dtype (LaViDa: ``LlavaLladaModel.dtype =
    #: torch.bfloat16  # hack``, ``llava_llada.py`` 31 / ``llava_dream.py`` 64, so ``llava_arch.py`` 60
    #: creates it in bfloat16 and the checkpoint value is rounded into it)
    newline_bfloat16: bool = False

    def __post_init__(self):
        if self.prompt_chunks not in ("plain", "llava"):
            raise ValueError(f"{self.name}: unknown prompt_chunks {self.prompt_chunks!r}; choose plain or llava")


#: LLaVA's system text (llava ``conversation.py``), used by LLaDA-V, LaViDa-LLaDA and LaViDa-Dream
LLAVA_SYSTEM = ("You are a helpful language and vision assistant. You are able to understand the visual content that "
                "the user provides, and assist the user with a variety of tasks using natural language.")
LLADA_TEMPLATE = ("<|startoftext|><|start_header_id|>system<|end_header_id|>\n\n{system}<|eot_id|>"
                  "<|start_header_id|>user<|end_header_id|>\n\n{image}\n{question}<|eot_id|>"
                  "<|start_header_id|>assistant<|end_header_id|>\n\n")
QWEN_SYSTEM = "You are a helpful assistant."
DREAM_TEMPLATE = ("<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{image}\n{question}<|im_end|>\n"
                  "<|im_start|>assistant\n")
DIMPLE_TEMPLATE = ("<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n<|vision_start|>{image}<|vision_end|>"
                   "{question}<|im_end|>\n<|im_start|>assistant\n")
# MMaDA's MMU prompt (VLMEvalKit vlm/mmada/mmada.py 241-248 and utils.py 56; training/data.py): <|sot|> is the
# tokenizer's BOS after <|eoi|>, and the user turn ends with the literal text "<eot_id>", not the special token
MMADA_TEMPLATE = ("<|mmu|><|soi|>{image}<|eoi|><|startoftext|><|start_header_id|>user<|end_header_id|>\n{question}"
                  "<eot_id><|start_header_id|>assistant<|end_header_id|>\n")

LLADA_ENDS = ("<|eot_id|>", "<|endoftext|>")
# LLaVA-style checkpoints keep the tower's post-norm and head (unused by the features) and an unused resampler
_TOWER = "model.vision_tower.vision_tower.vision_model."
LLAVA_UNUSED = (_TOWER + "post_layernorm", _TOWER + "head", "model.vision_resampler")
QWEN_ENDS = ("<|im_end|>", "<|endoftext|>")

SPECS: dict[str, ModelSpec] = {
    "llada-v": ModelSpec(
        name="llada-v", repo="GSAI-ML/LLaDA-V", layout="llama", vision="llava", family="from_scratch",
        logit_shift=0, mask_token="<|mdm_mask|>", pad_token="<|endoftext|>", end_tokens=LLADA_ENDS,
        template=LLADA_TEMPLATE, system=LLAVA_SYSTEM, prompt_chunks="llava", resize_to_tokenizer=True,
        forbidden_tokens=("<|endoftext|>", "<|startoftext|>", "<|start_header_id|>", "<|end_header_id|>"),
        ignore_prefixes=LLAVA_UNUSED),
    "lavida-llada": ModelSpec(
        name="lavida-llada", repo="jacklishufan/lavida-llada-v1.0-instruct", layout="olmo", vision="llava-pool",
        family="from_scratch", logit_shift=0, mask_token="<|mdm_mask|>", pad_token="<|endoftext|>",
        end_tokens=LLADA_ENDS, template=LLADA_TEMPLATE, system=LLAVA_SYSTEM, prompt_chunks="llava",
        newline_bfloat16=True, ignore_prefixes=LLAVA_UNUSED),
    "lavida-dream": ModelSpec(
        name="lavida-dream", repo="jacklishufan/lavida-dream-v1.0-instruct", layout="qwen2", vision="llava-pool",
        family="ar_to_diffusion", logit_shift=1, mask_token="<|mask|>", pad_token="<|endoftext|>",
        end_tokens=QWEN_ENDS, template=DREAM_TEMPLATE, system=LLAVA_SYSTEM, prompt_chunks="llava",
        newline_bfloat16=True, resize_to_tokenizer=True,  # Dream's head is untied: the builder's resize cuts it
        ignore_prefixes=LLAVA_UNUSED),  # conv_dream's system text is LLaVA's (LaViDa llava/conversation.py 479-490)
    "dimple": ModelSpec(
        name="dimple", repo="rp-yu/Dimple-7B", layout="qwen2", vision="qwen", family="ar_to_diffusion",
        logit_shift=1, mask_token="<|mask|>", pad_token="<|endoftext|>", end_tokens=QWEN_ENDS,
        template=DIMPLE_TEMPLATE, system=QWEN_SYSTEM, image_token="<|image_pad|>"),
    "mmada": ModelSpec(
        name="mmada", repo="Gen-Verse/MMaDA-8B-MixCoT", layout="olmo", vision="vq", family="from_scratch",
        logit_shift=0, mask_token="<|mdm_mask|>", pad_token="<|endoftext|>", end_tokens=LLADA_ENDS,
        template=MMADA_TEMPLATE,
        # MMaDA writes these as reserved LLaDA ids (training/prompting_utils.py 17-29, use_reserved_token)
        literal_ids=(("<|mmu|>", 126089), ("<|soi|>", 126084), ("<|eoi|>", 126085))),
}
MODELS = tuple(SPECS)


class RealDMLLM(TransformersDecoder):
    """A real dMLLM re-hosted on transformers modules, loaded from a local checkpoint directory.

    ``build_prompt`` lays out ``[template prefix | visual span | padding | question + suffix | answer]``;
    padding keys are masked and position ids count valid tokens only, so a padded row computes exactly
    what it computes alone. Images of one batch must give the same number of visual tokens.
    """

    def __init__(self, spec: ModelSpec, checkpoint: str | Path, dtype: str | torch.dtype = "float32",
                 device: str | torch.device = "cpu", system_prompt: str | None = None, vq_model: Any = None,
                 image_offset: int | None = None, mmada_repo: str | None = None, vq_model_path: str | None = None,
                 resolution: int | None = None):
        super().__init__()
        self.spec = spec
        self.name = spec.name
        self.family = spec.family
        self.logit_shift = spec.logit_shift
        self.checkpoint = Path(checkpoint)
        dt = parse_dtype(dtype)
        self.config = read_config(self.checkpoint)
        w = Weights(self.checkpoint)
        self.lm, self.head, self.sizes = load_lm(spec.layout, w, self.config, dt, device)
        d = self.sizes["hidden"]
        if spec.vision in ("llava", "llava-pool"):
            self.vision = LlavaVision(w, self.config, d, dt, pool=spec.vision == "llava-pool")
            if spec.newline_bfloat16:
                with torch.no_grad():
                    self.vision.newline.copy_(self.vision.newline.to(torch.bfloat16).to(dt))
        elif spec.vision == "qwen":
            self.vision = QwenVision(w, self.config, d, dt)
        else:
            self.vision = None
            self.vq_model = vq_model if callable(vq_model) or vq_model is None else None
            if vq_model is not None and self.vq_model is None:
                raise ValueError(f"vq_model must be callable (image -> codes), got {type(vq_model).__name__}")
            if mmada_repo is not None or vq_model_path is not None:
                res = int(resolution or self.config.get("resolution", 512))
                self.vq_model = MagvitCodes(mmada_repo, vq_model_path, res)
            self._image_offset = image_offset
        left = w.unused(spec.ignore_prefixes)
        if left:
            raise CheckpointError(f"{self.checkpoint}: weights the {spec.name} adapter does not know: {left[:5]}"
                                  f"{' ...' if len(left) > 5 else ''}")
        hf = load_hf_tokenizer(self.checkpoint)
        tok_cfg = tokenizer_settings(self.checkpoint)
        if spec.resize_to_tokenizer and len(hf) < self.sizes["vocab"]:
            self._resize_vocab(len(hf))
        ids = {}
        for tok in {spec.mask_token, spec.pad_token, *spec.end_tokens, *spec.forbidden_tokens,
                    *([spec.image_token] if spec.image_token else [])}:
            i = hf.convert_tokens_to_ids(tok)
            if i is None or (hf.unk_token_id is not None and i == hf.unk_token_id):
                raise CheckpointError(f"{self.checkpoint}: the tokenizer has no special token {tok!r}")
            ids[tok] = int(i)
        mask_id = int(self.config.get("mask_token_id", ids[spec.mask_token]))
        bos = tok_cfg.get("bos_token")
        bos_id = hf.convert_tokens_to_ids(bos) if bos is not None else None
        self.tokenizer = HFTokenizer(hf, mask_id=mask_id, pad_id=ids[spec.pad_token], end_id=ids[spec.end_tokens[0]],
                                     end_ids=[ids[t] for t in spec.end_tokens], vocab_size=self.sizes["vocab"],
                                     bos_id=bos_id, add_bos=tok_cfg.get("add_bos_token", False))
        self.forbidden_ids = [ids[t] for t in spec.forbidden_tokens]
        self.tokenizer.literal = dict(spec.literal_ids)
        if spec.vision == "vq":  # VQ code c is token len(tokenizer) + c (MMaDA inference_mmu.py 94,
            # VLMEvalKit vlm/mmada/mmada.py 235: ``get_code(image) + len(text_tokenizer)``)
            self.image_offset = int(self._image_offset if self._image_offset is not None else len(hf))
        self.system = spec.system if system_prompt is None else system_prompt
        pre, post = spec.template.split("{image}")
        self._prefix = pre.format(system=self.system)
        self._suffix = post
        self.image_id = ids[spec.image_token] if spec.image_token else self.tokenizer.pad_id
        self.to(device)
        self.eval()

    def _resize_vocab(self, n: int) -> None:
        """Keep the first ``n`` rows of the embeddings and the head (what ``resize_token_embeddings``
        leaves when it shrinks a vocabulary)."""
        emb, head = self.lm.embed_tokens, self.head
        new_emb = torch.nn.Embedding(n, emb.weight.shape[1], device=emb.weight.device, dtype=emb.weight.dtype)
        new_emb.weight.data.copy_(emb.weight.data[:n])
        new_head = torch.nn.Linear(head.in_features, n, bias=False, device=head.weight.device, dtype=head.weight.dtype)
        new_head.weight.data.copy_(head.weight.data[:n])
        self.lm.embed_tokens, self.head = new_emb, new_head
        self.sizes["vocab"] = n

    # -- images ---------------------------------------------------------------------------------
    def visual_tokens(self, image: ImageLike) -> VisualTokens:
        """One image's visual tokens (MMaDA: a LongTensor of VQ codes, or an image with ``vq_model``)."""
        if self.vision is not None:
            return self.vision(image)
        if isinstance(image, Tensor) and not torch.is_floating_point(image):
            codes = image.flatten().long().to(self.device)
        elif self.vq_model is not None:
            from ..base import load_image

            codes = self.vq_model(load_image(image)).flatten().long().to(self.device)
        else:
            raise ValueError("mmada takes precomputed image codes (a LongTensor of VQ codes per image); to encode "
                             "images, set options mmada_repo=<your MMaDA clone> and vq_model_path=<MAGVIT-v2 "
                             "weights>, or pass vq_model=<callable image -> codes> (docs/adapters.md)")
        side = int(round(codes.numel() ** 0.5))
        ids = codes + self.image_offset
        if int(ids.max()) >= self.sizes["vocab"] or int(codes.min()) < 0:
            raise ValueError(f"image codes must lie in [0, {self.sizes['vocab'] - self.image_offset}); "
                             f"got [{int(codes.min())}, {int(codes.max())}]")
        return VisualTokens(self.lm.embed_tokens(ids), (side, ids.numel() // max(side, 1)), token_ids=ids)

    # -- prompt ---------------------------------------------------------------------------------
    def build_prompt(self, images: Sequence[ImageLike], questions: Sequence[str], answer_length: int) -> Prompt:
        if len(images) != len(questions):
            raise ValueError(f"{len(images)} images but {len(questions)} questions")
        if answer_length < 1:
            raise ValueError(f"answer_length must be >= 1, got {answer_length}")
        tok = self.tokenizer
        vis = [self.visual_tokens(im) for im in images]
        n_vis = {v.embeds.shape[0] for v in vis}
        if len(n_vis) > 1:
            raise ValueError(f"images of one batch give different numbers of visual tokens {sorted(n_vis)}; "
                             f"use batch_size=1 or images of one size")
        n = n_vis.pop()
        llava = self.spec.prompt_chunks == "llava"
        chunks = [tok.encode_around_image(self._prefix, self._suffix.format(question=q), llava) for q in questions]
        prefix, tails = chunks[0][0], [t for _, t in chunks]
        t_max = max(len(t) for t in tails)
        b, p = len(questions), len(prefix)
        seq = p + n + t_max + answer_length
        ids = torch.full((b, seq), tok.pad_id, dtype=torch.long)
        valid = torch.ones((b, seq), dtype=torch.bool)
        ids[:, :p] = torch.tensor(prefix, dtype=torch.long)
        for i, v in enumerate(vis):
            ids[i, p: p + n] = v.token_ids if v.token_ids is not None else self.image_id
        for i, t in enumerate(tails):
            pad = t_max - len(t)
            valid[i, p + n: p + n + pad] = False
            ids[i, p + n + pad: p + n + t_max] = torch.tensor(t, dtype=torch.long)
        ids[:, p + n + t_max:] = tok.mask_id
        visual_index = torch.arange(p, p + n)
        text_index = torch.arange(p + n, p + n + t_max)
        answer_index = torch.arange(p + n + t_max, seq)
        pos = valid.long().cumsum(1) - 1
        if vis[0].rope_grid is not None:
            pos = self._mrope_positions(pos, p, n, vis[0].rope_grid)
        dev = self.device
        return Prompt(
            input_ids=ids.to(dev), visual_embeds=torch.stack([v.embeds for v in vis]).to(dev),
            visual_index=visual_index.to(dev), answer_index=answer_index.to(dev), key_valid=valid.to(dev),
            position_ids=pos.to(dev), mask_id=tok.mask_id, grid=vis[0].grid, text_index=text_index.to(dev),
            meta={"newline": vis[0].newline, "model": self.name},
        )

    @staticmethod
    def _mrope_positions(pos: Tensor, start: int, n: int, grid: tuple[int, int]) -> Tensor:
        """3-D (t, h, w) ids: text tokens share one index; the image grid spans ``max(h, w)`` indices."""
        gh, gw = grid
        p3 = pos.unsqueeze(0).repeat(3, 1, 1)
        r = torch.arange(n) // gw
        c = torch.arange(n) % gw
        p3[0, :, start: start + n] = start
        p3[1, :, start: start + n] = start + r
        p3[2, :, start: start + n] = start + c
        after = start + n
        p3[:, :, after:] = pos[:, after:] - (n - max(gh, gw))
        return p3

    def rotary(self, hidden: Tensor, position_ids: Tensor) -> tuple[Tensor, Tensor]:
        if position_ids.ndim == 2:
            return super().rotary(hidden, position_ids)
        # M-RoPE: frequency bands taken from the t / h / w ids by ``mrope_section``
        section = list(self.sizes.get("mrope_section") or [])
        cos3, sin3 = zip(*(self.lm.rotary_emb(hidden, position_ids=position_ids[a]) for a in range(3)))
        half = cos3[0].shape[-1] // 2
        if sum(section) != half:
            raise CheckpointError(f"mrope_section {section} must sum to head_dim/2 = {half}")
        axis = torch.cat([torch.full((s,), i % 3) for i, s in enumerate(section)])
        axis = torch.cat([axis, axis]).to(hidden.device)
        cos = torch.stack(cos3).gather(0, axis.view(1, 1, 1, -1).expand(1, *cos3[0].shape))[0]
        sin = torch.stack(sin3).gather(0, axis.view(1, 1, 1, -1).expand(1, *sin3[0].shape))[0]
        return cos, sin


class MagvitCodes:
    """MMaDA's MAGVIT-v2 image tokenizer, imported from the user's own clone of the MMaDA repository.

    It cannot be rebuilt on transformers modules, so it is loaded only on request: ``mmada_repo`` is
    put on ``sys.path`` and ``models.MAGVITv2.from_pretrained(vq_model_path)`` is called as in MMaDA's
    ``inference_mmu.py``. Images are resized (shorter side) and centre-cropped to ``resolution`` and
    scaled to [-1, 1] before ``get_code``.
    """

    def __init__(self, repo: str | None, weights: str | None, resolution: int):
        import importlib

        from .imports import on_path

        if not repo or not weights:
            raise ValueError("MMaDA image encoding needs both options: mmada_repo=<clone of Gen-Verse/MMaDA> and "
                             "vq_model_path=<local MAGVIT-v2 weights, e.g. a download of showlab/magvitv2>")
        if not (Path(repo) / "models").is_dir():
            raise ValueError(f"mmada_repo {repo!r} has no models/ package; give the root of a Gen-Verse/MMaDA clone")
        with on_path(repo):
            try:
                magvit = importlib.import_module("models").MAGVITv2
            except (ImportError, AttributeError) as e:
                raise ValueError(f"cannot import MAGVITv2 from {repo}/models: {e}") from e
            self.model = magvit.from_pretrained(weights).eval()
        self.resolution = resolution

    @torch.no_grad()
    def __call__(self, image) -> Tensor:
        import numpy as np
        from PIL import Image

        r = self.resolution
        w, h = image.size
        s = r / min(w, h)
        image = image.resize((max(r, round(w * s)), max(r, round(h * s))), resample=Image.BICUBIC)
        left, top = (image.width - r) // 2, (image.height - r) // 2
        image = image.crop((left, top, left + r, top + r))
        x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
        return self.model.get_code(x * 2 - 1).flatten()


def load_real(name: str, checkpoint: str | Path | None = None, **kwargs) -> RealDMLLM:
    """Load ``name`` (one of :data:`MODELS`) from a local checkpoint directory."""
    if name not in SPECS:
        raise ValueError(f"unknown real model {name!r}; choose one of: {', '.join(MODELS)}")
    if checkpoint is None:
        raise ValueError(f"model {name!r} needs a local checkpoint: model.checkpoint=DIR (a download of "
                         f"{SPECS[name].repo}); no model hub is contacted")
    return RealDMLLM(SPECS[name], checkpoint, **kwargs)


def loader(name: str) -> Callable[..., RealDMLLM]:
    return lambda checkpoint=None, **kw: load_real(name, checkpoint, **kw)
