"""sweeper.report.figures: example grids, seed summaries, bars with error bars, the Figure 3 scatter (no store, no Ray)."""

import io
import math

import numpy as np
import pytest
import torch
from PIL import Image

from sweeper.report import figures as F

ROBUST = "robust_acc[l2_eps0.25_s7]"
ROBUST_BIG = "robust_acc[l2_eps1_s20]"


def decode(png: bytes) -> np.ndarray:
    """(H, W, 3) uint8 of a PNG, checking that it is one."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def non_white(img: np.ndarray) -> float:
    return float((img.min(axis=2) < 245).mean())


def images(n, c, hw, value=None, seed=0):
    if value is not None:
        return torch.full((n, c, hw, hw), float(value))
    return torch.rand(n, c, hw, hw, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------------ example_grid
def test_pick_examples_is_evenly_spaced_and_deterministic():
    assert F.pick_examples(20, 8) == [0, 3, 5, 8, 11, 14, 16, 19]
    assert F.pick_examples(5, 8) == [0, 1, 2, 3, 4]  # fewer than n: all of them
    assert F.pick_examples(7, 1) == [0]
    assert F.pick_examples(0, 8) == []


def test_grey_grid_shape_content_and_fixed_grey_scale():
    y = torch.arange(12) % 10
    start = images(12, 1, 28, value=0.5)  # constant grey: must render mid-grey, not autoscaled to black
    synth = images(12, 1, 28, seed=1)
    png = F.example_grid(start, synth, y, (y + 1) % 10, class_names=F.FASHION_MNIST_CLASSES, n=8, title="D_det")
    img = decode(png)
    h, w, _ = img.shape
    assert w / h > 2.5  # 8 columns, 2 rows
    assert non_white(img) > 0.25
    mid_grey = (np.abs(img.astype(int) - 128) <= 2).all(axis=2).mean()
    assert mid_grey > 0.10  # the 8 constant start images
    # the same call gives the same bytes; different synthesized images give a different picture
    assert F.example_grid(start, synth, y, (y + 1) % 10, class_names=F.FASHION_MNIST_CLASSES, title="D_det") == png
    other = F.example_grid(start, synth.flip(0), y, (y + 1) % 10, class_names=F.FASHION_MNIST_CLASSES, title="D_det")
    assert other != png
    assert decode(other).shape == img.shape


def test_rgb_grid_shows_colours_and_target_row():
    y = torch.arange(6)
    red = torch.zeros(6, 3, 32, 32)
    red[:, 0] = 1.0
    green = torch.zeros(6, 3, 32, 32)
    green[:, 1] = 1.0
    two = decode(F.example_grid(red, green, y, y, class_names=F.CIFAR10_CLASSES, n=6))
    reds = ((two[..., 0] > 230) & (two[..., 1] < 30) & (two[..., 2] < 30)).mean()
    greens = ((two[..., 1] > 230) & (two[..., 0] < 30) & (two[..., 2] < 30)).mean()
    assert reds > 0.15 and greens > 0.15  # one row each, in their colours
    blue = torch.zeros(6, 3, 32, 32)
    blue[:, 2] = 1.0
    three = decode(F.example_grid(red, green, y, y, target=blue, start_y=(y + 2) % 10, class_names=F.CIFAR10_CLASSES,
                                  n=6))
    assert three.shape[1] == two.shape[1] and three.shape[0] > 1.3 * two.shape[0]  # one more row, same width
    blues = ((three[..., 2] > 230) & (three[..., 0] < 30) & (three[..., 1] < 30)).mean()
    assert blues > 0.1
    # fewer columns: narrower, same height
    narrow = decode(F.example_grid(red, green, y, y, n=3))
    assert narrow.shape[0] == two.shape[0] and narrow.shape[1] < 0.7 * two.shape[1]


def test_grid_rejects_non_images_and_mismatches():
    y = torch.zeros(4, dtype=torch.long)
    with pytest.raises(ValueError, match="must be images"):
        F.example_grid(torch.rand(4, 100), torch.rand(4, 100), y, y)  # the toy dataset's vectors
    with pytest.raises(ValueError, match="start images"):
        F.example_grid(images(3, 1, 28), images(4, 1, 28), y, y)
    with pytest.raises(ValueError, match="labels"):
        F.example_grid(images(4, 1, 28), images(4, 1, 28), y[:3], y)


# ------------------------------------------------------------------------------------------ seed_summary
def rows_for_bars():
    rows = []
    for ts, base in [("D_det", 0.2), ("D", 0.9), ("D_R", 0.84), ("D_rand", 0.6)]:
        for s in ([0] if ts == "D_det" else [2, 0, 1]):
            rows.append({"train_set": ts, "target_arch": "small_cnn", "seed": s, "clean_acc": base + 0.01 * s,
                         ROBUST: base / 3 + 0.02 * s, ROBUST_BIG: None if (ts == "D" and s == 1) else base / 5})
    return rows


def test_seed_summary_mean_std_count_and_single_seed():
    s = F.seed_summary(rows_for_bars(), ["train_set", "target_arch"], ["clean_acc", ROBUST, ROBUST_BIG])
    assert list(s["train_set"]) == ["D", "D_R", "D_rand", "D_det"]  # the paper's order, not the rows'
    d = s.set_index("train_set")
    assert d.loc["D", "clean_acc_mean"] == pytest.approx(np.mean([0.90, 0.91, 0.92]))
    assert d.loc["D", "clean_acc_std"] == pytest.approx(np.std([0.90, 0.91, 0.92], ddof=1))
    assert d.loc["D", "clean_acc_count"] == 3 and d.loc["D", "n_rows"] == 3
    assert d.loc["D", "seeds"] == (0, 1, 2)
    assert d.loc["D", "clean_acc_values"] == pytest.approx((0.90, 0.91, 0.92))  # ordered by seed
    assert d.loc["D_R", f"{ROBUST}_std"] == pytest.approx(np.std([0.28, 0.30, 0.32], ddof=1))
    # a missing value is left out, not counted as 0
    assert d.loc["D", f"{ROBUST_BIG}_count"] == 2
    assert d.loc["D", f"{ROBUST_BIG}_mean"] == pytest.approx(0.18)
    # one seed: the std is NaN (blank in a CSV), not 0
    assert d.loc["D_det", "clean_acc_count"] == 1
    assert d.loc["D_det", "clean_acc_mean"] == pytest.approx(0.2)
    assert math.isnan(d.loc["D_det", "clean_acc_std"])
    assert s.attrs["group_by"] == ["train_set", "target_arch"]


def test_seed_summary_groups_apart_and_refuses_seed_as_group():
    rows = [{"train_set": "D_det", "synth_eps": e, "seed": k, "clean_acc": e / 10 + k / 100}
            for e in (1.0, 3.0) for k in (10, 2)]
    s = F.seed_summary(rows, ["train_set", "synth_eps"], ["clean_acc"])
    assert list(s["synth_eps"]) == [1.0, 3.0]
    assert list(s["clean_acc_mean"]) == pytest.approx([0.16, 0.36])
    assert s.loc[0, "seeds"] == (2, 10)  # in seed order, numerically
    s1 = F.seed_summary(rows, "train_set", ["clean_acc", "not_a_column"])
    assert s1.loc[0, "clean_acc_count"] == 4
    assert s1.loc[0, "not_a_column_count"] == 0 and math.isnan(s1.loc[0, "not_a_column_mean"])
    with pytest.raises(ValueError, match="seed"):
        F.seed_summary(rows, ["train_set", "seed"], ["clean_acc"])


# ------------------------------------------------------------------------------------------ bars
def test_bar_with_errors_draws_and_reacts_to_its_inputs():
    cols = ["clean_acc", ROBUST, ROBUST_BIG]
    rows = rows_for_bars()
    summary = F.seed_summary(rows, "train_set", cols)
    png = F.bar_with_errors(summary, title="Figure 2 analogue")
    img = decode(png)
    assert img.shape[1] > img.shape[0] and non_white(img) > 0.05
    # the paper's markers are drawn when given
    paper = {"figure2": {"attack": {"norm": "l2", "eps": 0.25, "steps": 7},
                         "rows": [{"train_set": "D", "clean_acc": 0.953, "robust_acc": 0.045},
                                  {"train_set": "D_R", "clean_acc": 0.841, "robust_acc": 0.483}]},
             "table1": {"rows": [{"train_set": "D_det", "cifar10": 0.437}]}}
    ref = F.paper_bar_reference(paper, cols)
    assert ref == {"D": {"clean_acc": 0.953, ROBUST: 0.045}, "D_R": {"clean_acc": 0.841, ROBUST: 0.483},
                   "D_det": {"clean_acc": 0.437}}  # eps 1 is not the paper's attack: no marker there
    assert F.bar_with_errors(summary, title="Figure 2 analogue", reference=ref) != png
    # a different spread over seeds (same means) changes the error bars
    wider = [dict(r) for r in rows]
    for r in wider:
        if r["train_set"] == "D" and r["seed"] != 1:
            r["clean_acc"] += 0.05 if r["seed"] == 2 else -0.05
    s2 = F.seed_summary(wider, "train_set", cols)
    assert s2.loc[0, "clean_acc_mean"] == pytest.approx(summary.loc[0, "clean_acc_mean"])
    assert F.bar_with_errors(s2, title="Figure 2 analogue") != png
    # the error bars themselves (seed dots left out): a larger std draws a different picture
    bare = summary.copy()
    for c in cols:
        bare[f"{c}_values"] = [()] * len(bare)
    wide = bare.copy()
    wide.loc[0, "clean_acc_std"] = 0.1
    assert F.bar_with_errors(wide) != F.bar_with_errors(bare)
    with pytest.raises(ValueError, match="no rows"):
        F.bar_with_errors(summary.iloc[0:0])
    with pytest.raises(ValueError, match="shifted_acc"):
        F.bar_with_errors(summary, value_cols=["shifted_acc"])


# ------------------------------------------------------------------------------------------ Figure 3
def test_transfer_points_from_report_rows():
    rows = [{"train_set": "D_det", "target_arch": "small_cnn", "seed": 0, "clean_acc": 0.3},
            {"train_set": "D_det", "target_arch": "mlp", "seed": 0, "clean_acc": 0.2},
            {"train_set": "D_det", "target_arch": "vgg", "seed": 0, "clean_acc": 0.1},  # no transfer measured
            {"train_set": "D", "target_arch": "small_cnn", "seed": 0, "clean_acc": 0.9}]
    transfers = [{"probe_arch": "small_cnn", "probe_train_set": "D", "target_rate": 0.8},
                 {"probe_arch": "small_cnn", "probe_train_set": "D", "target_rate": 0.6},
                 {"probe_arch": "small_cnn", "probe_train_set": "D_adv", "target_rate": 0.0},
                 {"probe_arch": "mlp", "probe_train_set": "D", "target_rate": 0.4}]
    pts = F.transfer_points(rows, transfers)
    assert pts == [{"arch": "small_cnn", "seed": 0, "test_acc": 0.3, "transfer_rate": pytest.approx(0.7)},
                   {"arch": "mlp", "seed": 0, "test_acc": 0.2, "transfer_rate": 0.4}]



def test_transfer_points_match_a_scan_of_every_transfer_per_row():
    """transfer_points indexes the transfers once; each row still gets the mean over exactly the transfers a
    scan would pick (the row's set, transfers naming no set, rows naming no set), summed in the same order."""
    import random

    rng = random.Random(0)
    archs, sets = ["mlp", "small_cnn", "wide_cnn"], ["s1", "s2", "s3", None]
    transfers = [{"probe_arch": rng.choice(archs), "probe_train_set": rng.choice(["D", "D", "D_adv"]),
                  "target_rate": rng.choice([rng.random(), None]), **({} if k is None else {"synth_key": k})}
                 for k in (rng.choice(sets) for _ in range(300))]
    rows = [{"train_set": rng.choice(["D_det", "D_det", "D"]), "target_arch": rng.choice(archs + ["vgg"]),
             "seed": i, "clean_acc": rng.choice([rng.random(), None]), "synth_key": rng.choice(sets)}
            for i in range(200)]

    def scan(r):
        return [t["target_rate"] for t in transfers if t.get("probe_arch") == r.get("target_arch")
                and t.get("probe_train_set") == "D" and t.get("target_rate") is not None
                and (r.get("synth_key") is None or t.get("synth_key") is None or t["synth_key"] == r["synth_key"])]

    want = [{"arch": r["target_arch"], "seed": r["seed"], "test_acc": float(r["clean_acc"]),
             "transfer_rate": sum(scan(r)) / len(scan(r))}
            for r in rows if r["train_set"] == "D_det" and r["clean_acc"] is not None and scan(r)]
    assert len(want) > 20 and F.transfer_points(rows, transfers) == want  # == on floats: the same sums

def test_transfer_figure_draws_points_line_and_rejects_empty():
    pts = [{"arch": a, "seed": s, "transfer_rate": tr + 0.01 * s, "test_acc": ta + 0.02 * s}
           for a, tr, ta in [("small_cnn", 0.9, 0.4), ("mlp", 0.5, 0.2), ("resnet18", 0.7, 0.3)] for s in range(3)]
    png = F.transfer_figure(pts)
    img = decode(png)
    assert 1.0 < img.shape[1] / img.shape[0] < 1.5 and non_white(img) > 0.03
    moved = [dict(p, test_acc=0.9) if p["arch"] == "mlp" else p for p in pts]
    assert F.transfer_figure(moved) != png
    ref = [{"arch": "resnet50", "test_acc": 0.447, "transfer_rate": 1.0}]
    assert F.transfer_figure(pts, reference=ref) != png
    assert F.transfer_figure(pts, fit=False) != png  # the least-squares line is drawn
    line = F.transfer_fit(pts)
    mx, my = [0.91, 0.51, 0.71], [0.42, 0.22, 0.32]  # per-architecture means over the 3 seeds
    assert line["slope"] == pytest.approx(np.polyfit(mx, my, 1)[0]) == pytest.approx(0.5)
    assert line["intercept"] == pytest.approx(np.polyfit(mx, my, 1)[1])
    assert line["r"] == pytest.approx(1.0) and line["n_arch"] == 3
    assert math.isnan(F.transfer_fit(pts[:3])["slope"])  # one architecture: no line
    same_x = [{"arch": "a", "transfer_rate": 0.5, "test_acc": 0.2},
              {"arch": "b", "transfer_rate": 0.5, "test_acc": 0.4}]
    assert math.isnan(F.transfer_fit(same_x)["slope"])  # one transfer rate: no line either
    decode(F.transfer_figure(same_x))
    decode(F.transfer_figure(pts[:1]))  # one architecture, one seed: a point, no line, no error bars
    with pytest.raises(ValueError, match="no points"):
        F.transfer_figure([])
    with pytest.raises(ValueError, match="no points"):
        F.transfer_fit(iter([]))
    with pytest.raises(ValueError, match="lacks"):
        F.transfer_figure([{"arch": "mlp", "test_acc": 0.2}])
