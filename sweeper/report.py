"""Results tables, the paper's numbers beside them, and figures (no Ray, no W&B).

``build_rows`` turns the evaluate and transfer nodes of a finished plan into one row per evaluation;
``write_report`` writes ``results.csv``, ``results.json``, ``transfer.csv``, ``report.md`` and PNG figures
under ``<store>/reports/<sweep>/``.
"""

from __future__ import annotations

import csv
import io
import json
from importlib import resources

import yaml

from .plan import Plan
from .store import Store

BASE_COLUMNS = ["sweep", "eval_key", "model_key", "model_stage", "model_label", "train_set", "train_size",
                "target_arch", "source_arch", "source_stage", "synth_method", "synth_norm", "synth_eps",
                "synth_steps", "seed", "clean_acc", "shifted_acc", "hit_rate", "robust_reads_original",
                "transfer_rate", "worst_acc", "eval_n"]


def paper_reference() -> dict:
    """The paper's numbers, kept as data (``sweeper/references/paper.yaml``) with their sources."""
    text = resources.files("sweeper").joinpath("references/paper.yaml").read_text()
    return yaml.safe_load(text)


def attack_column(r: dict) -> str:
    """The results column of one attack of an evaluation's meta: ``robust_acc[<the attack's name>]``."""
    return f"robust_acc[{r['attack']}]"


def transfer_rows(plan: Plan, store: Store) -> list[dict]:
    rows = []
    for node in plan.nodes.values():
        if node.kind != "transfer" or not store.is_done(node.key):
            continue
        m = store.load_meta(node.key)
        probe = plan.nodes[node.inputs["model"]]
        rows.append({"synth_key": node.inputs["data"], "synth_label": plan.nodes[node.inputs["data"]].label,
                     "probe_label": probe.label, "probe_arch": probe.spec.arch,
                     "probe_train_set": plan.train_set(probe), "target_rate": m["target_rate"],
                     "original_rate": m["original_rate"], "n": m["n"]})
    return rows


def _synth_fields(plan: Plan, store: Store, model_node, transfers: list[dict]) -> dict:
    if "data" not in model_node.inputs:
        return {}
    synth = plan.nodes[model_node.inputs["data"]]
    source = plan.nodes[synth.inputs["source"]]
    sm = store.load_meta(synth.key)
    p = synth.spec
    out = {"source_arch": source.spec.arch, "source_stage": source.stage, "synth_method": p.method}
    if p.method == "relabel":
        out.update(synth_norm=p.attack.norm, synth_eps=p.attack.eps, synth_steps=p.attack.steps,
                   hit_rate=sm.get("hit_rate"))
        for t in transfers:
            if t["synth_key"] != synth.key:
                continue
            if t["probe_train_set"] == "D_adv" and out.get("robust_reads_original") is None:
                out["robust_reads_original"] = t["original_rate"]
            if t["probe_train_set"] == "D" and out.get("transfer_rate") is None:
                out["transfer_rate"] = t["target_rate"]
    else:
        out.update(synth_norm="l2", synth_steps=p.inversion.steps)
    return out


def build_rows(plan: Plan, store: Store) -> list[dict]:
    """One row per finished evaluation, in plan order."""
    transfers = transfer_rows(plan, store)
    rows = []
    for node in plan.nodes.values():
        if node.kind != "evaluate" or not store.is_done(node.key):
            continue
        m = store.load_meta(node.key)
        model = plan.nodes[node.inputs["model"]]
        mm = store.load_meta(model.key)
        row = {c: None for c in BASE_COLUMNS}
        row.update(sweep=plan.sweep.name, eval_key=node.key, model_key=model.key, model_stage=model.stage,
                   model_label=model.label, train_set=plan.train_set(model), train_size=mm["n_train"],
                   target_arch=model.spec.arch, seed=model.spec.seed, clean_acc=m["clean_acc"],
                   shifted_acc=m["shifted_acc"], worst_acc=m["worst_acc"], eval_n=m["n"])
        row.update(_synth_fields(plan, store, model, transfers))
        for r in m["robust"]:
            row[attack_column(r)] = r["acc"]
        rows.append(row)
    return rows


