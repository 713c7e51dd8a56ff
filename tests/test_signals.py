"""Answer signals, the drop-one oracle and information loss against independent computations."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from redundancy.engine import Engine, Policy, TokenState
from redundancy.generate import generate_from_prompt
from redundancy.probes.divergence import BaselineCache, compare, forced, information_loss, record
from redundancy.probes.signals import AnswerSignalProbe, drop_one_oracle
from redundancy.sampling import DiffusionSampler
from tests.conftest import QUESTIONS, images


class DropFixed(Policy):
    """Drops a fixed set of original positions from the input on and after ``step``."""

    def __init__(self, drop, step=0):
        self.drop, self.step = drop, step

    def initial_state(self, ctx, state):
        if ctx.step < self.step:
            return state
        keep = ~torch.isin(state.live[0], self.drop)
        return TokenState(state.live[:, keep])


def test_answer_logit_equals_logit_lens(tiny):
    p = tiny.build_prompt(images(2), QUESTIONS[:2], 4)
    probe = AnswerSignalProbe(logit_layers=[1], logit_steps=[0])
    out = Engine(tiny, listeners=[probe]).forward(p, p.input_ids, step=0)
    caught = []
    h = tiny.layers[1].register_forward_hook(lambda m, a, o: caught.append(o[0] if isinstance(o, tuple) else o))
    try:
        Engine(tiny).forward(p, p.input_ids)
    finally:
        h.remove()
    hv = caught[0][:, p.visual_index]
    lp = torch.log_softmax(tiny.head(tiny.lm.norm(hv)), -1)  # [b, n_vis, V]
    preds = out.logits.argmax(-1)
    end = tiny.tokenizer.end_id
    df = pd.DataFrame(probe.rows)
    assert len(df) == 2 * p.n_visual
    for i in range(2):
        content = preds[i] != end
        slots = content.nonzero().squeeze(1) if content.any() else torch.arange(4)
        expect = lp[i][:, preds[i, slots]].mean(-1)
        got = df[df["sample"] == i].sort_values("token")["value"].to_numpy()
        assert torch.allclose(torch.tensor(got, dtype=torch.float32), expect, atol=1e-5)


def test_confidence_and_commit_rows(tiny_llama):
    p = tiny_llama.build_prompt(images(2), QUESTIONS[:2], 4)
    probe = AnswerSignalProbe()
    gen = generate_from_prompt(tiny_llama, p, DiffusionSampler(steps=2), listeners=[probe])
    df = pd.DataFrame(probe.rows)
    com = df[df.metric == "committed"]
    assert com.groupby("sample").size().tolist() == [4, 4]
    conf = df[df.metric == "confidence"]
    assert len(conf[conf.step == 0]) == 2 * 4 and len(conf[conf.step == 1]) == 2 * 2
    # the committed slots of step 0 are the two most confident ones
    for i in range(2):
        c0 = conf[(conf.step == 0) & (conf["sample"] == i)].sort_values("value")["token"].tolist()[-2:]
        assert sorted(c0) == sorted(com[(com.step == 0) & (com["sample"] == i)]["token"].tolist())
    assert gen.trajectory.n_forward == 2


def test_drop_one_oracle_matches_direct_removal(tiny):
    p = tiny.build_prompt(images(1), QUESTIONS[:1], 4)
    ids = p.input_ids.clone()
    ids[0, p.answer_index[0]] = tiny.tokenizer.index["red"]
    orac = drop_one_oracle(tiny, p, ids)
    assert orac.shape == (1, p.n_visual) and (orac >= -1e-6).all()
    eng = Engine(tiny)
    full = torch.log_softmax(eng.forward(p, ids).logits, -1)
    for j in (0, 7):
        st = TokenState.dropping(1, p.seq_len, [int(p.visual_index[j])])
        lp = torch.log_softmax(eng.forward(p, ids, state=st).logits, -1)
        kl = (full.exp() * (full - lp)).sum(-1)[0, 1:].mean()  # slots 1..3 are still masked
        assert abs(float(orac[0, j]) - float(kl)) < 1e-5
    # tokens already pruned get no score
    st = TokenState.dropping(1, p.seq_len, p.visual_index[:3])
    assert torch.isnan(drop_one_oracle(tiny, p, ids, st)[0, :3]).all()


def test_no_policy_means_no_information_loss(tiny):
    p = tiny.build_prompt(images(2), QUESTIONS[:2], 4)
    sampler = DiffusionSampler(steps=2)
    base = record(tiny, p, sampler)
    rows = pd.DataFrame(information_loss(tiny, p, sampler, Policy(), base))
    assert set(rows["mode"]) == {"free", "forced"}
    assert rows[rows.metric == "kl"]["value"].abs().max() < 1e-6
    assert (rows[rows.metric.isin(["top1_agreement", "final_agreement"])]["value"] == 1.0).all()


def test_pruning_shows_loss_in_both_modes(tiny):
    p = tiny.build_prompt(images(2), QUESTIONS[:2], 4)
    sampler = DiffusionSampler(steps=4)
    cache = BaselineCache()
    base = cache.get(tiny, p, ["a", "b"], sampler)
    assert cache.get(tiny, p, ["a", "b"], sampler) is base and len(cache) == 1
    drop = p.visual_index[:12]
    rows = pd.DataFrame(information_loss(tiny, p, sampler, DropFixed(drop, step=1), base,
                                         policy_factory=lambda: DropFixed(drop, step=1)))
    kl = rows[rows.metric == "kl"]
    # step 0 is before the policy acts: no loss there; afterwards the loss is positive
    assert kl[kl.step == 0]["value"].abs().max() < 1e-6
    assert kl[kl.step >= 1]["value"].max() > 1e-4
    forced_kl = kl[kl["mode"] == "forced"].sort_values(["sample", "step"])
    direct = forced(tiny, p, sampler, DropFixed(drop, step=1), base)
    b0 = base.logprobs[2][0]
    expect = (b0.exp() * (b0 - direct[2][0])).sum(-1)[base.masked[2][0]].mean()
    got = forced_kl[(forced_kl["sample"] == 0) & (forced_kl.step == 2)]["value"].item()
    assert abs(got - float(expect)) < 1e-6


def test_compare_rejects_unknown_mode(tiny_llama):
    with pytest.raises(ValueError, match="unknown mode 'loose'; choose one of: free, forced"):
        compare(None, [], "loose")
