"""The report's promises: robust accuracy is the per-ball worst case, numbers over seeds are mean and sample
std, the paper's claims are read off the right baseline, and every constructed set gets its picture."""

import io
import math

import pytest
import torch
from PIL import Image

from sweeper.science import data_store

from sweeper.sweep import spec
from sweeper.sweep.plan import build_plan
from sweeper.sweep.schema import CHAIN_STRIDE
from sweeper.report.report import build_rows, claims, pictures, summary, worst_column, write_report
from sweeper.store.store import Store

SWEEP = """
name: rep
seed: 0
data: {dataset: fashion_mnist, test_size: 30}
stages:
  std: {kind: train, arch: small_cnn, train_size: 40, train: {epochs: 1}}
  robust:
    kind: train
    arch: small_cnn
    train_size: 40
    train: {epochs: 1}
    adversarial: {norm: l2, eps: 1.0, steps: 2}
  d_r:
    kind: synthesize
    from: robust
    method: inversion
    size: 12
    inversion: {steps: 2, step_size: 0.1, start: other_image}
  d_det: {kind: synthesize, from: std, method: relabel, size: 12, targets: deterministic,
          attack: {norm: l2, eps: 2.0, steps: 2}}
  baseline: {kind: train, arch: small_cnn, train_size: 12, seed: {grid: [0, 1]}, train: {epochs: 1}}
  train_d_r: {kind: train, from: d_r, arch: small_cnn, seed: {grid: [0, 1]}, train: {epochs: 1}}
  train_d_det: {kind: train, from: d_det, arch: small_cnn, seed: {grid: [0, 1]}, train: {epochs: 1}}
  eval:
    kind: evaluate
    from: [baseline, train_d_r, train_d_det]
    attacks:
      - {norm: l2, eps: 1.0, steps: 5}
      - {norm: l2, eps: 1.0, steps: 5, method: apgd-ce}
"""

# per evaluated model stage and seed: (clean, pgd, worst)
NUMBERS = {("baseline", 0): (0.80, 0.30, 0.26), ("baseline", 1): (0.82, 0.28, 0.24),
           ("train_d_r", 0): (0.76, 0.33, 0.31), ("train_d_r", 1): (0.74, 0.35, 0.33),
           ("train_d_det", 0): (0.45, 0.0, 0.0), ("train_d_det", 1): (0.51, 0.0, 0.0)}


def _filled(tmp_path, uri: str | None = None, chains: int = 1):
    """SWEEP's plan with every node stored: each evaluation scores NUMBERS[(stage, seed)] (chain k's seeds,
    written seed + CHAIN_STRIDE * k, score as their chain-0 seed)."""
    sweep = spec.loads(SWEEP.replace("seed: 0\n", f"seed: 0\nchains: {chains}\n", 1))
    plan = build_plan(sweep)
    store = Store(uri or str(tmp_path / "s"))
    train = data_store.load_split(sweep.data, "train")
    for key, n in plan.nodes.items():
        if n.kind == "train":
            store.save(key, meta={"kind": "train", "n_train": 12})
        elif n.kind == "synthesize":
            idx = torch.arange(12)
            start = (idx + 5) % 12 if n.spec.method == "inversion" else idx.clone()
            y = train.y[idx]
            store.save(key, meta={"kind": "synthesize", "hit_rate": 0.9},
                       tensors={"x": train.x[start].flip(-1), "y": (y + 1) % 10, "orig_y": y, "index": idx,
                                "start_index": start})
        elif n.kind == "evaluate":
            model = plan.nodes[n.inputs["model"]]
            clean, pgd_acc, worst = NUMBERS[(model.stage, model.spec.seed % CHAIN_STRIDE)]
            store.save(key, meta={
                "kind": "evaluate", "clean_acc": clean, "shifted_acc": 0.01, "worst_acc": worst, "n": 30,
                "robust": [{"attack": "l2_eps1_s5", "norm": "l2", "eps": 1.0, "steps": 5, "acc": pgd_acc},
                           {"attack": "l2_eps1_s5_apgd-ce", "norm": "l2", "eps": 1.0, "steps": 5, "acc": worst}],
                "worst_by_ball": {"l2_eps1": {"norm": "l2", "eps": 1.0, "acc": worst, "pgd_acc": pgd_acc,
                                              "gap": pgd_acc - worst,
                                              "attacks": ["l2_eps1_s5", "l2_eps1_s5_apgd-ce"]}}})
    return plan, store


