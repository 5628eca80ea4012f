"""Weighting schemes, schedules and the WeightedSISDRLoss module."""
import math

import pytest
import torch

import ugr_kernels as uk
from ugr_kernels.weighting import WeightingTerms


def test_schedules_values():
    assert uk.Constant(0.3)(1e6) == 0.3
    lin = uk.Linear(-0.2, 0.0, 100)
    assert lin(0) == -0.2 and math.isclose(lin(50), -0.1) and lin(100) == 0.0 and lin(500) == 0.0
    cos = uk.Cosine(1.0, 0.0, 10)
    assert cos(0) == 1.0 and math.isclose(cos(5), 0.5) and math.isclose(cos(10), 0.0, abs_tol=1e-12)
    exp = uk.Exponential(1.0, 0.0, half_life=10)
    assert math.isclose(exp(10), 0.5) and math.isclose(exp(20), 0.25)
    step = uk.Step([1.0, 0.5, 0.0], [10, 20])
    assert [step(t) for t in (0, 9, 10, 19, 20, 99)] == [1.0, 1.0, 0.5, 0.5, 0.0, 0.0]
    with pytest.raises(ValueError):
        uk.Step([1.0], [10])


def test_inverse_temperature_matches_authors_schedule():
    # Their code: T = max(2, 20 - (epoch + 1)), weights softmax(-SI-SDRi / T).
    sched = uk.InverseTemperature()
    for epoch in (0, 5, 17, 18, 40):
        assert math.isclose(sched.at(epoch=epoch), 1 / max(2, 20 - (epoch + 1)))
    assert sched.at(step=10**6, epoch=0) == 1 / 19  # reads epochs, not steps


def test_schedule_unit_selects_counter():
    s = uk.Linear(0.0, 1.0, 10, unit="epoch")
    assert s.at(step=1000, epoch=5) == 0.5
    assert uk.Linear(0.0, 1.0, 10).at(step=5, epoch=1000) == 0.5


def test_schemes_give_their_terms():
    assert uk.Uniform().terms().alpha == 0.0
    assert uk.Robust(0.2).terms().alpha == 0.2
    cur = uk.Curriculum(uk.Linear(-0.4, 0.0, 100))
    assert cur.terms(step=0).alpha == -0.4 and cur.terms(step=100).alpha == 0.0
    bias = uk.ClassBias({"speech": 3.0}, class_names=["speech", "env"])
    labels = torch.tensor([[0, 1], [1, 0]])
    torch.testing.assert_close(bias.terms(labels=labels).bias,
                               torch.tensor([[3.0, 0.0], [0.0, 3.0]], dtype=torch.float64))


def test_class_bias_errors():
    with pytest.raises(ValueError, match="unknown class 'music'"):
        uk.ClassBias({"music": 1.0}, class_names=["speech", "env"])
    with pytest.raises(ValueError, match="needs the class labels"):
        uk.ClassBias({0: 1.0}).terms()
    with pytest.raises(ValueError, match="outside"):
        uk.ClassBias({0: 1.0, 1: 0.0}).terms(labels=torch.tensor([[0, 5]]))


def test_schemes_compose_by_addition():
    combo = uk.Robust(0.1) + uk.ClassBias({1: 2.0}) + uk.Robust(0.05)
    t = combo.terms(labels=torch.tensor([[0, 1]]))
    assert math.isclose(t.alpha, 0.15)
    torch.testing.assert_close(t.bias, torch.tensor([[0.0, 2.0]], dtype=torch.float64))
    assert "Robust" in repr(combo) and "ClassBias" in repr(combo)
    assert (WeightingTerms(bias=torch.ones(2)) + WeightingTerms()).bias.sum() == 2


def _batch(seed=0, b=4, c=2, t=400):
    g = torch.Generator().manual_seed(seed)
    ref = torch.randn(b, c, t, generator=g, dtype=torch.float64)
    est = ref + torch.randn(b, c, t, generator=g, dtype=torch.float64) * \
        torch.linspace(0.2, 3.0, b, dtype=torch.float64)[:, None, None]
    return est, ref, ref.sum(1)


def test_module_equals_functional():
    est, ref, mix = _batch()
    crit = uk.WeightedSISDRLoss(uk.Robust(0.2) + uk.ClassBias({1: 1.0}), granularity="source")
    labels = torch.tensor([[0, 1]] * 4)
    got = crit(est, ref, mix, labels=labels)
    want = uk.weighted_sisdr(est, ref, mixture=mix, alpha=0.2,
                             bias=torch.tensor([[0.0, 1.0]] * 4, dtype=torch.float64)).loss
    torch.testing.assert_close(got, want)
    res = crit(est, ref, mix, labels=labels, return_result=True)
    assert isinstance(res, uk.WeightedSISDRResult)
    assert "Robust" in repr(crit)


def test_robust_moves_weight_to_hard_examples_and_curriculum_to_easy():
    est, ref, mix = _batch()
    uniform = uk.WeightedSISDRLoss()(est, ref, mix, return_result=True).weights
    robust = uk.WeightedSISDRLoss(uk.Robust(0.5))(est, ref, mix, return_result=True)
    easy = uk.WeightedSISDRLoss(uk.Curriculum(-0.5))(est, ref, mix, return_result=True)
    hardest = robust.sisdri.flatten().argmin()
    easiest = robust.sisdri.flatten().argmax()
    assert robust.weights.flatten()[hardest] > uniform.flatten()[hardest]
    assert easy.weights.flatten()[easiest] > uniform.flatten()[easiest]
    assert robust.weights.flatten()[hardest] == robust.weights.max()


def test_custom_score_sees_detached_losses_and_state():
    seen = {}

    def favour_first_example(loss, step, epoch, labels):
        seen.update(step=step, requires_grad=loss.requires_grad)
        score = torch.zeros_like(loss)
        score[0] = 5.0
        return score

    est, ref, mix = _batch()
    est.requires_grad_(True)
    res = uk.WeightedSISDRLoss(uk.Custom(favour_first_example))(est, ref, mix, step=7,
                                                                return_result=True)
    assert seen == {"step": 7, "requires_grad": False}
    assert res.weights[0].sum() > 0.9
