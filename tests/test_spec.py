"""The sweep-file schema: valid files load, every kind of mistake is refused with FILE: key.path: message."""
import textwrap

import pytest

from sweeper.errors import SpecError
from sweeper.sweep.schema import ARCHS
from sweeper.sweep.spec import apply_overrides, expand_stage, load, loads, validate

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
    from sweeper.sweep.schema import KINDS

    assert KINDS[:4] == ("train", "synthesize", "evaluate", "transfer")
    assert str(ei.value) == f"mine.yaml: stages.a.kind: expected one of {', '.join(KINDS)} (got 'nope')"


@pytest.mark.parametrize("run, where", [
    ("{robust_curve: {size: -1}}", "run.robust_curve.size"),
    ("{robust_curve: {every: 0}}", "run.robust_curve.every"),
    ("{robust_curve: {attack: {norm: l3, eps: 0.5}}}", "run.robust_curve.attack"),
    ("{synthesis_actors: 0}", "run.synthesis_actors"),
])
def test_bad_run_settings_name_the_key(tmp_path, run, where):
    e = _err(tmp_path, VALID.replace("run: {store: ./store}", f"run: {run}"))
    assert where in str(e), str(e)


# ---------------------------------------------------------------- hostile or absurd input
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from sweeper.cli import main  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _bomb(levels: int = 9) -> str:
    """~480 bytes that expand to 9**9 leaves (billion laughs); a grid makes the stage expand first."""
    lines = ["a: &a [x,x,x,x,x,x,x,x,x]"]
    for prev, n in zip("abcdefgh", "bcdefghi"[:levels - 1]):
        lines.append(f"{n}: &{n} [" + ",".join([f"*{prev}"] * 9) + "]")
    return ("name: bomb\ndata: {dataset: fashion_mnist}\nstages:\n  s:\n    kind: train\n    arch: mlp\n"
            "    train: {epochs: 1, lr: {grid: [0.1, 0.2]}}\n    x:\n" + "".join(f"      {ln}\n" for ln in lines))


def test_alias_bomb_is_refused_fast(tmp_path):
    text = _bomb()
    assert len(text) < 600
    t0 = time.perf_counter()
    e = _err(tmp_path, text)
    assert time.perf_counter() - t0 < 0.5
    assert "alias" in e.message and "100,000" in e.message and e.key_path.startswith("stages.s.x."), str(e)


def test_too_many_aliases_refused(tmp_path):
    text = VALID + "  many: [" + ", ".join(["*t"] * 1001) + "]\n"
    text = text.replace("train: {epochs: 1}\n    adversarial", "train: &t {epochs: 1}\n    adversarial")
    e = _err(tmp_path, text)
    assert "line" in e.key_path and "aliases" in e.message and "1,000" in e.message, str(e)


def test_recursive_alias_refused(tmp_path):
    e = _err(tmp_path, VALID + "  loop: &l {kind: train, x: [*l]}\n")
    assert e.key_path == "stages.loop.x.0" and "refers to itself" in e.message, str(e)


def test_anchors_and_merge_keys_still_work(tmp_path):
    text = VALID.replace("train: {epochs: 1}\n    adversarial", "train: &t {epochs: 1, lr: 0.05}\n    adversarial")
    text = text.replace("train_d_det: {kind: train, from: d_det, arch: small_cnn, train: {epochs: 1}}",
                        "train_d_det: {kind: train, from: d_det, arch: small_cnn, train: {<<: *t, lr: 0.01}}")
    s = load(_write(tmp_path, text))
    assert s.points["train_d_det"][0][1].train.lr == 0.01 and s.points["robust"][0][1].train.lr == 0.05


