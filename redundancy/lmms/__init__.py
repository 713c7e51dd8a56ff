"""lmms-eval integration: this toolkit's models, samplers, policies and probes as an lmms-eval model.

Modules (only :mod:`.model`, :mod:`.hydra_task` and :mod:`.cli` need lmms-eval, the ``eval`` extra):

- :mod:`.settings`: model arguments to the toolkit's config, per-task answer lengths, stop strings;
- :mod:`.model`: ``DMLLMRedundancy``, a subclass of ``lmms_eval.api.model.lmms``, and ``MANIFEST``,
  registered as ``dmllm_redundancy`` through the ``lmms_eval.models`` entry point;
- :mod:`.export`: ``python -m redundancy.lmms.export --out DIR`` writes the synthetic ``shapes``
  tasks (YAML + parquet) and local configs of the study's benchmarks;
- :mod:`.shapes_utils`: ``doc_to_visual`` / ``doc_to_text`` / ``process_results`` of the exported tasks;
- :mod:`.hydra_task`: ``python -m experiments.run task=lmms task.name=<task>``;
- :mod:`.cli`: ``python -m redundancy.lmms eval ...``, lmms-eval's command line with a non-zero exit on failure.

See ``docs/lmms.md``.
"""

MODEL_ID = "dmllm_redundancy"
INSTALL_HINT = "lmms-eval is not installed; install the eval extra (pip install -e '.[eval]', see docs/lmms.md)"
