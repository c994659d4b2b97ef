"""Two controls of the Distill discussion as sweep stages: Nakkiran's bugs-only D_det (``ensemble:`` on a relabel
stage: targeted PGD on CE(f(x), t) + mean_i CE(f_i(x), y)) and Wallace's distillation control (``method:
wrong_labels``: the real images a weak model gets wrong, unperturbed, labelled with its prediction)."""
import json
import pathlib

import jsonschema
import pytest
import torch
from torch import nn

from sweeper.cli import main
from sweeper.errors import SpecError
from sweeper.run import kinds
from sweeper.science import data_store
from sweeper.science.attacks import keep_labels, perturb, pgd
from sweeper.science.synthesis import relabel, wrong_labels
from sweeper.store.store import Store
from sweeper.sweep.plan import build_plan
from sweeper.sweep.schema import AttackConfig
from sweeper.sweep.schema_json import COMMITTED
from sweeper.sweep.spec import load, loads

ROOT = pathlib.Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------ the attack, on known models
def _linear(w) -> nn.Module:
    """Two classes, logits (-w.x, w.x): class 1 where w.x > 0."""
    m = nn.Linear(len(w), 2, bias=False)
    with torch.no_grad():
        m.weight.copy_(torch.stack([-torch.tensor(w), torch.tensor(w)]))
    return m


def _toy(n=200, seed=0):
    """x0 = +-(0.5..1.5) carries the label (every model reads it); x1..x3 are small zero-mean noise."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    x = torch.zeros(n, 4)
    x[:, 0] = (2 * y - 1).float() * (0.5 + torch.rand(n, generator=g))
    x[:, 1:] = 0.1 * torch.randn(n, 3, generator=g)
    return x, y


# The source reads the shared feature x0 and a direction x1 of its own (its "bug"); each ensemble model reads x0
# and a direction of its own. Moving along x1 moves the source only; the plain attack moves along (1, 1, 0, 0)
# and so also drags x0, which the ensemble reads.
SOURCE, ENSEMBLE = [1., 1., 0., 0.], ([1., 0., .5, 0.], [1., 0., 0., .5])
ATTACK = AttackConfig(norm="l2", eps=2.0, steps=50, step_size=0.1)


def _keeps(ensemble, x_adv, y) -> float:
    return float(torch.stack([f(x_adv).argmax(1) == y for f in ensemble], 1).all(1).float().mean())


def test_ensemble_term_keeps_the_ensembles_true_labels():
    x, y = _toy()
    source, ensemble = _linear(SOURCE), [_linear(w) for w in ENSEMBLE]
    plain = relabel(source, x, y, policy="deterministic", num_classes=2, attack=ATTACK, bounds=None)
    bugs = relabel(source, x, y, policy="deterministic", num_classes=2, attack=ATTACK, bounds=None,
                   ensemble=ensemble)
    assert "keep" not in plain and bugs["keep_each"].shape == (200, 2)
    # both attacks move the source to the target on (almost) every image ...
    assert plain["hit"].float().mean() > 0.9 and bugs["hit"].float().mean() > 0.9
    # ... but only the bugs-only one leaves the ensemble reading the true label
    with torch.no_grad():
        keep_plain, keep_bugs = _keeps(ensemble, plain["x"], y), _keeps(ensemble, bugs["x"], y)
    assert keep_bugs > 0.9 and keep_plain < 0.3, (keep_bugs, keep_plain)
    assert float(bugs["keep"].float().mean()) == pytest.approx(keep_bugs)  # what the set's meta records
    assert torch.equal(bugs["y"], 1 - y) and torch.equal(bugs["orig_y"], y)
    assert ((bugs["x"] - x).norm(dim=1) <= ATTACK.eps + 1e-4).all()


def test_keep_labels_is_the_sum_of_both_terms():
    x, y = _toy(n=8)
    source, ensemble = _linear(SOURCE), [_linear(w) for w in ENSEMBLE]
    t = 1 - y
    ce = lambda m, x_, lab: nn.functional.cross_entropy(m(x_), lab, reduction="none")  # noqa: E731
    want = ce(source, x, t) + (ce(ensemble[0], x, y) + ce(ensemble[1], x, y)) / 2
    assert torch.allclose(keep_labels(ce, ensemble, y)(source, x, t), want)


def test_ensemble_needs_a_targeted_pgd():
    x, y = _toy(n=4)
    source, ensemble = _linear(SOURCE), [_linear(ENSEMBLE[0])]
    with pytest.raises(ValueError, match="targeted"):
        pgd(source, x, y, ATTACK, ensemble=ensemble, keep=y)  # untargeted
    with pytest.raises(ValueError, match="keep"):
        pgd(source, x, 1 - y, ATTACK, targeted=True, ensemble=ensemble)  # no labels to keep
    with pytest.raises(ValueError, match="targeted PGD"):
        perturb(source, x, y, ATTACK.model_copy(update={"method": "square"}), targets=1 - y, ensemble=ensemble)
    with pytest.raises(ValueError, match="empty"):
        keep_labels(lambda m, x_, lab: m(x_)[:, 0], [], y)


def test_wrong_labels_keeps_the_misclassified_images_unperturbed():
    x, y = _toy(n=50)
    x[:12, 0] = -x[:12, 0]  # the weak model reads x0 only: exactly these 12 are misread
    weak = _linear([1., 0., 0., 0.])
    out = wrong_labels(weak, x, y)
    assert out["wrong"].tolist() == [True] * 12 + [False] * 38
    assert torch.equal(out["x"], x[:12])  # bit-identical: no perturbation
    assert torch.equal(out["y"], 1 - y[:12]) and torch.equal(out["orig_y"], y[:12])
    with torch.no_grad():
        assert torch.equal(out["y"], weak(out["x"]).argmax(1))  # each labelled with the weak model's prediction
    right = wrong_labels(weak, x[12:], y[12:])  # a model right on every image: an empty set, shapes kept
    assert right["x"].shape == (0, 4) and right["y"].shape == (0,)


# ------------------------------------------------------------------------------ the sweep language
SWEEP = """
name: distill
seed: 0
data: {dataset: toy, toy: {d: 20, p: 0.95, n_train: 500, n_test: 300}}
run: {store: STORE, shard_size: 150, wandb: disabled}
stages:
  std: {kind: train, arch: linear, train: &t {epochs: 2, batch_size: 100, lr: 0.1, schedule: constant,
                                              weight_decay: 0.0}}
  ens_a: {kind: train, arch: linear, seed: 1, train: *t}
  ens_b: {kind: train, arch: linear, seed: 2, train: *t}
  other: {kind: train, arch: linear, seed: 3, train: *t}
  weak: {kind: train, arch: linear, train_size: 40, train: {epochs: 1, batch_size: 40, lr: 0.05,
                                                            schedule: constant, weight_decay: 0.0}}
  d_det_bugs: {kind: synthesize, from: std, method: relabel, targets: deterministic, ensemble: [ens_a, ens_b],
               attack: {norm: linf, eps: 0.45, steps: 10, step_size: 0.1}}
  d_wallace: {kind: synthesize, from: weak, method: wrong_labels, size: 400}
  train_bugs: {kind: train, from: d_det_bugs, arch: linear, train: *t}
  train_wallace: {kind: train, from: d_wallace, arch: linear, train: *t}
  transfer_bugs: {kind: transfer, from: d_det_bugs, models: [other]}
  eval: {kind: evaluate, from: [train_bugs, train_wallace]}
