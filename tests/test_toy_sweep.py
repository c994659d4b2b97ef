"""The shipped theory-toy sweep, end to end: the paper's section 4 outcomes hold."""
import pathlib

from sweeper.cli import main
from sweeper.sweep.plan import build_plan
from sweeper.report.report import build_rows
from sweeper.sweep.spec import load
from sweeper.store.store import Store

TOY = pathlib.Path(__file__).resolve().parents[1] / "search_spaces" / "toy.yaml"


def test_toy_sweep_outcomes(tmp_path):
    store_dir = str(tmp_path / "store")
    assert main(["run", str(TOY), "--store", store_dir]) == 0
    plan = build_plan(load(TOY))
    rows = {r["train_set"]: r for r in build_rows(plan, Store(store_dir))}
    robust_col = next(c for c in rows["D"] if c.startswith("robust_acc["))
    assert rows["D"]["clean_acc"] > 0.95 and rows["D"][robust_col] < 0.15      # accurate, not robust
    assert abs(rows["D_adv"]["clean_acc"] - 0.95) < 0.03                         # ~p clean
    assert abs(rows["D_adv"][robust_col] - 0.95) < 0.03                          # ~p robust
    assert rows["D_det"]["clean_acc"] > 0.85                                     # D_det teaches the true labels
    assert rows["D_det"]["hit_rate"] > 0.8 and rows["D_det"]["robust_reads_original"] > 0.8
