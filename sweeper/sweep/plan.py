"""The plan: a DAG of unique nodes with content keys, a pure function of the sweep file (and its data's checksum).

A node holds its typed stage model (``node.spec``, seed resolved). Its key hashes what it computes (kind,
that model, input keys, the data's identity, CODE_VERSION), never where or how it runs (``run:``), nor stage
names, nor where the data is read from (``data.root``: the identity is the data's content,
:mod:`sweeper.sweep.data_id`): two stages or grid points that compute the same thing share one node. No Ray, no torch.
"""
from __future__ import annotations

import gc
import hashlib
import json
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from sweeper.sweep.data_id import identity
from sweeper.errors import DataNotFoundError, SpecError
from sweeper.sweep.schema import (CHAIN_STRIDE, KINDS, AttackConfig, EvaluateStage, Stage, Sweep, SynthesizeStage, TrainStage,
                     TransferStage, FourierStage)
from sweeper.sweep.spec import dumps_point, topo_order

CODE_VERSION = "1"
# routing fields: represented by the input keys, so they do not enter the key
_ROUTING = {"from_", "models", "features", "ensemble"}


@contextmanager
def gc_paused():
    """Pause Python's cyclic garbage collector while a plan or a report builds tens of thousands of small
    objects without cycles (nodes, parsed metas, rows): its collections, repeated as the heap grows, cost a
    quarter of the time otherwise. Its state is restored after, so nesting is harmless."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


@dataclass(frozen=True)
class RobustCurve:
    """Robust accuracy during training (``run.robust_curve``): ``attack`` on the first ``size`` test images,
    every ``every`` epochs and at the last one. A run setting: never part of a key."""
    size: int
    every: int
    attack: AttackConfig

    def dump(self) -> dict:
        return {"size": self.size, "every": self.every, "attack": self.attack.model_dump()}


@dataclass(frozen=True)
class Node:
    key: str
    kind: str
    stage: str                 # the first stage that asked for it
    stages: tuple[str, ...]    # every stage that asked for it
    spec: Stage                # the stage model at this grid point, seed resolved
    inputs: dict[str, str]     # role -> input key
    point: dict                # grid values, own and upstream ("stage.key" for upstream ones)
    label: str                 # unique in the plan: stage[point], with its inputs' labels where that repeats
    robust_curve: Optional[RobustCurve] = None


def node_key(kind: str, spec: Stage, inputs: dict, data: dict) -> str:
    """16 hex chars of sha256 over canonical JSON {kind, params, inputs, data, version}; params is the stage
    model's dump without its routing fields (``from``, ``models``)."""
    body = {"kind": kind, "params": spec.model_dump(exclude=_ROUTING), "inputs": inputs, "data": data,
            "version": CODE_VERSION}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def seed_for(*parts: Any) -> int:
    """A 63-bit seed derived from any parts (sweep seed, node key, shard index...)."""
    h = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(h[:8], "little") & ((1 << 63) - 1)


