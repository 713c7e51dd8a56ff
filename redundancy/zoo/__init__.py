"""The embedded small dMLLMs: training, evaluation and shipped weights (``zoo/weights/<name>/``)."""
