"""Promises of the code that single-line breakages used to slip past: each test names the promise it guards.

Everything here is small (tiny linear models, 8x8 fake images, a few dozen examples) and deterministic; the
file runs in seconds on one CPU core. Where a node function reads data, ``sweeper.science.data_store.load_split`` is
replaced by a fake 5-class dataset (so that "random" targets are really random and (y+1) mod C wraps around).
"""
from __future__ import annotations

import math
import subprocess

import pytest
import torch
from torch import nn

from sweeper.science import data_store

from sweeper.run import kinds

from sweeper.science import models
from sweeper.store import store as store_mod
from sweeper.science.attacks import pgd
from sweeper.run.kinds import Context
from sweeper.science.data import Dataset
from sweeper.science.evaluation import evaluate
from sweeper.sweep.plan import build_plan, seed_for
from sweeper.report.report import build_rows, markdown, transfer_rows
from sweeper.sweep.schema import AttackConfig, InversionConfig
from sweeper.sweep.spec import loads
from sweeper.store.store import Store, provenance
from sweeper.science.synthesis import invert

C = 5  # classes of the fake image dataset


# ----------------------------------------------------------------------------------------------- helpers
class _Hump(nn.Module):
    """1-D input; logits [0, g(x)] with g(x) = -4 (x - 1)^2: both CE(y=0) (untargeted) and CE(target=1)
    (targeted) are best at x = 1. Normalised-gradient steps of 0.7 from x = 0 oscillate 0.7, 1.4, 0.7, 1.4..."""

    def forward(self, x):
        g = -4.0 * (x[:, 0] - 1.0) ** 2
        return torch.stack([torch.zeros_like(g), g], 1)


class _Ident(nn.Module):
    """representation(x) = x (flattened): inversion moves straight toward the target by each step length."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(6, 2)

    def representation(self, x):
        return x.flatten(1)

    def forward(self, x):
        return self.lin(self.representation(x))


def _fake_split(n: int, seed: int, onehot: bool = False) -> Dataset:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, C, (n,), generator=g)
    x = torch.rand((n, 1, 8, 8), generator=g)
    if onehot:  # pixel y is bright, everything else dim: a linear model can read y off the image
        x = 0.05 * x
        x.view(n, -1)[torch.arange(n), y] = 0.9
    return Dataset(x=x, y=y, num_classes=C, mean=(0.0,), std=(1.0,), bounds=(0.0, 1.0), name="fashion_mnist")


@pytest.fixture
def fake_data(monkeypatch):
    """data_store.load_split -> fake 5-class 8x8 images (train: 40 random images; test: 30 one-hot images)."""
    splits = {"train": _fake_split(40, 1), "test": _fake_split(30, 2, onehot=True)}
    monkeypatch.setattr(data_store, "load_split", lambda data, split: splits[split])
    return splits


def _linear_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return models.build("linear", num_classes=C, in_shape=(1, 8, 8), mean=(0.0,), std=(1.0,)).eval()


def _shift_model() -> nn.Module:
    """A linear model that reads the one-hot images of the fake test split as (y+1) mod C, always."""
    m = _linear_model()
    with torch.no_grad():
        m.head.weight.zero_()
        m.head.bias.zero_()
        for c in range(C):
            m.head.weight[(c + 1) % C, c] = 10.0
    return m


def _save_model(store: Store, key: str, model: nn.Module) -> None:
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    store.save(key, meta={"kind": "train", "arch": "linear", "n_train": 40}, tensors=state)


SWEEP = """
name: promises
seed: 3
data: {dataset: fashion_mnist, test_size: 30}
run: {store: ./store, shard_size: 10}
stages:
  std: {kind: train, arch: linear, train_size: 40, train: {epochs: 1}}
  std_b: {kind: train, arch: linear, train_size: 40, seed: 1, train: {epochs: 1}}
  robust: {kind: train, arch: linear, train_size: 40, train: {epochs: 1},
           adversarial: {norm: l2, eps: 0.5, steps: 2}}
  d_rand: {kind: synthesize, from: std, method: relabel, size: 24, targets: random,
           attack: {norm: l2, eps: 1.0, steps: 3, step_size: 0.4, random_start: true, restarts: 2}}
  d_det: {kind: synthesize, from: std, method: relabel, size: 24, targets: deterministic,
          attack: {norm: l2, eps: 1.0, steps: 3}}
  d_r: {kind: synthesize, from: robust, method: inversion, size: 24,
        inversion: {steps: 4, step_size: 0.1, start: other_image, step_decay: cosine}}
  train_d_det: {kind: train, from: d_det, arch: linear, train: {epochs: 1}}
  train_d_rand: {kind: train, from: d_rand, arch: linear, train: {epochs: 1}}
  probe: {kind: transfer, from: d_det, models: [robust, std_b]}
  probe_rand: {kind: transfer, from: d_rand, models: [robust, std_b]}
  eval: {kind: evaluate, from: [std, train_d_det, train_d_rand], attacks: [{norm: l2, eps: 0.5, steps: 2}]}
