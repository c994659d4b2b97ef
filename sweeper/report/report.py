"""Results tables, the paper's numbers beside them, and figures (no Ray, no W&B).

``build_rows`` turns the evaluate and transfer nodes of a finished plan into one row per evaluation;
``write_report`` writes ``results.csv``, ``results.json``, ``transfer.csv``, ``report.md`` and PNG figures
under ``<store>/reports/<sweep>/``; with fourier nodes also ``fourier.json`` (:func:`fourier_rows`: one entry per
node, beside results.json, whose list of evaluation rows stays as it is) and ``fourier.png``.
"""

from __future__ import annotations

import csv
import io
import json
import math
from importlib import resources

import yaml

from sweeper.sweep.plan import Plan, ensemble_keys, gc_paused
from sweeper.sweep.spec import dumps_point
from sweeper.store.store import Store
from sweeper.report import distill, stats

# a report of a large sweep draws a sample, and says so in report.md: example grids of at most this many
# synthesized sets (each one stage's share, evenly spread over its nodes), bar charts of at most this many groups
MAX_EXAMPLE_GRIDS = 4
MAX_BAR_GROUPS = 40
REMOTE_READERS = 16  # parallel manifest reads on an object store (local disk: one thread, they are CPU-bound)
ROWS_CHUNK = 1000  # evaluations whose metas are read (and held) at a time

BASE_COLUMNS = ["sweep", "eval_key", "eval_stage", "eval_label", "model_key", "model_stage", "model_label",
                "setting", "train_set", "train_size",
                "target_arch", "features", "features_label", "source_arch", "source_stage", "synth_key",
                "synth_method", "synth_norm", "synth_eps",
                "synth_steps", "seed", "chain", "clean_acc", "shifted_acc", "hit_rate", "robust_reads_original",
                "transfer_rate", "worst_acc", "eval_n"]


def paper_reference() -> dict:
    """The paper's numbers, kept as data (``sweeper/report/references/paper.yaml``) with their sources."""
    text = resources.files("sweeper.report").joinpath("references/paper.yaml").read_text()
    return yaml.safe_load(text)


def attack_column(r: dict) -> str:
    """The results column of one attack of an evaluation's meta: ``robust_acc[<the attack's name>]``."""
    return f"robust_acc[{r['attack']}]"


def worst_column(ball: str) -> str:
    """The results column of a threat ball's worst case over every attack listed for it (see
    ``evaluation.worst_by_ball``): ``robust_worst[l2_eps1]``. The report's robust accuracy."""
    return f"robust_worst[{ball}]"


def _map(store: Store, fn, keys: list) -> list:
    """``[fn(k) for k in keys]``, in parallel on an object store (each read is a round trip there)."""
    with gc_paused():  # thousands of parsed manifests
        if store.is_local or len(keys) < 2:
            return [fn(k) for k in keys]
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(min(REMOTE_READERS, len(keys))) as pool:
            return list(pool.map(fn, keys))


def done_keys(store: Store, keys) -> set[str]:
    """The keys among ``keys`` whose node is done in the store (``Store.is_done`` of each, batched)."""
    keys = list(keys)
    return {k for k, ok in zip(keys, _map(store, store.is_done, keys)) if ok}


def done_metas(store: Store, keys) -> dict[str, dict]:
    """{key: meta} of the keys among ``keys`` whose node is done (``Store.done_meta``: one manifest read each)."""
    keys = list(keys)
    return {k: m for k, m in zip(keys, _map(store, store.done_meta, keys)) if m is not None}


class _Reads:
    """What one report reads from the store, each at most once per node: whether it is done and its meta,
    from one manifest read (``Store.done_meta``), or from the ``metas`` of the done nodes given (e.g. the ones
    ``sweeper report`` read for its note; the report takes them over and drops each once used)."""

    def __init__(self, store: Store, metas: dict[str, dict] | None = None):
        self.store = store
        self._given = None if metas is None else set(metas)
        self._done: dict[str, bool] = {}
        self._meta: dict[str, dict] = {} if metas is None else metas

    def done(self, keys: list[str]) -> list[bool]:
        if self._given is not None:
            return [k in self._given for k in keys]
        todo = [k for k in dict.fromkeys(keys) if k not in self._done]
        for k, m in zip(todo, _map(self.store, self.store.done_meta, todo)):
            self._done[k] = m is not None
            if m is not None:
                self._meta[k] = m
        return [self._done[k] for k in keys]

    def prefetch(self, keys) -> None:
        todo = [k for k in dict.fromkeys(keys) if k not in self._meta]
        self._meta.update(zip(todo, _map(self.store, self.store.load_meta, todo)))

    def meta(self, key: str) -> dict:
        if key not in self._meta:
            self._meta[key] = self.store.load_meta(key)
        return self._meta[key]

    def forget(self, keys) -> None:
        """Drop metas no longer needed (a large sweep's would otherwise all stay in memory)."""
        for k in keys:
            self._meta.pop(k, None)


def _done_nodes(plan: Plan, reads: _Reads, kind: str) -> list:
    nodes = [n for n in plan.nodes.values() if n.kind == kind]
    return [n for n, ok in zip(nodes, reads.done([n.key for n in nodes])) if ok]


def _each_done(plan: Plan, reads: _Reads, kind: str):
    """(node, meta) of every finished node of ``kind``, in plan order: the metas read ahead together (in
    parallel on an object store) and each dropped once yielded."""
    nodes = _done_nodes(plan, reads, kind)
    reads.prefetch(n.key for n in nodes)
    for node in nodes:
        m = reads.meta(node.key)
        reads.forget([node.key])
        yield node, m


