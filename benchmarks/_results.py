"""Where the benchmarks' figures go: `benchmarks/results/<bench>.json` and the combined `results/README.md`.

Each script keeps printing what it measured and then calls `record()` with its key figures (the ratios and
shares it already computes) and, optionally, the table it printed. `record()` adds what is needed to read the
figures later: the UTC date, the machine (CPU count, CPU model, total memory; no hostname), the Python and
package versions, the git commit and whether the tree was dirty, and the command that produced them. The JSON
also holds the Markdown block shown for the benchmark; `results/README.md` is rebuilt from all the JSON files
each time, one section (and table) per benchmark, so re-running one benchmark refreshes only its section.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
ORDER = ("bench_pgd", "bench_training", "bench_shards", "bench_tune", "bench_store", "bench_scale_utilisation",
         "bench_scale_trials", "bench_scale_plan")  # the order of `make bench`
PACKAGES = ("torch", "ray", "wandb", "pyarrow")
_LOAD_AT_START = os.getloadavg()[0] if hasattr(os, "getloadavg") else None  # when the benchmark imported this


def _git(*args: str) -> Optional[str]:
    try:
        r = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return r.stdout.strip() if r.returncode == 0 else None


def _version(dist: str) -> Optional[str]:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu_model() -> Optional[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _mem_gib() -> Optional[float]:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)  # kB -> GiB
    except (OSError, ValueError, IndexError):
        pass
    return None


def machine() -> dict[str, Any]:
    """Facts about the machine, without its name."""
    facts: dict[str, Any] = {"cpu_count": os.cpu_count(), "cpu_model": _cpu_model(), "mem_total_gib": _mem_gib(),
                             "os": f"{platform.system()} {platform.release()}", "arch": platform.machine()}
    if hasattr(os, "sched_getaffinity"):
        facts["cpus_usable"] = len(os.sched_getaffinity(0))
    if _LOAD_AT_START is not None:  # a shared machine: how busy it was (1-minute load average, this run included)
        facts["loadavg_1m"] = {"start": round(_LOAD_AT_START, 2), "end": round(os.getloadavg()[0], 2)}
    torch = sys.modules.get("torch")  # only if the benchmark imported it; never imported here
    if torch is not None and torch.cuda.is_available():
        facts["gpu"] = torch.cuda.get_device_name(0)
    return facts


def provenance(extra_packages: Sequence[str] = ()) -> dict[str, Any]:
    sha = _git("rev-parse", "--short", "HEAD")
    # results/ itself is left out: writing the figures must not mark the next run's tree dirty
    status = _git("status", "--porcelain", "--", ".", ":(exclude)benchmarks/results") if sha else None
    argv = [os.path.relpath(sys.argv[0], ROOT) if sys.argv and sys.argv[0] else "?", *sys.argv[1:]]
    return {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": "python " + shlex.join(argv),
        "git": {"commit": sha, "dirty": None if status is None else bool(status)},
        "python": platform.python_version(),
        "versions": {d: _version(d) for d in (*PACKAGES, *extra_packages)},
        "machine": machine(),
    }


def _fmt(v: Any) -> str:
    if isinstance(v, float):  # as the script rounded it
        return f"{v:,}"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    return str(v)


def _facts_line(p: dict[str, Any]) -> str:
    m, g = p["machine"], p["git"]
    cpus = f"{m['cpu_count']} CPUs" + (f" ({m['cpus_usable']} usable)" if m.get("cpus_usable") not in
                                       (None, m["cpu_count"]) else "")
    mach = ", ".join(x for x in (cpus, m.get("cpu_model"), m.get("mem_total_gib") and f"{m['mem_total_gib']} GiB RAM",
                                 m.get("gpu")) if x)
    if m.get("loadavg_1m"):
        mach += f"; load average {m['loadavg_1m']['start']:.1f} at start, {m['loadavg_1m']['end']:.1f} at end"
    vers = ", ".join(f"{k} {v}" for k, v in p["versions"].items() if v)
    commit = "no git" if g["commit"] is None else g["commit"] + (" (dirty tree)" if g["dirty"] else " (clean tree)")
    return "\n".join([f"- date: {p['date_utc']}", f"- machine: {mach}", f"- Python {p['python']}, {vers}",
                      f"- commit {commit}", f"- command: `{p['command']}`"])


def markdown(doc: dict[str, Any]) -> str:
    """The readable block for one benchmark: title, facts, its table, its key figures."""
    out = [f"## {doc['bench']}", ""] + ([doc["title"], ""] if doc.get("title") else [])
    out += [_facts_line(doc["provenance"]), ""]
    if doc.get("params"):
        out += ["Settings: " + ", ".join(f"{k} {_fmt(v)}" for k, v in doc["params"].items()), ""]
    records = {k: v for k, v in doc["figures"].items()  # a figure that is a list of records is shown as a table
               if isinstance(v, list) and v and all(isinstance(r, dict) for r in v)}
    tables = list(doc.get("tables", [])) + [
        {"title": f"{k}:", "header": list(v[0]), "rows": [[r.get(c, "") for c in v[0]] for r in v]}
        for k, v in records.items()]
    for t in tables:
        if t.get("title"):
            out += [t["title"], ""]
        out += ["| " + " | ".join(t["header"]) + " |", "|" + "---|" * len(t["header"])]
        out += ["| " + " | ".join(_fmt(c) for c in row) + " |" for row in t["rows"]]
        out.append("")
    scalars = {k: v for k, v in doc["figures"].items() if k not in records}
    if scalars:
        out += ["| key figure | value |", "|---|---|"]
        out += [f"| {k} | **{_fmt(v)}** |" for k, v in scalars.items()]
    out += [""] + [f"{n}" for n in doc.get("notes", [])]
    return "\n".join(out).strip() + "\n"


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def refresh_readme(results: Path = RESULTS) -> Path:
    docs = {}
    for f in results.glob("*.json"):
        try:
            docs[f.stem] = json.loads(f.read_text())
        except (OSError, ValueError):
            continue
    names = [n for n in ORDER if n in docs] + sorted(n for n in docs if n not in ORDER)
    head = ("# Benchmark results\n\nWritten by `make bench` (each `benchmarks/bench_*.py` writes its own "
            "`<bench>.json` and refreshes its section here); the method of each is in `../README.md`. These are "
            "the figures the READMEs quote. Speeds are of a shared machine: compare the ratios within one "
            "benchmark, not absolute times across runs.\n")
    _write(results / "README.md", "\n".join([head, *(markdown(docs[n]) for n in names)]))
    return results / "README.md"


def record(bench: str, figures: dict[str, Any], *, title: str = "", params: Optional[dict[str, Any]] = None,
           tables: Sequence[dict[str, Any]] = (), notes: Sequence[str] = (), extra_packages: Sequence[str] = (),
           results: Path = RESULTS) -> Path:
    """Write `results/<bench>.json` and refresh `results/README.md`; print where they went.

    figures: the key figures (name -> number), as the script computed them; a list of records (dicts) is
        shown as a table.
    tables: [{"title": str (optional), "header": [...], "rows": [[...], ...]}], the table(s) it printed.
    """
    results.mkdir(parents=True, exist_ok=True)
    doc: dict[str, Any] = {"bench": bench, "title": title, "provenance": provenance(extra_packages),
                           "params": dict(params or {}), "figures": dict(figures),
                           "tables": [dict(t, rows=[list(r) for r in t["rows"]]) for t in tables], "notes": list(notes)}
    doc["markdown"] = markdown(doc)
    path = results / f"{bench}.json"
    _write(path, json.dumps(doc, indent=2) + "\n")
    readme = refresh_readme(results)
    print(f"results: {os.path.relpath(path)} and {os.path.relpath(readme)}", flush=True)
    return path


if __name__ == "__main__":  # rebuild results/README.md from the JSON files
    print(refresh_readme())
