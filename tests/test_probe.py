"""Linear probes on a frozen representation (``features:``, Goh's robust-feature-leakage probe): the extractor's
weights and batch-norm statistics never move, only the head trains; a probe resumes from its checkpoint, loads for
evaluation, and gets its own rows (target_arch linear, a features column); the sweep file's errors are one line."""
import copy
import json
import shutil

import pytest
import torch

from sweeper.cli import main
from sweeper.errors import SpecError
from sweeper.run import kinds
from sweeper.run.kinds import Context
from sweeper.science import data, models
from sweeper.science.training import Trainer, train
from sweeper.store.store import Store
from sweeper.sweep.plan import build_plan
from sweeper.sweep.schema import AttackConfig, TrainConfig
from sweeper.sweep.spec import loads

from test_data import need_fmnist

# The theory toy (seconds): a standard and an adversarially trained MLP, D_rand relabelled against the standard one,
# a linear probe on the robust MLP's representation trained on D_rand (its relabelled targets), scored on the
# true test labels, clean and under attack.
PROBE_SWEEP = """
name: probetiny
seed: 0
data: {dataset: toy, toy: {d: 10, p: 0.95, n_train: 400, n_test: 200}}
run: {store: STORE, cpus_per_trial: 1, max_concurrent_trials: 1, robust_curve: {size: 0}}
stages:
  std: {kind: train, arch: mlp, train: &t {epochs: 3, batch_size: 100, optimizer: sgd, lr: 0.1, schedule: constant}}
  robust:
    kind: train
    arch: mlp
    train: *t
    adversarial: {norm: linf, eps: 1.2, steps: 3, step_size: 0.5}
  d_rand: {kind: synthesize, from: std, method: relabel, targets: random,
           attack: {norm: linf, eps: 1.2, steps: 3, step_size: 0.5}}
  probe:
    kind: train
    arch: linear
    from: d_rand
    features: robust
    train: {epochs: 4, batch_size: 100, optimizer: sgd, lr: 0.1, schedule: cosine}
  eval: {kind: evaluate, from: probe, attacks: [{norm: linf, eps: 1.2, steps: 3, step_size: 0.5}]}
"""


def _sweep(store="/nonexistent", text=PROBE_SWEEP):
    return loads(text.replace("STORE", str(store)), source="probe.yaml")


def _bn_source(seed=0):
    """A resnet_small (batch norm) on 12x12 one-channel images, its running statistics moved off their defaults."""
    torch.manual_seed(seed)
    src = models.build("resnet_small", num_classes=3, in_shape=(1, 12, 12), mean=(0.5,), std=(0.25,))
    x = torch.rand(48, 1, 12, 12)
    y = torch.arange(48) % 3
    src.train()
    with torch.no_grad():
        src(x)
    return src.eval(), x, y


@pytest.mark.parametrize("adversarial", [None, AttackConfig(norm="l2", eps=0.5, steps=2)], ids=["standard", "adv"])
def test_training_a_probe_moves_only_its_head(adversarial):
    src, x, y = _bn_source()
    assert any(k.endswith("running_mean") for k in src.state_dict())  # batch norm is there to be frozen
    before = {k: v.clone() for k, v in src.state_dict().items()}
    probe = models.probe(copy.deepcopy(src), 3)
    head0 = {k: v.clone() for k, v in probe.head.state_dict().items()}
    cfg = TrainConfig(epochs=2, batch_size=16, lr=0.1)
    trainer = Trainer(probe, x, y, cfg, adversarial=adversarial)
    assert {id(p) for g in trainer.optimizer.param_groups for p in g["params"]} == {id(p) for p in probe.head.parameters()}
    for _ in range(cfg.epochs):
        trainer.run_epoch()
        assert probe.training and probe.head.training  # the probe trains ...
        assert not any(m.training for m in probe.extractor.modules())  # ... its extractor never
    after = probe.extractor.state_dict()
    assert set(after) == set(before)
    moved = [k for k in before if not torch.equal(after[k], before[k])]
    assert moved == [], f"the frozen extractor changed: {moved}"  # weights AND batch-norm buffers, bit for bit
    assert not any(torch.equal(probe.head.state_dict()[k], head0[k]) for k in head0)  # the head did train
    # forward is head(representation(x)), the source's representation (the trainer made the probe channels_last)
    probe.eval()
    with torch.no_grad():
        assert torch.allclose(probe(x), probe.head(src.representation(x)), atol=1e-5)


@need_fmnist
def test_a_probe_on_real_data_beats_chance_clearly():
    """A probe on a (briefly) trained MLP's features, trained on real images, reads the test labels far above
    chance (10%), though only its head was trained."""
    tr, te = data.load("fashion_mnist", "train"), data.load("fashion_mnist", "test")
    x, y, xt, yt = tr.x[:1000], tr.y[:1000], te.x[:1000], te.y[:1000]
    torch.manual_seed(0)
    src = models.build("mlp", num_classes=10, in_shape=(1, 28, 28), mean=tr.mean, std=tr.std)
    train(src, x, y, TrainConfig(epochs=3, batch_size=64, lr=0.05))
    torch.manual_seed(1)
    probe = models.probe(src.eval(), 10)
    with torch.no_grad():  # an untrained head on the same features: about chance
        untrained = float((probe(xt).argmax(1) == yt).float().mean())
    train(probe, x, y, TrainConfig(epochs=3, batch_size=64, lr=0.05))
    probe.eval()
    with torch.no_grad():
        acc = float((probe(xt).argmax(1) == yt).float().mean())
    assert acc > 0.5 and acc > untrained + 0.3, (acc, untrained)


