"""``dmllm_redundancy``: any registered adapter with this toolkit's sampler, policy and probes, as an
lmms-eval model (``lmms_eval.api.model.lmms``, 0.7.x, a *simple* model).

From lmms-eval's command line (registered by the ``lmms_eval.models`` entry point)::

    lmms-eval eval --model dmllm_redundancy \\
        --model_args model=toy-scratch,policy=fastv,policy.prune.ratio=0.25 --tasks shapes_short ...

From Python, or from ``python -m experiments.run task=lmms`` which does this::

    lm = DMLLMRedundancy.from_config(config)          # an experiment config (conf/ layout)
    lmms_eval.evaluator.simple_evaluate(model=lm, tasks=[...])
    lm.records, lm.trace_rows                         # per-question costs, probe rows

Each request's answer length, steps and block length come from the model config's per-task table
``model.generation`` when it has an entry for the task (or its answer kind), else from the task's
``max_new_tokens`` (see :mod:`redundancy.lmms.settings`); stop strings (``until``) cut the decoded
text; the task's temperature replaces the sampler's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch
from lmms_eval.api.instance import GenerationResult, Instance, unwrap_generation_output
from lmms_eval.api.model import lmms
from lmms_eval.models.registry_v2 import ModelManifest
from tqdm import tqdm

from . import MODEL_ID
from .settings import (
    AnswerSettings,
    BridgeSettings,
    answer_settings,
    answer_type,
    compose_config,
    sampling_temperature,
    stop_strings,
    truncate,
)

#: lmms-eval 0.7.3 passes every response, loglikelihood pairs included, through
#: ``unwrap_generation_output``, which turns a plain ``(logprob, is_greedy)`` tuple into its string;
#: the text of a ``GenerationResult`` passes through untouched, so pairs travel in one
_WRAP_PAIRS = unwrap_generation_output((0.0, True))[0] != (0.0, True)

#: document fields read as the question type of an outcome row, first match wins
QTYPE_FIELDS: tuple[str, ...] = ("qtype", "question_type", "category", "type")


def question_type(doc: Any) -> str | None:
    """The question type a benchmark document carries (:data:`QTYPE_FIELDS`), if any."""
    if isinstance(doc, Mapping):
        for k in QTYPE_FIELDS:
            if isinstance(doc.get(k), str):
                return doc[k]
    return None


@dataclass
class _Request:
    index: int
    context: str
    doc_to_visual: Callable
    doc_id: int
    task: str
    split: str
    until: list[str]
    answer: AnswerSettings
    temperature: float

    @property
    def key(self) -> tuple:
        """Requests with equal keys decode together."""
        return self.answer.answer_length, self.answer.sampler, self.temperature

    @property
    def sample_id(self) -> str:
        return f"{self.task}/{self.split}/{self.doc_id}"


class DMLLMRedundancy(lmms):
    """A toolkit adapter decoded by a toolkit sampler, with a pruning / skipping policy and probes.

    Model arguments (``--model_args k=v,...``): ``model`` (a ``conf/model`` file or any registered
    name, e.g. ``toy-scratch@1``), ``sampler``, ``policy``, ``probe`` (``conf/<group>`` files),
    ``checkpoint``, ``dtype``, ``attn_implementation``, dotted config paths
    (``policy.prune.ratio=0.25``), the bridge settings ``answer_type``, ``max_new_tokens``, and
    ``config=<yaml>`` for anything that does not fit the argument string. lmms-eval's own
    ``--batch_size`` and ``--device`` set the batch size and the model's device.

    After an evaluation, :attr:`records` holds one dict per decoded question (sample id, answer,
    cost counters, visual tokens kept, agreement with the unpruned baseline) and
    :attr:`trace_rows` the probes' tidy rows (``docs/results.md``), keyed by the same sample ids
    ``<task>/<split>/<doc_id>``.
    """

    is_simple = True

    def __init__(self, **model_args: Any) -> None:
        super().__init__()
        config, settings = compose_config(model_args)
        self._setup(config, settings)

    @classmethod
    def from_config(cls, config: Mapping[str, Any], settings: BridgeSettings | None = None) -> "DMLLMRedundancy":
        """An instance for an already composed experiment config (``conf/`` layout, plain or DictConfig)."""
        from ..config import to_plain

        obj = cls.__new__(cls)
        lmms.__init__(obj)
        obj._setup(to_plain(config), settings or BridgeSettings())
        return obj

    def _setup(self, config: dict, settings: BridgeSettings) -> None:
        from ..experiment import build_policy, get_model
        from ..sampling import make_sampler

        self.config = config
        self.settings = settings
        sc = dict(config["sampler"])
        kind = sc.pop("kind", "diffusion")
        # native: a diffusion sampler with the model's own settings (model.generation) per answer type
        self._native = kind == "native"
        self._sampler_kind = "diffusion" if self._native else kind
        self._sampler_fields = tuple(sc)
        self._sampler_kwargs = {} if self._sampler_kind == "autoregressive" else sc
        make_sampler(self._sampler_kind, **self._sampler_kwargs)  # unknown kinds and fields fail here
        policy = build_policy(config["policy"])  # unknown methods fail here
        self.blind = bool(config["policy"].get("blind"))
        if self.blind and policy is not None:
            raise ValueError("policy.blind withdraws every visual token; it cannot be combined with prune or skip")
        self.adapter = get_model(config["model"])  # lmms-eval's clean() drops it after an evaluation
        self.family = self.adapter.family
        self.batch_size_per_gpu = int(config.get("batch_size") or 1)
        if self.batch_size_per_gpu < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size_per_gpu}")
        self.records: list[dict] = []
        self.trace_rows: list[dict] = []
        self._n_batches = 0

    @property
    def batch_size(self) -> int:
        return self.batch_size_per_gpu

    @property
    def progress(self) -> bool:
        return bool(self.config.get("progress", True)) and self.rank == 0

    # -- generation -------------------------------------------------------------------------------
    def generate_until(self, requests: list[Instance]) -> list[str]:
        """Decode every request; requests with the same answer settings share batches."""
        planned = [self._plan(i, req) for i, req in enumerate(requests)]
        groups: dict[tuple, list[_Request]] = {}
        for r in planned:
            groups.setdefault(r.key, []).append(r)
        out: list[str | None] = [None] * len(requests)
        bar = tqdm(total=len(requests), desc=MODEL_ID, disable=not self.progress)
        for group in groups.values():
            for lo in range(0, len(group), self.batch_size):
                chunk = group[lo: lo + self.batch_size]
                for r, text in zip(chunk, self._decode(chunk)):
                    out[r.index] = text
                bar.update(len(chunk))
        bar.close()
        return out  # type: ignore[return-value]

    def generate_until_multi_round(self, requests: list[Instance]) -> list[str]:
        tasks = sorted({req.args[-2] for req in requests}) if requests else []
        raise NotImplementedError(
            f"{MODEL_ID} does not support multi-round generation (requested by task(s) {', '.join(tasks) or '?'}): "
            "a toolkit adapter decodes one fixed-length answer per question; run single-round tasks"
        )

    def _plan(self, index: int, req: Instance) -> _Request:
        args = req.args
        if len(args) != 6 or not callable(args[2]):
            raise ValueError(f"{MODEL_ID} is a simple lmms-eval model; expected (context, gen_kwargs, doc_to_visual, "
                             f"doc_id, task, split) requests, got {len(args)} arguments")
        context, gen_kwargs, doc_to_visual, doc_id, task, split = args
        gk = dict(gen_kwargs or {})
        max_new = gk.get("max_new_tokens", self.settings.max_new_tokens)
        answer = answer_settings(self.config["model"].get("generation"), task, answer_type(task, self.settings),
                                 max_new, sampler_fields=self._sampler_fields, native=self._native,
                                 required=bool(self.settings.answer_type))
        temperature = sampling_temperature(gk, float(self._sampler_kwargs.get("temperature", 0.0)))
        if not isinstance(context, str):
            raise ValueError(f"{task} document {doc_id}: the question must be text, got {type(context).__name__}")
        return _Request(index, context, doc_to_visual, doc_id, task, split, stop_strings(gk.get("until")), answer,
                        temperature)

    def make_sampler(self, answer_length: int, fields: Mapping[str, Any] | None = None, temperature: float = 0.0):
        """The configured sampler with a task's fields (steps, block length, ...) and temperature, validated."""
        from ..sampling import make_sampler

        if self._sampler_kind == "autoregressive":
            if temperature > 0:
                raise ValueError(f"the autoregressive sampler decodes greedily; the task asks for temperature "
                                 f"{temperature} (set do_sample: false or choose a diffusion sampler)")
            sampler = make_sampler("autoregressive")
        else:
            task = {k: list(v) if isinstance(v, tuple) else v for k, v in (fields or {}).items() if v is not None}
            kw = {**self._sampler_kwargs, **task, "temperature": temperature}
            sampler = make_sampler("diffusion", **kw)
        sampler.check(answer_length)
        return sampler

    def _doc(self, task: str, split: str, doc_id: int) -> Any:
        try:
            return self.task_dict[task][split][doc_id]
        except KeyError:
            raise ValueError(f"no document {doc_id} of split {split!r} of task {task!r} was handed to the model "
                             f"(known tasks: {', '.join(self.task_dict) or 'none'})") from None

    @staticmethod
    def _image(doc_to_visual: Callable, doc: Any, task: str, doc_id: int) -> Any:
        visuals = doc_to_visual(doc)
        if visuals is None:
            visuals = []
        elif not isinstance(visuals, (list, tuple)):
            visuals = [visuals]
        if len(visuals) != 1:
            raise ValueError(f"{task} document {doc_id} has {len(visuals)} visual inputs; {MODEL_ID} adapters take "
                             "exactly one image per question")
        return visuals[0]

    def _decode(self, chunk: list[_Request]) -> list[str]:
        from ..experiment import decode_batch

        a, temperature = chunk[0].answer, chunk[0].temperature
        sampler = self.make_sampler(a.answer_length, a.fields, temperature)
        docs = [self._doc(r.task, r.split, r.doc_id) for r in chunk]
        images = [self._image(r.doc_to_visual, d, r.task, r.doc_id) for r, d in zip(chunk, docs)]
        with torch.no_grad():
            prompt = self.adapter.build_prompt(images, [r.context + a.prompt_suffix for r in chunk], a.answer_length)
        ids = [r.sample_id for r in chunk]
        batch_id = f"batch{self._n_batches}"
        self._n_batches += 1
        res = decode_batch(self.adapter, prompt.without_visual() if self.blind else prompt, sampler, self.config, ids,
                           batch_id, full_prompt=prompt, blind=self.blind)
        self.trace_rows += res.traces
        gen, cost = res.generation, res.cost
        steps, block, _ = sampler.check(a.answer_length)
        texts = []
        for i, (r, doc) in enumerate(zip(chunk, docs)):
            text = truncate(gen.texts[i], r.until)
            texts.append(text)
            self.records.append({
                "sample_id": r.sample_id, "task": r.task, "split": r.split, "doc_id": r.doc_id,
                "answer": text, "qtype": question_type(doc),
                "baseline_agreement": 1.0 if res.baseline is None else float(
                    torch.equal(gen.trajectory.tokens[i], res.baseline.tokens[i])),
                "n_visual_kept": None if res.n_visual is None else res.n_visual[i],
                "tokens_executed": cost.total_tokens_executed, "flops": cost.total_flops,
                "seconds": res.seconds / len(chunk), "peak_memory_mb": cost.peak_memory_mb,
                "has_policy": res.has_policy, "grid_h": gen.prompt.grid[0], "grid_w": gen.prompt.grid[1],
                "answer_length": a.answer_length, "steps": steps, "block_length": block, "temperature": temperature,
                "settings_source": a.source,
            })
        return texts

    # -- likelihood ---------------------------------------------------------------------------------
    def loglikelihood(self, requests: list[Instance]) -> list[Any]:
        """:meth:`score_continuations` as lmms-eval reads it: (loss, is_greedy) with loss = -log p.

        lmms-eval 0.7 expects a loss here, like its own models: multiple-choice tasks pick the
        choice with the smallest value (``np.argmin``). Wrapped as described at ``_WRAP_PAIRS``.
        """
        pairs = [(-ll, greedy) for ll, greedy in self.score_continuations(requests)]
        return [GenerationResult(text=p) for p in pairs] if _WRAP_PAIRS else pairs

    @torch.no_grad()
    def score_continuations(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        """(log p(continuation | image, context), whether greedy decoding gives it) per request.

        A masked-diffusion model has no left-to-right factorisation of its own; the continuation's
        tokens are scored in reading order, token ``i`` from a canvas of exactly the continuation's
        length where tokens ``< i`` are given and the rest are masked (for an autoregressive model
        this is its exact chain rule). The policy acts as at step 0 of a decode; ``isgreedy`` is
        True when every token is its position's argmax.
        """
        from ..engine import Engine
        from ..experiment import build_policy
        from ..sampling import AutoregressiveSampler, EngineSource

        out: list[tuple[float, bool]] = []
        tok = self.adapter.tokenizer
        for req in tqdm(requests, desc=f"{MODEL_ID} loglikelihood", disable=not self.progress):
            args = req.args
            if len(args) != 6 or not callable(args[2]):
                raise ValueError(f"{MODEL_ID} scores continuations of an image and a question; this request has "
                                 f"{len(args)} arguments (metrics that need unconditional likelihoods, such as "
                                 "acc_mutual_info, are not supported)")
            context, continuation, doc_to_visual, doc_id, task, split = args
            target = tok.encode(continuation)
            if not target:
                raise ValueError(f"{task} document {doc_id}: the continuation {continuation!r} encodes to no token")
            n = len(target)
            image = self._image(doc_to_visual, self._doc(task, split, doc_id), task, doc_id)
            prompt = self.adapter.build_prompt([image] * n, [context] * n, n)
            if self.blind:
                prompt = prompt.without_visual()
            sampler = self.make_sampler(n)
            policy = build_policy(self.config["policy"])
            if policy is not None:
                policy.validate(self.adapter.num_layers, sampler.check(n)[0], False)
                policy.on_generation_start(prompt, sampler)
            engine = Engine(self.adapter, policy=policy, causal=isinstance(sampler, AutoregressiveSampler))
            t = torch.tensor(target, dtype=torch.long, device=prompt.input_ids.device)
            x = torch.full((n, n), prompt.mask_id, dtype=torch.long, device=t.device)
            for i in range(1, n):
                x[i, :i] = t[:i]
            logits = EngineSource(engine, prompt)(x, 0)  # [n, n, vocab]
            if policy is not None:
                policy.on_generation_end(None)
            rows = torch.arange(n, device=t.device)
            logp = torch.log_softmax(logits[rows, rows].float(), -1)  # row i scores slot i
            out.append((float(logp[rows, t].sum()), bool((logp.argmax(-1) == t).all())))
        return out


#: the ``lmms_eval.models`` entry point's payload (pyproject.toml)
MANIFEST = ModelManifest(model_id=MODEL_ID, simple_class_path=f"{__name__}.DMLLMRedundancy")