@pytest.mark.parametrize("f", sorted((ROOT / "search_spaces").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_sweeps_load(f):
    assert load(f).points


@pytest.mark.parametrize("value, where", [
    (".inf", "stages.eval.attacks.0.eps"),
    ("-.inf", "stages.eval.attacks.0.eps"),
    (".nan", "stages.eval.attacks.0.eps"),
    ('"inf/1"', "stages.eval.attacks.0.eps"),
    ('"1e308/1e-308"', "stages.eval.attacks.0.eps"),
    ("1e308", "stages.eval.attacks.0.eps"),
    ("29.0", "stages.eval.attacks.0.eps"),  # > the L2 diameter of a 28x28 image in [0,1]
])
def test_absurd_eps_refused(tmp_path, value, where):
    e = _err(tmp_path, VALID.replace("attacks: [{norm: l2, eps: 0.5, steps: 2}]",
                                     f"attacks: [{{norm: l2, eps: {value}, steps: 2}}]"))
    assert e.key_path == where and "(got " in e.message and "; expected" in e.message, str(e)


def test_linf_eps_above_one_refused_for_images(tmp_path):
    e = _err(tmp_path, VALID.replace('eps: "8/255"', 'eps: "300/255"'))
    assert e.key_path == "stages.robust.adversarial.eps" and "at most 1" in e.message, str(e)
    e = _err(tmp_path, VALID.replace("grid: [0.5, 1.0]", "grid: [0.5, 1.0e+9]"))
    assert e.key_path == "stages.d_det.attack.eps" and "attack.eps=1000000000.0" in e.message, str(e)


def test_eps_bounds_follow_the_dataset(tmp_path):
    cifar = load(_write(tmp_path, VALID.replace("eps: 0.5, steps: 2}]", "eps: 50.0, steps: 2}]")
                        .replace("fashion_mnist", "cifar10")))
    assert cifar.points["eval"][0][1].attacks[0].eps == 50.0  # sqrt(3072) = 55.4 > 50 > 28
    toy = VALID.replace("dataset: fashion_mnist, test_size: 200", "dataset: toy")
    assert load(_write(tmp_path, toy.replace('eps: "8/255"', "eps: 4.0"))).points  # toy features are not pixels
    e = _err(tmp_path, toy.replace('eps: "8/255"', "eps: 1e6"))
    assert e.key_path == "stages.robust.adversarial.eps" and "1000" in e.message, str(e)


@pytest.mark.parametrize("old, new, where", [
    ("lr: 0.05", "lr: .inf", "stages.std.train.lr"),
    ("lr: 0.05", "lr: .nan", "stages.std.train.lr"),
    ("inversion: {steps: 3, step_size: 0.5}", "inversion: {steps: 3, step_size: .inf}",
     "stages.d_r.inversion.step_size"),
    ('eps: "8/255", steps: 2', 'eps: "8/255", steps: 2, step_size: .inf', "stages.robust.adversarial.step_size"),
    ('eps: "8/255", steps: 2', 'eps: "8/255", steps: 2, step_size: "1/0"', "stages.robust.adversarial.step_size"),
    ("run: {store: ./store}", "run: {store: ./store, cpus_per_trial: .inf}", "run.cpus_per_trial"),
    ("run: {store: ./store}", "run: {store: ./store, gpus_per_trial: .nan}", "run.gpus_per_trial"),
    ("run: {store: ./store}", "run: {store: ./store, robust_curve: {attack: {norm: l2, eps: .inf}}}",
     "run.robust_curve.attack.eps"),
])
def test_non_finite_numbers_refused(tmp_path, old, new, where):
    e = _err(tmp_path, VALID.replace(old, new, 1))
    assert e.key_path.startswith(where) and ("finite" in e.message or "number" in e.message), str(e)


def test_duplicate_key_refused_with_both_lines(tmp_path):
    text = VALID.replace("    train_size: 1000\n    train: {epochs: 1, batch_size: 64",
                         "    train_size: 1000\n    arch: mlp\n    train: {epochs: 1, batch_size: 64")
    e = _err(tmp_path, text)
    assert e.key_path == "stages.std.arch" and "duplicate key" in e.message and "lines 9 and 11" in e.message, str(e)
    e = _err(tmp_path, VALID.replace("lr: 0.05,", "lr: 0.05, lr: 0.5,"))
    assert e.key_path == "stages.std.train.lr" and "duplicate" in e.message, str(e)
    e = _err(tmp_path, VALID + "  std: {kind: train, arch: mlp, train: {epochs: 1}}\n")
    assert e.key_path == "stages.std" and "duplicate" in e.message, str(e)


@pytest.mark.parametrize("name", ["résumé", "std²", "٣", "a b", "a.b"])
def test_stage_name_outside_the_documented_set_refused(tmp_path, name):
    e = _err(tmp_path, VALID.replace("  probe:", f"  '{name}':"))
    assert e.key_path == f"stages.{name}" and "[A-Za-z0-9_-]+" in e.message and "(got " in e.message, str(e)


def test_huge_grid_refused_before_expanding(tmp_path):
    text = VALID.replace("train: {epochs: 1, batch_size: 64, optimizer: sgd, lr: 0.05, schedule: cosine}",
                         "train: {epochs: 1, batch_size: {grid: [%s]}, lr: {grid: [%s]}, momentum: {grid: [%s]}}"
                         % (", ".join(map(str, range(1, 61))), ", ".join(f"0.{i:03d}" for i in range(1, 101)),
                            ", ".join(f"0.{i:02d}" for i in range(70))))
    t0 = time.perf_counter()
    e = _err(tmp_path, text)
    assert time.perf_counter() - t0 < 0.5
    assert e.key_path == "stages.std" and "420,000" in e.message and "run.max_grid_points" in e.message, str(e)


def test_max_grid_points_is_configurable(tmp_path):
    s = load(_write(tmp_path, VALID))
    assert s.run.max_grid_points == 10_000
    e = _err(tmp_path, VALID.replace("run: {store: ./store}", "run: {store: ./store, max_grid_points: 7}"))
    assert "(got 8 grid points" in e.message and "at most 7" in e.message, str(e)
    assert load(_write(tmp_path, VALID.replace("run: {store: ./store}", "run: {store: ./store, max_grid_points: 8}")))


def test_validate_refuses_huge_shared_python_structures():
    import yaml
    raw = yaml.safe_load(VALID)
    big = ["x"] * 10
    for _ in range(8):
        big = [big] * 10
    raw["stages"]["std"]["x"] = big
    t0 = time.perf_counter()
    with pytest.raises(SpecError) as ei:
        validate(raw)
    assert time.perf_counter() - t0 < 0.5 and ei.value.key_path.startswith("stages.std"), str(ei.value)


# the CLI: one line on stderr, exit code 2, no traceback
def _cli(tmp_path, capsys, text):
    p = _write(tmp_path, text)
    rc = main(["plan", str(p), "--store", str(tmp_path / "store")])
    out, err = capsys.readouterr()
    assert rc == 2 and out == "" and err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith(f"sweeper: invalid sweep file: {p}: "), err
    return err


def test_cli_alias_bomb(tmp_path, capsys):
    t0 = time.perf_counter()
    err = _cli(tmp_path, capsys, _bomb())
    assert time.perf_counter() - t0 < 0.5 and "alias" in err


def test_cli_infinite_eps(tmp_path, capsys):
    err = _cli(tmp_path, capsys, VALID.replace("eps: 0.5, steps: 2}]", "eps: .inf, steps: 2}]"))
    assert "stages.eval.attacks.0.eps: " in err and "inf" in err


def test_cli_duplicate_key(tmp_path, capsys):
    err = _cli(tmp_path, capsys, VALID.replace("lr: 0.05,", "lr: 0.05, lr: 0.5,"))
    assert "stages.std.train.lr: duplicate key" in err


def test_cli_stage_name_and_grid_cap(tmp_path, capsys):
    assert "stages.résumé: " in _cli(tmp_path, capsys, VALID.replace("  probe:", "  résumé:"))
    err = _cli(tmp_path, capsys, VALID.replace("run: {store: ./store}", "run: {store: ./store, max_grid_points: 2}"))
    assert "grid points" in err and "run.max_grid_points" in err


def test_cli_valid_file_plans(tmp_path, capsys):
    assert main(["plan", str(_write(tmp_path, VALID)), "--store", str(tmp_path / "store")]) == 0
    assert "nodes" in capsys.readouterr().out


@pytest.mark.parametrize("attack, where, words", [
    ("{norm: l2, eps: inf, steps: 2}", "stages.eval.attacks.0.eps", "finite"),
    ("{norm: l2, eps: 0.5, steps: 2, restarts: 3}", "stages.eval.attacks.0.restarts", "random_start: true"),
    ("{norm: l2, eps: 0.5, steps: 2, method: cw}", "stages.eval.attacks.0.method", "apgd-ce"),
    ("{norm: l2, eps: 0.5, steps: 2, loss: dlr}", "stages.eval.attacks.0.loss", "margin"),
    ("{norm: l2, eps: 0.5, steps: 2, method: apgd-ce, n_targets: 3}", "stages.eval.attacks.0.n_targets", "apgd-t"),
])
def test_attack_options_refused_with_file_and_key(tmp_path, attack, where, words):
    """An attack value the run could not use is refused at load time, not inside a worker: eps given as the
    string inf, PGD restarts without a random start (every restart would repeat one run), unknown methods."""
    e = _err(tmp_path, VALID.replace("attacks: [{norm: l2, eps: 0.5, steps: 2}]", f"attacks: [{attack}]"))
    assert e.key_path == where and words in e.message, str(e)


def test_attack_method_and_loss_load(tmp_path):
    s = load(_write(tmp_path, VALID.replace("attacks: [{norm: l2, eps: 0.5, steps: 2}]",
                                            "attacks: [{norm: l2, eps: 0.5, steps: 2, loss: margin}, "
                                            "{norm: linf, eps: 8/255, steps: 20, method: apgd-ce, restarts: 2}]")))
    a, b = s.points["eval"][0][1].attacks
    assert (a.method, a.loss, b.method, b.restarts, b.random_start) == ("pgd", "margin", "apgd-ce", 2, False)


def test_grid_points_copy_the_stage_without_its_grid_lists():
    """Each point is a copy of the stage with the grid leaves set (the grid lists themselves are not copied per
    point, so a stage with long grids expands in time linear in its points); the raw stage is left untouched."""
    eps = [round(0.01 * i, 2) for i in range(1, 201)]
    raw = {"kind": "synthesize", "from": "s", "method": "relabel", "targets": "deterministic",
           "attack": {"norm": "l2", "eps": {"grid": eps}, "steps": {"grid": [5, 10]}}}
    pts = expand_stage(raw)
    assert len(pts) == 400 and raw["attack"]["eps"] == {"grid": eps}
    assert [p for p, _ in pts[:3]] == [{"attack.eps": 0.01, "attack.steps": 5},
                                       {"attack.eps": 0.01, "attack.steps": 10},
                                       {"attack.eps": 0.02, "attack.steps": 5}]
    assert all(c["attack"] == {"norm": "l2", "eps": p["attack.eps"], "steps": p["attack.steps"]} for p, c in pts)
    assert pts[0][1]["attack"] is not pts[1][1]["attack"]  # every point its own copy