"""


def _plan(text: str = SWEEP):
    return build_plan(loads(text))


def _node(plan, stage: str, **inputs):
    found = [n for n in plan.nodes.values() if n.stage == stage
             and all(plan.nodes[n.inputs[r]].stage == s for r, s in inputs.items())]
    assert len(found) == 1, (stage, inputs, [n.label for n in found])
    return found[0]


# ------------------------------------------------------------------------------------------- 1. restarts
def test_pgd_restarts_keep_any_successful_restart():
    """Promise: with restarts > 1, per example the best restart is kept (success first): an example is
    adversarial after R restarts exactly when at least one of the R runs (same random starts) succeeded,
    including runs after the first."""
    torch.manual_seed(0)
    model = nn.Linear(2, 2)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 0.0], [-1.0, 0.0]]))
        model.bias.zero_()
    n, restarts = 64, 6
    # class 0 where x0 > 0; the boundary is 0.3..0.95 away: a random start of norm 1 decides success
    x = torch.stack([torch.linspace(0.3, 0.95, n), torch.zeros(n)], 1)
    y = torch.zeros(n, dtype=torch.long)
    base = dict(norm="l2", eps=1.0, steps=1, step_size=0.02, random_start=True)

    g = torch.Generator().manual_seed(7)
    single = [pgd(model, x, y, AttackConfig(**base), bounds=None, generator=g) for _ in range(restarts)]
    with torch.no_grad():
        hits = torch.stack([model(a).argmax(1) != y for a in single])  # (R, N)
    # the test means something: some examples fail in the first run and succeed only in a later one
    assert (~hits[0] & hits[1:].any(0)).sum() >= 5
    assert not hits.any(0).all()

    multi = pgd(model, x, y, AttackConfig(**base, restarts=restarts), bounds=None,
                generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        hit_multi = model(multi).argmax(1) != y
    assert torch.equal(hit_multi, hits.any(0))
    # and the kept point is one of the runs' results
    for i in range(n):
        assert any(torch.equal(multi[i], a[i]) for a in single), i


# ------------------------------------------------------------------------------------------ 2. keep_best
@pytest.mark.parametrize("targeted", [False, True])
def test_pgd_keep_best_returns_the_best_iterate_not_the_last(targeted):
    """Promise: keep_best returns, per example, the iterate with the highest loss (untargeted) / lowest loss
    of the target (targeted) among all iterates, not the last iterate (and not the worst one)."""
    model = _Hump()
    x = torch.tensor([[0.0], [0.2], [-0.5], [2.6], [1.05]])
    y = torch.full((len(x),), 1 if targeted else 0, dtype=torch.long)
    sign = -1.0 if targeted else 1.0
    steps, ss = 4, 0.7
    ce = nn.functional.cross_entropy

    def score(a):
        with torch.no_grad():
            return sign * ce(model(a), y, reduction="none")

    iterates = [x] + [pgd(model, x, y, AttackConfig(norm="l2", eps=5.0, steps=k, step_size=ss),
                          targeted=targeted, bounds=None) for k in range(1, steps + 1)]
    scores = torch.stack([score(a) for a in iterates])  # (steps+1, N)
    best_possible = scores.max(0).values
    last = scores[-1]
    assert (best_possible > last + 0.1).sum() >= 2  # the last iterate is clearly not the best for some

    best = pgd(model, x, y, AttackConfig(norm="l2", eps=5.0, steps=steps, step_size=ss, keep_best=True),
               targeted=targeted, bounds=None)
    assert torch.allclose(score(best), best_possible, atol=1e-5)
    # x=0: iterates 0, 0.7, 1.4, 0.7, 1.4 -> the best is 0.7 (the last, 1.4, is farther from the peak)
    assert abs(float(best[0, 0]) - 0.7) < 1e-5

    # keep_best with restarts keeps the best iterate of each run too
    both = pgd(model, x, y, AttackConfig(norm="l2", eps=5.0, steps=steps, step_size=ss, keep_best=True,
                                         restarts=2), targeted=targeted, bounds=None)
    assert torch.allclose(score(both), best_possible, atol=1e-5)


# ------------------------------------------------------------------------------------ 3. cosine step decay
@pytest.mark.parametrize("steps", [4, 10])
def test_invert_cosine_step_decay_shrinks_the_steps(steps):
    """Promise: inversion with step_decay="cosine" uses step t = step_size * (1 + cos(pi t / steps)) / 2,
    so the path length is step_size * (steps + 1) / 2 (the cosines cancel in pairs), not step_size * steps;
    "none" keeps the constant step."""
    model = _Ident()
    g = torch.Generator().manual_seed(0)
    target = torch.zeros(3, 6)
    d = torch.randn(3, 6, generator=g)
    init = 100.0 * d / d.norm(dim=1, keepdim=True)  # far away: no overshoot, every step goes straight in
    ss = 1.5
    lrs = [ss * 0.5 * (1 + math.cos(math.pi * t / steps)) for t in range(steps)]
    assert abs(sum(lrs) - ss * (steps + 1) / 2) < 1e-9

    cosine = InversionConfig(steps=steps, step_size=ss, step_decay="cosine")
    _, dist = invert(model, target, init, cosine, bounds=None)
    assert torch.allclose(dist, torch.full((3,), 100.0 - sum(lrs)), atol=1e-3)
    _, dist = invert(model, target, init, InversionConfig(steps=steps, step_size=ss, step_decay="none"), bounds=None)
    assert torch.allclose(dist, torch.full((3,), 100.0 - ss * steps), atol=1e-3)
    # step by step: the cosine run after k steps of an n-step schedule is what the schedule says
    z, _ = invert(model, target, init, cosine, bounds=None)
    assert torch.allclose(z.norm(dim=1), torch.full((3,), 100.0 - sum(lrs)), atol=1e-3)


def test_run_shard_inversion_uses_the_nodes_step_decay(fake_data, tmp_path):
    """Promise: a synthesis node's inversion.step_decay reaches invert() (cosine here), i.e. the shard equals
    a direct cosine inversion from the same start points and differs from a constant-step one."""
    plan = _plan()
    node = _node(plan, "d_r")
    inv = node.spec.inversion
    assert inv.step_decay == "cosine"
    model = _linear_model()
    seed = plan.sweep.seed
    store = Store(str(tmp_path / "s"))
    ctx = Context(plan.sweep.data, seed, store, 10)
    kinds.run_shard(node, 0, 0, 10, model, ctx)
    got, _ = store.load_shard(node.key, 0, size=10)

    x_all, _, _ = kinds.synth_inputs(node, ctx)
    from sweeper.science.synthesis import start_points
    gen = torch.Generator().manual_seed(seed_for(seed, node.key, 0))
    x0, _ = start_points(x_all, 10, "other_image", generator=gen, exclude=torch.arange(0, 10))
    cos, _ = invert(model, x_all[:10], x0, inv, bounds=(0.0, 1.0))
    const, _ = invert(model, x_all[:10], x0, inv.model_copy(update={"step_decay": "none"}), bounds=(0.0, 1.0))
    assert torch.allclose(got["x"], cos, atol=1e-6)
    assert not torch.allclose(got["x"], const, atol=1e-4)


# ---------------------------------------------------------------------------------------- 4. provenance
def _git(repo, *args):
    subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.com",
                    "-c", "commit.gpgsign=false", *args], check=True, capture_output=True, text=True)


def test_provenance_dirty_flag_follows_the_work_tree(tmp_path, monkeypatch):
    """Promise: provenance() records the git sha of the sweeper package's repository and whether its work
    tree is dirty: False when clean, True with a modified tracked file or an untracked file; None for both
    outside a repository. (The package's repository is found from store.py's location, so the test points
    that location into a temporary repository and runs the real git.)"""
    repo = tmp_path / "repo"
    (repo / "sweeper" / "store").mkdir(parents=True)
    (repo / "sweeper" / "store" / "store.py").write_text("# stand-in\n")
    _git(repo, "init", "-q")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "init")
    head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()
    monkeypatch.setattr(store_mod, "__file__", str(repo / "sweeper" / "store" / "store.py"))

    p = provenance()
    assert p["git_sha"] == head and p["git_dirty"] is False
    (repo / "sweeper" / "store" / "store.py").write_text("# changed\n")
    assert provenance()["git_dirty"] is True
    _git(repo, "checkout", "--", ".")
    assert provenance()["git_dirty"] is False
    (repo / "new_file.txt").write_text("x")
    p = provenance()
    assert p["git_dirty"] is True and p["git_sha"] == head

    outside = tmp_path / "plain" / "sweeper" / "store"
    outside.mkdir(parents=True)
    monkeypatch.setattr(store_mod, "__file__", str(outside / "store.py"))
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    p = provenance()
    assert p["git_sha"] is None and p["git_dirty"] is None


# ----------------------------------------------------------------------------- 5. shifted-label accuracy
def test_run_evaluate_shifted_accuracy_is_against_y_plus_1_mod_c(fake_data, tmp_path):
    """Promise: the evaluate node's shifted-label accuracy is accuracy against (y+1) mod C. A model that reads
    every test image as (y+1) mod C (class C-1 as 0: the wrap-around) scores 1.0 shifted and 0.0 clean."""
    plan = _plan()
    node = _node(plan, "eval", model="std")
    store = Store(str(tmp_path / "s"))
    _save_model(store, node.inputs["model"], _shift_model())
    x, y = data_store.test_set(plan.sweep.data, plan.sweep.seed)
    assert (y == C - 1).any() and len(y) == 30
    meta = kinds.run_evaluate(node, Context.of(plan, store))
    assert meta["clean_acc"] == 0.0
    assert meta["shifted_acc"] == 1.0
    assert store.load_meta(node.key)["shifted_acc"] == 1.0


# --------------------------------------------------------------------------------------- 6. shard seeds
def _synthesize_in_order(node, order, model, ctx, n, global_seed):
    ranges = kinds.shard_ranges(n, ctx.shard_size)
    for i in order:
        torch.manual_seed(global_seed + i)  # the process-wide RNG differs from run to run
        a, b = ranges[i]
        kinds.run_shard(node, i, a, b, model, ctx)
    kinds.finish_synthesis(node, len(ranges), ctx, 0.0)
    return ctx.store.load_tensors(node.key)


@pytest.mark.parametrize("stage", ["d_rand", "d_r"])
def test_shards_are_seeded_from_sweep_seed_node_key_and_index(stage, fake_data, tmp_path, monkeypatch):
    """Promise: a shard's randomness (random targets and random PGD starts for relabel; other_image start
    points for inversion) comes from a generator seeded by (sweep seed, node key, shard index): the same node
    computed all at once, shard by shard in another order, or on another process-wide RNG state gives
    identical tensors."""
    plan = _plan()
    node = _node(plan, stage)
    seed = plan.sweep.seed
    src = Store(str(tmp_path / "src"))
    model = _linear_model(seed=4)
    n, shard_size = 24, 10

    # which seeds the shards' generators get
    seen = []
    for name in ("relabel", "start_points"):
        real = getattr(kinds, name)

        def spy(*a, _real=real, **k):
            seen.append(k["generator"].initial_seed())
            return _real(*a, **k)
        monkeypatch.setattr(kinds, name, spy)

    runs, seeds = [], []
    for j, order in enumerate([[0, 1, 2], [2, 0, 1], [1, 2, 0]]):
        s = Store(str(tmp_path / f"run{j}"))
        runs.append(_synthesize_in_order(node, order, model, Context(plan.sweep.data, seed, s, shard_size), n,
                                         1000 * j))
        seeds.append(dict(zip(order, seen)))
        seen.clear()
    # all at once (run_synthesize loads the source model from the store)
    _save_model(src, node.inputs["source"], model)
    torch.manual_seed(99)
    kinds.run_synthesize(node, Context(plan.sweep.data, seed, src, shard_size))
    runs.append(src.load_tensors(node.key))

    for other in runs[1:]:
        assert other.keys() == runs[0].keys()
        for k in runs[0]:
            assert torch.equal(other[k], runs[0][k]), k
    # and the seeds are exactly seed_for(sweep seed, node key, shard index)
    for by_index in seeds:
        assert by_index == {i: seed_for(seed, node.key, i) for i in range(3)}
    t = runs[0]
    if stage == "d_rand":  # the randomness is real: targets are not all y+1, starts are random
        assert not torch.equal(t["y"], (t["orig_y"] + 1) % C)
        assert (t["y"] != t["orig_y"]).all()
    else:
        assert not torch.equal(t["x"][:10], t["x"][10:20])


# ------------------------------------------------------------------------------- 7. data section in keys
def test_every_node_key_depends_on_the_data_section():
    """Promise: node keys hash the data section: two sweeps that differ only in data.test_size, or only in
    data.dataset, share no node key."""
    base = _plan()
    keys = set(base.nodes)
    for changed in (SWEEP.replace("test_size: 30", "test_size: 31"),
                    SWEEP.replace("dataset: fashion_mnist", "dataset: cifar10"),
                    SWEEP.replace("data: {dataset: fashion_mnist, test_size: 30}",
                                  "data: {dataset: fashion_mnist}")):
        other = _plan(changed)
        assert len(other.nodes) == len(base.nodes)
        assert keys.isdisjoint(other.nodes), [n.label for k, n in other.nodes.items() if k in keys]
    assert set(_plan(SWEEP).nodes) == keys  # and keys are stable


# ---------------------------------------------------------------------------------------- 8. worst case
def test_worst_case_is_the_and_of_per_attack_robust_flags(monkeypatch):
    """Promise: an example counts robust under an attack only if it is clean-correct and survives that attack;
    worst-case robust accuracy counts it only if it survives every attack (AND over attacks, not OR)."""
    model = nn.Linear(2, 2)  # reads x0: class 0 when x0 > 0; x1 is an example id the model ignores
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 0.0], [-1.0, 0.0]]))
        model.bias.zero_()
    model.eval()
    n = 12
    ids = torch.arange(n, dtype=torch.float32)
    x = torch.stack([torch.ones(n), ids], 1)
    x[10:, 0] = -1.0  # ids 10, 11 are misclassified clean
    y = torch.zeros(n, dtype=torch.long)
    breaks = {"a": {0, 1, 2, 3}, "b": {2, 3, 4, 5}}  # overlapping, not nested

    def fake_pgd(model, x, y, cfg, **kw):
        out = x.clone()
        for i, id_ in enumerate(x[:, 1].tolist()):
            if int(id_) in breaks[cfg.name()]:
                out[i, 0] = -1.0
        return out

    class Cfg:
        norm, eps, method = "l2", 1.0, "pgd"

        def __init__(self, name):
            self._name = name

        def name(self):
            return self._name

    monkeypatch.setattr("sweeper.science.evaluation.perturb", fake_pgd)
    res = evaluate(model, x, y, {"a": Cfg("a"), "b": Cfg("b")}, batch_size=5, bounds=None)
    clean = torch.tensor([i < 10 for i in range(n)])
    ra = torch.tensor([i < 10 and i not in breaks["a"] for i in range(n)])
    rb = torch.tensor([i < 10 and i not in breaks["b"] for i in range(n)])
    assert torch.equal(res.clean_flags, clean)
    assert torch.equal(res.robust_flags["a"], ra) and torch.equal(res.robust_flags["b"], rb)
    assert res.robust_acc == {"a": 6 / 12, "b": 6 / 12}
    assert res.worst_acc == pytest.approx(4 / 12)  # ids 6..9 survive both
    assert res.worst_acc < min(res.robust_acc.values())
    ball = res.worst_by_ball["l2_eps1"]
    assert ball["acc"] == pytest.approx(4 / 12) and ball["pgd_acc"] == pytest.approx(6 / 12)
    assert ball["gap"] == pytest.approx(2 / 12)


def test_worst_by_ball_counts_smaller_balls_of_the_same_norm_only():
    """Promise: the robust accuracy of a ball is the AND over attacks of that norm with eps <= its eps (a
    perturbation inside the smaller ball lies inside the larger one); other norms and larger balls are left out;
    the gap is the best PGD reading at exactly that eps minus the worst case."""
    from sweeper.science.evaluation import worst_by_ball
    from sweeper.sweep.schema import AttackConfig

    a = {"small": AttackConfig(norm="l2", eps=0.5), "big": AttackConfig(norm="l2", eps=1.0),
         "apgd": AttackConfig(norm="l2", eps=1.0, method="apgd-ce"), "inf": AttackConfig(norm="linf", eps=0.1)}
    f = {"small": torch.tensor([1, 1, 0, 1, 1, 1], dtype=torch.bool),
         "big": torch.tensor([1, 1, 1, 0, 1, 1], dtype=torch.bool),
         "apgd": torch.tensor([1, 0, 1, 1, 1, 1], dtype=torch.bool),
         "inf": torch.tensor([0, 0, 0, 0, 0, 1], dtype=torch.bool)}
    w = worst_by_ball(a, f)
    assert set(w) == {"l2_eps0.5", "l2_eps1", "linf_eps0.1"}
    assert w["l2_eps0.5"]["acc"] == pytest.approx(5 / 6) and w["l2_eps0.5"]["attacks"] == ["small"]
    assert w["l2_eps1"]["acc"] == pytest.approx(3 / 6)  # small, big and apgd each break one example
    assert sorted(w["l2_eps1"]["attacks"]) == ["apgd", "big", "small"]
    assert w["l2_eps1"]["pgd_acc"] == pytest.approx(5 / 6) and w["l2_eps1"]["gap"] == pytest.approx(2 / 6)
    assert w["linf_eps0.1"]["acc"] == pytest.approx(1 / 6) and w["linf_eps0.1"]["gap"] == 0


def test_worst_case_with_real_attacks_never_exceeds_any_attack():
    """Promise (real PGD): worst-case robust accuracy is the mean of the AND of the per-attack flags, so it
    never exceeds any single attack's robust accuracy and equals it for a single attack."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3)).eval()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(40, 6, generator=g)
    with torch.no_grad():
        y = model(x).argmax(1)
    y[:5] = (y[:5] + 1) % 3  # a few clean mistakes
    attacks = {"l2": AttackConfig(norm="l2", eps=0.6, steps=5), "linf": AttackConfig(norm="linf", eps=0.25, steps=5)}
    res = evaluate(model, x, y, attacks, bounds=None)
    w = res.robust_flags["l2"] & res.robust_flags["linf"]
    assert res.worst_acc == pytest.approx(float(w.float().mean()))
    assert 0 < res.worst_acc < 1
    assert not (res.robust_flags["l2"] & ~res.clean_flags).any()
    one = evaluate(model, x, y, {"l2": attacks["l2"]}, bounds=None)
    assert one.worst_acc == one.robust_acc["l2"]


