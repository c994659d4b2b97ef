"""The plan: a DAG of unique nodes with content keys, a pure function of the sweep file.

A node's key hashes what it computes (kind, resolved params, input keys, data section, CODE_VERSION), never
where or how it runs (`run:`), nor stage names: two stages or grid points that compute the same thing share
one node. No Ray, no torch here.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field

from .spec import EvaluateStage, Sweep, SynthesizeStage, TrainStage, TransferStage, dumps_point, topo_order

CODE_VERSION = "1"
KINDS = ("train", "synthesize", "evaluate", "transfer")
# routing fields: represented by the input keys, so they do not enter the key
_ROUTING = ("from_", "models")


@dataclass(frozen=True)
class Node:
    key: str
    kind: str
    stage: str
    stages: tuple[str, ...]
    params: dict
    inputs: dict[str, str]
    point: dict
    label: str


def node_key(kind: str, params: dict, inputs: dict, data: dict) -> str:
    """16 hex chars of sha256 over canonical JSON {kind, params, inputs, data, version}."""
    body = {"kind": kind, "params": {k: v for k, v in params.items() if k not in _ROUTING},
            "inputs": inputs, "data": data, "version": CODE_VERSION}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class Plan:
    sweep: Sweep
    nodes: dict[str, Node] = field(default_factory=dict)  # topological order

    def robust_curve(self, node) -> dict | None:
        """How a training node measures robust accuracy during training (``run.robust_curve``), or None.

        {"size", "every", "attack"}: the attack is the sweep's evaluation attack for this model (the first
        attack of the evaluate node that scores it, else of any evaluate node), unless the file names one.
        """
        rc = self.sweep.run.robust_curve
        if node.kind != "train" or rc.size == 0:
            return None
        if rc.attack != "auto":
            attack = rc.attack.model_dump()
        else:
            evals = [n for n in self.nodes.values() if n.kind == "evaluate" and n.params.get("attacks")]
            mine = [n for n in evals if n.inputs.get("model") == node.key]
            if not (mine or evals):
                return None
            attack = dict((mine or evals)[0].params["attacks"][0])
        epochs = int(node.params["train"]["epochs"])
        every = max(1, -(-epochs // 10)) if rc.every == "auto" else int(rc.every)
        return {"size": int(rc.size), "every": every, "attack": attack}

    def depths(self) -> dict[str, int]:
        d: dict[str, int] = {}
        for k, n in self.nodes.items():  # inputs come first
            d[k] = 1 + max((d[i] for i in n.inputs.values()), default=-1)
        return d

    def waves(self) -> list[list[Node]]:
        """Nodes grouped by longest-path depth: wave i depends only on waves < i."""
        depth = self.depths()
        out: list[list[Node]] = [[] for _ in range(max(depth.values(), default=-1) + 1)]
        for k, n in self.nodes.items():
            out[depth[k]].append(n)
        return out

    def counts(self) -> dict[str, int]:
        c = {k: 0 for k in KINDS}
        for n in self.nodes.values():
            c[n.kind] += 1
        return c

    def render(self, done: set[str] = frozenset()) -> str:
        """A table of nodes (key, kind, label, inputs, status), then edge and per-kind counts."""
        rows = [("key", "kind", "label", "inputs", "status")]
        for n in self.nodes.values():
            ins = ", ".join(f"{r}={self.nodes[k].label}" for r, k in n.inputs.items()) or "-"
            rows.append((n.key, n.kind, n.label, ins, "done" if n.key in done else "todo"))
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r[:4], widths)) + "  " + r[4] for r in rows]
        edges = sum(len(n.inputs) for n in self.nodes.values())
        n_done = sum(1 for k in self.nodes if k in done)
        per_kind = ", ".join(f"{k} {v}" for k, v in self.counts().items())
        lines += ["", f"sweep {self.sweep.name}: {len(self.nodes)} nodes, {edges} edges, {len(self.waves())} waves; "
                  f"{per_kind}; done {n_done}/{len(self.nodes)}"]
        return "\n".join(lines)


def _params(model, sweep: Sweep) -> dict:
    p = model.model_dump(by_alias=False)
    if "seed" in p:
        p["seed"] = sweep.seed if p["seed"] is None else p["seed"]
    return p


def build_plan(sweep: Sweep) -> Plan:
    """Expand every stage over its grid points and its upstream nodes; identical keys share a node."""
    plan = Plan(sweep=sweep)
    # the sweep seed picks the real-data subsets, so it is part of what every node computes
    data = {**sweep.data.model_dump(), "sweep_seed": sweep.seed}
    by_stage: dict[str, list[str]] = {}
    full: dict[str, dict] = {}  # key -> point with every key prefixed by its stage (for downstream nodes)

    def add(stage: str, kind: str, params: dict, inputs: dict, own: dict) -> None:
        key = node_key(kind, params, inputs, data)
        up = {k: v for i in inputs.values() for k, v in full[i].items()}
        if key in plan.nodes:
            old = plan.nodes[key]
            if stage not in old.stages:
                plan.nodes[key] = dataclasses.replace(old, stages=old.stages + (stage,))
        else:
            label = f"{stage}[{dumps_point(own)}]" if own else stage
            plan.nodes[key] = Node(key=key, kind=kind, stage=stage, stages=(stage,), params=params,
                                   inputs=dict(inputs), point={**up, **own}, label=label)
            full[key] = {**up, **{f"{stage}.{k}": v for k, v in own.items()}}
        if key not in by_stage.setdefault(stage, []):
            by_stage[stage].append(key)

    for name in topo_order(sweep):
        for own, model in sweep.points[name]:
            params = _params(model, sweep)
            if isinstance(model, TrainStage):
                if model.from_ is None:
                    add(name, "train", params, {}, own)
                for u in by_stage.get(model.from_, []) if model.from_ else []:
                    add(name, "train", params, {"data": u}, own)
            elif isinstance(model, SynthesizeStage):
                for u in by_stage[model.from_]:
                    add(name, "synthesize", params, {"source": u}, own)
            elif isinstance(model, EvaluateStage):
                for src in model.sources:
                    for u in by_stage[src]:
                        add(name, "evaluate", {**params, "from_": src}, {"model": u}, own)
            elif isinstance(model, TransferStage):
                for s in by_stage[model.from_]:
                    for m in model.models:
                        for u in by_stage[m]:
                            add(name, "transfer", params, {"data": s, "model": u}, own)
    return plan
