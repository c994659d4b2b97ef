import math

import pytest
import torch

from sweeper.sweep.schema import parse_eps  # the one parser of eps: the schema's
from sweeper.science.threat import L2, Linf, Unconstrained, make_threat


@pytest.mark.parametrize("value,expected", [(0.5, 0.5), (1, 1.0), ("0.5", 0.5), (" 0.25 ", 0.25),
                                            ("8/255", 8 / 255), ("2 / 255", 2 / 255), (0, 0.0), ("1e-2", 0.01)])
def test_parse_eps_ok(value, expected):
    assert parse_eps(value) == pytest.approx(expected)


@pytest.mark.parametrize("value", [-0.1, "-1", "abc", "1/0", "1/2/3", "", "nan", "inf", float("inf"),
                                   float("nan"), None, True, "__import__('os')", "8/", "/255"])
def test_parse_eps_errors(value):
    with pytest.raises(ValueError) as info:
        parse_eps(value)
    assert repr(value) in str(info.value)


def _x(n=6, shape=(1, 5, 5), seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand((n, *shape), generator=g)


def _norms(t, norm):
    flat = t.flatten(1)
    return flat.norm(dim=1) if norm == "l2" else flat.abs().amax(dim=1)


@pytest.mark.parametrize("norm,eps", [("l2", 0.5), ("linf", 0.1)])
def test_project_inside_ball_box_and_idempotent(norm, eps):
    threat = make_threat(norm, eps)
    x0 = _x()
    g = torch.Generator().manual_seed(1)
    x = x0 + 2.0 * torch.randn(x0.shape, generator=g)
    p = threat.project(x, x0)
    assert (_norms(p - x0, norm) <= eps + 1e-6).all()
    assert p.min() >= 0 and p.max() <= 1
    assert torch.allclose(threat.project(p, x0), p, atol=1e-7)
    # a point already inside is unchanged
    inside = threat.project(x0 + 1e-3 * torch.ones_like(x0), x0)
    assert torch.allclose(threat.project(inside, x0), inside)


@pytest.mark.parametrize("norm,eps", [("l2", 0.5), ("linf", 0.1)])
def test_random_start_inside(norm, eps):
    threat = make_threat(norm, eps)
    x0 = _x()
    g = torch.Generator().manual_seed(3)
    s = threat.random_start(x0, g)
    assert (_norms(s - x0, norm) <= eps + 1e-6).all()
    assert s.min() >= 0 and s.max() <= 1
    assert not torch.equal(s, x0)
    s2 = threat.random_start(x0, torch.Generator().manual_seed(3))
    assert torch.equal(s, s2)


def test_l2_random_start_has_norm_eps_without_box():
    threat = L2(0.7, bounds=None)
    x0 = _x()
    s = threat.random_start(x0, torch.Generator().manual_seed(0))
    assert torch.allclose(_norms(s - x0, "l2"), torch.full((6,), 0.7), atol=1e-5)


def test_steps():
    x = torch.zeros(2, 3)
    grad = torch.tensor([[3.0, 4.0, 0.0], [0.0, 0.0, 0.0]])
    step = L2(1.0, bounds=None).step(x, grad, 0.5)
    assert torch.allclose(step[0], torch.tensor([0.3, 0.4, 0.0]))
    assert torch.equal(step[1], torch.zeros(3))  # zero grad: no step, no NaN
    s = Linf(0.1, bounds=None).step(x, grad, 0.01)
    assert torch.allclose(s[0], torch.tensor([0.01, 0.01, 0.0]))
    u = Unconstrained(0.0).step(x, grad, 0.5)
    assert torch.allclose(u, step)


def test_no_bounds_no_clamp():
    x0 = torch.full((2, 4), 5.0)
    p = Linf(0.5, bounds=None).project(x0 + 3.0, x0)
    assert torch.allclose(p, x0 + 0.5)
    u = Unconstrained(0.0, bounds=(0.0, 1.0)).project(x0 + 3.0, x0)
    assert torch.equal(u, torch.ones_like(x0))
    assert torch.equal(Unconstrained(0.0, bounds=None).project(x0 + 3.0, x0), x0 + 3.0)


def test_make_threat():
    assert isinstance(make_threat("l2", 0.5), L2)
    t = make_threat("linf", 8 / 255)
    assert isinstance(t, Linf) and math.isclose(t.eps, 8 / 255)
    assert isinstance(make_threat("none", 0.0, bounds=None), Unconstrained)
    with pytest.raises(ValueError):
        make_threat("l1", 0.5)
    with pytest.raises(ValueError):
        make_threat("l2", -1)
    with pytest.raises(ValueError):  # threat models take numbers: strings are parsed once, by the schema
        make_threat("linf", "8/255")
