"""models/refine.py: the deep-supervision schedules, the curriculum and differentiable halting, by the numbers.

Pure arithmetic on tiny tensors: the whole file takes well under a second.
"""
import math

import pytest
import torch

from models import refine


# ---------------------------------------------------------------- schedules

def test_the_parser_schedules():
    assert refine.loss_weights("linear", 3) == pytest.approx([0.3, 0.65, 1.0])
    assert refine.normalise(refine.loss_weights("linear", 3)) == pytest.approx([0.3 / 1.95, 0.65 / 1.95, 1.0 / 1.95])
    assert refine.loss_weights("linear", 5) == pytest.approx(torch.linspace(0.3, 1.0, 5).tolist())
    assert refine.loss_weights("exp", 4) == [1.0, 2.0, 4.0, 8.0]
    assert refine.loss_weights("uniform", 3) == [1.0, 1.0, 1.0]
    # `weight` belongs to the LM schedules only
    assert refine.loss_weights("exp", 3, weight=0.9) == refine.loss_weights("exp", 3)


def test_the_lm_schedules():
    assert refine.loss_weights("constant", 3, 0.5) == [0.5, 0.5, 1.0]
    assert refine.loss_weights("linear_decay", 3, 0.5) == pytest.approx([1 / 6, 1 / 3, 1.0])
    assert [round(w, 3) for w in refine.loss_weights("linear_decay", 3, 0.5)] == [0.167, 0.333, 1.0]
    assert refine.loss_weights("exponential_decay", 4, 0.5) == pytest.approx([0.0625, 0.125, 0.25, 1.0])
    assert refine.loss_weights("linear_decay", 5, 0.6) == pytest.approx([0.12, 0.24, 0.36, 0.48, 1.0])
    for schedule in refine.LM_SCHEDULES:
        assert refine.loss_weights(schedule, 1, 0.5) == [1.0]
        # weight 0 leaves only the last step: the baseline
        assert refine.loss_weights(schedule, 4, 0.0) == [0.0, 0.0, 0.0, 1.0]


def test_unknown_schedule_and_bad_lengths_are_named():
    with pytest.raises(ValueError, match="'inverse_u'.*linear_decay"):
        refine.loss_weights("inverse_u", 3)
    with pytest.raises(ValueError, match="n_steps"):
        refine.loss_weights("linear", 0)


def test_weighted_loss_is_normalised():
    assert refine.weighted_loss([2.0, 1.0, 0.5], [0.5, 0.5, 1.0]) == pytest.approx((1.0 + 0.5 + 0.5) / 2.0)
    losses = [torch.tensor(3.0, requires_grad=True) for _ in range(3)]
    out = refine.weighted_loss(losses, refine.loss_weights("linear_decay", 3, 0.5))
    out.backward()
    assert [l.grad.item() for l in losses] == pytest.approx([1 / 6 / 1.5, 1 / 3 / 1.5, 1 / 1.5])
    with pytest.raises(ValueError):
        refine.weighted_loss([1.0, 2.0], [1.0])


# ---------------------------------------------------------------- curriculum

def test_curriculum_values():
    c = lambda s: refine.curriculum_weight(s, 1000, 10000, 0.7)
    assert [c(s) for s in (0, 1000, 5500, 10000, 15000)] == pytest.approx([0.0, 0.0, 0.35, 0.7, 0.7])
    assert c(999) == 0.0 and 0 < c(1001) < c(2000) < 0.7
    assert refine.curriculum_weight(5, 5, 5, 0.5) == 0.5         # start == end: a jump


# ---------------------------------------------------------------- halting

def test_halting_distribution_gives_the_leftover_to_the_last_step():
    sigma = torch.tensor([0.3, 0.5, 0.9])
    p = refine.halting_distribution(torch.logit(sigma))
    assert p.tolist() == pytest.approx([0.3, 0.35, 0.35])
    assert refine.halting_from_probs(sigma).tolist() == pytest.approx([0.3, 0.35, 0.35])
    assert refine.ponder_cost(p).item() == pytest.approx(0.3 + 0.7 + 1.05)
    # the last logit never matters
    p2 = refine.halting_distribution(torch.logit(torch.tensor([0.3, 0.5, 0.01])))
    assert torch.allclose(p, p2)


def test_halting_distribution_batched_sums_to_one_and_is_differentiable():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 7, 5, generator=g, requires_grad=True)
    p = refine.halting_distribution(logits)
    assert p.shape == (4, 7, 5) and torch.allclose(p.sum(-1), torch.ones(4, 7))
    assert (p >= 0).all()
    losses = torch.arange(5.0).expand(4, 7, 5)
    loss = refine.expected_loss(p, losses).mean() + 1e-3 * refine.ponder_cost(p).mean()
    loss.backward()
    assert logits.grad[..., :-1].abs().sum() > 0 and logits.grad[..., -1].abs().sum() == 0
    assert ((refine.ponder_cost(p) >= 1) & (refine.ponder_cost(p) <= 5)).all()
    assert torch.equal(refine.halting_distribution(torch.zeros(2, 1)), torch.ones(2, 1))


def test_expected_loss_and_act_ds_weights():
    p = torch.tensor([0.3, 0.35, 0.35])
    assert refine.expected_loss(p, torch.tensor([1.0, 2.0, 4.0])).item() == pytest.approx(0.3 + 0.7 + 1.4)
    a = refine.act_ds_weights(p, [0.3, 0.65, 1.0])
    want = torch.tensor([0.09, 0.2275, 0.35])
    assert torch.allclose(a, want / want.sum())
    # uniform schedule weights leave the halting distribution unchanged
    assert torch.allclose(refine.act_ds_weights(p, [1.0, 1.0, 1.0]), p)


def test_halting_step_and_graves_act():
    sigma = torch.tensor([[0.2, 0.7, 0.1], [0.1, 0.2, 0.3], [0.6, 0.1, 0.9]])
    assert refine.halting_step(sigma).tolist() == [2, 3, 1]
    weights, n, r = refine.graves_act(torch.tensor([[0.5, 0.6, 0.1]]), eps=0.01)
    assert n.tolist() == [2] and r.item() == pytest.approx(0.5)
    assert weights.tolist()[0] == pytest.approx([0.5, 0.5, 0.0])


def test_entropy():
    assert refine.entropy(torch.zeros(4)).item() == pytest.approx(math.log(4))
    assert refine.entropy(torch.tensor([100.0, 0.0])).item() == pytest.approx(0.0, abs=1e-6)