class Killed(Exception):
    pass


def test_a_probe_resumes_from_its_checkpoint_to_the_same_head(tmp_path):
    plan = build_plan(_sweep())
    nodes = {n.stage: n for n in plan.nodes.values()}
    upstream = Context.of(plan, Store(str(tmp_path / "ref")))
    for st in ("std", "robust", "d_rand"):
        kinds.KINDS[nodes[st].kind].run(nodes[st], upstream, None)
    shutil.copytree(tmp_path / "ref", tmp_path / "resumed")  # the same inputs in a second store
    heads = []
    for name, kill in (("ref", None), ("resumed", 2)):
        store = Store(str(tmp_path / name))
        ctx = Context.of(plan, store)

        def die(row, kill=kill):
            if row["epoch"] == kill:
                raise Killed()

        if kill:
            with pytest.raises(Killed):
                kinds.run_train(nodes["probe"], ctx, die)
            assert store.listdir(f"checkpoints/{nodes['probe'].key}") != []
        epochs = []
        meta = kinds.run_train(nodes["probe"], ctx, lambda row: epochs.append(row["epoch"]))
        assert epochs == ([3, 4] if kill else [1, 2, 3, 4])
        assert meta["arch"] == "linear" and meta["features"] == {"key": nodes["robust"].key, "arch": "mlp"}
        heads.append(store.load_tensors(nodes["probe"].key))
    ref, resumed = heads
    assert set(ref) == set(resumed) and all(torch.equal(ref[k], resumed[k]) for k in ref)


def test_probe_sweep_runs_and_reports_its_rows(tmp_path):
    """The tiny sweep with the local executor: results.json has the probe's row (target_arch linear, train_set
    D_rand, the features column), the stored probe holds the robust model's weights unchanged, and it loads."""
    path = tmp_path / "probe.yaml"
    path.write_text(PROBE_SWEEP.replace("STORE", str(tmp_path / "store")))
    assert main(["run", str(path), "--executor", "local"]) == 0
    rows = json.loads((tmp_path / "store" / "reports" / "probetiny" / "results.json").read_text())
    (row,) = rows
    assert (row["target_arch"], row["train_set"], row["features"], row["features_label"]) == (
        "linear", "D_rand", "robust (D_adv)", "robust")
    assert row["clean_acc"] is not None and "robust_acc[linf_eps1.2_s3_ss0.5]" in row
    plan = build_plan(_sweep(tmp_path / "store"))
    store = Store(str(tmp_path / "store"))
    probe = next(n for n in plan.nodes.values() if n.stage == "probe")
    robust = next(n for n in plan.nodes.values() if n.stage == "robust")
    assert probe.inputs == {"data": next(n.key for n in plan.nodes.values() if n.stage == "d_rand"),
                            "features": robust.key}
    stored, src = store.load_tensors(probe.key), store.load_tensors(robust.key)
    assert all(torch.equal(stored[f"extractor.{k}"], v) for k, v in src.items())
    model = kinds.load_model(store, probe.key, plan.sweep.data)
    assert isinstance(model, models.Probe) and not model.training
    report = (tmp_path / "store" / "reports" / "probetiny" / "report.md").read_text()
    assert "linear probe of robust (D_adv)" in report and "## Feature leakage" in report


def test_features_is_left_out_of_keys_and_dumps_when_unset():
    plain = build_plan(_sweep(text=PROBE_SWEEP.replace("    features: robust\n", "")))
    probed = build_plan(_sweep())
    same = {n.stage: k for k, n in plain.nodes.items() if n.stage not in ("probe", "eval")}
    assert same == {n.stage: k for k, n in probed.nodes.items() if n.stage not in ("probe", "eval")}
    p_plain = next(n for n in plain.nodes.values() if n.stage == "probe")
    p_probe = next(n for n in probed.nodes.values() if n.stage == "probe")
    assert "features" not in p_plain.spec.model_dump() and "features" not in p_plain.inputs
    assert p_plain.key != p_probe.key and p_probe.inputs["features"] in probed.nodes
    assert probed.describe(p_probe)["features"] == "robust (D_adv)" and plain.describe(p_plain)["features"] is None


def test_a_features_stage_with_several_nodes_gives_one_probe_each():
    text = PROBE_SWEEP.replace("    train: *t\n    adversarial", "    seed: {grid: [0, 1]}\n    train: *t\n    adversarial")
    plan = build_plan(_sweep(text=text))
    probes = [n for n in plan.nodes.values() if n.stage == "probe"]
    robust = {n.key for n in plan.nodes.values() if n.stage == "robust"}
    assert len(robust) == 2 and {p.inputs["features"] for p in probes} == robust


@pytest.mark.parametrize("edit, where, says", [
    (("features: robust", "features: d_rand"), "stages.probe.features",
     "'d_rand' is a synthesize stage; expected a train stage"),
    (("features: robust", "features: robsut"), "stages.probe.features", "no stage named 'robsut'; did you mean 'robust'?"),
    (("arch: linear", "arch: small_cnn"), "stages.probe.arch",
     "a probe (features: robust) is a linear classifier on that model's frozen representation (got arch: small_cnn); "
     "expected arch: linear"),
    (("  eval:", "  probe2: {kind: train, arch: linear, features: probe, train: *t}\n  eval:"), "stages.probe2.features",
     "'probe' is itself a probe"),
], ids=["synthesize-stage", "misspelt", "not-linear", "probe-of-probe"])
def test_readable_errors(edit, where, says):
    with pytest.raises(SpecError) as e:
        _sweep(text=PROBE_SWEEP.replace(*edit))
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"probe.yaml: {where}: ") and says in msg, msg
