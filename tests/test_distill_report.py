"""The report's Distill controls section: each control's direction is read off the right groups, with
intervals, and flips when the numbers do."""
import pytest

from sweeper.report import distill
from sweeper.report.report import paper_reference, summary

REF = paper_reference()["distill"]["rows"]


def _rows(numbers: dict) -> list[dict]:
    """Report rows: {(model_stage, train_set, features, eps): [(clean_acc, extra fields), ...]} per seed."""
    rows = []
    for (stage, ts, features, eps), seeds in numbers.items():
        for seed, (acc, extra) in enumerate(seeds):
            rows.append({"eval_stage": "eval", "model_stage": stage, "setting": "-", "train_set": ts,
                         "train_size": 1000, "target_arch": "linear" if features else "small_cnn",
                         "features": features, "synth_eps": eps, "seed": seed, "clean_acc": acc,
                         "shifted_acc": 0.0, "eval_n": 1000, "hit_rate": extra.get("hit_rate"),
                         "robust_reads_original": extra.get("reads"), "transfer_rate": extra.get("transfer"),
                         "ensemble_keeps": extra.get("keeps")})
    return rows


NUMBERS = {
    ("train_d_det", "D_det", None, 4.0): [(0.49, {"hit_rate": 0.95, "transfer": 0.60}),
                                          (0.47, {"hit_rate": 0.95, "transfer": 0.60})],
    ("train_d_det_bugs", "D_det_bugs", None, 4.0): [(0.12, {"hit_rate": 0.90, "transfer": 0.05, "keeps": 0.97}),
                                                    (0.10, {"hit_rate": 0.90, "transfer": 0.05, "keeps": 0.97})],
    ("probe_rand", "D_rand", "robust (D_adv)", 4.0): [(0.30, {}), (0.32, {})],
    ("probe_det", "D_det", "robust (D_adv)", 1.0): [(0.35, {"hit_rate": 0.4, "reads": 0.9})] * 2,
    ("probe_det", "D_det", "robust (D_adv)", 4.0): [(0.08, {"hit_rate": 0.95, "reads": 0.47})] * 2,
    ("probe_det", "D_det", "robust (D_adv)", 2.0): [(0.13, {"hit_rate": 0.7, "reads": 0.8})] * 2,
    ("train_d_wallace", "D_wallace", None, None): [(0.40, {}), (0.44, {})],
}
FOURIER = [{"train_set": "D", "high_freq_error": 0.60, "low_freq_error": 0.10},
           {"train_set": "D_adv", "high_freq_error": 0.15, "low_freq_error": 0.30},
           {"train_set": "D_R", "high_freq_error": 0.30, "low_freq_error": 0.20},
           {"train_set": "D_NR", "high_freq_error": 0.55, "low_freq_error": 0.12}]


def _controls(numbers=NUMBERS, fourier=FOURIER):
    return distill.controls(summary(_rows(numbers)), fourier, REF, num_classes=10)


def test_each_control_beside_the_articles_number_with_its_direction():
    rows = _controls()
    by = {}
    for r in rows:
        by.setdefault(r["control"], []).append(r)
    assert set(by) == {"bugs_only", "leakage", "wrong_labels", "fourier"}
    bugs = by["bugs_only"][0]
    assert bugs["holds"] and bugs["clear"] and "train_d_det_bugs vs train_d_det" in bugs["setting"]
    assert "2.5-2.8%" in bugs["distill"] and "ensemble keeps y on 97.0%" in bugs["here"]
    eps1, eps2, eps4 = by["leakage"]  # ordered by D_det's eps
    assert "eps 1" in eps1["setting"] and "leaks: not clean evidence" in eps1["here"] and not eps1["holds"]
    # above chance but below D_rand: still not the article's "not learnable from D_det"
    assert "eps 2" in eps2["setting"] and not eps2["holds"]
    assert "eps 4" in eps4["setting"] and "clean evidence" in eps4["here"] and eps4["holds"] and eps4["clear"]
    assert "23.5%" in eps4["distill"]
    wal = by["wrong_labels"][0]
    assert wal["holds"] and wal["clear"] and "49.7%" in wal["distill"]
    adv, dr = by["fourier"]
    assert adv["holds"] and dr["holds"] and "sweeper's reading" in dr["setting"]
    md = distill.markdown(rows)
    assert "## The Distill controls" in md and md.count("\n| ") == len(rows) + 1
    assert all(line.count("|") == 8 for line in md.splitlines() if line.startswith("| "))  # 7 cells, every row


def test_directions_flip_with_the_numbers():
    flipped = dict(NUMBERS)
    flipped[("train_d_det_bugs", "D_det_bugs", None, 4.0)] = [(0.50, {"transfer": 0.7})] * 2  # teaches as well
    flipped[("train_d_wallace", "D_wallace", None, None)] = [(0.09, {}), (0.11, {})]  # at chance
    fourier = [dict(e) for e in FOURIER]
    fourier[1]["high_freq_error"] = 0.9  # the robust model worse at high frequencies
    rows = _controls(flipped, fourier)
    bugs = next(r for r in rows if r["control"] == "bugs_only")
    assert not bugs["holds"] and not bugs["clear"]
    wal = next(r for r in rows if r["control"] == "wrong_labels")
    assert wal["holds"] is False or wal["clear"] is False
    assert not wal["clear"]
    assert not next(r for r in rows if r["setting"] == "D_adv vs D")["holds"]


def test_no_controls_no_section():
    only_det = {k: v for k, v in NUMBERS.items() if k[0] == "train_d_det"}
    assert _controls(only_det, []) == [] and distill.markdown([]) == ""


@pytest.mark.parametrize("stage", ["probe_rand"])
def test_a_probe_is_never_read_as_a_bugs_only_or_wallace_model(stage):
    rows = _controls()
    assert all(stage not in r["setting"] for r in rows if r["control"] in ("bugs_only", "wrong_labels"))


def test_a_sweep_with_probes_keeps_its_paper_claims_right():
    """With probes beside ordinary models (a text `features` column beside None), the ordinary D_det's claim is
    the paper's (not a probe's), the Distill controls' claims are there, and no group reads as a probe of nan."""
    from sweeper.report.report import _arch, claims

    summ = summary(_rows(NUMBERS))
    assert {_arch(r) for r in summ.to_dict("records")} == {"small_cnn", "linear probe of robust (D_adv)"}
    cl = claims(summ, num_classes=10)
    det = [c for c in cl if c["claim"].startswith("D_det (")]
    assert len(det) == 1 and "43.7%" in det[0]["paper"] and "train_d_det" in det[0]["claim"], det
    assert not any("probe" in c["claim"] for c in cl)
    assert any(c["claim"].startswith("D_wallace") for c in cl) and any(c["claim"].startswith("D_det_bugs") for c in cl)


def test_a_wallace_set_of_another_size_in_each_chain_is_one_group():
    rows = _rows({("train_d_wallace", "D_wallace", None, None): [(0.40, {}), (0.44, {})]})
    rows[0]["train_size"], rows[1]["train_size"] = 2800, 2650  # the weak model's errors differ by chain
    for r in rows:
        r["synth_pool_size"] = 5000
    recs = summary(rows).to_dict("records")
    assert len(recs) == 1 and recs[0]["clean_acc_count"] == 2 and recs[0]["n_trained_values"] == (2800, 2650)
