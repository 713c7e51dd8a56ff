"""Observers of the engine: they read events and record tidy rows; they never change the run."""

from .attention import QUERY_GROUPS, VisualAttentionProbe

__all__ = ["QUERY_GROUPS", "VisualAttentionProbe"]
