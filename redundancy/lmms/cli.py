"""``python -m redundancy.lmms {eval,export} ...``: lmms-eval's command line with a failing exit status.

``python -m redundancy.lmms eval ARGS`` runs ``lmms-eval eval ARGS`` in-process and exits 1 when an
evaluation fails. lmms-eval 0.7.3's own command line catches the exception, logs "Error during
evaluation" and exits 0 unless run with ``--verbosity DEBUG``, so scripts and CI cannot see the
failure; this command can. It also makes sure ``dmllm_redundancy`` is registered when the package
runs from a source tree without installed entry points. ``python -m redundancy.lmms export ARGS``
is ``python -m redundancy.lmms.export ARGS``.
"""

from __future__ import annotations

import sys
import traceback
from typing import Sequence

from . import INSTALL_HINT, MODEL_ID

USAGE = """usage: python -m redundancy.lmms eval [lmms-eval eval arguments]    (e.g. --model dmllm_redundancy ...)
       python -m redundancy.lmms export --out DIR [--data-dir DATA] ...   (task folders, see --help)"""


def register() -> None:
    """Register ``dmllm_redundancy`` with lmms-eval's model registry unless the entry point did."""
    from lmms_eval.models import MODEL_REGISTRY_V2

    from .model import MANIFEST

    if MODEL_ID not in MODEL_REGISTRY_V2.list_model_names():
        MODEL_REGISTRY_V2.register_manifest(MANIFEST)


def evaluate(args: Sequence[str]) -> int:
    """Run lmms-eval's evaluation command on ``args``; 0 on success, 1 when any evaluation failed."""
    try:
        import lmms_eval.__main__ as entry
    except ImportError as e:
        print(f"error: {INSTALL_HINT} ({e})", file=sys.stderr)
        return 2
    register()
    failures: list[BaseException] = []
    original = entry.cli_evaluate_single

    def tracked(ns=None):
        try:
            return original(ns)
        except Exception as e:  # lmms-eval logs and swallows it unless --verbosity DEBUG
            failures.append(e)
            raise

    saved_argv = sys.argv
    entry.cli_evaluate_single = tracked
    sys.argv = ["lmms-eval", *args]
    try:
        entry.cli_evaluate()
    except SystemExit as e:  # --help, --tasks list, argument errors
        code = e.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    except Exception as e:  # re-raised by lmms-eval under --verbosity DEBUG
        traceback.print_exc()
        print(f"error: lmms-eval evaluation failed: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    finally:
        entry.cli_evaluate_single = original
        sys.argv = saved_argv
    if failures:
        e = failures[0]
        print(f"error: lmms-eval evaluation failed: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    cmd, rest = argv[0], argv[1:]
    if cmd == "eval":
        return evaluate(rest)
    if cmd == "export":
        from .export import main as export_main

        return export_main(rest)
    print(f"error: unknown command {cmd!r}; choose one of: eval, export\n{USAGE}", file=sys.stderr)
    return 2