@dataclass
class Plan:
    sweep: Sweep
    nodes: dict[str, Node] = field(default_factory=dict)  # topological order
    data: dict = field(default_factory=dict)  # what every key hashes about the data (data_identity)
    data_error: Optional[str] = None  # why the data's checksum is unknown: then the keys are provisional

    def require_data(self) -> None:
        """Raise DataNotFoundError (one line) when the plan was made without its data: its keys are provisional
        (they hash no checksum), so nothing may be computed, stored or reported under them."""
        if self.data_error:
            raise DataNotFoundError(self.data_error)

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

    def train_set(self, node: Node) -> Optional[str]:
        """What a train node (or the model an evaluate or fourier node scores) was trained on: D or D_adv (real
        data, standard / adversarial training), D_R, D_NR, D_rand, D_det, D_det_bugs, D_rand_bugs or D_wallace
        (:meth:`set_kind`); None for other nodes."""
        if node.kind in ("evaluate", "fourier"):
            node = self.nodes[node.inputs["model"]]
        if node.kind != "train":
            return None
        if "data" not in node.inputs:
            return "D_adv" if node.spec.adversarial else "D"
        return self.set_kind(self.nodes[node.inputs["data"]])

    def features_node(self, node: Node) -> Optional[Node]:
        """The features model of a probe (a train node with ``features:``, or the probe an evaluate node
        scores); None for every other node."""
        if node.kind == "evaluate":
            node = self.nodes[node.inputs["model"]]
        if node.kind != "train" or "features" not in node.inputs:
            return None
        return self.nodes[node.inputs["features"]]

    def features_of(self, node: Node) -> Optional[str]:
        """What a probe reads (see :meth:`features_node`): the features model's stage and train set, e.g.
        ``robust (D_adv)``; None for every other node. The stage, not the label: probes of the seeds of one
        features stage are one setting (the report's ``features`` column groups them; ``features_label`` and
        the grid point tell them apart)."""
        feats = self.features_node(node)
        return None if feats is None else f"{feats.stage} ({self.train_set(feats)})"

    def set_kind(self, synth: Node) -> str:
        """What the synthesized set ``synth`` is: D_det / D_rand (relabelled), D_det_bugs / D_rand_bugs
        (relabelled by Nakkiran's bugs-only attack, with an ``ensemble`` that keeps the true labels), D_wallace
        (``wrong_labels``: real images the source gets wrong, labelled with its prediction), D_R / D_NR (inverted
        from an adversarially / a standardly trained source)."""
        if synth.spec.method == "relabel":
            kind = "D_det" if synth.spec.targets == "deterministic" else "D_rand"
            return f"{kind}_bugs" if synth.spec.ensemble else kind
        if synth.spec.method == "wrong_labels":
            return "D_wallace"
        return "D_R" if self.nodes[synth.inputs["source"]].spec.adversarial else "D_NR"

    def describe(self, node: Node) -> dict:
        """A node's readable settings, for Tune's trial config and W&B: label, kind, stage, train_set and arch
        (of the model it trains or scores), the attack it runs (``attack``: its name; norm, eps, steps; train:
        adversarial training's, synthesize: relabelling's, evaluate: the first of ``attacks``, all named in
        ``attacks``; fourier: norm l2 and the noise's eps), ``synthesis`` (relabel | inversion), seed,
        ``features`` (a probe's: :meth:`features_of`)."""
        s = node.spec
        scored = self.nodes.get(node.inputs.get("model", ""))
        model = {"train": node, "evaluate": scored, "fourier": scored}.get(node.kind)
        attack = {"train": getattr(s, "adversarial", None), "synthesize": getattr(s, "attack", None),
                  "evaluate": (getattr(s, "attacks", None) or [None])[0]}.get(node.kind)
        inversion = getattr(s, "inversion", None)
        out = {"label": node.label, "kind": node.kind, "stage": node.stage, "train_set": self.train_set(node),
               "arch": model.spec.arch if model is not None else None,
               "attack": attack.name() if attack else None, "norm": attack.norm if attack else None,
               "eps": attack.eps if attack else None,
               "steps": attack.steps if attack else inversion.steps if inversion else None,
               "synthesis": getattr(s, "method", None), "seed": getattr(s, "seed", self.sweep.seed),
               "features": self.features_of(node)}
        if node.kind == "evaluate":
            out["attacks"] = [a.name() for a in s.attacks]
        if node.kind == "fourier":  # the noise's L2 norm (per channel), not an attack's
            out.update(norm="l2", eps=s.eps)
        return out

    def _table(self, nodes, done) -> list[str]:
        """Lines of a table of ``nodes`` (key, kind, label, inputs, status), with a header line."""
        rows = [("key", "kind", "label", "inputs", "status")]
        for n in nodes:
            ins = ", ".join(f"{r}={self.nodes[k].label}" for r, k in n.inputs.items()) or "-"
            rows.append((n.key, n.kind, n.label, ins, "done" if n.key in done else "todo"))
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        return ["  ".join(c.ljust(w) for c, w in zip(r[:4], widths)) + "  " + r[4] for r in rows]

    def _totals(self, done) -> str:
        edges = sum(len(n.inputs) for n in self.nodes.values())
        n_done = sum(1 for k in self.nodes if k in done)
        per_kind = ", ".join(f"{k} {v}" for k, v in self.counts().items())
        return (f"sweep {self.sweep.name}: {len(self.nodes)} nodes, {edges} edges, {len(self.waves())} waves; "
                f"{per_kind}; done {n_done}/{len(self.nodes)}")

    def render(self, done: set[str] = frozenset()) -> str:
        """A table of nodes (key, kind, label, inputs, status), then edge and per-kind counts."""
        return "\n".join(self._table(self.nodes.values(), done) + ["", self._totals(done)])

    def render_summary(self, done: set[str] = frozenset(), head: int = 10, tail: int = 10) -> str:
        """What ``sweeper plan`` prints for a long plan instead of :meth:`render`'s one line per node: nodes
        and done per stage (a node that several stages ask for counts in each), the first ``head`` and last
        ``tail`` nodes as :meth:`render` shows them, then the same edge and per-kind counts."""
        per_stage: dict[str, list[int]] = {name: [0, 0] for name in self.sweep.stages}  # stage -> [nodes, done]
        for n in self.nodes.values():
            for st in n.stages:
                c = per_stage.setdefault(st, [0, 0])
                c[0] += 1
                c[1] += n.key in done
        rows = [("stage", "kind", "nodes", "done", "todo")] + [
            (st, str(self.sweep.stages.get(st, {}).get("kind", "?")), f"{c[0]:,}", f"{c[1]:,}", f"{c[0] - c[1]:,}")
            for st, c in per_stage.items()]
        widths = [max(len(r[i]) for r in rows) for i in range(5)]
        lines = ["  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()
                 for r in rows]
        nodes = list(self.nodes.values())
        if len(nodes) <= head + tail:
            lines += ["", "every node:"] + self._table(nodes, done)
        else:
            table = self._table(nodes[:head] + nodes[len(nodes) - tail:], done)
            skipped = len(nodes) - head - tail
            lines += ["", f"the first {head} and the last {tail} of {len(nodes):,} nodes, in plan order:"]
            lines += (table[:head + 1] + [f"... {skipped:,} more (sweeper plan --all prints every node)"]
                      + table[head + 1:])
        lines += ["", self._totals(done)]
        return "\n".join(lines)