def transfer_rows(plan: Plan, store: Store, *, _reads: _Reads | None = None) -> list[dict]:
    """One row per finished transfer node, in plan order."""
    rows = []
    for node, m in _each_done(plan, _reads or _Reads(store), "transfer"):
        probe = plan.nodes[node.inputs["model"]]
        rows.append({"synth_key": node.inputs["data"], "synth_label": plan.nodes[node.inputs["data"]].label,
                     "probe_key": probe.key, "probe_label": probe.label, "probe_arch": probe.spec.arch,
                     "probe_train_set": plan.train_set(probe), "target_rate": m["target_rate"],
                     "original_rate": m["original_rate"], "n": m["n"]})
    return rows


def _synth_fields(plan: Plan, reads: _Reads, model_node, by_synth: dict[str, list[dict]]) -> dict:
    """The synthesized set a model was trained on (``by_synth``: the transfer rows per set, in plan order)."""
    if "data" not in model_node.inputs:
        return {}
    synth = plan.nodes[model_node.inputs["data"]]
    source = plan.nodes[synth.inputs["source"]]
    sm = reads.meta(synth.key)
    p = synth.spec
    out = {"source_arch": source.spec.arch, "source_stage": source.stage, "synth_key": synth.key,
           "synth_method": p.method}
    if p.method == "relabel":
        out.update(synth_norm=p.attack.norm, synth_eps=p.attack.eps, synth_steps=p.attack.steps,
                   hit_rate=sm.get("hit_rate"))
        if p.ensemble:  # bugs-only: how often every ensemble model still read the true label
            out["ensemble_keeps"] = sm.get("ensemble_keeps")
        # probes of this set other than its own source (and its ensemble, which the attack kept at the true
        # labels on purpose); a probe of the retrained model's arch first
        own = {source.key, *ensemble_keys(synth)}
        mine = [t for t in by_synth.get(synth.key, ()) if t["probe_key"] not in own]
        mine.sort(key=lambda t: t["probe_arch"] != model_node.spec.arch)
        for t in mine:
            if t["probe_train_set"] == "D_adv" and out.get("robust_reads_original") is None:
                out["robust_reads_original"] = t["original_rate"]
            if t["probe_train_set"] == "D" and out.get("transfer_rate") is None:
                out["transfer_rate"] = t["target_rate"]
    elif p.method == "wrong_labels":  # Wallace: the pool examined and the source's errors kept (= train_size)
        out.update(synth_pool_size=sm.get("pool_size"), synth_kept=sm.get("kept"))
    else:
        out.update(synth_norm="l2", synth_steps=p.inversion.steps)
    return out


def build_rows(plan: Plan, store: Store, *, _reads: _Reads | None = None,
               _transfers: list[dict] | None = None) -> list[dict]:
    """One row per finished evaluation, in plan order.

    The metas are read ROWS_CHUNK evaluations at a time (in parallel on an object store) and dropped after,
    except the synthesized sets', which many rows share and which are read once."""
    with gc_paused():
        return _build_rows(plan, _reads or _Reads(store), _transfers)


def _build_rows(plan: Plan, reads: _Reads, _transfers: list[dict] | None) -> list[dict]:
    transfers = transfer_rows(plan, reads.store, _reads=reads) if _transfers is None else _transfers
    by_synth: dict[str, list[dict]] = {}
    for t in transfers:
        by_synth.setdefault(t["synth_key"], []).append(t)
    evals = _done_nodes(plan, reads, "evaluate")
    rows = []
    for i in range(0, len(evals), ROWS_CHUNK):
        part = evals[i:i + ROWS_CHUNK]
        models = [plan.nodes[n.inputs["model"]] for n in part]
        reads.prefetch([n.key for n in part] + [m.key for m in models]
                       + [m.inputs["data"] for m in models if "data" in m.inputs])
        rows += [_row(plan, reads, node, model, by_synth) for node, model in zip(part, models)]
        reads.forget([n.key for n in part] + [m.key for m in models])
    return rows


def _is_seed(point_key: str) -> bool:
    """Whether a grid point's key is a seed (the model's or an upstream stage's ``seed``, or the whole-chain
    ``chain``): rows that differ only there are replicates of one setting, summarised over seeds."""
    return point_key.rpartition(".")[2] in ("seed", "chain")


def _row(plan: Plan, reads: _Reads, node, model, by_synth: dict[str, list[dict]]) -> dict:
    """The results row of one finished evaluation ``node`` of ``model``."""
    m = reads.meta(node.key)
    mm = reads.meta(model.key)
    row = {c: None for c in BASE_COLUMNS}
    setting = dumps_point({k: v for k, v in model.point.items() if not _is_seed(k)})
    row.update(sweep=plan.sweep.name, eval_key=node.key, eval_stage=node.stage, eval_label=node.label,
               setting=setting or "-", model_key=model.key, model_stage=model.stage,
               model_label=model.label, train_set=plan.train_set(model), train_size=mm["n_train"],
               target_arch=model.spec.arch, features=plan.features_of(model),
               features_label=getattr(plan.features_node(model), "label", None),
               seed=model.spec.seed, chain=model.point.get("chain", 0),
               clean_acc=m["clean_acc"],
               shifted_acc=m["shifted_acc"], worst_acc=m["worst_acc"], eval_n=m["n"])
    row.update(_synth_fields(plan, reads, model, by_synth))
    for r in m["robust"]:
        row[attack_column(r)] = r["acc"]
    balls = m.get("worst_by_ball")
    if balls is None and m["robust"]:  # written before worst_by_ball existed: recompute from the stored flags
        from sweeper.science.evaluation import worst_by_ball  # torch: only for such older stores

        t = reads.store.load_tensors(node.key)
        attacks = {a.name(): a for a in node.spec.attacks}
        balls = worst_by_ball(attacks, {k: t[f"robust.{k}"].bool() for k in attacks})
    for ball, w in (balls or {}).items():
        row[worst_column(ball)] = w["acc"]
        if w.get("gap") is not None:
            row[f"pgd_gap[{ball}]"] = w["gap"]
    return row


