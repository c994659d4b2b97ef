"""Figures of a finished sweep, as pure functions: tensors or report rows in, PNG bytes or DataFrames out.

Nothing here reads the store or the plan; ``sweeper.report.report`` gathers the data and calls these.

- :func:`example_grid`: a few constructed examples beside the images they were made from (the paper's
  figures of D_R / D_NR / D_rand / D_det), with the original and the assigned label.
- :func:`seed_summary`: mean, std and count over seeds of each group of report rows.
- :func:`bar_with_errors`: grouped bars (one group per training set, one bar per accuracy column) with
  error bars = std over seeds, the seeds' own values as dots, and the paper's numbers as markers.
- :func:`transfer_figure`: Figure 3: D_det test accuracy of an architecture vs the transfer rate of the
  adversarial examples to that architecture, with a least-squares line.
- :func:`transfer_points` and :func:`paper_bar_reference` turn report rows and ``paper.yaml`` into their inputs;
  :func:`transfer_fit` gives Figure 3's line as numbers (for report.md).
- :func:`fourier_figure`: Fourier-sensitivity heatmaps (error at each centred frequency, low frequencies in the
  centre), side by side on one colour scale.

matplotlib is imported inside the functions, with the Agg backend, so importing this module stays cheap.
"""

from __future__ import annotations

import io
import math
from typing import Any, Iterable, Mapping, Sequence

FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                         "Ankle boot")
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CLASS_NAMES = {"fashion_mnist": FASHION_MNIST_CLASSES, "cifar10": CIFAR10_CLASSES}

# bars and summaries list training sets in this order (others follow in order of appearance)
TRAIN_SET_ORDER = ("D", "D_adv", "baseline", "D_R", "D_NR", "D_rand", "D_det", "D_rand_bugs", "D_det_bugs",
                   "D_wallace")

DPI = 100


def class_names_for(dataset: str) -> tuple[str, ...] | None:
    """The class names of a dataset sweeper knows ('fashion_mnist', 'cifar10'), else None (numbers are shown)."""
    return CLASS_NAMES.get(dataset)


