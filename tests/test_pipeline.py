"""End to end through the `sweeper` command on real Fashion-MNIST subsets (single process)."""
import csv
import json
import subprocess
import sys

from sweeper.cli import main
from sweeper.sweep.plan import build_plan
from sweeper.sweep.spec import load
from sweeper.store.store import Store


def _nodes_by_kind(path):
    plan = build_plan(load(path))
    return plan, {k: [n for n in plan.nodes.values() if n.kind == k] for k in
                  ("train", "synthesize", "evaluate", "transfer")}


def test_tiny_sweep_end_to_end_then_resume_does_nothing(tiny_sweep, tmp_path, capsys):
    plan, kinds = _nodes_by_kind(tiny_sweep)
    assert len(kinds["train"]) == 8 and len(kinds["synthesize"]) == 4
    assert len(kinds["evaluate"]) == 7 and len(kinds["transfer"]) == 2
    assert main(["run", str(tiny_sweep)]) == 0
    out = capsys.readouterr().out
    assert f"ran {len(plan.nodes)} nodes, skipped 0" in out
    store = Store(str(tmp_path / "store"))
    assert all(store.is_done(k, verify=True) for k in plan.nodes)

    report = tmp_path / "store" / "reports" / "tiny"
    rows = list(csv.DictReader(open(report / "results.csv")))
    assert len(rows) == 7
    assert sorted(r["train_set"] for r in rows) == sorted(["D", "D_adv", "D", "D_R", "D_NR", "D_rand", "D_det"])
    for col in ["train_set", "train_size", "source_arch", "target_arch", "synth_norm", "synth_eps", "synth_steps",
                "seed", "clean_acc", "shifted_acc", "hit_rate", "robust_acc[l2_eps0.5_s3]",
                "robust_acc[l2_eps1_s3]", "robust_reads_original", "transfer_rate"]:
        assert col in rows[0], col
    det = next(r for r in rows if r["train_set"] == "D_det")
    assert 0.0 <= float(det["hit_rate"]) <= 1.0 and det["transfer_rate"] != "" and det["robust_reads_original"] != ""
    assert json.loads((report / "results.json").read_text())[0]["sweep"] == "tiny"
    md = (report / "report.md").read_text()
    assert "Figure 2 analogue" in md and "Table 1 analogue" in md and "95.3%" in md
    assert (report / "figure2.png").read_bytes()[:4] == b"\x89PNG"
    assert (report / "table1.png").read_bytes()[:4] == b"\x89PNG"

    # the evaluation numbers in the report are the ones in the store
    metas = {n.key: store.load_meta(n.key) for n in kinds["evaluate"]}
    for r in rows:
        assert abs(float(r["clean_acc"]) - metas[r["eval_key"]]["clean_acc"]) < 1e-9

    # a second run does no work
    assert main(["run", str(tiny_sweep), "--no-report"]) == 0
    assert f"ran 0 nodes, skipped {len(plan.nodes)}" in capsys.readouterr().out

    # plan shows every node done
    assert main(["plan", str(tiny_sweep)]) == 0
    assert "todo" not in capsys.readouterr().out.replace("done/todo", "")


def test_invalid_sweep_file_exits_nonzero_without_traceback(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\ndata: {dataset: fashion_mnist}\nstages:\n  s: {kind: train, arch: small_cnn, "
                   "train: {epochs: 1}, adversarial: {norm: l3, eps: 0.5}}\n")
    r = subprocess.run([sys.executable, "-m", "sweeper.cli", "run", str(bad)], capture_output=True, text=True)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert str(bad) in r.stderr and "stages.s.adversarial.norm" in r.stderr


def test_stored_image_models_load_channels_last_and_predict_as_stored(tiny_sweep, tmp_path):
    """Synthesis, transfer and evaluation load models channels_last (~1.5x faster input gradients on a CPU);
    the layout changes no prediction."""
    import torch

    from sweeper.science import data_store

    from sweeper.run import kinds

    from sweeper.science import models

    plan, by_kind = _nodes_by_kind(tiny_sweep)
    std = next(n for n in by_kind["train"] if n.spec.from_ is None and n.spec.adversarial is None)
    store = Store(str(tmp_path / "store"))
    kinds.run_train(std, kinds.Context.of(plan, store))
    model = kinds.load_model(store, std.key, plan.sweep.data)
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.in_channels > 1)
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) and not conv.weight.is_contiguous()
    ds = data_store.load_split(plan.sweep.data, "test")
    plain = models.build(store.load_meta(std.key)["arch"], num_classes=ds.num_classes,
                         in_shape=tuple(ds.x.shape[1:]), mean=ds.mean, std=ds.std)
    plain.load_state_dict(store.load_tensors(std.key))
    with torch.no_grad():
        assert torch.allclose(model(ds.x[:200]), plain.eval()(ds.x[:200]), atol=1e-4)
