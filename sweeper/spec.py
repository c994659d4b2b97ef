"""The sweep file: loading, grid/zip expansion, references between stages and readable errors.

``load(path)`` / ``loads(text)`` return a :class:`Sweep`: the top-level sections validated, the raw stages kept
as written, and for every stage its expanded grid points, each validated into a concrete stage model (the
models live in :mod:`sweeper.schema` and are re-exported here). No Ray, no W&B, no torch here.
"""
from __future__ import annotations

import copy
import difflib
import itertools
import json
from pathlib import Path
from typing import Any, Optional, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from .schema import (ARCHS, KINDS, STAGE_MODELS, AttackSpec, DataSpec, EvaluateStage, InversionSpec,
                     RobustCurveSpec, RunSpec, SpecError, Stage, Sweep, SynthesizeStage, ToySpec, TrainSpec,
                     TrainStage, TransferStage, parse_fraction)

__all__ = ["ARCHS", "KINDS", "STAGE_MODELS", "AttackSpec", "DataSpec", "EvaluateStage", "InversionSpec",
           "RobustCurveSpec", "RunSpec", "SpecError", "Stage", "Sweep", "SynthesizeStage", "ToySpec", "TrainSpec",
           "TrainStage", "TransferStage", "parse_fraction", "load", "loads", "validate", "expand_stage",
           "apply_overrides", "topo_order", "stage_refs", "dumps_point"]

# ---------------------------------------------------------------- grid / zip
def _is_grid(v: Any) -> bool:
    return isinstance(v, dict) and set(v) == {"grid"}