# ------------------------------------------------------------------------------ report semantics (extra)
def test_run_transfer_reads_target_against_new_labels_and_original_against_orig_y(fake_data, tmp_path):
    """Promise: a transfer node's target_rate is how often the probe reads the synthesized set's new labels
    (the targets) and original_rate how often it reads the original class."""
    plan = _plan()
    node = _node(plan, "probe", data="d_det", model="std_b")
    store = Store(str(tmp_path / "s"))
    _save_model(store, node.inputs["model"], _shift_model())
    test = fake_data["test"]
    read = (test.y + 1) % C  # what the probe reads on these images
    new_y = read.clone()
    new_y[:6] = (read[:6] + 2) % C   # 24 of 30 targets are read
    orig = (read + 3) % C
    orig[:9] = read[:9]                # 9 of 30 originals are read
    store.save(node.inputs["data"], meta={"kind": "synthesize"},
               tensors={"x": test.x, "y": new_y, "orig_y": orig, "index": torch.arange(30)})
    meta = kinds.run_transfer(node, Context.of(plan, store))
    assert meta["target_rate"] == pytest.approx(24 / 30)
    assert meta["original_rate"] == pytest.approx(9 / 30)
    assert meta["n"] == 30


def _fill_report_store(plan, store):
    """Finished metas for every node of SWEEP, with distinct numbers per node."""
    rates = {}
    for i, (k, n) in enumerate(plan.nodes.items()):
        if n.kind == "train":
            meta = {"kind": "train", "n_train": 40 + i}
        elif n.kind == "synthesize":
            meta = {"kind": "synthesize", "hit_rate": 0.5 + i / 100}
        elif n.kind == "transfer":
            probe, synth = plan.nodes[n.inputs["model"]].stage, plan.nodes[n.inputs["data"]].stage
            rates[(synth, probe)] = (0.11 + i / 100, 0.61 + i / 100)
            meta = {"kind": "transfer", "target_rate": rates[(synth, probe)][0],
                    "original_rate": rates[(synth, probe)][1], "n": 24}
        else:
            meta = {"kind": "evaluate", "clean_acc": 0.3 + i / 100, "shifted_acc": 0.05 + i / 100,
                    "worst_acc": 0.01 * i, "n": 30,
                    "robust": [{"attack": "a", "norm": "l2", "eps": 0.5, "steps": 2, "acc": 0.02 * i}],
                    "worst_by_ball": {"l2_eps0.5": {"norm": "l2", "eps": 0.5, "acc": 0.01 * i, "attacks": ["a"],
                                                    "pgd_acc": 0.02 * i, "gap": 0.01 * i}}}
        store.save(k, meta=meta)
    return rates


