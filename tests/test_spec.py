"""The sweep-file schema: valid files load, every kind of mistake is refused with FILE: key.path: message."""
import textwrap

import pytest

from sweeper.spec import ARCHS, SpecError, apply_overrides, expand_stage, load, loads, validate

VALID = """
name: t
seed: 0
data: {dataset: fashion_mnist, test_size: 200}
run: {store: ./store}
stages:
  std:
    kind: train
    arch: small_cnn
    train_size: 1000
    train: {epochs: 1, batch_size: 64, optimizer: sgd, lr: 0.05, schedule: cosine}
  robust:
    kind: train
    arch: small_cnn
    train_size: 1000
    train: {epochs: 1}
    adversarial: {norm: linf, eps: "8/255", steps: 2}
  d_det:
    kind: synthesize
    from: std
    method: relabel
    size: 100
    targets: deterministic
    attack: {norm: l2, eps: {grid: [0.5, 1.0]}, steps: 3}
  d_r:
    kind: synthesize
    from: robust
    method: inversion
    size: 100
    inversion: {steps: 3, step_size: 0.5}
  train_d_det: {kind: train, from: d_det, arch: small_cnn, train: {epochs: 1}}
  probe: {kind: transfer, from: d_det, models: [robust]}
  eval:
    kind: evaluate
    from: [std, train_d_det]
    attacks: [{norm: l2, eps: 0.5, steps: 2}]
"""


def _write(tmp_path, text, name="s.yaml"):
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


def _err(tmp_path, text) -> SpecError:
    p = _write(tmp_path, text)
    with pytest.raises(SpecError) as ei:
        load(p)
    assert str(ei.value).startswith(f"{p}: "), str(ei.value)
    return ei.value


def test_valid_file_loads(tmp_path):
    s = load(_write(tmp_path, VALID))
    assert s.name == "t" and s.data.dataset == "fashion_mnist"
    assert len(s.points["d_det"]) == 2 and [p for p, _ in s.points["d_det"]] == [{"attack.eps": 0.5},
                                                                                  {"attack.eps": 1.0}]
    assert s.points["d_det"][1][1].attack.eps == 1.0
    assert s.stages["d_det"]["attack"]["eps"] == {"grid": [0.5, 1.0]}  # raw kept
    assert s.points["train_d_det"][0][1].from_ == "d_det"


def test_fraction_eps_parses(tmp_path):
    s = load(_write(tmp_path, VALID))
    assert s.points["robust"][0][1].adversarial.eps == pytest.approx(8 / 255)


def test_unknown_key_suggests(tmp_path):
    e = _err(tmp_path, VALID.replace("    attack: {norm: l2, eps: {grid", "    atack: {norm: l2, eps: {grid"))
    assert e.key_path == "stages.d_det.atack"
    assert "did you mean 'attack'?" in str(e)


def test_unknown_nested_key_suggests(tmp_path):
    e = _err(tmp_path, VALID.replace("optimizer: sgd", "optimiser: sgd"))
    assert e.key_path == "stages.std.train.optimiser" and "did you mean 'optimizer'?" in e.message


def test_wrong_type(tmp_path):
    e = _err(tmp_path, VALID.replace("batch_size: 64", "batch_size: lots"))
    assert e.key_path == "stages.std.train.batch_size" and "integer" in e.message


def test_negative_eps(tmp_path):
    e = _err(tmp_path, VALID.replace("eps: 0.5, steps: 2", "eps: -0.5, steps: 2"))
    assert e.key_path == "stages.eval.attacks.0.eps" and "greater than or equal to 0" in e.message


def test_negative_eps_in_grid_names_point(tmp_path):
    e = _err(tmp_path, VALID.replace("grid: [0.5, 1.0]", "grid: [0.5, -1.0]"))
    assert e.key_path == "stages.d_det.attack.eps" and "attack.eps=-1.0" in e.message


def test_unknown_norm(tmp_path):
    e = _err(tmp_path, VALID.replace("norm: linf", "norm: l3"))
    assert e.key_path == "stages.robust.adversarial.norm" and "'l2' or 'linf'" in e.message


def test_unknown_arch(tmp_path):
    e = _err(tmp_path, VALID.replace("arch: small_cnn\n    train_size: 1000\n    train: {epochs: 1}",
                                     "arch: resnet9\n    train_size: 1000\n    train: {epochs: 1}"))
    assert e.key_path == "stages.robust.arch" and "resnet18" in e.message
    assert "airbench" in ARCHS


def test_unknown_dataset(tmp_path):
    e = _err(tmp_path, VALID.replace("dataset: fashion_mnist", "dataset: mnist"))
    assert e.key_path == "data.dataset"


def test_from_names_no_stage(tmp_path):
    e = _err(tmp_path, VALID.replace("from: robust", "from: robst"))
    assert e.key_path == "stages.d_r.from" and "no stage named 'robst'" in e.message
    assert "did you mean 'robust'?" in e.message


