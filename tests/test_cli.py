"""The command line itself: --version, `python -m sweeper`, --set overrides on plan/report, exit codes in --help."""
import pathlib
import subprocess
import sys

import pytest

from sweeper import __version__
from sweeper.cli import main

TOY = pathlib.Path(__file__).resolve().parents[1] / "search_spaces" / "toy.yaml"


def test_version_and_python_dash_m():
    r = subprocess.run([sys.executable, "-m", "sweeper", "--version"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == f"sweeper {__version__}"
    r = subprocess.run([sys.executable, "-m", "sweeper", "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "exit codes:" in r.stdout and "130 / 143" in r.stdout


def _keys(out: str) -> list[str]:
    return [line.split()[0] for line in out.splitlines() if len(line.split()) > 2 and len(line.split()[0]) == 16]


def test_set_overrides_reach_the_plan(tmp_path, capsys):
    store = str(tmp_path / "store")
    assert main(["plan", str(TOY), "--store", store]) == 0
    base = _keys(capsys.readouterr().out)
    assert main(["plan", str(TOY), "--store", store, "--set", "seed=1"]) == 0
    seeded = _keys(capsys.readouterr().out)
    assert main(["plan", str(TOY), "--store", store, "--set", "stages.d_det.attack.eps={grid: [0.2, 0.4]}"]) == 0
    grid = _keys(capsys.readouterr().out)
    assert len(base) == 8 and set(base).isdisjoint(seeded)
    assert len(grid) > len(base) and set(grid) > {k for k in base}  # eps 0.4 is the file's own value


@pytest.mark.parametrize("item, expect", [
    ("junk", "--set expects KEY=VALUE (got 'junk')"),
    ("stages.d_det.attack.eps=.inf", "stages.d_det.attack.eps"),
    ("stages.nope.kind=train", "stages.nope"),
])
def test_bad_set_is_one_line_and_exit_2(tmp_path, capsys, item, expect):
    assert main(["plan", str(TOY), "--store", str(tmp_path / "s"), "--set", item]) == 2
    err = capsys.readouterr().err
    assert expect in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_exit_codes_come_from_the_errors_module(tmp_path, capsys, monkeypatch):
    """Every error a user sees carries its exit code (sweeper.errors); the CLI prints its one line and exits
    with that code, whatever module raised it (no Ray needed to know a code)."""
    import sweeper.cli
    from sweeper import errors

    codes = {errors.SpecError("f.yaml", "k", "bad"): 2, errors.StoreError("no store"): 2,
             errors.StoreIOError("read-only"): 2, errors.DataNotFoundError("no data"): 3,
             errors.CorruptDataset("bad data"): 3, errors.ClusterError("no cluster"): 4,
             errors.ShardFailed("shard 3 failed"): 5, errors.TrialsFailed("trial failed"): 5,
             errors.Incomplete("not done"): 5, errors.CorruptArtifact("bad bytes"): 5}
    for err, code in codes.items():
        def fail(args, err=err):
            raise err
        monkeypatch.setattr(sweeper.cli, "_cmd_plan", fail)
        assert main(["plan", str(TOY), "--store", str(tmp_path / "s")]) == code, err
        lines = capsys.readouterr().err.strip().splitlines()
        assert lines[0].startswith("sweeper: ") and str(err) in lines[0] and "Traceback" not in lines
        assert ("run the same command again to resume" in lines[-1]) == (code == 5)
    for signum, code in ((2, 130), (15, 143)):
        def stop(args, signum=signum):
            raise errors.Interrupted(signum)
        monkeypatch.setattr(sweeper.cli, "_cmd_plan", stop)
        assert main(["plan", str(TOY), "--store", str(tmp_path / "s")]) == code
        assert "interrupted" in capsys.readouterr().err


def test_a_long_plan_prints_a_summary_and_all_prints_every_node(tmp_path, capsys):
    """Past PLAN_TABLE_MAX nodes `sweeper plan` prints nodes and done per stage, the first and last nodes and
    the totals line instead of one line per node; --all prints the table (a short plan always does)."""
    from sweeper.cli import PLAN_TABLE_MAX
    from sweeper.sweep.plan import build_plan
    from sweeper.sweep.spec import load
    from sweeper.store.store import Store

    store = str(tmp_path / "store")
    eps = ", ".join(f"{0.01 * (i + 1):.2f}" for i in range(60))
    sets = ["--set", f"stages.d_det.attack.eps={{grid: [{eps}]}}"]
    plan = build_plan(load(TOY, {"stages.d_det.attack.eps": {"grid": [round(0.01 * (i + 1), 2) for i in range(60)]}}))
    n = len(plan.nodes)
    assert n == 2 + 4 * 60 + 2 > PLAN_TABLE_MAX  # std, robust; d_det, train_d_det, probe, eval per eps; 2 evals
    first = next(iter(plan.nodes.values()))
    Store(store).save(first.key, meta={"kind": first.kind})  # one node done
    assert main(["plan", str(TOY), "--store", store, *sets]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert len(_keys(out)) == 20 and _keys(out)[0] == first.key and _keys(out)[-1] == list(plan.nodes)[-1]
    assert lines[0].split() == ["stage", "kind", "nodes", "done", "todo"]
    assert lines[1].split() == ["std", "train", "1", "1", "0"]
    assert lines[3].split() == ["d_det", "synthesize", "60", "0", "60"]
    assert lines[6].split() == ["eval", "evaluate", "62", "0", "62"]
    assert f"the first 10 and the last 10 of {n} nodes, in plan order:" in lines
    assert f"... {n - 20} more (sweeper plan --all prints every node)" in lines
    assert lines[-1].startswith(f"sweep toy: {n} nodes, ") and lines[-1].endswith(f"done 1/{n}")
    assert main(["plan", str(TOY), "--store", store, *sets, "--all"]) == 0
    full = capsys.readouterr().out
    assert _keys(full) == list(plan.nodes) and full.strip() == plan.render({first.key})
    assert full.splitlines()[-1] == lines[-1]
    assert main(["plan", str(TOY), "--store", store]) == 0  # 8 nodes: the table, as always
    assert len(_keys(capsys.readouterr().out)) == 8
    # the Python API prints what the command prints
    import sweeper

    loaded = sweeper.load(TOY, {"stages.d_det.attack.eps": {"grid": [round(0.01 * (i + 1), 2) for i in range(60)]}},
                          store=store)
    assert loaded.render().splitlines() == lines and loaded.render(show_all=True) == full.strip()