def test_report_transfer_rate_and_robust_reads_original(tmp_path):
    """Promise (report): for a model trained on a relabelled set, transfer_rate is the target rate of that
    set read by a standard (D) probe, and robust_reads_original is the original-class rate of that set read
    by an adversarially trained (D_adv) probe; never another set's numbers, never swapped."""
    plan = _plan()
    store = Store(str(tmp_path / "s"))
    rates = _fill_report_store(plan, store)
    rows = {r["model_stage"]: r for r in build_rows(plan, store)}
    assert rows["train_d_det"]["train_set"] == "D_det" and rows["train_d_rand"]["train_set"] == "D_rand"
    for stage, synth in (("train_d_det", "d_det"), ("train_d_rand", "d_rand")):
        assert rows[stage]["transfer_rate"] == rates[(synth, "std_b")][0]
        assert rows[stage]["robust_reads_original"] == rates[(synth, "robust")][1]
        assert rows[stage]["hit_rate"] == store.load_meta(_node(plan, synth).key)["hit_rate"]
    assert rows["std"]["transfer_rate"] is None and rows["std"]["robust_reads_original"] is None
    t = {(r["synth_label"], r["probe_label"]): r for r in transfer_rows(plan, store)}
    assert t[("d_det", "robust")]["probe_train_set"] == "D_adv"
    assert t[("d_det", "std_b")]["probe_train_set"] == "D"


