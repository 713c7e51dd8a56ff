"""The layer loop over live tokens, its token state and its event points."""

from .attention import attention_rows, build_mask
from .engine import Engine, ForwardOutput, PrefixCache
from .events import AttentionEvent, ForwardContext, Listener, NoPolicy, Policy
from .state import TokenState

__all__ = [
    "attention_rows", "build_mask", "Engine", "ForwardOutput", "PrefixCache", "AttentionEvent",
    "ForwardContext", "Listener", "NoPolicy", "Policy", "TokenState",
]