# ------------------------------------------------------------------------------------------- helpers
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig, plt) -> bytes:
    """PNG bytes of a figure at its set size (no tight bbox: the size in pixels is figsize * DPI)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    plt.close(fig)
    return buf.getvalue()


def _as_images(a, name: str):
    """(N, H, W, C) float numpy in [0,1] with C in (1, 3), from a torch tensor or array (N,C,H,W) or (N,H,W)."""
    import numpy as np

    if hasattr(a, "detach"):
        a = a.detach().cpu().float().numpy()
    a = np.asarray(a, dtype=np.float32)
    if a.ndim == 3:
        a = a[:, None]
    if a.ndim != 4 or a.shape[1] not in (1, 3):
        raise ValueError(f"example_grid: {name} must be images (N, 1|3, H, W) or (N, H, W); got shape {a.shape}")
    return np.clip(np.nan_to_num(a), 0.0, 1.0).transpose(0, 2, 3, 1)


def _as_labels(a, name: str, n: int) -> list[int]:
    if hasattr(a, "detach"):
        a = a.detach().cpu().tolist()
    out = [int(v) for v in list(a)]
    if len(out) != n:
        raise ValueError(f"example_grid: {name} has {len(out)} labels for {n} images")
    return out


def _label(k: int, class_names: Sequence[str] | None) -> str:
    return class_names[k] if class_names is not None and 0 <= k < len(class_names) else str(k)


def pick_examples(total: int, n: int) -> list[int]:
    """The examples :func:`example_grid` shows: ``min(n, total)`` indices evenly spaced over [0, total-1]
    (first and last included), so a grid of a sharded set samples every part of it; deterministic."""
    k = min(int(n), int(total))
    if k <= 0:
        return []
    if k == 1:
        return [0]
    return [round(i * (total - 1) / (k - 1)) for i in range(k)]


# ----------------------------------------------------------------------------------------- 1. grid
def example_grid(start, synth, orig_y, new_y, *, target=None, class_names: Sequence[str] | None = None,
                 n: int = 8, title: str = "", start_y=None) -> bytes:
    """A PNG of constructed examples, one column per example (picked by :func:`pick_examples`: evenly spaced).

    Rows, top to bottom: "start image" (relabel: the real image x that was attacked; inversion: the other
    image x0 the optimisation started from), "target image" (inversion only, when ``target`` is given: the
    image x whose representation was matched), "synthesized image" (what the set holds). Captions: the start
    (or, with ``target``, the target) image shows ``orig: <orig_y>``; the synthesized image shows
    ``label: <new_y>``, in red when it differs from the original label. ``start_y`` (optional, inversion) adds
    the start image's own label. Images are (N, 1, H, W) grey or (N, 3, H, W) RGB in [0,1] (torch or numpy;
    (N, H, W) is taken as grey); labels are class indices, shown as ``class_names`` when given.
    """
    start_a, synth_a = _as_images(start, "start"), _as_images(synth, "synth")
    total = len(synth_a)
    if len(start_a) != total:
        raise ValueError(f"example_grid: {len(start_a)} start images for {total} synthesized images")
    if start_a.shape[1:] != synth_a.shape[1:]:
        raise ValueError(f"example_grid: start images {start_a.shape[1:]} and synthesized images "
                         f"{synth_a.shape[1:]} differ in shape")
    target_a = None
    if target is not None:
        target_a = _as_images(target, "target")
        if target_a.shape != synth_a.shape:
            raise ValueError(f"example_grid: target images {target_a.shape} and synthesized images "
                             f"{synth_a.shape} differ in shape")
    oy, ny = _as_labels(orig_y, "orig_y", total), _as_labels(new_y, "new_y", total)
    sy = _as_labels(start_y, "start_y", total) if start_y is not None else None
    cols = pick_examples(total, n)
    if not cols:
        raise ValueError("example_grid: no examples to show (empty input or n < 1)")

    rows: list[tuple[str, Any, list[str], list[str]]] = []  # (row name, images, captions, caption colours)
    grey = synth_a.shape[-1] == 1
    if target_a is None:
        rows.append(("start image", start_a, [f"orig: {_label(oy[i], class_names)}" for i in cols],
                     ["black"] * len(cols)))
    else:
        caps = [f"start: {_label(sy[i], class_names)}" if sy is not None else "" for i in cols]
        rows.append(("start image", start_a, caps, ["dimgray"] * len(cols)))
        rows.append(("target image", target_a, [f"orig: {_label(oy[i], class_names)}" for i in cols],
                     ["black"] * len(cols)))
    rows.append(("synthesized image", synth_a, [f"label: {_label(ny[i], class_names)}" for i in cols],
                 ["black" if ny[i] == oy[i] else "crimson" for i in cols]))

    plt = _pyplot()
    col_w, row_h, left, top = 1.25, 1.5, 0.9, (0.45 if title else 0.1)
    fig_w, fig_h = left + col_w * len(cols), top + row_h * len(rows)
    fig = plt.figure(figsize=(fig_w, fig_h))
    img_h = 0.78 * row_h  # the rest of a row holds its caption
    for r, (row_name, imgs, caps, colours) in enumerate(rows):
        for c, i in enumerate(cols):
            x0 = (left + c * col_w + 0.06) / fig_w
            y0 = (fig_h - top - (r + 1) * row_h + (row_h - img_h)) / fig_h
            ax = fig.add_axes((x0, y0, (col_w - 0.12) / fig_w, img_h / fig_h))
            img = imgs[i]
            if grey:
                ax.imshow(img[..., 0], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
            else:
                ax.imshow(img, interpolation="nearest")
            ax.set_xticks([]), ax.set_yticks([])
            if caps[c]:
                ax.set_xlabel(caps[c], fontsize=7, color=colours[c], labelpad=2)
            if c == 0:
                ax.set_ylabel(row_name.replace(" ", "\n", 1), fontsize=8)
            if r == 0:
                ax.set_title(f"#{i}", fontsize=7, pad=2)
    if title:
        fig.suptitle(title, fontsize=10, y=1 - 0.08 / fig_h, va="top")
    return _png(fig, plt)


# ---------------------------------------------------------------------------------------- 2. summary
def seed_summary(rows: Iterable[Mapping[str, Any]], group_by: str | Sequence[str], value_cols: Sequence[str]):
    """Mean, std and count over seeds of each group of rows, as a pandas DataFrame.

    ``rows`` are the report's per-evaluation dicts (each has ``seed``); ``group_by`` names the columns that
    make a group (e.g. ``["train_set", "target_arch", "synth_eps"]``: every column that is not the seed).
    Output: one row per group, in the order of first appearance (training sets in ``TRAIN_SET_ORDER`` when
    ``train_set`` is a group column), with the group columns, ``n_rows``, ``seeds`` (sorted tuple), and per
    value column ``<col>_mean``, ``<col>_std`` (sample std, ddof=1: NaN for a single value, never 0),
    ``<col>_count`` (non-missing values) and ``<col>_values`` (the values, ordered by seed). Missing values
    (None/NaN, or a column a row lacks) are left out of that column's statistics; a group with none gets
    NaN mean and count 0. ``df.attrs`` keeps ``group_by`` and ``value_cols``.
    """
    import numpy as np
    import pandas as pd

    keys = [group_by] if isinstance(group_by, str) else list(group_by)
    vals = list(value_cols)
    if "seed" in keys:
        raise ValueError("seed_summary: 'seed' cannot be a group column (the summary is over seeds)")
    rows = list(rows)
    groups: dict[tuple, list[Mapping[str, Any]]] = {}
    for r in rows:
        missing = [k for k in keys if k not in r]
        if missing:
            raise ValueError(f"seed_summary: a row lacks the group column(s) {missing}; it has {sorted(r)}")
        groups.setdefault(tuple(r[k] for k in keys), []).append(r)

    def _num(v) -> float:
        if v is None:
            return math.nan
        try:
            return float(v)
        except (TypeError, ValueError):
            return math.nan

    def _seed_order(r) -> tuple:
        s = r.get("seed")
        return (s is None, s if isinstance(s, (int, float)) else str(s))

    out = []
    for key, members in groups.items():
        members = sorted(members, key=_seed_order)
        rec: dict[str, Any] = dict(zip(keys, key))
        rec["n_rows"] = len(members)
        rec["seeds"] = tuple(dict.fromkeys(m.get("seed") for m in members if m.get("seed") is not None))
        for col in vals:
            xs = np.array([_num(m.get(col)) for m in members], dtype=float)
            xs = xs[~np.isnan(xs)]
            rec[f"{col}_mean"] = float(xs.mean()) if len(xs) else math.nan
            rec[f"{col}_std"] = float(xs.std(ddof=1)) if len(xs) > 1 else math.nan
            rec[f"{col}_count"] = int(len(xs))
            rec[f"{col}_values"] = tuple(float(v) for v in xs)
        out.append(rec)
    if "train_set" in keys:
        order = {name: i for i, name in enumerate(TRAIN_SET_ORDER)}
        out = sorted(out, key=lambda rec: order.get(rec["train_set"], len(order)))  # stable: ties keep order
    stat_cols = [f"{c}_{s}" for c in vals for s in ("mean", "std", "count", "values")]
    df = pd.DataFrame(out, columns=keys + ["n_rows", "seeds"] + stat_cols)
    df.attrs["group_by"] = keys
    df.attrs["value_cols"] = vals
    return df


# ------------------------------------------------------------------------------------------- 3. bars
def _column_label(col: str) -> str:
    if col == "clean_acc":
        return "clean"
    if col == "shifted_acc":
        return "shifted labels (y+1)"
    if col.startswith("robust_acc[") and col.endswith("]"):
        return "robust " + col[len("robust_acc["):-1]
    return col


def bar_with_errors(summary, *, value_cols: Sequence[str] | None = None, label_cols: Sequence[str] | None = None,
                    reference: Mapping[str, Mapping[str, float]] | None = None, reference_label: str = "paper",
                    title: str = "", ylabel: str = "accuracy", ylim: tuple[float, float] | None = (0.0, 1.0)) -> bytes:
    """Grouped bars from a :func:`seed_summary` DataFrame: one group per summary row (a training set: D,
    baseline, D_R, D_NR, D_rand, D_det...), one bar per value column (clean, then each robust attack), bar
    height = mean over seeds, error bar = std over seeds (none for a single seed), and each seed's value as a
    black dot on its bar. The group's tick label joins its ``label_cols`` (default: the summary's group
    columns) and says how many seeds it has.

    ``reference`` ({train_set: {value_col: value}}, e.g. from :func:`paper_bar_reference`) draws the paper's
    numbers as open diamonds at the right edge of the matching bars (matched on the row's ``train_set``, else
    on its tick label's first line).
    """
    import numpy as np

    if summary is None or len(summary) == 0:
        raise ValueError("bar_with_errors: the summary has no rows (no finished evaluations to draw)")
    cols = list(value_cols) if value_cols is not None else list(summary.attrs.get("value_cols") or [
        c[:-len("_mean")] for c in summary.columns if c.endswith("_mean")])
    missing = [c for c in cols if f"{c}_mean" not in summary.columns]
    if not cols or missing:
        raise ValueError(f"bar_with_errors: no statistics for value column(s) {missing or cols} in the summary "
                         f"(columns: {list(summary.columns)}); make it with seed_summary(rows, group_by, value_cols)")
    labels_by = list(label_cols) if label_cols is not None else list(summary.attrs.get("group_by") or [
        c for c in summary.columns if c not in ("n_rows", "seeds") and not c.rsplit("_", 1)[-1] in
        ("mean", "std", "count", "values")])

    def tick(rec) -> str:
        parts = [str(rec[c]) for c in labels_by if c in rec and rec[c] is not None
                 and not (isinstance(rec[c], float) and math.isnan(rec[c]))]
        n_seeds = max(int(rec.get(f"{c}_count", 0) or 0) for c in cols)
        parts.append(f"{n_seeds} seed" + ("" if n_seeds == 1 else "s"))
        return "\n".join(parts)

    recs = summary.to_dict("records")
    plt = _pyplot()
    n_groups, n_bars = len(recs), len(cols)
    width = 0.8 / n_bars
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 + 0.45 * n_groups * n_bars + 0.3 * n_groups), 4.0))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    ref_drawn = False
    for j, col in enumerate(cols):
        xs = np.arange(n_groups) + (j - (n_bars - 1) / 2) * width
        means = np.array([float(r[f"{col}_mean"]) for r in recs], dtype=float)
        stds = np.array([float(r[f"{col}_std"]) for r in recs], dtype=float)
        ax.bar(xs, np.nan_to_num(means), width * 0.92, color=colours[j % len(colours)], label=_column_label(col),
               yerr=np.where(np.isnan(stds), 0.0, stds), error_kw={"elinewidth": 1, "capsize": 3},
               zorder=2)
        for x, r in zip(xs, recs):
            values = list(r.get(f"{col}_values") or ())
            if values:  # deterministic spread, so coinciding seeds stay visible
                offs = np.linspace(-0.25, 0.25, len(values)) * width if len(values) > 1 else [0.0]
                ax.scatter(x + np.asarray(offs), values, s=9, color="black", zorder=4, linewidths=0)
        if reference:
            for x, r in zip(xs, recs):
                key = r.get("train_set", tick(r).split("\n", 1)[0])
                v = (reference.get(key) or {}).get(col)
                if v is not None:
                    ax.scatter([x + width * 0.42], [v], marker="D", s=26, facecolors="white", edgecolors="black",
                               linewidths=1.2, zorder=5, label=None if ref_drawn else reference_label)
                    ref_drawn = True
    ax.set_xticks(np.arange(n_groups))
    ax.set_xticklabels([tick(r) for r in recs], fontsize=7)
    ax.set_ylabel(ylabel)
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.grid(axis="y", alpha=0.3, zorder=0)
    ax.legend(fontsize=7, loc="upper right")
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return _png(fig, plt)


def paper_bar_reference(paper: Mapping[str, Any], value_cols: Sequence[str]) -> dict[str, dict[str, float]]:
    """{train_set: {value_col: value}} from ``paper.yaml`` (``sweeper.report.report.paper_reference()``) for
    :func:`bar_with_errors`: Figure 2's clean accuracy as ``clean_acc`` (Table 1's CIFAR-10 accuracy for the
    sets Figure 2 lacks, D_rand and D_det), and Figure 2's robust accuracy under a robust column only when
    that column's attack has the paper's norm and eps (any number of steps)."""
    out: dict[str, dict[str, float]] = {}
    f2 = paper.get("figure2") or {}
    att = f2.get("attack") or {}
    robust = [c for c in value_cols if c.startswith("robust_acc[")
              and _attack_matches(c, att.get("norm"), att.get("eps"))]
    for row in f2.get("rows") or []:
        d = out.setdefault(row["train_set"], {})
        if "clean_acc" in value_cols and row.get("clean_acc") is not None:
            d["clean_acc"] = float(row["clean_acc"])
        for c in robust:
            if row.get("robust_acc") is not None:
                d[c] = float(row["robust_acc"])
    for row in (paper.get("table1") or {}).get("rows") or []:
        d = out.setdefault(row["train_set"], {})
        if "clean_acc" in value_cols and "clean_acc" not in d and row.get("cifar10") is not None:
            d["clean_acc"] = float(row["cifar10"])
    return {k: v for k, v in out.items() if v}


def _attack_matches(col: str, norm, eps) -> bool:
    """Whether a report column ``robust_acc[<norm>_eps<eps>_s<steps>...]`` or ``robust_worst[<norm>_eps<eps>]``
    is of that norm and eps."""
    try:
        name = col[col.index("[") + 1:-1]
        col_norm, _, rest = name.partition("_eps")
        return col_norm == str(norm) and math.isclose(float(rest.split("_")[0]), float(eps), rel_tol=1e-6)
    except (IndexError, KeyError, ValueError, TypeError):
        return False


# --------------------------------------------------------------------------------------- 4. transfer
def transfer_points(rows: Iterable[Mapping[str, Any]], transfers: Iterable[Mapping[str, Any]]) -> list[dict]:
    """Figure 3's points from the report: one per D_det evaluation row whose architecture has a transfer
    measurement, ``{"arch", "seed", "test_acc", "transfer_rate"}``. The transfer rate is the mean
    ``target_rate`` of the transfer rows whose probe is a standard model (``probe_train_set == "D"``) of the
    row's architecture (and, when both carry ``synth_key``, of the same synthesized set)."""
    # the usable transfer rows indexed once by (probe arch, synthesized set), each with its position so that a
    # row's rates are summed in the order of ``transfers`` (a scan per row was rows x transfers)
    by_arch: dict[Any, list[tuple[int, float]]] = {}
    by_set: dict[tuple[Any, Any], list[tuple[int, float]]] = {}
    for i, t in enumerate(transfers):
        if t.get("probe_train_set") == "D" and t.get("target_rate") is not None:
            by_arch.setdefault(t.get("probe_arch"), []).append((i, t["target_rate"]))
            by_set.setdefault((t.get("probe_arch"), t.get("synth_key")), []).append((i, t["target_rate"]))
    pts = []
    for r in rows:
        if r.get("train_set") != "D_det" or r.get("clean_acc") is None or r.get("features"):
            continue  # (a linear probe on another model's features is not that arch's own D_det point)
        arch = r.get("target_arch")
        if r.get("synth_key") is None:  # any set
            found = by_arch.get(arch, [])
        else:  # the row's set, and rows that name no set
            found = sorted(by_set.get((arch, r["synth_key"]), []) + by_set.get((arch, None), []))
        rates = [rate for _, rate in found]
        if rates:
            pts.append({"arch": r["target_arch"], "seed": r.get("seed"), "test_acc": float(r["clean_acc"]),
                        "transfer_rate": sum(rates) / len(rates)})
    return pts


