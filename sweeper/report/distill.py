"""The report's "Distill controls" section: each control of the Distill discussion of the paper (Aug. 2019) that
the sweep ran, beside the article's number, with whether its direction holds here.

Read from the report's seed summary (:func:`sweeper.report.report.summary`) and its Fourier entries
(:func:`sweeper.report.report.fourier_rows`); the article's numbers are data (``references/paper.yaml``,
``distill``). Each row: ``control``, ``setting`` (which groups it compares), ``here`` (the numbers, with 95%
bootstrap intervals over seeds and test-set sampling, :mod:`sweeper.report.stats`), ``distill`` (the article's
number, CIFAR-10), ``direction`` (what the article says should happen), ``holds`` (the means go that way) and
``clear`` (the intervals do too: separated, or clear of chance; None where there is no interval)."""
from __future__ import annotations

import math

from sweeper.report import stats


def _pct(v) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f}%"


def _mean(rec: dict, col: str):
    v = rec.get(f"{col}_mean")
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def _acc(rec: dict) -> tuple[float, float, float, str]:
    """(mean, low, high, 'm% [lo, hi]') of a group's true-label accuracy."""
    lo, hi = stats.mean_ci(rec["clean_acc_values"], stats.group_n(rec))
    m = float(rec["clean_acc_mean"])
    return m, lo, hi, f"{100 * m:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}]"


def _is_probe(rec: dict) -> bool:
    return bool(rec.get("features"))  # summary() keeps a non-probe's features None (not pandas' NaN)


def _eps(rec: dict):
    e = rec.get("synth_eps")
    return None if e is None or (isinstance(e, float) and math.isnan(e)) else float(e)


def _row(ref: dict, control: str, setting: str, here: str, holds: bool, clear) -> dict:
    r = next((x for x in ref if x["control"] == control), {})
    return {"control": control, "setting": setting, "here": here, "distill": r.get("number", "-"),
            "direction": r.get("direction", "-"), "holds": bool(holds), "clear": clear}


def bugs_only(recs: list[dict], ref: list[dict]) -> list[dict]:
    """Nakkiran: each D_det_bugs model group beside an ordinary D_det group with the same budget (eps), arch and
    evaluation stage (the first such; a sweep makes both from one source): the bugs-only set should teach less
    (and transfer less)."""
    out = []
    for b in (r for r in recs if r["train_set"] == "D_det_bugs" and not _is_probe(r)):
        same = [d for d in recs if d["train_set"] == "D_det" and not _is_probe(d)
                and _eps(d) == _eps(b) and d["target_arch"] == b["target_arch"]
                and d["eval_stage"] == b["eval_stage"]]
        bm, _, _, btext = _acc(b)
        here = (f"D_det_bugs {btext}; hit rate {_pct(_mean(b, 'hit_rate'))}, ensemble keeps y on "
                f"{_pct(_mean(b, 'ensemble_keeps'))}, transfer {_pct(_mean(b, 'transfer_rate'))}")
        if not same:
            out.append(_row(ref, "bugs_only", f"{b['model_stage']} (no ordinary D_det of the same eps and arch)",
                            here, False, None))
            continue
        d = same[0]
        dm, _, _, dtext = _acc(d)
        lo, _hi = stats.diff_ci(d["clean_acc_values"], stats.group_n(d), b["clean_acc_values"], stats.group_n(b))
        bt, dt = _mean(b, "transfer_rate"), _mean(d, "transfer_rate")
        here += f"; vs D_det {dtext}, transfer {_pct(dt)}"
        holds = bm < dm and (bt is None or dt is None or bt < dt)
        out.append(_row(ref, "bugs_only", f"{b['model_stage']} vs {d['model_stage']} ({b['target_arch']}, "
                                          f"eps {_eps(b):g})", here, holds, lo > 0))
    return out


def leakage(recs: list[dict], ref: list[dict], chance: float) -> list[dict]:
    """Goh: linear probes on a frozen robust representation trained on D_rand and on D_det (one row per D_det
    eps): D_rand should leak (above chance), D_det should not (at chance: then it is clean evidence)."""
    probes = [r for r in recs if _is_probe(r)]
    out = []
    for rnd in (r for r in probes if r["train_set"] == "D_rand"):
        rm, rlo, _, rtext = _acc(rnd)
        dets = sorted((d for d in probes if d["train_set"] == "D_det" and d["features"] == rnd["features"]
                       and d["target_arch"] == rnd["target_arch"]), key=lambda d: _eps(d) or 0.0)
        for d in dets or [None]:
            if d is None:
                out.append(_row(ref, "leakage", f"{rnd['model_stage']} (no D_det probe)",
                                f"probe on D_rand {rtext}", rm > chance, rlo > chance))
                continue
            dm, dlo, _, dtext = _acc(d)
            _, _, dhi, _ = _acc(d)
            here = (f"probe on D_rand {rtext}; on D_det {dtext} (D_det hit rate {_pct(_mean(d, 'hit_rate'))}, "
                    f"robust model reads the original class on {_pct(_mean(d, 'robust_reads_original'))}); "
                    f"D_det {'no leakage measured: clean evidence' if dlo <= chance else 'leaks: not clean evidence'}"
                    " at this eps")
            # the article's direction: D_rand learnable through robust features, D_det not (at or below chance);
            # clear: D_rand's interval above chance, D_det's reaching chance and wholly below D_rand's
            out.append(_row(ref, "leakage", f"{rnd['model_stage']} vs {d['model_stage']}, features "
                                            f"{d['features']}, D_det eps {_eps(d):g}",
                            here, rm > chance and dm <= chance, rlo > chance and dlo <= chance and dhi < rlo))
    return out


