"""The toolkit's diffusion sampler against LLaDA's own ``generate()`` (goldens ``tests/goldens/llada-generate``).

The goldens were written by ``redundancy/models/goldens/drivers/llada_generate.py``: ML-GSAI/LLaDA's
``generate.py`` ``generate()`` around a stand-in mask predictor (LLaDA's modeling is hub-only; the
stand-in computes what the toolkit's ``llada-v`` language model computes on a text-only prompt), over
a grid of (gen_length, steps, block_length), low_confidence and random remasking at temperature 0,
and LLaDA's end rules ``logits_eos_inf`` / ``confidence_eos_eot_inf``. The toolkit side is the
``llada-v`` adapter on the same checkpoint, a text-only :class:`Prompt` of the golden's prompt ids,
and :func:`redundancy.generate.generate_from_prompt` with the equivalent :class:`SamplerConfig`:

* ``steps`` / ``block_length`` as given, ``temperature`` 0, ``strategy`` = ``remasking``;
* ``confidence_eos_eot_inf`` -> the toolkit's ``confidence_eos_eot_inf``;
* LLaDA's ``generate`` forbids nothing, so the adapter's ``forbidden_ids`` (LLaDA-V's four
  specials) are cleared; ``logits_eos_inf`` (EOS logit -inf) -> ``forbidden_ids = [EOS]``.

Random remasking draws its confidences from the global torch generator in LLaDA
(``torch.rand((b, P + L))`` per forward) and from the sampler's own seeded generator in the
toolkit, so those cases replay the original's draws (stored as ``random_conf``) through the
toolkit's ``_confidence``; the commit counts per step are compared without the replay.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from redundancy.models.goldens import file_hashes, golden_dir, load_golden
from redundancy.models.goldens.toolkit import full_pass, load_adapter
from redundancy.testing.formats.llada_generate import write_real_checkpoint

MODEL = "llada-generate"
EOS_ID, EOT_ID = 126081, 126348

pytestmark = pytest.mark.skipif(not (golden_dir(MODEL) / "meta.json").is_file(), reason="no llada-generate goldens")

TIES = ("issue 15 item 11 (tie order): under confidence_eos_eot_inf every end proposal has confidence exactly 0 "
        "(generate.py:98,101-103); LLaDA breaks those ties with torch.topk over the whole [P + L] row, -inf "
        "outside the block's masked slots (generate.py:109-116), the toolkit with topk over the [L] answer row "
        "(diffusion.py conf[r].topk(kr)); CPU topk orders equal values differently for the two lengths")
STEPS_PAST = ("issue 15: LLaDA runs every one of its steps per block even when the block has no mask left "
              "(generate.py:76-77, num_transfer_tokens 0 commits nothing, 16 forwards for 8 tokens); the "
              "toolkit stops a block when no slot is masked (diffusion.py: 'if not bool(masked.any())'), 8 forwards")
BF16 = ("bfloat16: LLaDA takes the softmax of the model-dtype logits (generate.py:101, bf16 probabilities with "
        "ties); the toolkit computes it in float32 (diffusion.py:128) on logits of a different kernel")


@pytest.fixture(scope="module")
def golden():
    return load_golden(MODEL)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, golden):
    ckpt = write_real_checkpoint(tmp_path_factory.mktemp("llada_generate") / "checkpoint")
    return ckpt


_ADAPTERS: dict = {}


def adapter_for(checkpoint, dtype):
    if dtype not in _ADAPTERS:
        torch.set_num_threads(1)
        _ADAPTERS[dtype] = load_adapter("llada-v", checkpoint, dtype=dtype)
    return _ADAPTERS[dtype]


def text_prompt(adapter, prompt_ids: np.ndarray, answer_length: int):
    """A text-only toolkit prompt: the golden's prompt ids, then ``answer_length`` masked slots."""
    from redundancy.models.base import Prompt

    P = len(prompt_ids)
    ids = torch.tensor([[int(i) for i in prompt_ids] + [adapter.tokenizer.mask_id] * answer_length])
    d = adapter.sizes["hidden"]
    return Prompt(input_ids=ids, visual_embeds=torch.zeros(1, 0, d, dtype=adapter.dtype),
                  visual_index=torch.arange(0), answer_index=torch.arange(P, P + answer_length),
                  key_valid=torch.ones_like(ids, dtype=torch.bool), position_ids=torch.arange(P + answer_length)[None],
                  mask_id=adapter.tokenizer.mask_id, grid=(0, 0), text_index=torch.arange(P))