def to_csv(rows: list[dict]) -> str:
    cols: dict[str, None] = {}  # every row's columns, in order of first appearance
    for r in rows:
        cols.update(dict.fromkeys(r))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(cols))
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if v is None else v) for k, v in r.items()})
    return buf.getvalue()


def _arch(r: dict) -> str:
    """A row's (or a summary group's) arch as report.md shows it: ``linear probe of robust (D_adv)`` for a probe."""
    return f"{r['target_arch']} probe of {r['features']}" if r.get("features") else r["target_arch"]


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


# ------------------------------------------------------------------------------------ over seeds
# a row's group: the evaluation stage and everything about the model but its own seed (upstream grid values too)
# (``features``: a linear probe's features model, so probes never share a group with ordinary linear models)
GROUP = ["eval_stage", "model_stage", "setting", "train_set", "train_size", "target_arch", "features", "synth_eps"]


def _cols(rows: list[dict], prefix: str) -> list[str]:
    return sorted(c for c in set().union(*rows) if c.startswith(prefix))


def summary(rows: list[dict]):
    """Mean, std and count over seeds per group (``GROUP``) of every number of the rows (pandas DataFrame)."""
    from sweeper.report.figures import seed_summary

    vals = (["clean_acc", "shifted_acc", "eval_n", "n_trained"] + _cols(rows, "robust_worst[") + _cols(rows, "pgd_gap[")
            + _cols(rows, "robust_acc[") + ["hit_rate", "robust_reads_original", "transfer_rate"]
            + (["ensemble_keeps"] if any("ensemble_keeps" in r for r in rows) else []))
    # a wrong-labels set's size is the weak model's error count, which differs from chain to chain: its models
    # are grouped by the pool they were drawn from (train_size), their own counts are n_trained
    rows = [{**r, "n_trained": r["train_size"], **({"train_size": r["synth_pool_size"]}
                                                   if r.get("synth_pool_size") is not None else {})} for r in rows]
    summ = seed_summary(rows, GROUP, vals)
    # pandas stores a group column's None as NaN where others hold text: a NaN `features` would read as a probe
    summ["features"] = summ["features"].astype(object).where(summ["features"].notna(), None)
    return summ


def _pm(rec, col: str) -> str:
    """'75.3 ± 1.2%' (mean ± std over seeds), '75.3%' for one seed, '-' without a value."""
    import math

    m, sd = rec.get(f"{col}_mean"), rec.get(f"{col}_std")
    if m is None or (isinstance(m, float) and math.isnan(m)):
        return "-"
    return f"{100 * m:.1f}%" if sd is None or math.isnan(sd) else f"{100 * m:.1f} ± {100 * sd:.1f}%"


def _ball_label(col: str) -> str:
    """'robust_worst[l2_eps1]' -> 'l2 eps 1'."""
    norm, _, eps = col[col.index("[") + 1:-1].partition("_eps")
    return f"{norm} eps {eps}"


def _base_key(rec: dict) -> tuple:
    """What a D_R / D_NR group shares with its clean baseline (see :func:`claims`); NaN sizes never match."""
    size = rec["train_size"]
    if isinstance(size, float) and math.isnan(size):
        size = object()  # NaN == NaN is False in the comparison this replaces: match nothing
    return size, rec["target_arch"], rec.get("features"), rec["eval_stage"]


