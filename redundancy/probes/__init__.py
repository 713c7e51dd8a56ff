"""Observers of the engine: they read events and record tidy rows; they never change the run."""

from .attention import QUERY_GROUPS, VisualAttentionProbe
from .cost import CostProbe, PassCost, decoder_config, decoder_flops, forward_flops, head_flops, paper_flops, peak_memory_mb
from .divergence import MODES, BaselineCache, Reference, compare, forced, information_loss, record
from .signals import AnswerSignalProbe, answer_logit_scores, drop_one_oracle, lens_logprobs

__all__ = [
    "QUERY_GROUPS", "VisualAttentionProbe", "CostProbe", "PassCost", "decoder_config", "decoder_flops",
    "forward_flops", "head_flops", "paper_flops", "peak_memory_mb", "MODES", "BaselineCache", "Reference",
    "compare", "forced", "information_loss", "record", "AnswerSignalProbe", "answer_logit_scores",
    "drop_one_oracle", "lens_logprobs",
]
