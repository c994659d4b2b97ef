"""Whole-chain seeds (``chains:``) and the claims' bootstrap intervals.

Chain 0 is the sweep as written (its keys do not move when chains are added); chain k re-seeds every stage
and links only to its own chain's inputs; the report pools chains as seeds; the intervals widen with the seed
spread and shrink with the test-set size, as the two-level bootstrap says they should."""
import math

import numpy as np
import pytest

from sweeper.report import stats
from sweeper.report.report import build_rows, claims, summary
from sweeper.sweep import spec
from sweeper.sweep.plan import build_plan
from sweeper.sweep.schema import CHAIN_STRIDE
from test_report import NUMBERS, SWEEP, _filled


def test_chain_zero_is_the_sweep_as_written_and_each_chain_links_to_its_own():
    one = build_plan(spec.loads(SWEEP))
    three = build_plan(spec.loads(SWEEP.replace("seed: 0\n", "seed: 0\nchains: 3\n", 1)))
    assert len(three.nodes) == 3 * len(one.nodes)
    assert set(one.nodes) <= set(three.nodes)  # chain 0's keys are the one-chain sweep's
    labels = [n.label for n in three.nodes.values()]
    assert len(set(labels)) == len(labels)
    for n in three.nodes.values():
        chain = n.point.get("chain", 0)
        assert (n.key in one.nodes) == (chain == 0)
        written = 0 if n.stage != "baseline" and not n.stage.startswith("train_d") else n.point["seed"]
        if hasattr(n.spec, "seed"):
            assert n.spec.seed == written + CHAIN_STRIDE * chain, n.label
        for i in n.inputs.values():  # a chain's synthesis reads its own source, its retraining its own set
            assert three.nodes[i].point.get("chain", 0) == chain, (n.label, three.nodes[i].label)


def test_chains_is_checked_like_every_key():
    with pytest.raises(spec.SpecError, match="chains"):
        spec.loads(SWEEP.replace("seed: 0\n", "seed: 0\nchains: 0\n", 1))


def test_rows_of_all_chains_are_one_group_summarised_over_their_seeds(tmp_path):
    plan, store = _filled(tmp_path, chains=2)
    rows = build_rows(plan, store)
    assert {r["chain"] for r in rows} == {0, 1}
    summ = {r["model_stage"]: r for r in summary(rows).to_dict("records")}
    assert summ["train_d_r"]["seeds"] == (0, 1, CHAIN_STRIDE, CHAIN_STRIDE + 1)
    assert summ["train_d_r"]["clean_acc_count"] == 4


def test_one_seed_interval_is_the_binomial_test_sample():
    """One model at 50% on n = 10,000 images: the 95% interval is 50% ± 1.96 * sqrt(.25 / n) = ± 0.98 points."""
    lo, hi = stats.mean_ci([0.5], 10_000)
    half = 1.96 * math.sqrt(0.25 / 10_000)
    assert lo == pytest.approx(0.5 - half, abs=0.002) and hi == pytest.approx(0.5 + half, abs=0.002)


def test_the_seed_level_widens_the_interval_and_covers_the_truth():
    """Seeds at 40% and 60% on a large test set: the interval spans the seeds, far wider than the binomial part.
    And over many simulated single-seed measurements, the interval covers the true accuracy about 95% of
    the time (the test-sample level alone is exact there)."""
    lo, hi = stats.mean_ci([0.4, 0.6], 100_000)
    assert lo < 0.41 and hi > 0.59
    rng = np.random.default_rng(7)
    covered = 0
    for _ in range(300):
        acc = rng.binomial(500, 0.7) / 500
        lo, hi = stats.mean_ci([acc], 500)
        covered += lo <= 0.7 <= hi
    assert 0.90 <= covered / 300 <= 0.99, covered


def test_claims_carry_the_interval_and_say_whether_it_clears_no_effect(tmp_path):
    """D_R's worst case 31/33% against the baseline's 26/24% on 30 test images: +7 points, but 30 images make
    the interval reach below 0 (not clear); D_det at 45/51% on 30 images is clearly above 10%."""
    plan, store = _filled(tmp_path)
    cl = claims(summary(build_rows(plan, store)), num_classes=10)
    d_r = next(c for c in cl if c["claim"].startswith("D_R"))
    assert d_r["holds"] and d_r["ci_low"] < 0 < d_r["ci_high"] and not d_r["clear"], d_r
    det = next(c for c in cl if c["claim"].startswith("D_det"))
    assert det["clear"] and 0.1 < det["ci_low"] < 0.45 and 0.51 < det["ci_high"] < 0.8, det
    assert NUMBERS[("train_d_det", 0)][0] == 0.45


def test_a_seed_that_could_be_another_stages_chain_seed_is_refused():
    text = SWEEP.replace("seed: 0\n", "seed: 0\nchains: 2\n", 1).replace("seed: {grid: [0, 1]}, train: {epochs: 1}}",
                                                                         "seed: {grid: [0, 1000]}, train: {epochs: 1}}", 1)
    with pytest.raises(spec.SpecError, match=r"stages\.baseline\.seed.*must be in \[0, 1000\)"):
        spec.loads(text)
    spec.loads(text.replace("chains: 2", "chains: 1"))  # one chain: any seed