def test_rows_carry_the_worst_case_and_summary_is_mean_and_sample_std_over_seeds(tmp_path):
    plan, store = _filled(tmp_path)
    rows = build_rows(plan, store)
    col = worst_column("l2_eps1")
    for r in rows:
        assert r[col] == NUMBERS[(r["model_stage"], r["seed"])][2]
        assert r["pgd_gap[l2_eps1]"] == pytest.approx(NUMBERS[(r["model_stage"], r["seed"])][1] - r[col])
    summ = {r["model_stage"]: r for r in summary(rows).to_dict("records")}
    assert summ["train_d_r"][f"{col}_mean"] == pytest.approx(0.32)
    assert summ["train_d_r"][f"{col}_std"] == pytest.approx(math.sqrt(2) * 0.01)  # sample std of 0.31, 0.33
    assert summ["baseline"]["clean_acc_mean"] == pytest.approx(0.81)
    assert summ["baseline"]["seeds"] == (0, 1)


def test_claims_compare_d_r_with_the_same_size_baseline_on_the_worst_case(tmp_path):
    plan, store = _filled(tmp_path)
    cl = claims(summary(build_rows(plan, store)), num_classes=10)
    d_r = next(c for c in cl if c["claim"].startswith("D_R"))
    assert "+7.0 points" in d_r["here"] and d_r["holds"]  # worst 32% vs 25%, not PGD's 34% vs 29%
    det = next(c for c in cl if c["claim"].startswith("D_det"))
    assert det["holds"] and det["here"].startswith("48.0 ± 4.2%")


def test_claims_count_the_seed_pairs_that_agree(tmp_path):
    """D_R seeds 31% / 33% against baseline seeds 26% / 24% (worst case): 4 of 4 pairs; one D_R seed at 25%
    leaves 3 of 4 (25% < 26%) while the mean still holds. D_det: both seeds above chance."""
    plan, store = _filled(tmp_path)
    rows = build_rows(plan, store)
    col = worst_column("l2_eps1")
    cl = {c["claim"][:4]: c for c in claims(summary(rows), num_classes=10)}
    assert cl["D_R "]["seeds"] == "4/4 pairs" and cl["D_de"]["seeds"] == "2/2 seeds"
    low = [dict(r, **{col: 0.25}) if (r["model_stage"], r["seed"]) == ("train_d_r", 0) else r for r in rows]
    d_r = next(c for c in claims(summary(low), num_classes=10) if c["claim"].startswith("D_R"))
    assert d_r["seeds"] == "3/4 pairs" and d_r["holds"]
    write_report(plan, store)
    md = store.read_bytes(f"reports/{plan.sweep.name}/report.md").decode()
    assert "| seeds that agree |" in md and "| 4/4 pairs |" in md


def test_every_constructed_set_gets_an_example_grid_from_its_start_and_target_images(tmp_path):
    plan, store = _filled(tmp_path)
    pics, note = pictures(plan, store, n=4)
    assert note is None
    assert set(pics) == {"examples_d_r.png", "examples_d_det.png"}
    inv = Image.open(io.BytesIO(pics["examples_d_r.png"]))
    rel = Image.open(io.BytesIO(pics["examples_d_det.png"]))
    assert inv.size[0] == rel.size[0] and inv.size[1] > rel.size[1]  # inversion adds the target image row
    written = write_report(plan, store)
    assert {"examples_d_r.png", "summary.csv", "figure2.png", "table1.png"} <= set(written)
    md = store.read_bytes(f"reports/{plan.sweep.name}/report.md").decode()
    assert "![examples_d_r.png](examples_d_r.png)" in md and "## The paper's claims on this sweep" in md
    assert "## Evaluation strength" in md


def test_evaluations_of_older_code_get_their_worst_case_from_the_stored_flags(tmp_path):
    """An evaluation written before worst_by_ball existed keeps its robust accuracy: the report recomputes the
    per-ball worst case from the per-example flags it stored."""
    plan, store = _filled(tmp_path)
    node = next(n for n in plan.nodes.values() if n.kind == "evaluate")
    meta = store.load_meta(node.key)
    del meta["worst_by_ball"]
    store.delete(f"nodes/{node.key}")  # save keeps an intact artifact: write the older-code one in its place
    pgd = torch.tensor([1, 1, 0, 1, 1, 0], dtype=torch.uint8)
    apgd = torch.tensor([1, 0, 1, 1, 1, 0], dtype=torch.uint8)
    store.save(node.key, meta=meta, tensors={"clean": torch.ones(6, dtype=torch.uint8),
                                              "robust.l2_eps1_s5": pgd, "robust.l2_eps1_s5_apgd-ce": apgd})
    row = next(r for r in build_rows(plan, store) if r["eval_key"] == node.key)
    assert row[worst_column("l2_eps1")] == pytest.approx(3 / 6)
    assert row["pgd_gap[l2_eps1]"] == pytest.approx(4 / 6 - 3 / 6)


