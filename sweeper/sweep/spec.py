"""The sweep file: loading, grid/zip expansion, references between stages and readable errors.

``load(path)`` / ``loads(text)`` return a :class:`~sweeper.sweep.schema.Sweep`: the top-level sections validated, the
raw stages kept as written, and for every stage its expanded grid points, each validated into a concrete stage
model of :mod:`sweeper.sweep.schema`. No Ray, no W&B, no torch here.
"""
from __future__ import annotations

import importlib.util

import copy
import difflib
import itertools
import json
import math
import reprlib
import sys
from pathlib import Path
from typing import Any, Optional, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from sweeper.errors import SpecError
from sweeper.sweep.schema import (CHAIN_STRIDE, IMAGE_SHAPES, KINDS, NAME_PATTERN, STAGE_MODELS, AttackConfig,
                     EvaluateStage, FourierStage, Sweep, SweepFile, SynthesizeStage, TrainStage, TransferStage,
                     eps_limit)

# Limits on the input itself, so that a small hostile or mistyped file fails in milliseconds (the number of
# grid points has its own limit, run.max_grid_points, see schema.MAX_GRID_POINTS).
MAX_YAML_ALIASES = 1_000  # uses of `*name` in one file (shipped sweeps use a handful)
MAX_VALUES = 100_000      # values (mappings, lists, scalars, keys) in one file or stage, aliases expanded
MAX_DEPTH = 64            # nesting levels inside one stage

_short = reprlib.Repr()
_short.maxstring, _short.maxother, _short.maxlevel = 80, 80, 3
_short.maxlist = _short.maxtuple = _short.maxdict = _short.maxset = 6


def _show(v: Any) -> str:
    """repr for messages, bounded however large (or shared) the value is."""
    return _short.repr(v)


def _show_point(point: dict) -> str:
    """'attack.eps=0.5, arch=mlp' for the grid-point note of a message (bounded)."""
    def fmt(v):
        return v if isinstance(v, str) and len(v) <= 80 else str(v) if isinstance(v, (int, float)) else _show(v)
    return ", ".join(f"{k}={fmt(v)}" for k, v in point.items())


# ---------------------------------------------------------------- grid / zip
def _is_grid(v: Any) -> bool:
    return isinstance(v, dict) and set(v) == {"grid"}