def _walk_grids(obj: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """(dotted path, grid list) for every `{grid: [...]}` leaf, in document order."""
    out = []
    if _is_grid(obj):
        return [(prefix, obj["grid"])]
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else []
    for k, v in items:
        out += _walk_grids(v, f"{prefix}.{k}" if prefix else str(k))
    return out


def _set_path(obj: Any, path: str, value: Any) -> None:
    parts = path.split(".")
    for p in parts[:-1]:
        if isinstance(obj, list):
            obj = obj[int(p)]
        else:
            if not isinstance(obj.get(p), (dict, list)):
                obj[p] = {}
            obj = obj[p]
    if isinstance(obj, list):
        obj[int(parts[-1])] = value
    else:
        obj[parts[-1]] = value


def _unwrap(ann: Any) -> list:
    """The concrete types inside Optional/Union/list/Annotated annotations."""
    origin = get_origin(ann)
    if origin is None:
        return [ann]
    return [t for a in get_args(ann) for t in _unwrap(a)]


def _valid_path(model: type[BaseModel], parts: list[str]) -> Optional[str]:
    """None if the dotted path names a field of ``model``; else the first bad part's message."""
    for i, p in enumerate(parts):
        if p.isdigit() and i > 0:
            continue  # a list index
        fields = {(f.alias or n): f for n, f in model.model_fields.items()}
        if p not in fields:
            near = difflib.get_close_matches(p, list(fields), n=1)
            return f"unknown key {'.'.join(parts[:i + 1])!r}" + (f"; did you mean {near[0]!r}?" if near else "")
        subs = [t for t in _unwrap(fields[p].annotation) if isinstance(t, type) and issubclass(t, BaseModel)]
        if i + 1 < len(parts):
            nxt = parts[i + 1]
            if nxt.isdigit():
                continue
            if not subs:
                return f"{'.'.join(parts[:i + 1])!r} has no sub-keys"
            model = subs[0]
    return None


def expand_stage(raw_stage: dict) -> list[tuple[dict, dict]]:
    """Expand a raw stage's grids (cartesian) and its stage-level `zip` (together) into concrete stages.

    Returns [(point, concrete_raw_stage)], point = {dotted key: value}. Raises ValueError (with a dotted
    key inside the stage as its first argument, the message as the second) on a malformed grid or zip.
    """
    raw = {k: v for k, v in raw_stage.items() if k != "zip"}
    zipped = raw_stage.get("zip") or {}
    if not isinstance(zipped, dict):
        raise ValueError("zip", "expected a mapping 'dotted.key' -> list of values")
    grids = _walk_grids(raw)
    for path, values in grids:
        if not isinstance(values, list) or not values:
            raise ValueError(f"{path}.grid", "a grid needs a non-empty list of values")
    model = STAGE_MODELS.get(raw.get("kind"))
    lengths = set()
    for path, values in zipped.items():
        if not isinstance(values, list) or not values:
            raise ValueError(f"zip.{path}", "expected a non-empty list of values")
        lengths.add(len(values))
        if any(path == g or path.startswith(g + ".") for g, _ in grids):
            raise ValueError(f"zip.{path}", "this key is also a grid; use one or the other")
        bad = _valid_path(model, path.split(".")) if model else None
        if bad:
            raise ValueError(f"zip.{path}", bad)
    if len(lengths) > 1:
        raise ValueError("zip", f"all zip lists must have the same length, got lengths {sorted(lengths)}")
    axes = [[(p, v) for v in vals] for p, vals in grids]
    if zipped:
        n = lengths.pop()
        axes.append([tuple((p, vals[i]) for p, vals in zipped.items()) for i in range(n)])
    out = []
    for combo in itertools.product(*axes):
        concrete, point = copy.deepcopy(raw), {}
        for item in combo:
            for path, value in (item if isinstance(item[0], tuple) else (item,)):
                _set_path(concrete, path, value)
                point[path] = value
        out.append((point, concrete))
    return out


# ---------------------------------------------------------------- errors
def _model_at(model: type[BaseModel], loc: tuple) -> Optional[type[BaseModel]]:
    """The pydantic model class that holds the last element of ``loc``."""
    for p in loc[:-1]:
        if isinstance(p, int):
            continue
        fields = {(f.alias or n): f for n, f in model.model_fields.items()}
        if p not in fields:
            return None
        subs = [t for t in _unwrap(fields[p].annotation) if isinstance(t, type) and issubclass(t, BaseModel)]
        if not subs:
            return None
        model = subs[0]
    return model


def _clean_loc(loc) -> tuple:
    """A pydantic error location without the union-member tags it inserts (``literal['auto']``, ``int``...)."""
    tags = {"int", "float", "str", "bool", "list", "dict", "constrained-int", "constrained-float"}
    return tuple(p for p in loc if not (isinstance(p, str) and (p in tags or "[" in p or p[:1].isupper())))


def _convert(err: ValidationError, model: type[BaseModel], file: str, prefix: str, note: str = "") -> SpecError:
    errs = err.errors()
    # a misspelt key also makes the real one "missing": report the misspelling, it carries the suggestion
    # otherwise the most specific error: inside a union, the member that got furthest says what is wrong
    deepest = max(errs, key=lambda x: len(_clean_loc(x["loc"])))
    e = next((x for x in errs if x["type"] == "extra_forbidden"), deepest)
    loc = _clean_loc(e["loc"])
    path = ".".join([prefix, *map(str, loc)] if prefix else map(str, loc))
    alternatives = [x for x in errs if _clean_loc(x["loc"]) == loc and x["type"] != "extra_forbidden"]
    if e["type"] != "extra_forbidden" and len(alternatives) > 1:  # a union: say every accepted form
        wants = [x["msg"].removeprefix("Input should be ").split(",")[0] for x in alternatives]
        got = f" (got {e['input']!r})" if "input" in e else ""
        return SpecError(file, path, "expected " + " or ".join(dict.fromkeys(wants)) + got + note)
    if e["type"] == "extra_forbidden":
        holder = _model_at(model, loc)
        names = [(f.alias or n) for n, f in holder.model_fields.items()] if holder else []
        near = difflib.get_close_matches(str(loc[-1]), names, n=1)
        msg = "unknown key" + (f"; did you mean {near[0]!r}?" if near else f"; valid keys: {', '.join(names)}")
    elif e["type"] == "missing":
        msg = "required key is missing"
    else:
        msg = e["msg"].removeprefix("Value error, ")
        if "input" in e and e["type"] not in ("value_error",):
            msg += f" (got {e['input']!r})"
    return SpecError(file, path, msg + note)


# ---------------------------------------------------------------- loading
def _yaml(text: str, source: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise SpecError(source, where, f"YAML syntax error: {problem}") from None


def load(path: str | Path) -> Sweep:
    """Read and validate a sweep file."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise SpecError(str(path), "", f"cannot read: {exc}") from None
    return loads(text, source=str(path))


def loads(text: str, source: str = "<string>") -> Sweep:
    """Validate a sweep given as YAML text; ``source`` names it in error messages."""
    return validate(_yaml(text, source), source=source)


def validate(raw: Any, source: str = "<dict>") -> Sweep:
    """Validate an already-parsed sweep mapping (e.g. after :func:`apply_overrides`)."""
    if not isinstance(raw, dict):
        raise SpecError(source, "", "expected a mapping with keys name, data, stages (and seed, run, description)")
    try:
        sweep = Sweep.model_validate(raw)
    except ValidationError as exc:
        raise _convert(exc, Sweep, source, "") from None
    sweep._source = source
    for name, stage in sweep.stages.items():
        sweep._points[name] = _expand_validate(name, stage, source)
    _check_refs(sweep, source)
    return sweep


def _expand_validate(name: str, stage: Any, source: str) -> list[tuple[dict, BaseModel]]:
    where = f"stages.{name}"
    if not isinstance(stage, dict):
        raise SpecError(source, where, "expected a mapping with a 'kind'")
    kind = stage.get("kind")
    if kind not in STAGE_MODELS:
        raise SpecError(source, f"{where}.kind", f"expected one of {', '.join(KINDS)} (got {kind!r})")
    try:
        points = expand_stage(stage)
    except ValueError as exc:
        key, msg = exc.args if len(exc.args) == 2 else ("", str(exc))
        raise SpecError(source, f"{where}.{key}" if key else where, msg) from None
    out = []
    for point, concrete in points:
        try:
            out.append((point, STAGE_MODELS[kind].model_validate(concrete)))
        except ValidationError as exc:
            note = f" [at grid point {', '.join(f'{k}={v}' for k, v in point.items())}]" if point else ""
            raise _convert(exc, STAGE_MODELS[kind], source, where, note) from None
    return out


def stage_refs(model: BaseModel) -> list[tuple[str, str, tuple[str, ...]]]:
    """(field, referenced stage, allowed kinds) for one concrete stage."""
    if isinstance(model, TrainStage):
        return [("from", model.from_, ("synthesize",))] if model.from_ else []
    if isinstance(model, SynthesizeStage):
        return [("from", model.from_, ("train",))]
    if isinstance(model, EvaluateStage):
        return [("from", s, ("train",)) for s in model.sources]
    return [("from", model.from_, ("synthesize",))] + [("models", m, ("train",)) for m in model.models]


def _check_refs(sweep: Sweep, source: str) -> None:
    names = list(sweep.stages)
    deps: dict[str, set[str]] = {n: set() for n in names}
    for name, pts in sweep.points.items():
        for _, model in pts:
            for field, ref, kinds in stage_refs(model):
                path = f"stages.{name}.{field}"
                if ref not in sweep.stages:
                    near = difflib.get_close_matches(ref, names, n=1)
                    raise SpecError(source, path, f"no stage named {ref!r}"
                                    + (f"; did you mean {near[0]!r}?" if near else f"; stages: {', '.join(names)}"))
                ref_kind = sweep.stages[ref].get("kind")
                if ref_kind not in kinds:
                    raise SpecError(source, path, f"{ref!r} is a {ref_kind} stage; expected a {' or '.join(kinds)} stage")
                if isinstance(model, TransferStage) and field == "from":
                    if any(m.method != "relabel" for _, m in sweep.points[ref]):
                        raise SpecError(source, path, f"{ref!r} must be a relabel synthesize stage (method: relabel)")
                deps[name].add(ref)
    cycle = _find_cycle(deps)
    if cycle:
        raise SpecError(source, f"stages.{cycle[0]}.from", "cycle: " + " -> ".join(cycle))


def _find_cycle(deps: dict[str, set[str]]) -> Optional[list[str]]:
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(n: str) -> Optional[list[str]]:
        state[n] = 1
        stack.append(n)
        for d in sorted(deps[n]):
            if state.get(d) == 1:
                return stack[stack.index(d):] + [d]
            if d not in state:
                found = visit(d)
                if found:
                    return found
        stack.pop()
        state[n] = 2
        return None

    for n in deps:
        if n not in state:
            found = visit(n)
            if found:
                return found
    return None


def topo_order(sweep: Sweep) -> list[str]:
    """Stage names, dependencies first, otherwise in file order."""
    deps = {n: {r for _, m in pts for _, r, _ in stage_refs(m)} for n, pts in sweep.points.items()}
    order: list[str] = []
    while len(order) < len(deps):
        for n in deps:
            if n not in order and deps[n] <= set(order):
                order.append(n)
                break
    return order


def apply_overrides(sweep_raw: dict, overrides: dict[str, Any]) -> dict:
    """A copy of a raw sweep mapping with dotted paths replaced, e.g. {"stages.d_det.attack.eps": 0.5}.
    Missing intermediate mappings are created; validate the result with :func:`validate`."""
    out = copy.deepcopy(sweep_raw)
    for path, value in overrides.items():
        if not path or any(not p for p in path.split(".")):
            raise ValueError(f"bad override path {path!r}")
        _set_path(out, path, copy.deepcopy(value))
    return out


def dumps_point(point: dict) -> str:
    """'attack.eps=0.5,arch=mlp' for labels."""
    def fmt(v):
        return v if isinstance(v, str) else json.dumps(v, sort_keys=True)
    return ",".join(f"{k}={fmt(v)}" for k, v in point.items())