def test_from_wrong_kind(tmp_path):
    e = _err(tmp_path, VALID.replace("from: [std, train_d_det]", "from: [std, d_det]"))
    assert e.key_path == "stages.eval.from" and "synthesize stage" in e.message


def test_transfer_needs_relabel(tmp_path):
    e = _err(tmp_path, VALID.replace("kind: transfer, from: d_det", "kind: transfer, from: d_r"))
    assert e.key_path == "stages.probe.from" and "relabel" in e.message


def test_cycle(tmp_path):
    text = """
    name: c
    data: {dataset: fashion_mnist}
    stages:
      a: {kind: train, from: sa, arch: mlp, train: {epochs: 1}}
      sa: {kind: synthesize, from: b, method: inversion, inversion: {steps: 1}}
      b: {kind: train, from: sb, arch: mlp, train: {epochs: 1}}
      sb: {kind: synthesize, from: a, method: inversion, inversion: {steps: 1}}
    """
    e = _err(tmp_path, text)
    assert "cycle" in e.message and e.key_path.endswith(".from")


def test_train_size_with_from_refused(tmp_path):
    e = _err(tmp_path, VALID.replace("from: d_det, arch: small_cnn", "from: d_det, train_size: 5, arch: small_cnn"))
    assert e.key_path == "stages.train_d_det" and "train_size" in e.message


def test_relabel_needs_attack(tmp_path):
    e = _err(tmp_path, VALID.replace("    attack: {norm: l2, eps: {grid: [0.5, 1.0]}, steps: 3}\n", ""))
    assert e.key_path == "stages.d_det" and "attack" in e.message


def test_bad_zip_lengths(tmp_path):
    e = _err(tmp_path, VALID.replace("    size: 100\n    targets",
                                     "    size: 100\n    zip: {attack.steps: [1, 2], attack.step_size: [0.1]}\n    targets"))
    assert e.key_path == "stages.d_det.zip" and "same length" in e.message


def test_bad_zip_path(tmp_path):
    e = _err(tmp_path, VALID.replace("    size: 100\n    targets",
                                     "    size: 100\n    zip: {attack.stepz: [1, 2]}\n    targets"))
    assert e.key_path == "stages.d_det.zip.attack.stepz" and "did you mean 'steps'?" in e.message


def test_empty_grid(tmp_path):
    e = _err(tmp_path, VALID.replace("grid: [0.5, 1.0]", "grid: []"))
    assert e.key_path == "stages.d_det.attack.eps.grid" and "non-empty" in e.message


def test_yaml_syntax_error_has_line(tmp_path):
    e = _err(tmp_path, "name: x\nstages: {a: [1, 2\n")
    assert "line" in e.key_path and "YAML" in e.message


def test_zip_and_grid_expand():
    raw = {"kind": "synthesize", "from": "s", "method": "relabel", "targets": {"grid": ["random", "deterministic"]},
           "attack": {"norm": "l2", "eps": 1.0}, "zip": {"attack.eps": [0.5, 1.0], "attack.steps": [5, 10]}}
    pts = expand_stage(raw)
    assert len(pts) == 4
    assert pts[0][0] == {"targets": "random", "attack.eps": 0.5, "attack.steps": 5}
    assert pts[3][1]["attack"] == {"norm": "l2", "eps": 1.0, "steps": 10} and "zip" not in pts[3][1]


def test_apply_overrides():
    import yaml
    raw = yaml.safe_load(VALID)
    new = apply_overrides(raw, {"stages.d_det.attack.eps": 2.0, "seed": 3})
    assert raw["stages"]["d_det"]["attack"]["eps"] == {"grid": [0.5, 1.0]}  # input untouched
    s = validate(new)
    assert s.seed == 3 and [m.attack.eps for _, m in s.points["d_det"]] == [2.0]


def test_loads_source_name():
    with pytest.raises(SpecError) as ei:
        loads("name: x\ndata: {dataset: toy}\nstages: {a: {kind: nope}}", source="mine.yaml")
    assert str(ei.value) == "mine.yaml: stages.a.kind: expected one of train, synthesize, evaluate, transfer (got 'nope')"


@pytest.mark.parametrize("run, where", [
    ("{robust_curve: {size: -1}}", "run.robust_curve.size"),
    ("{robust_curve: {every: 0}}", "run.robust_curve.every"),
    ("{robust_curve: {attack: {norm: l3, eps: 0.5}}}", "run.robust_curve.attack"),
    ("{synthesis_actors: 0}", "run.synthesis_actors"),
])
def test_bad_run_settings_name_the_key(tmp_path, run, where):
    e = _err(tmp_path, VALID.replace("run: {store: ./store}", f"run: {run}"))
    assert where in str(e), str(e)