def _walk_grids(obj: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """(dotted path, grid list) for every `{grid: [...]}` leaf, in document order.

    Raises ValueError(path, message) past MAX_VALUES visited values or MAX_DEPTH levels: a mapping built in
    Python (not read by :func:`load`) may share sub-lists and so be far larger than it looks."""
    out: list[tuple[str, Any]] = []
    seen = 0

    def walk(o: Any, path: str, depth: int) -> None:
        nonlocal seen
        seen += 1
        if seen > MAX_VALUES:
            raise ValueError(path, f"too many values in this stage (got more than {MAX_VALUES:,}); expected at "
                                   f"most {MAX_VALUES:,} values, shared sub-structures counted every time")
        if depth > MAX_DEPTH:
            raise ValueError(path, f"nested too deeply (got more than {MAX_DEPTH} levels); expected at most "
                                   f"{MAX_DEPTH}")
        if _is_grid(o):
            out.append((path, o["grid"]))
            return
        items = o.items() if isinstance(o, dict) else enumerate(o) if isinstance(o, list) else []
        for k, v in items:
            walk(v, f"{path}.{k}" if path else str(k), depth + 1)

    walk(obj, prefix, 0)
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


def _stage_axes(raw_stage: dict) -> tuple[dict, list[list]]:
    """(the stage without `zip`, its axes): one axis per grid, of (path, value); one for the zip, of tuples.

    The number of points is the product of the axis lengths (nothing is expanded here). Raises ValueError
    (dotted key inside the stage, message) on a malformed grid or zip."""
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
    return raw, axes


def count_points(raw_stage: dict) -> int:
    """How many points a raw stage expands to (the product of its grid and zip lengths), without expanding."""
    return math.prod(len(axis) for axis in _stage_axes(raw_stage)[1])


def _without_grids(obj: Any, memo: Optional[dict] = None) -> Any:
    """A copy of a raw stage with every ``{grid: [...]}`` leaf replaced by None; a mapping or list shared in
    the stage (a YAML alias) stays shared in the copy, as ``copy.deepcopy`` keeps it. The stage's size and
    depth were bounded by :func:`_walk_grids` already."""
    if _is_grid(obj):
        return None
    if not isinstance(obj, (dict, list)):
        return obj
    memo = {} if memo is None else memo
    if id(obj) in memo:
        return memo[id(obj)]
    out: Any = {} if isinstance(obj, dict) else []
    memo[id(obj)] = out
    if isinstance(obj, dict):
        out.update((k, _without_grids(v, memo)) for k, v in obj.items())
    else:
        out.extend(_without_grids(v, memo) for v in obj)
    return out


def _iter_points(raw: dict, axes: list[list]):
    """(point, concrete stage) one at a time, in cartesian order (the first point first).

    Each point copies the stage with its grid lists left out (every grid leaf is set from the point anyway),
    so a point costs the size of the stage, not of all its grids together."""
    template = _without_grids(raw)
    for combo in itertools.product(*axes):
        concrete, point = copy.deepcopy(template), {}
        for item in combo:
            for path, value in (item if isinstance(item[0], tuple) else (item,)):
                _set_path(concrete, path, value)
                point[path] = value
        yield point, concrete


def expand_stage(raw_stage: dict) -> list[tuple[dict, dict]]:
    """Expand a raw stage's grids (cartesian) and its stage-level `zip` (together) into concrete stages.

    Returns [(point, concrete_raw_stage)], point = {dotted key: value}. Raises ValueError (with a dotted
    key inside the stage as its first argument, the message as the second) on a malformed grid or zip.
    Check :func:`count_points` first: this builds every point.
    """
    return list(_iter_points(*_stage_axes(raw_stage)))


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
        got = f" (got {_show(e['input'])})" if "input" in e else ""
        return SpecError(file, path, "expected " + " or ".join(dict.fromkeys(wants)) + got + note)
    if e["type"] == "extra_forbidden":
        holder = _model_at(model, loc)
        names = [(f.alias or n) for n, f in holder.model_fields.items()] if holder else []
        near = difflib.get_close_matches(str(loc[-1]), names, n=1)
        msg = "unknown key" + (f"; did you mean {near[0]!r}?" if near else f"; valid keys: {', '.join(names)}")
    elif e["type"] == "missing":
        msg = "required key is missing"
    elif e["type"] == "finite_number":
        msg = f"not a finite number (got {_show(e.get('input'))}); expected a finite number"
    elif e["type"] in ("less_than_equal", "less_than"):
        bound = e.get("ctx", {}).get("le", e.get("ctx", {}).get("lt"))
        msg = (f"too large (got {_show(e.get('input'))}); expected "
               f"{'at most' if e['type'] == 'less_than_equal' else 'less than'} {bound:g}")
    else:
        msg = e["msg"].removeprefix("Value error, ")
        if "input" in e and e["type"] not in ("value_error",):
            msg += f" (got {_show(e['input'])})"
    return SpecError(file, path, msg + note)


# ---------------------------------------------------------------- loading
class _Limit(Exception):
    """A YAML input limit hit while composing: (mark, message)."""


class _Loader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses more than MAX_YAML_ALIASES alias uses while composing; :func:`_yaml`
    then checks the composed graph (duplicate keys, recursion, size with aliases expanded) before building
    any Python object."""

    def __init__(self, stream):
        super().__init__(stream)
        self.alias_uses = 0

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            self.alias_uses += 1
            if self.alias_uses > MAX_YAML_ALIASES:
                raise _Limit(self.peek_event().start_mark,
                             f"too many YAML aliases (got more than {MAX_YAML_ALIASES:,} uses of *name); expected "
                             f"at most {MAX_YAML_ALIASES:,} in one file")
        return super().compose_node(parent, index)


_MERGE_TAG = "tag:yaml.org,2002:merge"


def _check_graph(root: yaml.Node, loader: _Loader, source: str) -> None:
    """Refuse duplicate keys, an alias inside its own anchor, and more than MAX_VALUES values once aliases
    are expanded (billion laughs). Each distinct node is visited once, so this is linear in the file."""
    sizes: dict[int, int] = {}  # id(node) -> values under it, aliases expanded
    open_: set[int] = set()

    def visit(node: yaml.Node, path: str) -> int:
        nid = id(node)
        if nid in sizes:
            return sizes[nid]
        if nid in open_:
            raise SpecError(source, path, f"a YAML alias refers to itself (got a recursive value, line "
                                          f"{node.start_mark.line + 1}); expected an alias of a complete value "
                                          "outside it")
        open_.add(nid)
        n = 1
        if isinstance(node, yaml.SequenceNode):
            for i, child in enumerate(node.value):
                n += visit(child, f"{path}.{i}" if path else str(i))
        elif isinstance(node, yaml.MappingNode):
            lines: dict[Any, int] = {}
            for key_node, value_node in node.value:
                key: Any = "<<" if key_node.tag == _MERGE_TAG else "?"  # a merge key; a non-scalar key
                if key_node.tag != _MERGE_TAG and isinstance(key_node, yaml.ScalarNode):
                    key = loader.construct_object(key_node)
                    line = key_node.start_mark.line + 1
                    try:
                        first = lines.get(key)
                        lines.setdefault(key, line)
                    except TypeError:  # unhashable: construct_document reports it
                        first = None
                    if first is not None:
                        where = f"{path}.{key}" if path else str(key)
                        got = f"twice on line {line}" if first == line else f"on lines {first} and {line}"
                        raise SpecError(source, where, f"duplicate key {key!r} (got it {got}); expected each key "
                                                       "once per mapping (the last one would silently win)")
                n += visit(key_node, path) + visit(value_node, f"{path}.{key}" if path else str(key))
        open_.discard(nid)
        if n > MAX_VALUES:
            raise SpecError(source, path, f"too many values once YAML aliases are expanded (got {n:,}); expected "
                                          f"at most {MAX_VALUES:,} in one file (an alias repeats its whole value)")
        sizes[nid] = n
        return n

    visit(root, "")


def _yaml(text: str, source: str) -> Any:
    try:
        loader = _Loader(text)  # checks every character: a NUL or other control character fails here
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "position", None)
        where = f"character {mark + 1}" if isinstance(mark, int) else ""
        ch = getattr(exc, "character", None)
        got = f"U+{ch:04X}" if isinstance(ch, int) else repr(ch)
        raise SpecError(source, where, f"not YAML text ({getattr(exc, 'reason', None) or exc}, got character "
                                       f"{got}); expected a YAML sweep file") from None
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_graph(node, loader, source)
        return loader.construct_document(node)
    except _Limit as exc:
        mark, message = exc.args
        raise SpecError(source, f"line {mark.line + 1}, column {mark.column + 1}", message) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise SpecError(source, where, f"YAML syntax error: {problem}") from None
    except RecursionError:
        raise SpecError(source, "", "nested too deeply (got more levels than Python can read); expected a "
                                    "sweep file nested a few levels deep") from None
    finally:
        loader.dispose()


def load(path: str | Path, overrides: dict[str, Any] | None = None) -> Sweep:
    """Read and validate a sweep file, with ``overrides`` ({"stages.x.attack.eps": 0.5, ...}) applied first."""
    return load_raw(path, overrides)[1]


def load_raw(path: str | Path, overrides: dict[str, Any] | None = None) -> tuple[Any, Sweep]:
    """(the parsed mapping with ``overrides`` applied, the validated sweep): for writing the overridden file.
    ``path`` "-" reads the sweep from standard input."""
    try:
        if str(path) == "-":  # a sweep piped in (a job submitted by `sweeper submit` sends its file this way)
            path = "<stdin>"
            text = sys.stdin.read()
        else:
            text = Path(path).read_text()
    except OSError as exc:
        raise SpecError(str(path), "", f"cannot read: {exc}") from None
    except UnicodeDecodeError as exc:  # an image, an archive, a file in another encoding
        raise SpecError(str(path), "", f"not a text file (got byte {exc.object[exc.start:exc.start + 1]!r} at "
                                       f"offset {exc.start}); expected a YAML sweep file in UTF-8") from None
    raw = _yaml(text, str(path))
    if not overrides:
        return raw, validate(raw, source=str(path))
    try:
        raw = apply_overrides(raw, overrides)
    except ValueError as exc:
        raise SpecError(str(path), "", f"--set: {exc}") from None
    sets = " ".join(f"{k}={v!r}" for k, v in overrides.items())
    return raw, validate(raw, source=f"{path} (with --set {sets})")


def loads(text: str, source: str = "<string>") -> Sweep:
    """Validate a sweep given as YAML text; ``source`` names it in error messages."""
    return validate(_yaml(text, source), source=source)


def validate(raw: Any, source: str = "<dict>") -> Sweep:
    """Validate an already-parsed sweep mapping (e.g. after :func:`apply_overrides`)."""
    if not isinstance(raw, dict):
        raise SpecError(source, "", "expected a mapping with keys name, data, stages (and seed, run, description)")
    if isinstance(raw.get("stages"), dict):
        for name in raw["stages"]:
            if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
                raise SpecError(source, f"stages.{name}", f"invalid stage name (got {_show(name)}); expected "
                                                          "letters, digits, _ and - only ([A-Za-z0-9_-]+)")
    try:
        top = SweepFile.model_validate(raw)
    except ValidationError as exc:
        raise _convert(exc, SweepFile, source, "") from None
    # count every stage's points by multiplying grid lengths, and refuse too many, before expanding any
    axes = {name: _stage_axes_checked(name, stage, source) for name, stage in top.stages.items()}
    sizes = {name: math.prod(len(a) for a in ax[1]) for name, ax in axes.items()}
    total, cap = sum(sizes.values()), top.run.max_grid_points
    if total > cap:
        big = max(sizes, key=sizes.get)
        lens = [len(a) for a in axes[big][1]]
        how = f" = {' x '.join(map(str, lens))}" if len(lens) > 1 else ""
        raise SpecError(source, f"stages.{big}", f"too many grid points (got {total:,} grid points in the sweep, "
                                                 f"{sizes[big]:,}{how} in this stage); expected at most {cap:,} "
                                                 "(run.max_grid_points)")
    rc = top.run.robust_curve.attack
    if isinstance(rc, AttackConfig):
        _check_attack(rc, top.data.dataset, source, "run.robust_curve.attack", "")
    points = {name: _expand_validate(name, top.stages[name]["kind"], raw_stage, stage_axes, source, top.data.dataset)
              for name, (raw_stage, stage_axes) in axes.items()}
    sweep = Sweep(name=top.name, description=top.description, seed=top.seed, data=top.data, run=top.run,
                  stages=top.stages, points=points, source=source, chains=top.chains)
    _check_chain_seeds(sweep, source)
    _check_refs(sweep, source)
    _check_probes(sweep, source)
    return sweep


def _check_chain_seeds(sweep: Sweep, source: str) -> None:
    """With ``chains: N`` > 1, chain k adds CHAIN_STRIDE * k to every seed: a seed the file sets at or above
    CHAIN_STRIDE (the sweep's, or a stage's) could then equal another stage's chain-k seed, and the two nodes
    would silently be one."""
    if sweep.chains <= 1:
        return
    if sweep.seed >= CHAIN_STRIDE or sweep.seed < 0:
        raise SpecError(source, "seed", f"must be in [0, {CHAIN_STRIDE}) with chains: {sweep.chains} (got "
                                        f"{sweep.seed}); chain k adds {CHAIN_STRIDE} * k to every seed")
    for name, pts in sweep.points.items():
        for point, model in pts:
            seed = getattr(model, "seed", None)
            if seed is not None and not 0 <= seed < CHAIN_STRIDE:
                raise SpecError(source, f"stages.{name}.seed", f"must be in [0, {CHAIN_STRIDE}) with chains: "
                                f"{sweep.chains} (got {seed}); chain k adds {CHAIN_STRIDE} * k to every seed, so "
                                "a larger one could be another stage's chain seed")


def _stage_axes_checked(name: str, stage: Any, source: str) -> tuple[dict, list[list]]:
    where = f"stages.{name}"
    if not isinstance(stage, dict):
        raise SpecError(source, where, "expected a mapping with a 'kind'")
    kind = stage.get("kind")
    if not isinstance(kind, str) or kind not in STAGE_MODELS:  # a grid or list here is unhashable
        raise SpecError(source, f"{where}.kind", f"expected one of {', '.join(KINDS)} (got {_show(kind)})")
    try:
        return _stage_axes(stage)
    except ValueError as exc:
        key, msg = exc.args if len(exc.args) == 2 else ("", str(exc))
        raise SpecError(source, f"{where}.{key}" if key else where, msg) from None


def _expand_validate(name: str, kind: str, raw: dict, axes: list[list], source: str,
                     dataset: str) -> list[tuple[dict, BaseModel]]:
    """Validate the points one at a time: the first point (the structure) before the others are built."""
    where, out = f"stages.{name}", []
    for point, concrete in _iter_points(raw, axes):
        note = f" [at grid point {_show_point(point)}]" if point else ""
        try:
            model = STAGE_MODELS[kind].model_validate(concrete)
        except ValidationError as exc:
            raise _convert(exc, STAGE_MODELS[kind], source, where, note) from None
        for field, attack in _attacks(model):
            _check_attack(attack, dataset, source, f"{where}.{field}", note)
        if isinstance(model, FourierStage):
            _check_fourier(model, dataset, source, where, note)
        if isinstance(model, TrainStage) and model.features is not None and model.arch != "linear":
            raise SpecError(source, f"{where}.arch", f"a probe (features: {model.features}) is a linear classifier "
                                                     f"on that model's frozen representation (got arch: "
                                                     f"{model.arch}); expected arch: linear{note}")
        out.append((point, model))
    return out


def _attacks(model: BaseModel) -> list[tuple[str, AttackConfig]]:
    """(field path, attack) for every attack of a concrete stage."""
    if isinstance(model, TrainStage):
        return [("adversarial", model.adversarial)] if model.adversarial else []
    if isinstance(model, SynthesizeStage):
        return [("attack", model.attack)] if model.attack else []
    if isinstance(model, EvaluateStage):
        return [(f"attacks.{i}", a) for i, a in enumerate(model.attacks)]
    return []


def _check_fourier(model: FourierStage, dataset: str, source: str, where: str, note: str) -> None:
    """A fourier stage needs images (the toy's features have no frequencies and no [0,1] box), and its eps,
    the L2 norm of one channel's noise, at most the diagonal of one channel's [0,1] cube."""
    shape = IMAGE_SHAPES.get(dataset)
    if shape is None:
        raise SpecError(source, f"{where}.kind", f"a fourier stage perturbs images along 2-D Fourier basis images "
                                                 f"(got dataset: {dataset}, whose examples are feature vectors); "
                                                 f"expected an image dataset: {', '.join(IMAGE_SHAPES)}{note}")
    cap = math.sqrt(shape[1] * shape[2])
    if model.eps > cap:
        raise SpecError(source, f"{where}.eps", f"eps too large for {dataset} (got {model.eps:g}); expected at "
                                                f"most {cap:.4g}: the diagonal of one channel's [0,1] image cube, "
                                                f"sqrt({shape[1]}*{shape[2]}){note}")


def _check_attack(attack: AttackConfig, dataset: str, source: str, path: str, note: str) -> None:
    """What the attack model alone cannot know: the per-dataset bound on eps (L-inf <= 1 and L2 <= the image
    cube's diagonal for images in [0,1]; the toy's Gaussian features keep MAX_EPS), and that PGD restarts need
    a random start (without one every restart repeats the same run)."""
    limit = eps_limit(attack.norm, dataset)
    if limit and attack.eps > limit[0]:
        cap, why = limit
        raise SpecError(source, f"{path}.eps", f"{attack.norm} eps too large for {dataset} (got {attack.eps:g}); "
                                               f"expected at most {cap:.4g}: {why}{note}")
    if attack.n_targets is not None and attack.method != "apgd-t":
        raise SpecError(source, f"{path}.n_targets", f"n_targets is APGD-T's option (got method: {attack.method}); "
                                                     f"expected method: apgd-t, or no n_targets{note}")
    if attack.method != "pgd" and dataset == "toy":
        raise SpecError(source, f"{path}.method", f"AutoAttack-class methods need images in [0, 1] (got method: "
                                                  f"{attack.method} on the toy's unbounded features); expected "
                                                  f"method: pgd{note}")
    if path.startswith("stages.") and path.endswith(".attack") and attack.method not in ("pgd", "square"):
        raise SpecError(source, f"{path}.method", f"relabelling needs a targeted attack (got method: "
                                                  f"{attack.method}); expected pgd or square{note}")
    if path.endswith(".adversarial") and attack.method != "pgd":
        raise SpecError(source, f"{path}.method", f"adversarial training runs PGD (got method: {attack.method}); "
                                                  f"expected method: pgd{note}")
    if attack.method != "pgd" and importlib.util.find_spec("torchattacks") is None:
        raise SpecError(source, f"{path}.method", f"method {attack.method} needs torchattacks, which is not "
                                                  f"installed; expected `pip install --no-deps torchattacks==3.5.1` "
                                                  f"(`make setup` does it), or method: pgd{note}")
    if attack.method == "pgd" and attack.restarts > 1 and not attack.random_start:
        raise SpecError(source, f"{path}.restarts", f"restarts > 1 without a random start (got restarts: "
                                                    f"{attack.restarts}, random_start: false); expected "
                                                    f"random_start: true, or restarts: 1 (each restart would "
                                                    f"repeat the same run){note}")


def stage_refs(model: BaseModel) -> list[tuple[str, str, tuple[str, ...]]]:
    """(field, referenced stage, allowed kinds) for one concrete stage."""
    if isinstance(model, TrainStage):
        return (([("from", model.from_, ("synthesize",))] if model.from_ else [])
                + ([("features", model.features, ("train",))] if model.features else []))
    if isinstance(model, SynthesizeStage):
        return [("from", model.from_, ("train",))] + [(f"ensemble.{i}", e, ("train",))
                                                       for i, e in enumerate(model.ensemble)]
    if isinstance(model, EvaluateStage):
        return [("from", s, ("train",)) for s in model.sources]
    if isinstance(model, FourierStage):
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


def _check_probes(sweep: Sweep, source: str) -> None:
    """``features:`` (a linear probe) names a train stage that is not itself a probe: a probe's representation
    is its features model's, so a probe of a probe would read the same features again. (That it names a train
    stage at all is :func:`_check_refs`'s; that the probe is ``arch: linear``, :func:`_expand_validate`'s.)"""
    for name, pts in sweep.points.items():
        for point, model in pts:
            ref = getattr(model, "features", None) if isinstance(model, TrainStage) else None
            if ref is not None and any(m.features is not None for _, m in sweep.points[ref]):
                note = f" [at grid point {_show_point(point)}]" if point else ""
                raise SpecError(source, f"stages.{name}.features", f"{ref!r} is itself a probe (it has features:); "
                                                                   f"expected the train stage whose representation "
                                                                   f"to probe, e.g. the one {ref!r} probes{note}")


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
        try:
            _set_path(out, path, copy.deepcopy(value))
        except (LookupError, TypeError, ValueError, AttributeError) as exc:  # a list index too large or not a
            raise ValueError(f"cannot set {path!r} ({type(exc).__name__}: {exc}); expected a dotted path of keys "
                             "and list indices that exist in the file") from None  # number, a key under a scalar
    return out


def dumps_point(point: dict) -> str:
    """'attack.eps=0.5,arch=mlp' for labels."""
    def fmt(v):
        return v if isinstance(v, str) else json.dumps(v, sort_keys=True)
    return ",".join(f"{k}={fmt(v)}" for k, v in point.items())