def to_csv(rows: list[dict]) -> str:
    cols: list[str] = []
    for r in rows:
        cols += [c for c in r if c not in cols]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols)
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if v is None else v) for k, v in r.items()})
    return buf.getvalue()


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def markdown(plan: Plan, rows: list[dict], transfers: list[dict]) -> str:
    """report.md: every evaluation, then the Figure 2 / Table 1 analogues beside the paper's numbers."""
    ref = paper_reference()
    robust_cols = sorted({c for r in rows for c in r if c.startswith("robust_acc[")})
    lines = [f"# sweeper report: {plan.sweep.name}", "", plan.sweep.description or "", "",
             f"Dataset: {plan.sweep.data.dataset}; evaluated on {rows[0]['eval_n'] if rows else 0} test images.",
             "", "## Every evaluation", ""]
    head = ["model", "train set", "n", "arch", "clean", "shifted (y+1)"] + robust_cols + ["hit rate",
            "robust model reads original", "transfer to independent model"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["model_label"], r["train_set"], str(r["train_size"]), r["target_arch"], _pct(r["clean_acc"]),
                 _pct(r["shifted_acc"])] + [_pct(r.get(c)) for c in robust_cols] + [
                 _pct(r["hit_rate"]), _pct(r["robust_reads_original"]), _pct(r["transfer_rate"])]
        lines.append("| " + " | ".join(cells) + " |")
    f2 = ref["figure2"]
    lines += ["", "## Figure 2 analogue (paper: CIFAR-10, ResNet-50, robust acc at "
              f"{f2['attack']['norm']} eps {f2['attack']['eps']}, {f2['attack']['steps']} steps)", "",
              "| train set | paper clean | paper robust | here clean | here robust (" +
              ", ".join(c[len('robust_acc['):-1] for c in robust_cols) + ") |", "|---|---|---|---|---|"]
    for pr in f2["rows"]:
        mine = [r for r in rows if r["train_set"] == pr["train_set"]]
        here_clean = ", ".join(_pct(r["clean_acc"]) + f" (n={r['train_size']})" for r in mine) or "-"
        here_rob = "; ".join("/".join(_pct(r.get(c)) for c in robust_cols) for r in mine) or "-"
        lines.append(f"| {pr['train_set']} | {_pct(pr['clean_acc'])} | {_pct(pr['robust_acc'])} | {here_clean} | "
                     f"{here_rob} |")
    lines += ["", "## Table 1 analogue (accuracy on the original test labels)", "",
              "| train set | paper CIFAR-10 | paper Restricted ImageNet | here (true labels) | here (shifted labels) |"
              " here hit rate |", "|---|---|---|---|---|---|"]
    for pr in ref["table1"]["rows"]:
        mine = [r for r in rows if r["train_set"] == pr["train_set"]]
        lines.append(f"| {pr['train_set']} | {_pct(pr['cifar10'])} | {_pct(pr['restricted_imagenet'])} | "
                     + ", ".join(_pct(r["clean_acc"]) for r in mine) + " | "
                     + ", ".join(_pct(r["shifted_acc"]) for r in mine) + " | "
                     + ", ".join(_pct(r["hit_rate"]) for r in mine) + " |")
    if transfers:
        lines += ["", "## How other models read the relabelled sets", "",
                  "| set | probe | probe train set | reads target | reads original |", "|---|---|---|---|---|"]
        for t in transfers:
            lines.append(f"| {t['synth_label']} | {t['probe_label']} ({t['probe_arch']}) | {t['probe_train_set']} "
                         f"| {_pct(t['target_rate'])} | {_pct(t['original_rate'])} |")
    lines += ["", "Regime guide: on D_det, accuracy on the true labels above chance is the paper's effect; a high "
              "shifted-label accuracy means the model learned y -> y+1 from robust features; a low hit rate or a "
              "robust model that still reads the original class means the perturbations did not carry the target.",
              "", "Paper numbers: sweeper/references/paper.yaml (with sources).", ""]
    return "\n".join(lines)


