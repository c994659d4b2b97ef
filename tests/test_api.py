"""The Python API (sweeper.load ... results/curves) agrees with the command line on the same file, overrides and
store: the same node keys, the same errors, the columns of results.csv; it resumes; importing it stays light."""
import csv
import io
import json
import pathlib
import subprocess
import sys

import pytest

import sweeper
from sweeper.cli import main
from sweeper.errors import Incomplete, SpecError, SweeperError

TOY = pathlib.Path(__file__).resolve().parents[1] / "search_spaces" / "toy.yaml"
# toy.yaml made smaller (seconds on 2 cores), as `--set` strings: the same for the API and the CLI
SMALL = ["data.toy={d: 100, p: 0.95, n_train: 400, n_test: 200}", "stages.std.train.epochs=3",
         "stages.robust.train.epochs=2", "stages.train_d_det.train.epochs=2"]


def _cli_keys(capsys, *args) -> list[str]:
    assert main(["plan", str(TOY), *args]) == 0
    out = capsys.readouterr().out
    return [ln.split()[0] for ln in out.splitlines() if len(ln.split()) > 2 and len(ln.split()[0]) == 16]


@pytest.mark.parametrize("sets, mapping", [
    (["seed=1"], {"seed": 1}),
    (["stages.d_det.attack.eps={grid: [0.2, 0.4]}"], {"stages.d_det.attack.eps": {"grid": [0.2, 0.4]}}),
    (SMALL, None),
])
def test_overrides_give_the_keys_of_set(tmp_path, capsys, sets, mapping):
    store = str(tmp_path / "store")
    cli = _cli_keys(capsys, "--store", store, *[a for s in sets for a in ("--set", s)])
    sw = sweeper.load(TOY, sets, store=store)
    assert list(sw.plan.nodes) == cli
    assert list(sw.plan_frame()["key"]) == cli
    if mapping is not None:
        assert list(sweeper.load(TOY, mapping, store=store).plan.nodes) == cli
    assert cli != _cli_keys(capsys, "--store", store)  # the override did change the keys


@pytest.mark.parametrize("override, names", [
    ("junk", "--set expects KEY=VALUE (got 'junk')"),                       # not KEY=VALUE
    ("stages.d_det.attack.eps=.inf", "stages.d_det.attack.eps"),            # a bad value
    ("stages.d_det.atack.eps=0.1", "stages.d_det.atack: unknown key"),      # a misspelt key
    ("stages.nope.kind=train", "stages.nope"),                              # an incomplete stage
])
def test_bad_override_is_the_clis_spec_error(tmp_path, capsys, override, names):
    store = str(tmp_path / "store")
    assert main(["plan", str(TOY), "--store", store, "--set", override]) == 2
    cli_line = capsys.readouterr().err.strip()
    with pytest.raises(SpecError) as err:
        sweeper.load(str(TOY), [override], store=store)
    assert f"sweeper: {err.value.line()}" == cli_line and names in str(err.value)
    with pytest.raises(SpecError, match="did you mean 'attack'"):
        sweeper.load(TOY, {"stages.d_det.atack.eps": 0.1}, store=store)


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
    """The small toy sweep run once through the API (local executor, no W&B), with its first summary."""
    store = str(tmp_path_factory.mktemp("api") / "store")
    sw = sweeper.load(TOY, SMALL, store=store)
    assert not sw.plan_frame()["done"].any()
    summary = sw.run(executor="local", wandb="disabled", report=False, log=lambda msg: None)
    return sw, summary


def test_run_runs_every_node_and_a_rerun_none(ran, capsys):
    sw, first = ran
    total = len(sw.plan.nodes)
    assert (first["ran"], first["skipped"], first["total"], first["report"]) == (total, 0, total, None)
    frame = sw.plan_frame()
    assert frame["done"].all() and len(frame) == total
    again = sweeper.load(TOY, SMALL, store=str(sw.store.uri)).run(executor="local", wandb="disabled",
                                                                  log=lambda msg: None)
    assert (again["ran"], again["skipped"], again["total"]) == (0, total, total)
    assert set(again["report"]) >= {"results.csv", "report.md"}
    # the command line with the same --set finds the API's run done (same keys, same store)
    assert main(["run", str(TOY), "--store", sw.store.uri, "--executor", "local", "--no-report",
                 *[a for s in SMALL for a in ("--set", s)]]) == 0
    assert f"ran 0 nodes, skipped {total} already done" in capsys.readouterr().out


