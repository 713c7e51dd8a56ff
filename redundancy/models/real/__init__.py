"""Real dMLLMs (LLaDA-V, LaViDa-LLaDA, LaViDa-Dream, Dimple, MMaDA) from local checkpoint directories."""

from .adapter import MODELS, SPECS, ModelSpec, RealDMLLM, load_real
from .checkpoint import CheckpointError

__all__ = ["MODELS", "SPECS", "CheckpointError", "ModelSpec", "RealDMLLM", "load_real"]