"""


def _write(tmp_path, name, text=SWEEP) -> pathlib.Path:
    p = tmp_path / f"{name}.yaml"
    p.write_text(text.replace("STORE", str(tmp_path / name)))
    return p


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
    """The tiny sweep, run once with the local executor: (sweep file, plan, store)."""
    tmp = tmp_path_factory.mktemp("distill")
    path = _write(tmp, "local")
    assert main(["run", str(path), "--executor", "local", "--threads", "1"]) == 0
    return path, build_plan(load(path)), Store(str(tmp / "local"))


def _node(plan, stage):
    return next(n for n in plan.nodes.values() if n.stage == stage)


def test_sweep_reports_both_controls(ran):
    path, plan, store = ran
    bugs, wallace = _node(plan, "d_det_bugs"), _node(plan, "d_wallace")
    assert bugs.inputs == {"source": _node(plan, "std").key, "ensemble0": _node(plan, "ens_a").key,
                           "ensemble1": _node(plan, "ens_b").key}
    assert plan.set_kind(bugs) == "D_det_bugs" and plan.set_kind(wallace) == "D_wallace"
    rows = {r["train_set"]: r for r in json.loads(store.read_bytes("reports/distill/results.json"))}
    assert set(rows) == {"D_det_bugs", "D_wallace"}
    bm, wm = store.load_meta(bugs.key), store.load_meta(wallace.key)
    assert 0 <= bm["ensemble_keeps"] <= 1 and len(bm["ensemble_keeps_each"]) == 2
    assert rows["D_det_bugs"]["ensemble_keeps"] == bm["ensemble_keeps"]
    assert rows["D_det_bugs"]["hit_rate"] == bm["hit_rate"] and rows["D_det_bugs"]["train_size"] == 500
    # transfer to an independent model (not the ensemble) is measured on the bugs-only set
    tr = store.load_meta(_node(plan, "transfer_bugs").key)
    assert tr["n"] == 500 and rows["D_det_bugs"]["transfer_rate"] == tr["target_rate"]
    # the Wallace set is smaller than its pool, and says so
    assert wm["pool_size"] == 400 and 0 < wm["kept"] < 400 and wm["n"] == wm["kept"] and wm["labels_differ"]
    assert [m["n"] for m in wm["shard_meta"]] == [150, 150, 100]
    assert sum(m["kept"] for m in wm["shard_meta"]) == wm["kept"]
    w = rows["D_wallace"]
    assert w["train_size"] == wm["kept"] and w["synth_pool_size"] == 400 and w["synth_kept"] == wm["kept"]
    assert store.load_meta(_node(plan, "train_wallace").key)["n_train"] == wm["kept"]
    assert "D_wallace" in store.read_bytes("reports/distill/report.md").decode()


def test_stored_wallace_set_is_the_weak_models_errors(ran):
    """Every pool image the weak model misreads, and only those: bit-identical to the training images, each
    labelled with the weak model's prediction (never the true label)."""
    path, plan, store = ran
    sweep = load(path)
    wallace = _node(plan, "d_wallace")
    t = store.load_tensors(wallace.key)
    weak = kinds.load_model(store, wallace.inputs["source"], sweep.data)
    x_pool, y_pool, idx_pool = data_store.real_subset(sweep.data, "train", 400, sweep.seed)
    with torch.no_grad():
        pred = weak(x_pool).argmax(1)
    wrong = pred != y_pool
    assert torch.equal(t["index"], idx_pool[wrong]) and torch.equal(t["start_index"], t["index"])
    train = data_store.load_split(sweep.data, "train")
    assert torch.equal(t["x"], train.x[t["index"]])  # unperturbed
    assert torch.equal(t["orig_y"], train.y[t["index"]])
    assert torch.equal(t["y"], pred[wrong]) and (t["y"] != t["orig_y"]).all()