def test_results_have_the_columns_and_rows_of_results_csv(ran, capsys):
    sw, _ = ran
    assert main(["report", str(TOY), "--store", sw.store.uri, *[a for s in SMALL for a in ("--set", s)]]) == 0
    capsys.readouterr()
    text = (pathlib.Path(sw.store.uri) / "reports" / "toy" / "results.csv").read_text()
    header, *lines = list(csv.reader(io.StringIO(text)))
    df = sw.results()
    assert list(df.columns) == header and any(c.startswith("robust_acc[") for c in header)
    assert len(df) == len(lines) == sw.plan.counts()["evaluate"] == 3
    assert list(df["eval_key"]) == [ln[header.index("eval_key")] for ln in lines]
    saved = json.loads((pathlib.Path(sw.store.uri) / "reports" / "toy" / "results.json").read_text())
    assert [r["clean_acc"] for r in saved] == list(df["clean_acc"])
    assert set(df["train_set"]) == {"D", "D_adv", "D_det"}


def test_curves_one_row_per_epoch(ran):
    sw, _ = ran
    std = sw.curves("std")
    assert list(std["epoch"]) == [1, 2, 3]
    assert {"epoch", "train_loss", "train_acc", "test_acc"} <= set(std.columns)
    assert std["test_acc"].between(0, 1).all() and std["train_loss"].notna().all()
    key = sw.node("train_d_det").key
    assert len(sw.curves(key)) == 2 and list(sw.curves(key).columns) == list(sw.curves("train_d_det").columns)


def test_unknown_node_names_the_labels(ran):
    sw, _ = ran
    with pytest.raises(sweeper.api.NodeNotFound) as err:
        sw.curves("sdt")
    msg = str(err.value)
    assert "'sdt'" in msg and "std, robust, train_d_det" in msg
    assert isinstance(err.value, SweeperError) and isinstance(err.value, LookupError)
    with pytest.raises(sweeper.api.NodeNotFound, match=r"\(eval\(model=std\) is a node of kind evaluate\)"):
        sw.curves("eval(model=std)")


def test_curves_of_a_node_not_run_yet(tmp_path):
    sw = sweeper.load(TOY, {"seed": 7}, store=str(tmp_path / "store"))
    with pytest.raises(Incomplete, match="train node std .* is not done"):
        sw.curves("std")
    assert len(sw.results()) == 0 and "clean_acc" in sw.results().columns


def test_import_sweeper_and_read_a_plan_without_ray_wandb_torch(tmp_path):
    """`import sweeper` (the docstring's promise) and the API's reading side import neither Ray, W&B nor torch."""
    code = (f"import sys, sweeper\n"
            f"heavy = lambda: sorted(m for m in ('ray', 'wandb', 'torch', 'pandas', 'sweeper.api') if m in sys.modules)\n"
            f"assert heavy() == [], heavy()\n"
            f"sw = sweeper.load({str(TOY)!r}, ['seed=1'], store={str(tmp_path / 's')!r})\n"
            f"sw.plan_frame(), sw.results(), repr(sw)\n"
            f"print(heavy())\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["['pandas',", "'sweeper.api']"]


def test_argument_mistakes(tmp_path):
    sw = sweeper.load(TOY, store=str(tmp_path / "store"))
    with pytest.raises(ValueError, match="executor"):
        sw.run(executor="slurm")
    with pytest.raises(ValueError, match="wandb"):
        sw.run(executor="local", wandb="on")
    with pytest.raises(ValueError, match="address"):
        sw.run(executor="local", address="auto")
    with pytest.raises(TypeError, match="overrides"):
        sweeper.load(TOY, [("seed", 1)])