def _with_seed(model: Stage, sweep: Sweep, chain: int = 0) -> Stage:
    """The stage model with its seed resolved: its own, else the sweep's; chain k (``chains:``) adds
    CHAIN_STRIDE * k, so chain 0 is the sweep as written (its keys do not depend on ``chains``)."""
    if "seed" in type(model).model_fields:
        seed = (model.seed if model.seed is not None else sweep.seed) + CHAIN_STRIDE * chain
        if seed != model.seed:
            return model.model_copy(update={"seed": seed})
    return model


class _Draft:
    """A node while the plan is being built (mutable: its stages grow, its label may become unique later)."""
    __slots__ = ("key", "kind", "stage", "stages", "spec", "inputs", "point", "label", "robust_curve")

    def __init__(self, **fields):
        for k, v in fields.items():
            setattr(self, k, v)


# json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str), with the encoder built once
_dumps = json.JSONEncoder(sort_keys=True, separators=(",", ":"), default=str).encode


def data_identity(sweep: Sweep, store=None) -> dict:
    """What every node key of ``sweep`` hashes about its data: :func:`sweeper.sweep.data_id.identity` (the ``data:``
    section without ``root``, plus the files' checksum for real data) and the sweep seed, which picks the
    real-data subsets. ``store`` (a Store or URI; default ``run.store``) is read only for ``data.root: store``.
    Raises DataNotFoundError when the data cannot be found."""
    return {**identity(sweep.data, store if store is not None else sweep.run.store), "sweep_seed": sweep.seed}


def build_plan(sweep: Sweep, store=None) -> Plan:
    """Expand every stage over its grid points and its upstream nodes; identical keys share a node.

    ``store``: where ``data.root: store`` finds the pushed dataset's manifest (a Store or URI; default
    ``run.store``; the CLI passes ``--store``). When the data cannot be found the plan is still built, with
    provisional keys (the checksum left null) and ``plan.data_error`` saying why: ``sweeper plan`` prints it
    with a warning, and :meth:`Plan.require_data` (the engines, the report) refuses it.

    Linear in the number of nodes: each grid point's params are dumped once (not once per node), each stage's
    nodes are kept in a dict, and every Node is built once, when its label and robust curve are final."""
    try:
        data, error = data_identity(sweep, store), None
    except DataNotFoundError as e:
        data = {**sweep.data.model_dump(), "root": None, "sha256": None, "sweep_seed": sweep.seed}
        error = str(e)
    with gc_paused():
        plan = _build_plan(sweep, data)
    plan.data_error = error
    return plan