def run_toolkit(adapter, golden, dtype, case, replay=None):
    """(step_inputs [n, L], output [L], commit counts per step) of the toolkit's sampler on ``case``."""
    from redundancy.generate import generate_from_prompt
    from redundancy.sampling import DiffusionSampler, SamplerConfig
    from redundancy.sampling import diffusion

    kw = golden.meta["dtypes"][dtype]["per_image"][case]["sampler"]
    L = kw["gen_length"]
    prompt = text_prompt(adapter, golden.get(dtype, case, "prompt_ids"), L)
    cfg = SamplerConfig(strategy=kw["remasking"], steps=kw["steps"], block_length=kw["block_length"],
                        temperature=kw["temperature"], confidence_eos_eot_inf=kw["confidence_eos_eot_inf"])
    saved_forbidden, saved_conf = adapter.forbidden_ids, diffusion._confidence
    adapter.forbidden_ids = [EOS_ID] if kw["logits_eos_inf"] else []
    if replay is not None:
        draws = iter(torch.as_tensor(replay))

        def replayed(strategy, logits, x0, gen):
            assert strategy == "random"
            return next(draws).to(logits.device).view(1, -1).expand_as(x0).clone()

        diffusion._confidence = replayed
    try:
        gen = generate_from_prompt(adapter, prompt, DiffusionSampler(cfg))
    finally:
        adapter.forbidden_ids, diffusion._confidence = saved_forbidden, saved_conf
    traj = gen.trajectory
    steps = np.stack([r.x_before[0].cpu().numpy() for r in traj.steps]).astype(np.int64)
    counts = [int(r.committed[0].sum()) for r in traj.steps]
    return steps, traj.tokens[0].cpu().numpy().astype(np.int64), counts


def golden_counts(step_inputs: np.ndarray, output: np.ndarray, mask_id: int) -> list[int]:
    """Slots committed at each forward of the original (from consecutive step inputs and the output)."""
    after = np.concatenate([step_inputs[1:], output[None]], 0)
    return [int(((b == mask_id) & (a != mask_id)).sum()) for b, a in zip(step_inputs, after)]


# -- the cases and their expected status ------------------------------------------------------------
def _cases():
    g = load_golden(MODEL) if (golden_dir(MODEL) / "meta.json").is_file() else None
    return [] if g is None else sorted(g.meta["dtypes"]["float32"]["per_image"])


CASES = _cases()
#: float32 cases where the toolkit's tokens or commit order differ from LLaDA's (measured; every other case matches)
XFAIL_F32: dict[str, str] = {
    "len16_steps8_block4_eot": TIES,
    "len8_steps8_block8_eot": TIES,
    "len8_steps16_block8": STEPS_PAST,
}
#: mean token agreement of the bf16 goldens over all cases (measured 0.81 with the current toolkit); see BF16
BF16_FLOOR = 0.65


def _param(case):
    marks = [pytest.mark.xfail(strict=True, reason=XFAIL_F32[case])] if case in XFAIL_F32 else []
    return pytest.param(case, marks=marks, id=case)


def test_checkpoint_bytes(checkpoint, golden):
    assert file_hashes(checkpoint) == golden.meta["checkpoint_sha256"]