def test_report_shifted_accuracy_in_rows_and_table1(tmp_path):
    """Promise (report): the shifted-label accuracy of an evaluation ((y+1) mod C, from the evaluate node) is
    what results rows and report.md's "shifted" columns show, beside (not instead of) the clean accuracy."""
    plan = _plan()
    store = Store(str(tmp_path / "s"))
    _fill_report_store(plan, store)
    rows = build_rows(plan, store)
    for r in rows:
        m = store.load_meta(r["eval_key"])
        assert r["shifted_acc"] == m["shifted_acc"] and r["clean_acc"] == m["clean_acc"]
        assert r["worst_acc"] == m["worst_acc"]
    det = next(r for r in rows if r["train_set"] == "D_det")
    md = markdown(plan, rows, transfer_rows(plan, store))
    line = next(ln for ln in md.splitlines() if ln.startswith("| D_det |"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[3] == f"{100 * det['clean_acc']:.1f}%"     # here (true labels)
    assert cells[4] == f"{100 * det['shifted_acc']:.1f}%"   # here (shifted labels)
    assert cells[5] == f"{100 * det['hit_rate']:.1f}%"
    every_section = md.split("## Every evaluation", 1)[1]
    every = next(ln for ln in every_section.splitlines() if ln.startswith(f"| {det['model_label']} |"))
    cells = [c.strip() for c in every.strip("|").split("|")]
    assert cells[4:6] == [f"{100 * det['clean_acc']:.1f}%", f"{100 * det['shifted_acc']:.1f}%"]
    assert cells[-2:] == [f"{100 * det['robust_reads_original']:.1f}%", f"{100 * det['transfer_rate']:.1f}%"]


# --------------------------------------------------------------------------------- W&B mode precedence
@pytest.mark.parametrize("executor", ["local", "ray"])
@pytest.mark.parametrize("flag,env,file,want", [
    ("disabled", "online", "offline", "disabled"),   # --wandb wins
    (None, "online", "disabled", "online"),          # then WANDB_MODE
    (None, None, "disabled", "disabled"),            # then run.wandb of the file
    (None, None, None, "offline"),                   # run.wandb's default
])
def test_wandb_mode_precedence(executor, flag, env, file, want, tmp_path, monkeypatch):
    """Promise: `sweeper run` picks the W&B mode from --wandb, then WANDB_MODE, then run.wandb of the file."""
    import sweeper.run.engines as ex
    from sweeper.cli import main

    text = SWEEP.replace("run: {store: ./store, shard_size: 10}",
                         "run: {store: STORE, shard_size: 10" + (f", wandb: {file}" if file else "") + "}")
    path = tmp_path / "s.yaml"
    path.write_text(text.replace("STORE", str(tmp_path / "store")))
    got = []

    def fake_run(plan, store, **kw):
        got.append(kw["wandb_mode"])
        return {"ran": 0, "skipped": 0, "total": len(plan.nodes)}
    monkeypatch.setattr(ex, "run_plan", fake_run)
    monkeypatch.setattr(ex, "run_plan_ray", fake_run)
    if env is None:
        monkeypatch.delenv("WANDB_MODE", raising=False)
    else:
        monkeypatch.setenv("WANDB_MODE", env)
    argv = ["run", str(path), "--executor", executor, "--no-report"] + (["--wandb", flag] if flag else [])
    assert main(argv) == 0
    assert got == [want]


def test_resolve_mode_precedence(monkeypatch):
    """Promise: tracking.resolve_mode: an explicit mode wins over WANDB_MODE, which wins over offline."""
    from sweeper.report.tracking import resolve_mode

    monkeypatch.setenv("WANDB_MODE", "online")
    assert resolve_mode("disabled") == "disabled"
    assert resolve_mode(None) == "online"
    monkeypatch.delenv("WANDB_MODE")
    assert resolve_mode(None) == "offline"


def test_run_help_states_the_wandb_precedence():
    """Promise: `sweeper run --help` documents the same W&B precedence the code uses (WANDB_MODE before
    run.wandb)."""
    from sweeper.cli import _parser

    run = next(a for a in _parser()._subparsers._group_actions[0].choices["run"]._actions if "--wandb" in a.option_strings)
    text = " ".join(run.help.split())
    assert text.index("WANDB_MODE") < text.index("run.wandb")


# ----------------------------------------------------------------------------------- synthesis start_index
@pytest.mark.parametrize("stage", ["d_r", "d_det"])
def test_synthesized_sets_name_the_start_image_of_every_image(stage, fake_data, tmp_path):
    """Promise: a synthesized set's ``start_index`` is the training-split index of the image each synthesis
    started from: for inversion from other_image, the other image (never the image itself, and the start points
    the shards drew); for relabelling, the image itself. Keys do not depend on it."""
    plan = _plan()
    node = _node(plan, stage)
    store = Store(str(tmp_path / "s"))
    ctx = Context.of(plan, store)
    _save_model(store, node.inputs["source"], _linear_model())
    kinds.run_synthesize(node, ctx)
    t = store.load_tensors(node.key)
    train = fake_data["train"]
    assert t["start_index"].dtype == torch.int64 and len(t["start_index"]) == len(t["index"]) == 24
    if stage == "d_det":
        assert torch.equal(t["start_index"], t["index"])
        return
    assert (t["start_index"] != t["index"]).all() and (t["start_index"] >= 0).all()
    from sweeper.science.synthesis import start_points  # the start images the shards drew, by the shards' seeds
    x_all, _, idx_all = kinds.synth_inputs(node, ctx)
    for i, (a, b) in enumerate(kinds.shard_ranges(24, ctx.shard_size)):
        gen = torch.Generator().manual_seed(seed_for(plan.sweep.seed, node.key, i))
        x0, pos = start_points(x_all, b - a, "other_image", generator=gen, exclude=torch.arange(a, b))
        assert torch.equal(t["start_index"][a:b], idx_all[pos]) and torch.equal(train.x[t["start_index"][a:b]], x0)
