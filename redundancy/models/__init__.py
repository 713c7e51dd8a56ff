"""Model adapters and the registry of model names."""

from .base import FAMILIES, Adapter, Prompt, TransformersDecoder, load_image
from .registry import known_models, load_model, model_files, register_model
from .tokenizer import Tokenizer, WordTokenizer
from .toy import ToyConfig, ToyDMLLM

__all__ = [
    "FAMILIES", "Adapter", "Prompt", "TransformersDecoder", "load_image", "known_models", "load_model", "model_files", "register_model",
    "Tokenizer", "WordTokenizer", "ToyConfig", "ToyDMLLM",
]
