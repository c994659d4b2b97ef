import pytest
import torch
from torch import nn

from sweeper.sweep.schema import AttackConfig, InversionConfig
from sweeper.science.synthesis import choose_targets, invert, relabel, start_points


class RepNet(nn.Module):
    def __init__(self, num_classes=5, feat=32):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, feat), nn.ReLU())
        self.head = nn.Linear(feat, num_classes)

    def representation(self, x):
        return self.body(x)

    def forward(self, x):
        return self.head(self.representation(x))


def _setup(n=32, seed=0):
    torch.manual_seed(seed)
    model = RepNet().eval()
    g = torch.Generator().manual_seed(seed)
    x = torch.rand((n, 1, 8, 8), generator=g)
    y = torch.randint(0, 5, (n,), generator=g)
    return model, x, y


def test_choose_targets():
    y = torch.arange(10).repeat(20)
    det = choose_targets(y, "deterministic", 10)
    assert torch.equal(det, (y + 1) % 10)
    r = choose_targets(y, "random", 10, torch.Generator().manual_seed(0))
    assert (r != y).all() and r.min() >= 0 and r.max() <= 9
    assert len(set(r.tolist())) == 10
    r2 = choose_targets(y, "random", 10, torch.Generator().manual_seed(0))
    assert torch.equal(r, r2)
    with pytest.raises(ValueError):
        choose_targets(y, "other", 10)


def test_relabel_hits_match_predictions_and_mode_restored():
    model, x, y = _setup()
    model.train()
    out = relabel(model, x, y, policy="deterministic", num_classes=5,
                  attack=AttackConfig(norm="l2", eps=6.0, steps=40, step_size=0.3))
    assert model.training
    assert torch.equal(out["y"], (y + 1) % 5) and torch.equal(out["orig_y"], y)
    model.eval()
    with torch.no_grad():
        pred = model(out["x"]).argmax(1)
    assert torch.equal(out["hit"], pred == out["y"])
    assert out["hit"].any()  # the >80% target rate is tested in test_attacks.py
    assert ((out["x"] - x).flatten(1).norm(dim=1) <= 6.0 + 1e-5).all()


def test_start_points():
    pool = torch.rand(10, 1, 4, 4)
    exclude = torch.arange(10).repeat(5)
    s, idx = start_points(pool, 50, "other_image", torch.Generator().manual_seed(0), exclude=exclude)
    assert s.shape == (50, 1, 4, 4)
    # each start is a pool image, never the excluded one, and index says which
    match = (s.flatten(1)[:, None, :] == pool.flatten(1)[None]).all(-1)
    assert (match.sum(1) == 1).all()
    assert not match[torch.arange(50), exclude].any()
    assert torch.equal(match.float().argmax(1), idx) and torch.equal(s, pool[idx])
    noise, idx = start_points(pool, 7, "noise", torch.Generator().manual_seed(0))
    assert noise.shape == (7, 1, 4, 4) and (noise - 0.5).abs().max() < 0.5 and (idx == -1).all()
    with pytest.raises(ValueError):
        start_points(pool, 3, "bogus")


@pytest.mark.parametrize("loss,decay", [("l2", "none"), ("relative", "cosine")])
def test_invert_lowers_distance(loss, decay):
    model, x, _ = _setup(n=16)
    model.train()
    x_init, _ = start_points(x, 16, "other_image", torch.Generator().manual_seed(1), exclude=torch.arange(16))
    with torch.no_grad():
        d0 = (model.representation(x_init) - model.representation(x)).norm(dim=1)
    z, d = invert(model, x, x_init, InversionConfig(steps=100, step_size=0.05, loss=loss, step_decay=decay))
    assert model.training
    assert z.shape == x.shape and z.min() >= 0 and z.max() <= 1 and not z.requires_grad
    model.eval()
    with torch.no_grad():
        d_check = (model.representation(z) - model.representation(x)).norm(dim=1)
    assert torch.allclose(d, d_check, atol=1e-5)
    assert d.mean() < 0.5 * d0.mean()
    assert all(p.grad is None for p in model.parameters())


def test_invert_tol_stops_early_and_zero_steps():
    model, x, _ = _setup(n=4)
    # zero steps: a config the schema refuses (steps >= 1), built unchecked to pin the loop's boundary
    z0, d0 = invert(model, x, x, InversionConfig.model_construct(steps=0, step_size=0.1))
    assert torch.equal(z0, x) and torch.allclose(d0, torch.zeros(4), atol=1e-6)
    calls = {"n": 0}
    orig = model.representation

    def counting(t):
        calls["n"] += 1
        return orig(t)

    model.representation = counting
    invert(model, x, torch.full_like(x, 0.5), InversionConfig(steps=500, step_size=1e-6, tol=1e-2))
    assert calls["n"] < 100  # stopped after ~11 steps instead of 500