def claims(summ, num_classes: int) -> list[dict]:
    """The paper's claims checked on this sweep's numbers (means over seeds): D_R more and D_NR less robust than
    a clean model trained on the same number of real images (largest ball's worst case), D_rand and D_det above
    chance on the true labels; the Distill controls: D_wallace above chance (Wallace) and D_det_bugs not above it
    (Nakkiran). Each: {claim, here, paper, holds, seeds, ci, clear}; ``seeds``: how many of the
    (set seed, baseline seed) pairs, or of the seeds, agree with the claim (from the summary's ``<col>_values``),
    e.g. "4/4 pairs"; ``ci``: the 95% bootstrap interval of the difference or of the accuracy over seeds (whole
    chains where the sweep has ``chains:``) and test-set sampling (:mod:`sweeper.report.stats`); ``clear``:
    whether that interval lies wholly on the claimed side (of 0, or of chance)."""
    recs = summ.to_dict("records")
    worst = [c[:-len("_mean")] for c in summ.columns if c.startswith("robust_worst[") and c.endswith("_mean")]
    out = []
    largest: dict[str, str] = {}  # per norm, the ball with the largest eps
    for c in worst:
        norm = c[c.index("[") + 1:c.index("_eps")]
        if norm not in largest or float(c[c.index("_eps") + 4:-1]) > float(largest[norm][largest[norm].index("_eps") + 4:-1]):
            largest[norm] = c
    for col in largest.values():
        # the same number of real images, the same arch, scored by the same evaluate stage (same attacks): the
        # first such clean (D) group with a value, indexed once
        bases: dict[tuple, dict] = {}
        for b in recs:
            if b["train_set"] == "D" and not math.isnan(b[f"{col}_mean"]):
                bases.setdefault(_base_key(b), b)
        for ts, sign, paper in (("D_R", 1, "D_R 48.3% vs D 4.5%"), ("D_NR", -1, "D_NR 0.8% vs D 4.5%")):
            for r in (r for r in recs if r["train_set"] == ts):
                base = bases.get(_base_key(r))
                if base is None or math.isnan(r[f"{col}_mean"]):
                    continue
                d = r[f"{col}_mean"] - base[f"{col}_mean"]
                lo, hi = stats.diff_ci(r[f"{col}_values"], stats.group_n(r), base[f"{col}_values"], stats.group_n(base))
                pairs = [(a, b) for a in r[f"{col}_values"] for b in base[f"{col}_values"]]
                out.append({"claim": f"{ts} ({r['model_stage']}) {'more' if sign > 0 else 'less'} robust than the "
                                     f"same-size clean baseline ({base['model_stage']}, n={r['train_size']}), "
                                     f"{_ball_label(col)}",
                            "here": f"{_pm(r, col)} vs {_pm(base, col)}: {100 * d:+.1f} points",
                            "paper": paper, "holds": sign * d > 0,
                            "seeds": f"{sum(sign * (a - b) > 0 for a, b in pairs)}/{len(pairs)} pairs" if pairs
                            else None,
                            "ci": f"[{100 * lo:+.1f}, {100 * hi:+.1f}] points", "ci_low": lo, "ci_high": hi,
                            "clear": lo > 0 if sign > 0 else hi < 0})
    chance = 1.0 / max(num_classes, 1)
    for ts, paper in (("D_rand", "63.3% (CIFAR-10)"), ("D_det", "43.7% (CIFAR-10)")):
        # linear probes on a frozen representation (Goh's leakage test) are read in the Distill section, in the
        # article's direction (D_det should NOT be learnable through robust features), not as the paper's claim
        for r in (r for r in recs if r["train_set"] == ts and not r.get("features")):
            extra = f"; hit rate {_pm(r, 'hit_rate')}" if r.get("hit_rate_count") else ""
            accs = r["clean_acc_values"]
            lo, hi = stats.mean_ci(accs, stats.group_n(r))
            out.append({"claim": f"{ts} ({r['model_stage']}, {_arch(r)}) "
                                 f"above chance ({100 * chance:.0f}%) on the true test labels",
                        "here": _pm(r, "clean_acc") + extra, "paper": paper,
                        "holds": r["clean_acc_mean"] > chance,
                        "seeds": f"{sum(a > chance for a in accs)}/{len(accs)} seeds" if accs else None,
                        "ci": f"[{100 * lo:.1f}, {100 * hi:.1f}]%", "ci_low": lo, "ci_high": hi,
                        "clear": lo > chance})
    # the Distill discussion's controls: relabelling a weak model's errors, unperturbed, still teaches (Wallace);
    # a D_det whose perturbations an ensemble of other models does not read teaches almost nothing (Nakkiran)
    for ts, sign, paper in (("D_wallace", 1, "49.7% (Wallace, CIFAR-10)"),
                            ("D_det_bugs", -1, "2.5-2.8% (Nakkiran, CIFAR-10)")):
        for r in (r for r in recs if r["train_set"] == ts and not r.get("features")):
            accs = r["clean_acc_values"]
            lo, hi = stats.mean_ci(accs, stats.group_n(r))
            extra = (f"; hit rate {_pm(r, 'hit_rate')}" if r.get("hit_rate_count") else "") + (
                f"; ensemble keeps the true label on {_pm(r, 'ensemble_keeps')}" if r.get("ensemble_keeps_count")
                else "")  # a low hit rate: mostly unperturbed images with shifted labels, a vacuous "not above"
            above = r["clean_acc_mean"] > chance
            out.append({"claim": f"{ts} ({r['model_stage']}, {_arch(r)}) "
                                 f"{'above' if sign > 0 else 'not above'} chance ({100 * chance:.0f}%) on the true "
                                 "test labels",
                        "here": _pm(r, "clean_acc") + extra, "paper": paper,
                        "holds": above if sign > 0 else not above,
                        "seeds": f"{sum((a > chance) == (sign > 0) for a in accs)}/{len(accs)} seeds" if accs
                        else None,
                        "ci": f"[{100 * lo:.1f}, {100 * hi:.1f}]%", "ci_low": lo, "ci_high": hi,
                        "clear": lo > chance if sign > 0 else hi <= chance})
    return out