def _arch_groups(points: Iterable[Mapping[str, Any]], who: str) -> dict[str, list[Mapping[str, Any]]]:
    pts = list(points)
    if not pts:
        raise ValueError(f"{who}: no points; it needs at least one {{arch, transfer_rate, test_acc}} "
                         "(a D_det-trained model with a transfer measurement to its architecture)")
    by_arch: dict[str, list[Mapping[str, Any]]] = {}
    for p in pts:
        missing = [k for k in ("arch", "transfer_rate", "test_acc") if p.get(k) is None]
        if missing:
            raise ValueError(f"{who}: point {dict(p)} lacks {missing}")
        by_arch.setdefault(str(p["arch"]), []).append(p)
    return by_arch


def transfer_fit(points: Iterable[Mapping[str, Any]]) -> dict[str, float]:
    """The least-squares line of :func:`transfer_figure`, fitted to the per-architecture means (test accuracy
    against transfer rate): ``{"slope", "intercept", "r", "n_arch"}``; slope, intercept and r are NaN with
    fewer than two distinct transfer rates, r also when every test accuracy is the same."""
    import numpy as np

    by_arch = _arch_groups(points, "transfer_fit")
    mx = [float(np.mean([float(p["transfer_rate"]) for p in ps])) for ps in by_arch.values()]
    my = [float(np.mean([float(p["test_acc"]) for p in ps])) for ps in by_arch.values()]
    out = {"slope": math.nan, "intercept": math.nan, "r": math.nan, "n_arch": len(by_arch)}
    if len(set(mx)) >= 2:
        slope, icpt = np.polyfit(mx, my, 1)
        out.update(slope=float(slope), intercept=float(icpt))
        if len(set(my)) > 1:
            out["r"] = float(np.corrcoef(mx, my)[0, 1])
    return out


