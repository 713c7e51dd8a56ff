"""dmllm-redundancy: visual-token redundancy studies for discrete-diffusion multimodal LLMs."""

__version__ = "0.1.0"