def markdown(plan: Plan, rows: list[dict], transfers: list[dict], pictures: dict | None = None,
             num_classes: int = 10, summ=None, after_claims: str = "") -> str:
    """report.md: the claims, the mean over seeds, every evaluation, then the Figure 2 / Table 1 analogues
    beside the paper's numbers, the evaluation's strength and the pictures of the constructed sets.
    ``summ``: ``summary(rows)`` when the caller has it already; ``after_claims``: a section to put right after
    the claims table (the Distill controls)."""
    ref = paper_reference()
    robust_cols = _cols(rows, "robust_acc[")
    lines = [f"# sweeper report: {plan.sweep.name}", "", plan.sweep.description or "", "",
             f"Dataset: {plan.sweep.data.dataset}; evaluated on {rows[0]['eval_n'] if rows else 0} test images.", ""]
    if rows:
        lines += _summary_lines(summary(rows) if summ is None else summ, rows, num_classes, after_claims)
    lines += ["## Every evaluation", ""]
    head = ["model", "train set", "n", "arch", "clean", "shifted (y+1)"] + robust_cols + ["hit rate",
            "robust model reads original", "transfer to independent model"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["model_label"], r["train_set"], str(r["train_size"]), _arch(r), _pct(r["clean_acc"]),
                 _pct(r["shifted_acc"])] + [_pct(r.get(c)) for c in robust_cols] + [
                 _pct(r["hit_rate"]), _pct(r["robust_reads_original"]), _pct(r["transfer_rate"])]
        lines.append("| " + " | ".join(cells) + " |")
    f2 = ref["figure2"]
    lines += ["", "## Figure 2 analogue (paper: CIFAR-10, ResNet-50, robust acc at "
              f"{f2['attack']['norm']} eps {f2['attack']['eps']}, {f2['attack']['steps']} steps)", "",
              "| train set | paper clean | paper robust | here clean | here robust (" +
              ", ".join(c[len('robust_acc['):-1] for c in robust_cols) + ") |", "|---|---|---|---|---|"]
    for pr in f2["rows"]:
        mine = [r for r in rows if r["train_set"] == pr["train_set"] and not r.get("features")]  # probes: below
        here_clean = ", ".join(_pct(r["clean_acc"]) + f" (n={r['train_size']})" for r in mine) or "-"
        here_rob = "; ".join("/".join(_pct(r.get(c)) for c in robust_cols) for r in mine) or "-"
        lines.append(f"| {pr['train_set']} | {_pct(pr['clean_acc'])} | {_pct(pr['robust_acc'])} | {here_clean} | "
                     f"{here_rob} |")
    lines += ["", "## Table 1 analogue (accuracy on the original test labels)", "",
              "| train set | paper CIFAR-10 | paper Restricted ImageNet | here (true labels) | here (shifted labels) |"
              " here hit rate |", "|---|---|---|---|---|---|"]
    for pr in ref["table1"]["rows"]:
        mine = [r for r in rows if r["train_set"] == pr["train_set"] and not r.get("features")]  # probes: below
        lines.append(f"| {pr['train_set']} | {_pct(pr['cifar10'])} | {_pct(pr['restricted_imagenet'])} | "
                     + ", ".join(_pct(r["clean_acc"]) for r in mine) + " | "
                     + ", ".join(_pct(r["shifted_acc"]) for r in mine) + " | "
                     + ", ".join(_pct(r["hit_rate"]) for r in mine) + " |")
    probes = [r for r in rows if r.get("features")]
    if probes:
        lines += ["", "## Feature leakage: linear probes on a frozen representation", "",
                  "A linear classifier on the frozen penultimate representation of the model named in `features` "
                  "(of an adversarially trained model: its robust features), trained on the set with the set's labels "
                  "(D_rand, D_det: the relabelled targets) and scored on the true test labels: above chance, the set "
                  "carries features that this representation reads as the true class. Goh's probe in the Distill "
                  "discussion restricted a linear classifier to robust linear directions of pixel space instead (as "
                  "we understand it; a narrower notion of robust feature) and read 23.5% on D_rand (leakage) and 6.8% "
                  "on D_det (none) on CIFAR-10, chance 10%.", "",
                  "| model | train set | features | true labels | shifted labels (y+1) |", "|---|---|---|---|---|"]
        lines += [f"| {r['model_label']} | {r['train_set']} | {r['features']} | {_pct(r['clean_acc'])} | "
                  f"{_pct(r['shifted_acc'])} |" for r in probes]
    if transfers:
        lines += ["", "## How other models read the relabelled sets", "",
                  "| set | probe | probe train set | reads target | reads original |", "|---|---|---|---|---|"]
        for t in transfers:
            lines.append(f"| {t['synth_label']} | {t['probe_label']} ({t['probe_arch']}) | {t['probe_train_set']} "
                         f"| {_pct(t['target_rate'])} | {_pct(t['original_rate'])} |")
    from sweeper.report.figures import transfer_fit, transfer_points

    pts = transfer_points(rows, transfers)
    if len({p["arch"] for p in pts}) >= 2:
        fit = transfer_fit(pts)
        lines += ["", "## Figure 3 analogue (D_det accuracy against transfer rate, per architecture)", "",
                  "| arch | transfer rate of the source's adversarial examples | D_det true-label accuracy (seeds) |",
                  "|---|---|---|"]
        for arch in dict.fromkeys(p["arch"] for p in pts):
            mine = [p for p in pts if p["arch"] == arch]
            lines.append(f"| {arch} | {_pct(sum(p['transfer_rate'] for p in mine) / len(mine))} | "
                         + ", ".join(_pct(p["test_acc"]) for p in mine) + " |")
        lines += ["", f"Least-squares line through the architecture means: slope {fit['slope']:.2f}, r = "
                      f"{fit['r']:.2f} over {fit['n_arch']} architectures (the paper's claim: positive). "
                      "figure3.png draws it."]
    if pictures:
        lines += ["", "## The constructed sets", "",
                  "Start image (relabelling: the real image attacked; inversion: the other image the optimisation "
                  "started from), the target image whose representation was matched (inversion), and the "
                  "synthesized image with its new label (red where it differs from the original).", ""]
        lines += [f"![{name}]({name})" for name in sorted(pictures)]
    lines += ["", "Regime guide: on D_det, accuracy on the true labels above chance is the paper's effect; a high "
              "shifted-label accuracy means the model learned y -> y+1 from robust features; a low hit rate or a "
              "robust model that still reads the original class means the perturbations did not carry the target.",
              "", "Paper numbers: sweeper/report/references/paper.yaml (with sources).", ""]
    return "\n".join(lines)