@pytest.mark.parametrize("dtype", ["float32"])
def test_prompt_tokenization(checkpoint, golden, dtype):
    """The toolkit's tokenizer encodes the original's rendered chat template to the original's prompt ids."""
    adapter = adapter_for(checkpoint, dtype)
    for case in CASES:
        info = golden.meta["dtypes"][dtype]["per_image"][case]
        assert adapter.tokenizer.encode(info["prompt_text"]) == golden.get(dtype, case, "prompt_ids").tolist()


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("L", [8, 16])
def test_full_pass(checkpoint, golden, dtype, L):
    """The answer-row logits of one pass with every slot masked (the stand-in vs the llada-v LM)."""
    adapter = adapter_for(checkpoint, dtype)
    case = next(c for c in CASES if golden.meta["dtypes"][dtype]["per_image"][c]["sampler"]["gen_length"] == L)
    prompt = text_prompt(adapter, golden.get(dtype, case, "prompt_ids"), L)
    got = full_pass(adapter, prompt, golden.tensors[f"{dtype}/sel_ids"])
    want_sel = golden.get(dtype, case, "logits_sel")[got.rows]
    want_lse = golden.get(dtype, case, "lse")[got.rows]
    want_arg = golden.get(dtype, case, "argmax")[got.rows]
    if dtype == "float32":
        np.testing.assert_allclose(got.logits_sel, want_sel, atol=1e-4, rtol=0)
        np.testing.assert_allclose(got.lse, want_lse, atol=1e-4, rtol=0)
        np.testing.assert_array_equal(got.argmax, want_arg)
    else:  # loose: a different bf16 kernel
        assert np.abs(got.logits_sel - want_sel).max() < 0.25
        assert np.abs(got.lse - want_lse).max() < 0.25


@pytest.mark.parametrize("case", [_param(c) for c in CASES])
def test_sampler(checkpoint, golden, case):
    """float32: step inputs (commit order) and output of the toolkit's sampler equal LLaDA's generate()."""
    dtype = "float32"
    adapter = adapter_for(checkpoint, dtype)
    replay = golden.get(dtype, case, "random_conf") if golden.has(dtype, case, "random_conf") else None
    steps, out, _ = run_toolkit(adapter, golden, dtype, case, replay)
    want_steps, want_out = golden.get(dtype, case, "step_inputs"), golden.get(dtype, case, "output")
    np.testing.assert_array_equal(out, want_out)
    assert steps.shape == want_steps.shape
    np.testing.assert_array_equal(steps, want_steps)


def test_sampler_bfloat16_loose(checkpoint, golden):
    """bfloat16 (report / loose): the logits of two bf16 kernels differ (up to ~0.1), so the commit order
    drifts; the per-step commit counts must still agree and the tokens mostly."""
    dtype = "bfloat16"
    adapter = adapter_for(checkpoint, dtype)
    agree, counts_bad = [], []
    for case in CASES:
        replay = golden.get(dtype, case, "random_conf") if golden.has(dtype, case, "random_conf") else None
        steps, out, counts = run_toolkit(adapter, golden, dtype, case, replay)
        ws, wo = golden.get(dtype, case, "step_inputs"), golden.get(dtype, case, "output")
        agree.append(float((out == wo).mean()))
        if case not in XFAIL_F32 or XFAIL_F32[case] is not STEPS_PAST:
            if counts != golden_counts(ws, wo, adapter.tokenizer.mask_id):
                counts_bad.append(case)
    assert not counts_bad, f"commit counts per step differ: {counts_bad}"
    assert np.mean(agree) >= BF16_FLOOR, f"bf16 token agreement {np.mean(agree):.3f} < {BF16_FLOOR} ({BF16})"


@pytest.mark.parametrize("case", [c for c in CASES if "random" in c])
def test_random_commit_counts(checkpoint, golden, case):
    """Without the replay: the same number of slots is committed at every step (LLaDA's even split)."""
    adapter = adapter_for(checkpoint, "float32")
    steps, out, counts = run_toolkit(adapter, golden, "float32", case)
    ws, wo = golden.get("float32", case, "step_inputs"), golden.get("float32", case, "output")
    assert counts == golden_counts(ws, wo, adapter.tokenizer.mask_id)