def figures(rows: list[dict], transfers: list[dict]) -> dict[str, bytes]:
    """PNG bytes: Figure 2-style bars, Table 1 bars, and the Figure 3 scatter when several archs trained on D_det."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = {}
    robust_cols = sorted({c for r in rows for c in r if c.startswith("robust_acc[")})
    sel = [r for r in rows if r["train_set"] in ("D", "D_adv", "D_R", "D_NR")]
    if sel:
        fig, ax = plt.subplots(figsize=(7, 3.5))
        width = 0.8 / (1 + len(robust_cols))
        for j, col in enumerate(["clean_acc"] + robust_cols):
            ax.bar([i + j * width for i in range(len(sel))], [r.get(col) or 0 for r in sel], width,
                   label=col.replace("robust_acc", "robust"))
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(sel))])
        ax.set_xticklabels([f"{r['train_set']}\n{r['model_label']}" for r in sel], fontsize=7)
        ax.set_ylabel("accuracy"), ax.set_ylim(0, 1), ax.legend(fontsize=7), ax.set_title("Figure 2 analogue")
        out["figure2.png"] = _png(fig, plt)
    sel = [r for r in rows if r["train_set"] in ("D", "D_rand", "D_det")]
    if sel:
        fig, ax = plt.subplots(figsize=(7, 3.5))
        xs = range(len(sel))
        ax.bar([i - 0.2 for i in xs], [r["clean_acc"] for r in sel], 0.4, label="true labels")
        ax.bar([i + 0.2 for i in xs], [r["shifted_acc"] for r in sel], 0.4, label="shifted labels (y+1)")
        ax.set_xticks(list(xs)), ax.set_xticklabels([f"{r['train_set']}\n{r['model_label']}" for r in sel], fontsize=7)
        ax.set_ylabel("test accuracy"), ax.set_ylim(0, 1), ax.legend(fontsize=7), ax.set_title("Table 1 analogue")
        out["table1.png"] = _png(fig, plt)
    pts = []
    for r in rows:
        if r["train_set"] != "D_det":
            continue
        rate = [t["target_rate"] for t in transfers if t["probe_arch"] == r["target_arch"]
                and t["probe_train_set"] == "D"]
        if rate:
            pts.append((rate[0], r["clean_acc"], r["target_arch"]))
    if len({p[2] for p in pts}) >= 2:
        fig, ax = plt.subplots(figsize=(5, 4))
        for x, y, name in pts:
            ax.scatter(x, y), ax.annotate(name, (x, y), fontsize=8)
        ax.set_xlabel("transfer rate of the source's adversarial examples"), ax.set_ylabel("D_det test accuracy")
        ax.set_title("Figure 3 analogue")
        out["figure3.png"] = _png(fig, plt)
    return out


def _png(fig, plt) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    return buf.getvalue()


def write_report(plan: Plan, store: Store) -> dict:
    """Write every report file under ``reports/<sweep>/``; returns {name: store path}."""
    rows = build_rows(plan, store)
    transfers = transfer_rows(plan, store)
    base = f"reports/{plan.sweep.name}"
    written = {}
    texts = {"results.csv": to_csv(rows), "results.json": json.dumps(rows, indent=1),
             "transfer.csv": to_csv(transfers), "report.md": markdown(plan, rows, transfers)}
    for name, text in texts.items():
        store.write_bytes(f"{base}/{name}", text.encode())
        written[name] = store.path(base, name)
    for name, png in figures(rows, transfers).items():
        store.write_bytes(f"{base}/{name}", png)
        written[name] = store.path(base, name)
    return written