def _build_plan(sweep: Sweep, data: dict) -> Plan:
    """The plan whose keys hash ``data`` (:func:`data_identity`, or the old keying for ``migrate-keys``)."""
    plan = Plan(sweep=sweep, data=data)
    data_json, version = _dumps(data), _dumps(CODE_VERSION)
    drafts: dict[str, _Draft] = {}  # key -> node being built, in topological order
    by_stage: dict[str, dict[str, None]] = {}  # stage -> its node keys in the chain being built, in order
    full: dict[str, dict] = {}  # key -> point with every key prefixed by its stage (for downstream nodes)
    params: dict[int, tuple[Stage, str]] = {}  # id(spec) -> (spec, its params JSON); the spec keeps the id alive
    labels: dict[tuple[str, int], tuple[dict, str]] = {}  # (stage, id(own)) -> (own, its label)

    def key_of(kind: str, spec: Stage, inputs: dict) -> str:
        got = params.get(id(spec))
        if got is None or got[0] is not spec:
            got = params[id(spec)] = (spec, _dumps(spec.model_dump(exclude=_ROUTING)))
        # the text node_key hashes, byte for byte: json.dumps(body, sort_keys=True, ...) of
        # {data, inputs, kind, params, version} (keys in sorted order), with the shared parts dumped once
        text = (f'{{"data":{data_json},"inputs":{_dumps(inputs)},"kind":{_dumps(kind)},"params":{got[1]},'
                f'"version":{version}}}')
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def add(stage: str, kind: str, spec: Stage, inputs: dict, own: dict) -> None:
        key = key_of(kind, spec, inputs)
        old = drafts.get(key)
        if old is not None:
            if stage not in old.stages:
                old.stages += (stage,)
        else:
            up = {k: v for i in inputs.values() for k, v in full[i].items()}
            got = labels.get((stage, id(own)))
            if got is None or got[0] is not own:
                got = labels[(stage, id(own))] = (own, f"{stage}[{dumps_point(own)}]" if own else stage)
            drafts[key] = _Draft(key=key, kind=kind, stage=stage, stages=(stage,), spec=spec, inputs=dict(inputs),
                                 point={**up, **own}, label=got[1], robust_curve=None)
            full[key] = {**up, **{f"{stage}.{k}": v for k, v in own.items()}}
        by_stage.setdefault(stage, {})[key] = None

    for chain in range(sweep.chains):
        by_stage = {}  # the chain's own: `add` reads the name when it runs
        _add_chain(sweep, chain, by_stage, add)
    _unique_labels(drafts)
    curve = _robust_curves(sweep, drafts.values())
    for key, d in drafts.items():
        if d.kind == "train":
            d.robust_curve = curve(d)
        plan.nodes[key] = Node(**{f: getattr(d, f) for f in _Draft.__slots__})
    return plan


def _add_chain(sweep: Sweep, chain: int, by_stage: dict, add) -> None:
    """Every stage's nodes of one whole-chain seed (``chain``), linked to the same chain's upstream nodes; the
    nodes of chain k > 0 carry ``chain: k`` in their point (and so in their labels)."""
    for name in topo_order(sweep):
        for own, model in sweep.points[name]:
            spec = _with_seed(model, sweep, chain)
            if chain:
                own = {**own, "chain": chain}
            if isinstance(model, TrainStage):
                # a probe (``features:``): one per node of the features stage (and per set of ``from``)
                for f in by_stage[model.features] if model.features else (None,):
                    probe = {"features": f} if f else {}  # the role only when set: other keys unchanged
                    if model.from_ is None:
                        add(name, "train", spec, probe, own)
                    for u in by_stage.get(model.from_, ()) if model.from_ else ():
                        add(name, "train", spec, {"data": u, **probe}, own)
            elif isinstance(model, SynthesizeStage):
                ensemble = _ensemble_inputs(sweep, name, model, by_stage)  # {} without an ensemble: keys unchanged
                for u in by_stage[model.from_]:
                    if u in ensemble.values():
                        raise SpecError(sweep.source, f"stages.{name}.ensemble", f"an ensemble model is the source "
                                        f"model itself (stage {model.from_!r} computes the same node as one of "
                                        f"{model.ensemble}: identical settings and seed); expected independently "
                                        "trained models: give the ensemble stages their own seeds")
                    add(name, "synthesize", spec, {"source": u, **ensemble}, own)
            elif isinstance(model, EvaluateStage):
                for src in model.sources:
                    scoring = spec.model_copy(update={"from_": src})  # one per source, shared by its nodes
                    for u in by_stage[src]:
                        add(name, "evaluate", scoring, {"model": u}, own)
            elif isinstance(model, FourierStage):
                for src in model.sources:
                    probing = spec.model_copy(update={"from_": src})  # one per source, shared by its nodes
                    for u in by_stage[src]:
                        add(name, "fourier", probing, {"model": u}, own)
            elif isinstance(model, TransferStage):
                for s in by_stage[model.from_]:
                    for m in model.models:
                        for u in by_stage[m]:
                            add(name, "transfer", spec, {"data": s, "model": u}, own)


