import pytest
import torch
from torch import nn

from sweeper.science.attacks import AttackConfig, pgd

torchattacks = pytest.importorskip("torchattacks")


def _model(seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5))
    return model.to(dtype).eval()


def _batch(n=16, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand((n, 1, 8, 8), generator=g, dtype=dtype)
    y = torch.randint(0, 5, (n,), generator=g)
    return x, y


L2 = dict(norm="l2", eps=0.5)  # norm and eps have no default (one set of defaults: the sweep file's)


def test_config_validation_and_name():
    cfg = AttackConfig(**L2)
    assert cfg.name() == "l2_eps0.5_s10" and cfg.steps == 10
    assert cfg.resolved_step_size() == pytest.approx(2.5 * 0.5 / 10)
    assert AttackConfig(**L2, step_size=0.1).resolved_step_size() == 0.1
    c = AttackConfig(norm="linf", eps="8/255", steps=7)
    assert c.eps == pytest.approx(8 / 255)
    assert AttackConfig(norm="linf", eps=0.1) != AttackConfig(norm="l2", eps=0.1)
    assert len({AttackConfig(**L2, random_start=True).name(), AttackConfig(**L2).name(),
                AttackConfig(**L2, step_size=0.1).name(), AttackConfig(**L2, restarts=2).name()}) == 4
    # method and loss name an attack only when not at their defaults, so existing names stay
    assert AttackConfig(**L2, method="pgd", loss="ce").name() == "l2_eps0.5_s10"
    assert AttackConfig(**L2, loss="margin").name() == "l2_eps0.5_s10_margin"
    assert AttackConfig(**L2, method="apgd-ce").name() == "l2_eps0.5_s10_apgd-ce"
    assert AttackConfig(**L2, method="apgd-t", n_targets=3).name() == "l2_eps0.5_s10_apgd-t_t3"
    assert set(cfg.model_dump()).isdisjoint({"method", "loss", "keep_best", "n_targets"})  # out of keys at defaults
    assert AttackConfig(**L2, loss="margin").model_dump()["loss"] == "margin"
    for bad in [dict(norm="l1"), dict(eps=-1), dict(eps="x"), dict(steps=0), dict(restarts=0),
                dict(step_size=-0.1), dict(steps=2.5), dict(method="cw"), dict(loss="dlr")]:
        with pytest.raises(ValueError):
            AttackConfig(**{**L2, **bad})
    for missing in ("norm", "eps"):
        with pytest.raises(ValueError):
            AttackConfig(**{k: v for k, v in L2.items() if k != missing})
    with pytest.raises(Exception):
        cfg.eps = 1.0  # frozen


@pytest.mark.parametrize("targeted", [False, True])
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_matches_torchattacks(norm, targeted):
    model = _model()
    x, y = _batch()
    if norm == "linf":
        cfg = AttackConfig(norm="linf", eps=8 / 255, steps=10, step_size=2 / 255)
        atk = torchattacks.PGD(model, eps=cfg.eps, alpha=cfg.step_size, steps=cfg.steps, random_start=False)
    else:
        cfg = AttackConfig(norm="l2", eps=0.5, steps=10, step_size=0.1)
        atk = torchattacks.PGDL2(model, eps=cfg.eps, alpha=cfg.step_size, steps=cfg.steps, random_start=False)
    if targeted:
        atk.set_mode_targeted_by_label(quiet=True)
        y = (y + 1) % 5
    ref = atk(x, y)
    ours = pgd(model, x, y, cfg, targeted=targeted)
    assert ours.dtype == x.dtype and ours.shape == x.shape
    assert torch.allclose(ours, ref, atol=1e-5), (ours - ref).abs().max()


def test_constraints_and_loss_increase():
    model = _model(dtype=torch.float32)
    x, y = _batch(dtype=torch.float32)
    for cfg in [AttackConfig(norm="l2", eps=0.5, steps=5, random_start=True, restarts=2, keep_best=True),
                AttackConfig(norm="linf", eps=0.05, steps=5, random_start=True)]:
        adv = pgd(model, x, y, cfg, generator=torch.Generator().manual_seed(0))
        d = (adv - x).flatten(1)
        n = d.norm(dim=1) if cfg.norm == "l2" else d.abs().amax(dim=1)
        assert (n <= cfg.eps + 1e-5).all()
        assert adv.min() >= 0 and adv.max() <= 1 and not adv.requires_grad
        with torch.no_grad():
            ce = nn.functional.cross_entropy
            assert ce(model(adv), y) > ce(model(x), y)


def test_targeted_reaches_targets():
    model = _model(dtype=torch.float32)
    x, y = _batch(n=32, dtype=torch.float32)
    t = (y + 1) % 5
    adv = pgd(model, x, t, AttackConfig(norm="l2", eps=4.0, steps=50, step_size=0.2), targeted=True)
    with torch.no_grad():
        hit = (model(adv).argmax(1) == t).float().mean()
    assert hit > 0.8


def test_keep_best_and_restarts_not_worse():
    model = _model(dtype=torch.float32)
    x, y = _batch(n=32, dtype=torch.float32)
    ce = nn.functional.cross_entropy
    cfg = AttackConfig(norm="l2", eps=1.0, steps=5, step_size=0.6)  # large steps: non-monotone
    last = pgd(model, x, y, cfg)
    best = pgd(model, x, y, AttackConfig(norm="l2", eps=1.0, steps=5, step_size=0.6, keep_best=True))
    with torch.no_grad():
        assert (ce(model(best), y, reduction="none") >= ce(model(last), y, reduction="none") - 1e-6).all()
    g = torch.Generator().manual_seed(0)
    multi = pgd(model, x, y, AttackConfig(norm="l2", eps=1.0, steps=5, random_start=True, restarts=3), generator=g)
    assert ((multi - x).flatten(1).norm(dim=1) <= 1.0 + 1e-5).all()


def test_restores_mode_no_param_grads_and_custom_loss():
    model = _model(dtype=torch.float32).train()
    model[0].eval()  # mixed modes are restored per module
    x, y = _batch(dtype=torch.float32)
    calls = []

    def loss_fn(m, xa, ya):
        calls.append(m.training)
        return nn.functional.cross_entropy(m(xa), ya, reduction="none")

    pgd(model, x, y, AttackConfig(**L2, steps=3), loss_fn=loss_fn)
    assert calls and not any(calls)  # attacked in eval mode
    assert model.training and not model[0].training and model[1].training
    assert all(p.grad is None for p in model.parameters())
    with torch.no_grad():  # works inside no_grad too
        adv = pgd(model, x, y, AttackConfig(**L2, steps=2))
    assert not torch.equal(adv, x)


def test_model_mode_restored_on_error():
    model = _model(dtype=torch.float32).train()
    x, y = _batch(dtype=torch.float32)

    def bad_loss(m, xa, ya):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        pgd(model, x, y, AttackConfig(**L2, steps=1), loss_fn=bad_loss)
    assert model.training


def test_flat_inputs_without_box():
    torch.manual_seed(0)
    model = nn.Linear(10, 2).eval()
    x = torch.randn(8, 10) * 3
    y = torch.randint(0, 2, (8,))
    adv = pgd(model, x, y, AttackConfig(norm="linf", eps=0.5, steps=3), bounds=None)
    assert ((adv - x).abs().amax(1) <= 0.5 + 1e-6).all()
    assert adv.min() < 0 or adv.max() > 1  # no box clamp


class _Logits(nn.Module):
    """model(x) = x: the input is the logits."""

    def forward(self, x):
        return x


def test_margin_loss_and_its_pgd():
    from sweeper.science.attacks import margin

    x = torch.tensor([[1.0, 3.0, 2.0], [5.0, 0.0, 1.0]])
    # untargeted: max other logit - true logit; PGD maximises it
    assert torch.allclose(margin(_Logits(), x, torch.tensor([0, 0])), torch.tensor([2.0, -4.0]))
    # targeted (y = targets, minimised): max other - target logit, i.e. target - max other is maximised
    assert torch.allclose(margin(_Logits(), x, torch.tensor([1, 2])), torch.tensor([-1.0, 4.0]))
    model = _model(dtype=torch.float32)
    xb, y = _batch(dtype=torch.float32)
    cfg = AttackConfig(norm="l2", eps=0.5, steps=5, loss="margin")
    adv = pgd(model, xb, y, cfg)
    assert (margin(model, adv, y) > margin(model, xb, y)).all()
    t = (y + 1) % 5
    adv_t = pgd(model, xb, t, AttackConfig(norm="l2", eps=4.0, steps=50, step_size=0.2, loss="margin"),
                targeted=True)
    with torch.no_grad():
        assert (model(adv_t).argmax(1) == t).float().mean() > 0.8


def test_perturb_runs_pgd_or_the_named_method(monkeypatch):
    import sweeper.science.aa
    from sweeper.science.attacks import perturb

    model = _model(dtype=torch.float32)
    x, y = _batch(dtype=torch.float32)
    cfg = AttackConfig(norm="linf", eps=0.1, steps=3)
    assert torch.equal(perturb(model, x, y, cfg), pgd(model, x, y, cfg))
    t = (y + 1) % 5
    assert torch.equal(perturb(model, x, y, cfg, targets=t), pgd(model, x, t, cfg, targeted=True))
    calls = []

    def fake(model, x, y, **kw):
        calls.append(kw)
        return x + 0.0

    monkeypatch.setattr(sweeper.science.aa, "run_attack", fake)
    g = torch.Generator().manual_seed(0)
    perturb(model, x, y, AttackConfig(norm="linf", eps=0.1, steps=7, restarts=2, method="apgd-t"), targets=t,
            generator=g)
    perturb(model, x, y, AttackConfig(norm="linf", eps=0.1, steps=7, method="apgd-t", n_targets=3), generator=g)
    assert "n_targets" not in calls[0] and calls[1]["n_targets"] == 3 and calls[1]["targets"] is None
    kw = calls[0]
    assert (kw["method"], kw["norm"], kw["eps"], kw["steps"], kw["restarts"]) == ("apgd-t", "linf", 0.1, 7, 2)
    assert torch.equal(kw["targets"], t) and kw["bounds"] == (0.0, 1.0) and isinstance(kw["seed"], int)