def transfer_figure(points: Iterable[Mapping[str, Any]], *, reference: Iterable[Mapping[str, Any]] | None = None,
                    fit: bool = True, title: str = "Figure 3 analogue") -> bytes:
    """The paper's Figure 3: x = transfer rate of the adversarial examples (of D_det's source) to an
    architecture, y = true-label test accuracy of a model of that architecture trained on D_det.

    ``points``: dicts with ``arch``, ``transfer_rate`` and ``test_acc`` (one per architecture and seed, as
    from :func:`transfer_points`). Each architecture becomes one labelled point at its mean over seeds, with
    error bars = std over seeds (y, and x when its transfer rates differ; none for a single seed), the seeds'
    own values as small dots, and (``fit``) the least-squares line of :func:`transfer_fit` through the
    architecture means when there are at least two distinct transfer rates (its slope and r in the legend).
    ``reference`` (optional, the ``figure3.rows`` of paper.yaml) is drawn as open grey markers with their names.
    """
    import numpy as np

    pts = list(points)
    by_arch = _arch_groups(pts, "transfer_figure")

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    mx, my = [], []
    for k, (arch, ps) in enumerate(by_arch.items()):
        xs = np.array([float(p["transfer_rate"]) for p in ps])
        ys = np.array([float(p["test_acc"]) for p in ps])
        x, y = float(xs.mean()), float(ys.mean())
        xerr = float(xs.std(ddof=1)) if len(xs) > 1 else 0.0
        yerr = float(ys.std(ddof=1)) if len(ys) > 1 else 0.0
        c = colours[k % len(colours)]
        if len(ps) > 1:
            ax.scatter(xs, ys, s=10, color=c, alpha=0.5, linewidths=0, zorder=2)
        ax.errorbar([x], [y], xerr=[xerr] if xerr > 0 else None, yerr=[yerr] if yerr > 0 else None, fmt="o",
                    color=c, ms=7, capsize=3, zorder=3)
        ax.annotate(f"{arch} (n={len(ps)})", (x, y), xytext=(6, 5), textcoords="offset points", fontsize=8)
        mx.append(x), my.append(y)
    line = transfer_fit(pts)
    if fit and not math.isnan(line["slope"]):
        grid = np.linspace(min(mx), max(mx), 50)
        ax.plot(grid, line["slope"] * grid + line["intercept"], "--", color="gray", zorder=1,
                label=f"least squares: slope {line['slope']:.2f}"
                + ("" if math.isnan(line["r"]) else f", r = {line['r']:.2f}"))
    if reference:
        ref = list(reference)
        ax.scatter([float(p["transfer_rate"]) for p in ref], [float(p["test_acc"]) for p in ref], marker="s", s=28,
                   facecolors="none", edgecolors="gray", label="paper (CIFAR-10, ResNet-50 source)", zorder=2)
        for p in ref:
            ax.annotate(str(p.get("arch", "")), (float(p["transfer_rate"]), float(p["test_acc"])), xytext=(4, -9),
                        textcoords="offset points", fontsize=6, color="gray")
    ax.set_xlabel("transfer rate of the adversarial examples to the architecture")
    ax.set_ylabel("test accuracy (true labels) after training on D_det")
    ax.set_xlim(-0.02, 1.05), ax.set_ylim(0.0, 1.0)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="upper left")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return _png(fig, plt)