def test_shard_refuses_to_run_without_its_ensemble(ran):
    """A bugs-only shard run without the ensemble models (an engine that forgot to load them) fails loudly
    instead of silently making an ordinary D_det."""
    path, plan, store = ran
    bugs = _node(plan, "d_det_bugs")
    ctx = kinds.Context(plan.sweep.data, 0, store, 150)
    source = kinds.load_model(store, bugs.inputs["source"], plan.sweep.data)
    with pytest.raises(ValueError, match="needs its 2 ensemble model"):
        kinds.run_shard(bugs, 0, 0, 150, source, ctx)


def test_empty_shard_merges(tmp_path):
    """A shard in which the source got every image right holds no images; the merge handles it."""
    path = _write(tmp_path, "merge")
    plan = build_plan(load(path))
    wallace = _node(plan, "d_wallace")
    store = Store(str(tmp_path / "merge"))
    ctx = kinds.Context(plan.sweep.data, 0, store, 150)
    t = {"x": torch.zeros(0, 21), "y": torch.zeros(0, dtype=torch.long), "orig_y": torch.zeros(0, dtype=torch.long),
         "index": torch.zeros(0, dtype=torch.long), "start_index": torch.zeros(0, dtype=torch.long)}
    store.save_shard(wallace.key, 0, t, {"index": 0, "n": 150, "kept": 0}, size=150)
    t1 = {"x": torch.ones(2, 21), "y": torch.tensor([1, 0]), "orig_y": torch.tensor([0, 1]),
          "index": torch.tensor([7, 9]), "start_index": torch.tensor([7, 9])}
    store.save_shard(wallace.key, 1, t1, {"index": 1, "n": 150, "kept": 2}, size=150)
    meta = kinds.finish_synthesis(wallace, 2, ctx, 0.0)
    assert (meta["pool_size"], meta["kept"], meta["n"], meta["labels_differ"]) == (300, 2, 2, True)
    assert torch.equal(store.load_tensors(wallace.key)["index"], torch.tensor([7, 9]))


def test_sweep_file_passes_the_json_schema_and_keys_of_plain_stages_stay():
    validator = jsonschema.Draft7Validator(json.loads((ROOT / COMMITTED).read_text()))
    import yaml

    assert list(validator.iter_errors(yaml.safe_load(SWEEP))) == []
    # an empty ensemble is an ordinary relabelling: same node, same key as without the option
    plain = SWEEP.replace("ensemble: [ens_a, ens_b],", "")
    empty = SWEEP.replace("ensemble: [ens_a, ens_b],", "ensemble: [],")
    k_plain, k_empty = (_node(build_plan(loads(s)), "d_det_bugs").key for s in (plain, empty))
    assert k_plain == k_empty
    assert "ensemble" not in _node(build_plan(loads(plain)), "d_det_bugs").spec.model_dump(by_alias=True)