def ensemble_keys(node: Node) -> list[str]:
    """The input keys of a synthesis node's ensemble (roles ``ensemble0``, ``ensemble1``... in the order of its
    ``ensemble:`` list); [] for every other node."""
    return [node.inputs[f"ensemble{i}"] for i in range(len(getattr(node.spec, "ensemble", None) or ()))]


def _ensemble_inputs(sweep: Sweep, name: str, model: SynthesizeStage, by_stage: dict) -> dict[str, str]:
    """The inputs ``ensemble0``, ``ensemble1``... of a synthesize stage with ``ensemble:`` (in the same chain):
    each ensemble stage must have exactly one node, and the ensemble's models must be distinct (a stage whose
    settings and seed equal another's computes the same node: not an independent model). SpecError otherwise."""
    out: dict[str, str] = {}
    for i, stage in enumerate(model.ensemble):
        keys = list(by_stage.get(stage, ()))
        if len(keys) != 1:
            raise SpecError(sweep.source, f"stages.{name}.ensemble.{i}", f"ensemble stage {stage!r} has "
                            f"{len(keys)} models (grid points or upstream sets); expected exactly one per "
                            "ensemble stage: list one stage per model, without grids")
        if keys[0] in out.values():
            raise SpecError(sweep.source, f"stages.{name}.ensemble.{i}", f"ensemble stage {stage!r} computes the "
                            "same model as an earlier ensemble stage (identical settings and seed); expected "
                            "independently trained models: give each its own seed")
        out[f"ensemble{i}"] = keys[0]
    return out


def _unique_labels(nodes: dict) -> None:
    """A label that several nodes share (the evaluate nodes of one stage over several models, say) gets its
    inputs' labels: ``eval(model=std)``. Inputs come first, so theirs are unique already. ``nodes``: key ->
    a mutable node (build_plan's drafts)."""
    counts = Counter(n.label for n in nodes.values())
    for n in nodes.values():
        if counts[n.label] > 1:
            ins = ",".join(f"{role}={nodes[k].label}" for role, k in n.inputs.items())
            n.label = f"{n.label}({ins})"


def _robust_curves(sweep: Sweep, nodes) -> Callable[[Node], Optional[RobustCurve]]:
    """How a training node measures robust accuracy during training (``run.robust_curve``), or None: the
    file's attack, or the sweep's evaluation attack for this model (the first attack of the evaluate node
    that scores it, else of any evaluate node). ``nodes``: the plan's, in plan order; the evaluate nodes are
    indexed once (by the model they score), so a whole plan costs one pass, not one per training node."""
    rc = sweep.run.robust_curve
    first: Optional[Node] = None      # the first evaluate node with attacks, in plan order
    scoring: dict[str, Node] = {}     # model key -> the first evaluate node with attacks that scores it
    if rc.size != 0 and rc.attack == "auto":
        for n in nodes:
            if n.kind == "evaluate" and n.spec.attacks:
                first = first or n
                scoring.setdefault(n.inputs.get("model"), n)

    def curve(node: Node) -> Optional[RobustCurve]:
        if rc.size == 0:
            return None
        if rc.attack != "auto":
            attack = rc.attack
        else:
            ev = scoring.get(node.key, first)
            if ev is None:
                return None
            attack = ev.spec.attacks[0]
        epochs = node.spec.train.epochs
        every = max(1, -(-epochs // 10)) if rc.every == "auto" else int(rc.every)
        return RobustCurve(size=int(rc.size), every=every, attack=attack)

    return curve