# ---------------------------------------------------------------------------------------- 5. fourier
FOURIER_COLUMNS = 6  # heatmaps per row of fourier_figure


def fourier_figure(panels: Sequence[tuple[str, Any]], *, eps: float | Sequence[float] | None = None,
                   title: str = "") -> bytes:
    """Fourier-sensitivity heatmaps side by side (at most FOURIER_COLUMNS per row), one per ``(title, heat)``
    panel: ``heat`` an (H, W) tensor or array of error rates at the centred frequencies of
    :mod:`sweeper.science.fourier` (cell (r, c) = frequency (r - H//2, c - W//2): the zero frequency in the
    centre, the highest ones on the border; axes labelled in frequencies). Every panel shares one colour scale,
    from 0 to the largest error of any panel, with one colour bar. ``eps`` (one number, or one per panel) is
    added to the figure's title (one number) or each panel's (a list)."""
    import numpy as np

    if not panels:
        raise ValueError("fourier_figure: no heatmaps to draw")
    heats = []
    for name, heat in panels:
        a = heat.detach().cpu().double().numpy() if hasattr(heat, "detach") else np.asarray(heat, dtype=float)
        if a.ndim != 2:
            raise ValueError(f"fourier_figure: the heatmap of {name!r} must be 2-D (H, W); got shape {a.shape}")
        heats.append(a)
    per_panel = eps is not None and not isinstance(eps, (int, float))
    if per_panel and len(eps) != len(panels):
        raise ValueError(f"fourier_figure: {len(eps)} eps for {len(panels)} heatmaps")
    vmax = max(max(float(np.nanmax(a)) for a in heats), 1e-6)
    cols = min(len(panels), FOURIER_COLUMNS)
    rows = -(-len(panels) // cols)
    plt = _pyplot()
    fig_w = max(6.0, 1.2 + 2.6 * cols)
    fig, axes = plt.subplots(rows, cols, figsize=(fig_w, 0.8 + 2.9 * rows), squeeze=False)
    im = None
    for k, ax in enumerate(axes.flat):
        if k >= len(panels):
            ax.axis("off")
            continue
        a = heats[k]
        h, w = a.shape
        extent = (-(w // 2) - 0.5, w - w // 2 - 0.5, h - h // 2 - 0.5, -(h // 2) - 0.5)  # row 0 at the top
        im = ax.imshow(a, cmap="viridis", vmin=0.0, vmax=vmax, extent=extent, interpolation="nearest")
        name = str(panels[k][0]) + (f"\neps {eps[k]:g}" if per_panel else "")
        ax.set_title(name, fontsize=8)
        ax.tick_params(labelsize=6)
        if k % cols == 0:
            ax.set_ylabel("vertical frequency i", fontsize=7)
        if k // cols == rows - 1 or k + cols >= len(panels):
            ax.set_xlabel("horizontal frequency j", fontsize=7)
    bar = fig.colorbar(im, ax=axes.ravel().tolist(), fraction=0.04, pad=0.03)
    bar.set_label("error rate under the noise", fontsize=7)
    bar.ax.tick_params(labelsize=6)
    head = title or "Fourier sensitivity: error under additive Fourier-basis noise (centre: low frequencies)"
    if eps is not None and not per_panel:
        head += f"; noise L2 norm {eps:g} per channel"
    import textwrap

    fig.suptitle("\n".join(textwrap.fill(line, width=int(fig_w * 13)) for line in head.split("\n")), fontsize=9)
    return _png(fig, plt)