def test_a_large_sweep_gets_a_sample_of_example_grids_and_of_bar_groups(tmp_path, monkeypatch):
    """Past MAX_EXAMPLE_GRIDS synthesized sets the report draws a sample (every stage its share) and says so in
    report.md; a bar chart shows the first MAX_BAR_GROUPS groups and says so in its title."""
    from sweeper.report import report

    plan, store = _filled(tmp_path)
    monkeypatch.setattr(report, "MAX_EXAMPLE_GRIDS", 1)
    pics, note = pictures(plan, store, n=4)
    assert len(pics) == 1 and note.startswith("example grids drawn for 1 of the 2 synthesized sets")
    monkeypatch.setattr(report, "MAX_EXAMPLE_GRIDS", 2)
    assert set(pictures(plan, store, n=4)[0]) == {"examples_d_r.png", "examples_d_det.png"}
    monkeypatch.setattr(report, "MAX_EXAMPLE_GRIDS", 1)
    monkeypatch.setattr(report, "MAX_BAR_GROUPS", 1)
    summ = summary(build_rows(plan, store))
    head, title = report._first_groups(summ, "T")
    assert len(head) == 1 and title == f"T\n(the first 1 of {len(summ)} groups; summary.csv has all)"
    one, same = report._first_groups(summ.head(1), "T")
    assert len(one) == 1 and same == "T"  # at the cap: the title as it was
    written = write_report(plan, store)
    assert {"figure2.png", "table1.png"} <= set(written) and len([w for w in written if w.startswith("examples_")]) == 1
    md = store.read_bytes(f"reports/{plan.sweep.name}/report.md").decode()
    assert md.rstrip().endswith("every set is in the store")


def test_the_report_reads_each_node_once_and_accepts_the_done_metas(tmp_path, monkeypatch):
    """build_rows reads each node's meta once however many rows share it (metas are held ROWS_CHUNK evaluations
    at a time), and with the done nodes' metas given asks the store nothing about them; the rows are the same
    either way, and in chunks of one evaluation."""
    from sweeper.report import report
    from sweeper.report.report import done_metas

    plan, store = _filled(tmp_path)
    rows = build_rows(plan, store)
    metas = done_metas(store, plan.nodes)
    calls = {"is_done": 0, "done_meta": 0, "load_meta": []}
    is_done, done_meta, load_meta = store.is_done, store.done_meta, store.load_meta
    monkeypatch.setattr(store, "is_done",
                        lambda k, **kw: calls.__setitem__("is_done", calls["is_done"] + 1) or is_done(k, **kw))
    monkeypatch.setattr(store, "done_meta",
                        lambda k: calls.__setitem__("done_meta", calls["done_meta"] + 1) or done_meta(k))
    monkeypatch.setattr(store, "load_meta", lambda k: calls["load_meta"].append(k) or load_meta(k))
    assert build_rows(plan, store, _reads=report._Reads(store, metas)) == rows
    assert calls == {"is_done": 0, "done_meta": 0, "load_meta": []}
    monkeypatch.setattr(report, "ROWS_CHUNK", 1)
    assert build_rows(plan, store) == rows
    assert calls["is_done"] == 0 and len(calls["load_meta"]) == len(set(calls["load_meta"]))


def test_the_report_on_an_object_store_reads_in_parallel_and_matches_local_disk(tmp_path, s3_uri):
    """On S3 the report's reads go out in parallel (each is a round trip); the rows and files are the same."""
    plan, local = _filled(tmp_path)
    _, remote = _filled(tmp_path, s3_uri)
    assert not remote.is_local
    assert build_rows(plan, remote) == build_rows(plan, local)
    written = write_report(plan, remote)
    write_report(plan, local)
    for name in ("results.csv", "summary.csv", "transfer.csv", "report.md"):
        assert remote.read_bytes(f"reports/rep/{name}") == local.read_bytes(f"reports/rep/{name}"), name
    assert "figure2.png" in written


def test_a_report_reads_each_evaluation_and_transfer_manifest_once(tmp_path, monkeypatch):
    """Whether a node is done and its meta come from one manifest read (on S3 each read is a round trip), both
    when the report asks by itself and on `sweeper report`'s path, which reads the done nodes' metas first."""
    import collections

    from sweeper.report.report import done_metas

    plan, store = _filled(tmp_path)
    reads = collections.Counter()
    manifest = Store._manifest

    def counted(self, rel, *a, **k):
        reads[rel] += 1
        return manifest(self, rel, *a, **k)

    monkeypatch.setattr(Store, "_manifest", counted)
    rows_of = [f"nodes/{n.key}" for n in plan.nodes.values() if n.kind in ("evaluate", "transfer")]
    assert rows_of
    write_report(plan, store)
    assert {r: reads[r] for r in rows_of} == {r: 1 for r in rows_of}
    reads.clear()
    write_report(plan, store, metas=done_metas(store, plan.nodes))
    assert {r: reads[r] for r in rows_of} == {r: 1 for r in rows_of}
