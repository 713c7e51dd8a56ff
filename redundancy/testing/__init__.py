"""Public test helpers: tiny checkpoints in each real model's format, reference computations.

Users who extend the toolkit can test their code outside this repository with them.
"""