def wrong_labels(recs: list[dict], ref: list[dict], chance: float) -> list[dict]:
    """Wallace: a model trained on a weak model's wrong labels (unperturbed images) should be above chance."""
    out = []
    for w in (r for r in recs if r["train_set"] == "D_wallace" and not _is_probe(r)):
        m, lo, _, text = _acc(w)
        kept = _mean(w, "n_trained")
        out.append(_row(ref, "wrong_labels", f"{w['model_stage']} ({w['target_arch']}; {kept:.0f} images kept of a "
                                             f"pool of {w['train_size']})" if kept is not None else
                        f"{w['model_stage']} ({w['target_arch']})", f"{text} (chance {100 * chance:.0f}%)",
                        m > chance, lo > chance))
    return out


def _band(entries: list[dict], train_set: str, col: str):
    vals = [e[col] for e in entries if e["train_set"] == train_set]
    return sum(vals) / len(vals) if vals else None


def fourier(entries: list[dict], ref: list[dict]) -> list[dict]:
    """Gilmer and Hendrycks: the adversarially trained model's error should fall at high frequencies and rise at
    low ones, against the standard model's (means over each training set's heatmaps). And, sweeper's own reading
    of the paper's claim: a model trained on D_R should be less sensitive at high frequencies than one trained on
    D_NR (robust features carry the robust model's frequency profile)."""
    out = []
    hi = {ts: _band(entries, ts, "high_freq_error") for ts in ("D", "D_adv", "D_R", "D_NR")}
    lo = {ts: _band(entries, ts, "low_freq_error") for ts in ("D", "D_adv", "D_R", "D_NR")}
    if hi["D"] is not None and hi["D_adv"] is not None:
        out.append(_row(ref, "fourier", "D_adv vs D",
                        f"high-frequency error {_pct(hi['D_adv'])} vs {_pct(hi['D'])}; low-frequency error "
                        f"{_pct(lo['D_adv'])} vs {_pct(lo['D'])}", hi["D_adv"] < hi["D"] and lo["D_adv"] > lo["D"],
                        None))
    if hi["D_R"] is not None and hi["D_NR"] is not None:
        row = _row(ref, "fourier", "D_R vs D_NR (sweeper's reading, not the article's claim)",
                   f"high-frequency error {_pct(hi['D_R'])} vs {_pct(hi['D_NR'])}; low-frequency error "
                   f"{_pct(lo['D_R'])} vs {_pct(lo['D_NR'])}", hi["D_R"] < hi["D_NR"], None)
        row["direction"] = "a model trained on D_R is less sensitive to high-frequency noise than one trained on D_NR"
        out.append(row)
    return out


def controls(summ, fourier_entries: list[dict], ref: list[dict], num_classes: int) -> list[dict]:
    """Every Distill control row the sweep's results allow (see the module's docstring)."""
    recs = summ.to_dict("records") if summ is not None else []
    chance = 1.0 / max(num_classes, 1)
    return (bugs_only(recs, ref) + leakage(recs, ref, chance) + wrong_labels(recs, ref, chance)
            + fourier(fourier_entries, ref))


def markdown(rows: list[dict]) -> str:
    """report.md's ``The Distill controls`` section ('' when the sweep ran none)."""
    if not rows:
        return ""
    lines = ["", "## The Distill controls", "",
             "The controls of the Distill discussion of the paper (Aug. 2019), beside the article's numbers "
             "(CIFAR-10; this sweep's dataset and budgets differ, so compare directions, not values). Intervals: 95% "
             "bootstrap over the seeds and test-set sampling. Holds: the means go the article's way; clear: the "
             "intervals do too (separated, or clear of chance).", "",
             "| control | setting | here | Distill article | direction | holds | clear |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        clear = "-" if r["clear"] is None else ("yes" if r["clear"] else "no")
        r = {k: v.replace("|", "/") if isinstance(v, str) else v for k, v in r.items()}  # a cell never splits
        lines.append(f"| {r['control']} | {r['setting']} | {r['here']} | {r['distill']} | {r['direction']} | "
                     f"{'yes' if r['holds'] else '**no**'} | {clear} |")
    return "\n".join(lines) + "\n"