# ------------------------------------------------------------------------------ readable errors
def _err(text: str, plan: bool = False) -> str:
    with pytest.raises(SpecError) as ei:
        sweep = loads(text, "s.yaml")
        if plan:
            build_plan(sweep)
    msg = str(ei.value)
    assert "\n" not in msg
    return msg


@pytest.mark.parametrize("old, new, want", [
    ("ensemble: [ens_a, ens_b]", "ensemble: [ens_a, d_wallace]",
     "s.yaml: stages.d_det_bugs.ensemble.1: 'd_wallace' is a synthesize stage; expected a train stage"),
    ("ensemble: [ens_a, ens_b]", "ensemble: [ens_a, ens_c]",
     "s.yaml: stages.d_det_bugs.ensemble.1: no stage named 'ens_c'; did you mean 'ens_b'?"),
    ("method: wrong_labels, size: 400", "method: wrong_labels, size: 400, attack: {norm: l2, eps: 1}",
     "s.yaml: stages.d_wallace: method wrong_labels takes no 'attack' (got attack); expected only from, size and "
     "seed"),
    ("method: wrong_labels, size: 400", "method: wrong_labels, size: 400, targets: random, ensemble: [ens_a]",
     "method wrong_labels takes no 'targets', 'ensemble'"),
    ("ensemble: [ens_a, ens_b]", "ensemble: [std, ens_b]", "'ensemble' names the source stage 'std'"),
    ("ensemble: [ens_a, ens_b]", "ensemble: [ens_a, ens_a]", "'ensemble' names 'ens_a' more than once"),
    ("attack: {norm: linf, eps: 0.45, steps: 10, step_size: 0.1}", "attack: {norm: linf, eps: 0.45, method: square}",
     "'ensemble' needs attack method: pgd"),
])
def test_readable_spec_errors(old, new, want):
    assert old in SWEEP
    assert want in _err(SWEEP.replace(old, new))


def test_readable_plan_errors(tmp_path, capsys):
    grid = SWEEP.replace("ens_b: {kind: train, arch: linear, seed: 2,", "ens_b: {kind: train, arch: linear, "
                                                                       "seed: {grid: [2, 4]},")
    assert _err(grid, plan=True) == ("s.yaml: stages.d_det_bugs.ensemble.1: ensemble stage 'ens_b' has 2 models (grid "
                                     "points or upstream sets); expected exactly one per ensemble stage: list one "
                                     "stage per model, without grids")
    same = SWEEP.replace("ens_b: {kind: train, arch: linear, seed: 2,", "ens_b: {kind: train, arch: linear, seed: 1,")
    assert "computes the same model as an earlier ensemble stage" in _err(same, plan=True)
    as_source = SWEEP.replace("ens_a: {kind: train, arch: linear, seed: 1,", "ens_a: {kind: train, arch: linear,")
    assert "an ensemble model is the source model itself" in _err(as_source, plan=True)
    capsys.readouterr()
    assert main(["plan", str(_write(tmp_path, "grid", grid))]) == 2
    err = capsys.readouterr().err
    assert "ensemble stage 'ens_b' has 2 models" in err and "Traceback" not in err


# ------------------------------------------------------------------------------ the Ray actor path
@pytest.mark.ray
@pytest.mark.slow
def test_ray_actors_load_the_ensemble(ran, tmp_path):
    """The same sweep with sweeper's default executor (a local Ray; synthesis shards on actors): the actors load
    the ensemble models too (run_shard refuses to run without them), and the sets are identical to the local
    executor's."""
    _, plan, local = ran
    path = _write(tmp_path, "ray")
    assert main(["run", str(path), "--no-report"]) == 0
    store = Store(str(tmp_path / "ray"))
    for stage in ("d_det_bugs", "d_wallace"):
        key = _node(plan, stage).key
        want, got = local.load_tensors(key), store.load_tensors(key)
        assert set(want) == set(got) and all(torch.equal(want[k], got[k]) for k in want), stage
    meta = store.load_meta(_node(plan, "d_det_bugs").key)
    assert meta["ensemble_keeps"] == local.load_meta(_node(plan, "d_det_bugs").key)["ensemble_keeps"]
    assert all("worker" in m for m in meta["shard_meta"])  # the shards ran on synthesis actors