def _summary_lines(summ, rows: list[dict], num_classes: int, after_claims: str = "") -> list[str]:
    worst = _cols(rows, "robust_worst[")
    gaps = _cols(rows, "pgd_gap[")
    lines = ["## The paper's claims on this sweep", ""]
    cl = claims(summ, num_classes)
    if cl:
        lines += ["| claim | here (mean ± std over seeds) | 95% interval | paper | holds | seeds that agree |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {c['claim']} | {c['here']} | {c['ci']} | {c['paper']} | "
                  f"{('yes' if c['clear'] else 'yes, within noise') if c['holds'] else '**no**'} | "
                  f"{c['seeds'] or '-'} |" for c in cl]
        lines += ["", "Seeds that agree: for D_R and D_NR, the (set seed, baseline seed) pairs whose difference has "
                  "the claimed sign; for D_rand, D_det and D_wallace, the seeds above chance (D_det_bugs: not "
                  "above). 95% interval: a bootstrap over "
                  "the models' values (the retraining seeds of every chain where the sweep sets `chains:`, pooled) "
                  "and over test-set sampling (their mean redrawn as Binomial(n, mean) / n, one draw for the group: "
                  "they share the test images); a difference resamples both sides independently, which is "
                  "conservative. \"yes, within "
                  "noise\": the mean has the claimed sign but the interval reaches the other side."]
    else:
        lines += ["(no D_R, D_NR, D_rand or D_det evaluation with a same-size baseline yet)"]
    if after_claims:
        lines += after_claims.rstrip("\n").split("\n")
    head = ["model", "train set", "n", "arch", "seeds", "clean", "shifted (y+1)"] + [
        f"robust {_ball_label(c)} (worst case)" for c in worst] + ["hit rate", "transfer rate"]
    lines += ["", "## Mean ± std over seeds", "",
              "Robust accuracy is the per-example worst case over every attack listed for that ball (and the "
              "attacks of smaller balls of the same norm).", "",
              "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in summ.to_dict("records"):
        lines.append("| " + " | ".join([r["model_stage"], r["train_set"] or "-", str(r["train_size"]),
                                        _arch(r), str(len(r["seeds"]))]
                                       + [_pm(r, "clean_acc"), _pm(r, "shifted_acc")] + [_pm(r, c) for c in worst]
                                       + [_pm(r, "hit_rate"), _pm(r, "transfer_rate")]) + " |")
    if gaps:
        lines += ["", "## Evaluation strength", "",
                  "How much higher PGD alone reads than the worst case over every attack of its ball, per "
                  "evaluation (points of accuracy):", "", "| ball | attacks | mean gap | largest gap |", "|---|---|---|---|"]
        for g in gaps:
            vals = [r[g] for r in rows if r.get(g) is not None]
            n_att = sorted({len([c for c in r if c.startswith("robust_acc[")]) for r in rows if r.get(g) is not None})
            lines.append(f"| {_ball_label(g)} | {n_att[-1] if n_att else '-'} per evaluation | "
                         f"{100 * sum(vals) / len(vals):.1f} | {100 * max(vals):.1f} |")
    lines.append("")
    return lines


def _sample_synth(nodes: list) -> tuple[list, str | None]:
    """At most MAX_EXAMPLE_GRIDS of the finished synthesize nodes (all of them when there are no more), and a
    note saying how they were picked: every stage its share (round robin over the stages, in plan order),
    spread evenly over the stage's nodes (:func:`~sweeper.report.figures.pick_examples`); returned in plan order."""
    if len(nodes) <= MAX_EXAMPLE_GRIDS:
        return nodes, None
    from sweeper.report.figures import pick_examples

    by_stage: dict[str, list] = {}
    for nd in nodes:
        by_stage.setdefault(nd.stage, []).append(nd)
    share = dict.fromkeys(by_stage, 0)
    left = MAX_EXAMPLE_GRIDS
    while left:
        for st, members in by_stage.items():
            if left and share[st] < len(members):
                share[st] += 1
                left -= 1
    keep = {members[i].key for st, members in by_stage.items() for i in pick_examples(len(members), share[st])}
    picked = [nd for nd in nodes if nd.key in keep]
    return picked, (f"example grids drawn for {len(picked)} of the {len(nodes):,} synthesized sets (each stage its "
                    "share, evenly spread over its nodes); every set is in the store")


def pictures(plan: Plan, store: Store, n: int = 8, *,
             _reads: _Reads | None = None) -> tuple[dict[str, bytes], str | None]:
    """Example grids of the finished synthesize nodes ({"examples_<label>.png": png}; of a sample of
    MAX_EXAMPLE_GRIDS when there are more), and a note when they could not be drawn (the sweep's training
    images are not readable here) or were sampled."""
    from sweeper.science import data_store
    from sweeper.errors import DataNotFoundError
    import torch

    from sweeper.report.figures import class_names_for, example_grid, pick_examples

    nodes = _done_nodes(plan, _reads or _Reads(store), "synthesize")
    if not nodes:
        return {}, None
    nodes, sample_note = _sample_synth(nodes)
    try:
        train = data_store.load_split(plan.sweep.data, "train")
    except DataNotFoundError as e:
        return {}, f"example grids not drawn: {e}"
    if train.x.dim() != 4:
        return {}, None  # the theory toy: vectors, not images
    names = class_names_for(plan.sweep.data.dataset)
    out = {}
    for nd in nodes:
        t = store.load_tensors(nd.key)
        if len(t["y"]) == 0:  # a wrong_labels set whose source got its whole pool right: nothing to draw
            continue
        pick = torch.as_tensor(pick_examples(len(t["y"]), n), dtype=torch.long)
        inversion = nd.spec.method == "inversion"
        idx = t["index"][pick]
        if "start_index" in t:
            start_idx = t["start_index"][pick]
        else:  # written before start indices were stored: relabel starts at the image, inversion is unknown
            start_idx = torch.full_like(idx, -1) if inversion else idx
        start = train.x[start_idx.clamp_min(0)]
        start[start_idx < 0] = 0.0  # a start from noise (or an unknown one) has no image to show
        title = f"{nd.label}: {nd.spec.method} from {plan.nodes[nd.inputs['source']].label}"
        out[f"examples_{nd.label}.png"] = example_grid(
            start, t["x"][pick], t["orig_y"][pick], t["y"][pick], target=train.x[idx] if inversion else None,
            start_y=train.y[start_idx.clamp_min(0)] if inversion else None, class_names=names, n=len(pick),
            title=title)
    return out, sample_note


def _first_groups(summ, title: str):
    """(the first MAX_BAR_GROUPS groups of a summary, the title): a bar chart of more would be unreadable (and
    its PNG hundreds of thousands of pixels wide); the title says so, summary.csv has every group."""
    if len(summ) <= MAX_BAR_GROUPS:
        return summ, title
    return summ.head(MAX_BAR_GROUPS), (f"{title}\n(the first {MAX_BAR_GROUPS} of {len(summ):,} groups; summary.csv "
                                       "has all)")


def figures(rows: list[dict], transfers: list[dict], summ=None) -> dict[str, bytes]:
    """PNG bytes: Figure 2 and Table 1 analogues as bars of the mean over seeds with the std as error bars and
    each seed as a dot (the first MAX_BAR_GROUPS groups); Figure 3 (D_det accuracy against transfer rate) when
    two or more archs trained on D_det. ``summ``: ``summary(rows)`` when the caller has it already."""
    from sweeper.report.figures import bar_with_errors, transfer_figure, transfer_points

    out = {}
    if not rows:
        return out
    summ = summary(rows) if summ is None else summ
    worst = _cols(rows, "robust_worst[") or _cols(rows, "robust_acc[")
    f2, title = _first_groups(summ[summ["train_set"].isin(["D", "D_adv", "D_R", "D_NR"])],
                              "Figure 2 analogue: clean and worst-case robust accuracy")
    if len(f2):
        out["figure2.png"] = bar_with_errors(f2, value_cols=["clean_acc"] + worst,
                                             label_cols=["train_set", "model_stage", "train_size"], title=title)
    t1, title = _first_groups(summ[summ["train_set"].isin(["D", "D_rand", "D_det", "D_rand_bugs", "D_det_bugs",
                                                                "D_wallace"])],
                              "Table 1 analogue: true-label and shifted-label (y+1) accuracy")
    if len(t1):
        out["table1.png"] = bar_with_errors(t1, value_cols=["clean_acc", "shifted_acc"],
                                            label_cols=["train_set", "model_stage", "train_size"], title=title)
    pts = transfer_points(rows, transfers)
    if len({p["arch"] for p in pts}) >= 2:
        out["figure3.png"] = transfer_figure(pts)  # the paper's CIFAR-10 points are in report.md, not on this axis
    return out


# ------------------------------------------------------------------------------------ fourier
MAX_FOURIER_PANELS = 24  # heatmaps drawn in fourier.png (the first, in plan order); fourier.json lists every node
FOURIER_FIELDS = ("clean_error", "mean_error", "low_freq_error", "high_freq_error")


def fourier_rows(plan: Plan, store: Store, *, _reads: _Reads | None = None) -> list[dict]:
    """One entry per finished fourier node, in plan order: the model it probed (``model_label``, ``train_set``
    as :meth:`Plan.train_set` names it, ``arch``, ``seed``), the noise (``eps``: L2 norm per channel, ``n``
    test images) and the heatmap's summaries (``clean_error``, ``mean_error``, ``low_freq_error``,
    ``high_freq_error``: :func:`sweeper.science.fourier.band_errors`)."""
    out = []
    for node, m in _each_done(plan, _reads or _Reads(store), "fourier"):
        model = plan.nodes[node.inputs["model"]]
        out.append({"fourier_key": node.key, "fourier_stage": node.stage, "fourier_label": node.label,
                    "model_key": model.key, "model_stage": model.stage, "model_label": model.label,
                    "train_set": plan.train_set(model), "arch": model.spec.arch, "seed": model.spec.seed,
                    "eps": m["eps"], "n": m["n"], **{k: m[k] for k in FOURIER_FIELDS}, "bands": m.get("bands")})
    return out


def fourier_png(store: Store, entries: list[dict]) -> bytes | None:
    """fourier.png: the heatmaps of the first MAX_FOURIER_PANELS ``entries`` (:func:`fourier_rows`) side by side
    on one colour scale, each titled with its model's training set and arch (and label); None without any."""
    if not entries:
        return None
    from sweeper.report.figures import fourier_figure

    shown = entries[:MAX_FOURIER_PANELS]
    panels = [(f"{e['train_set']} {e['arch']}\n{e['model_label']}", store.load_tensors(e["fourier_key"])["heatmap"])
              for e in shown]
    eps = [e["eps"] for e in shown]
    title = "Fourier sensitivity: error under additive Fourier-basis noise (centre: low frequencies)"
    if len(entries) > len(shown):
        title += f"\n(the first {len(shown)} of {len(entries):,} heatmaps; fourier.json lists all)"
    return fourier_figure(panels, eps=eps[0] if len(set(eps)) == 1 else eps, title=title)


def fourier_markdown(entries: list[dict]) -> str:
    """report.md's ``Fourier sensitivity`` section ('' without fourier nodes)."""
    if not entries:
        return ""
    from sweeper.science.fourier import HIGH_BAND, LOW_BAND

    lines = ["", "## Fourier sensitivity", "",
             "The control of Gilmer & Hendrycks in the Distill discussion of the paper (after Yin et al. 2019): "
             "each model's error on the first n test images under x + s * eps * U_ij, clipped to [0,1], for every "
             "2-D Fourier basis image U_ij (a cosine of unit L2 norm, the same in every channel; s a random sign "
             "per image). fourier.png draws the error at each frequency, the zero frequency in the centre, on one "
             f"colour scale. Low frequencies: normalised radius <= {LOW_BAND:.2g}; high: > {HIGH_BAND:.2g} "
             "(radius 1 = the Nyquist frequency of an axis). Clipping can leave a perturbation shorter than eps.",
             "", "| model | train set | arch | eps | n | clean error | mean error | low-frequency error | "
             "high-frequency error |", "|---|---|---|---|---|---|---|---|---|"]
    for e in entries:
        lines.append(f"| {e['model_label']} | {e['train_set']} | {e['arch']} | {e['eps']:g} | {e['n']} | "
                     f"{_pct(e['clean_error'])} | {_pct(e['mean_error'])} | {_pct(e['low_freq_error'])} | "
                     f"{_pct(e['high_freq_error'])} |")
    lines += ["", "![fourier](fourier.png)", ""]
    return "\n".join(lines)


def write_report(plan: Plan, store: Store, metas: dict[str, dict] | None = None) -> dict:
    """Write every report file under ``reports/<sweep>/``; returns {name: store path}. ``metas``: {key: meta}
    of the plan's done nodes (``done_metas``; ``sweeper report`` has them already, and the report takes the
    dict over), else each node's manifest is read once. A plan made without its data (provisional keys) is
    refused (DataNotFoundError): its report would be empty and replace the real one."""
    plan.require_data()
    # tens of thousands of metas, rows and cells, none in a cycle: the collector's passes over them cost more than
    # it could free (the figures are cycles, but at most MAX_EXAMPLE_GRIDS + 3 of them; freed when it resumes)
    with gc_paused():
        return _write_report(plan, store, metas)


def _write_report(plan: Plan, store: Store, metas: dict[str, dict] | None) -> dict:
    from sweeper.science import data_store
    from sweeper.errors import DataNotFoundError

    reads = _Reads(store, metas)
    transfers = transfer_rows(plan, store, _reads=reads)
    rows = build_rows(plan, store, _reads=reads, _transfers=transfers)
    summ = summary(rows) if rows else None
    base = f"reports/{plan.sweep.name}"
    written = {}
    try:  # data.root: store -> the pushed copy, for the pictures and the class count
        plan = data_store.resolve_data_root(plan, store)
        pics, note = pictures(plan, store, _reads=reads)
    except DataNotFoundError as e:
        pics, note = {}, f"example grids not drawn: {e}"
    try:
        num_classes = data_store.load_split(plan.sweep.data, "test").num_classes
    except DataNotFoundError:  # only sets the chance level quoted in the claims
        num_classes = 10
    except ValueError:  # data.root: store not pushed (said in the note above)
        num_classes = 10
    fourier = fourier_rows(plan, store, _reads=reads)
    controls = distill.controls(summ, fourier, paper_reference()["distill"]["rows"], num_classes)
    md = (markdown(plan, rows, transfers, pics, num_classes, summ=summ, after_claims=distill.markdown(controls))
          + fourier_markdown(fourier) + (f"\n{note}\n" if note else ""))
    summ_csv = summ.to_csv(index=False) if rows else ""
    texts = {"results.csv": to_csv(rows), "results.json": json.dumps(rows, indent=1),
             "summary.csv": summ_csv, "transfer.csv": to_csv(transfers), "report.md": md}
    if fourier:
        texts["fourier.json"] = json.dumps(fourier, indent=1)
    if controls:
        texts["distill.json"] = json.dumps(controls, indent=1)
    for name, text in texts.items():
        store.write_bytes(f"{base}/{name}", text.encode())
        written[name] = store.path(base, name)
    fourier_pic = fourier_png(store, fourier)
    for name, png in {**figures(rows, transfers, summ=summ), **pics,
                      **({"fourier.png": fourier_pic} if fourier_pic else {})}.items():
        store.write_bytes(f"{base}/{name}", png)
        written[name] = store.path(base, name)
    return written
