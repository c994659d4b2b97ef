"""The sweep file: a strict pydantic v2 schema, grid/zip expansion and readable errors.

``load(path)`` / ``loads(text)`` return a :class:`Sweep`: the top-level sections validated, the raw stages kept
as written, and for every stage its expanded grid points, each validated into a concrete stage model.
Every model forbids unknown keys, so a misspelt option fails loudly instead of silently doing nothing.
No Ray, no W&B, no torch here.
"""
from __future__ import annotations

import copy
import difflib
import itertools
import json
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

ARCHS = ("small_cnn", "mlp", "linear", "resnet18", "resnet50", "vgg16", "densenet121", "airbench")
Arch = Literal["small_cnn", "mlp", "linear", "resnet18", "resnet50", "vgg16", "densenet121", "airbench"]
KINDS = ("train", "synthesize", "evaluate", "transfer")


class SpecError(Exception):
    """A sweep file problem: ``FILE: key.path: message``."""

    def __init__(self, file: str, key_path: str, message: str):
        self.file, self.key_path, self.message = str(file), key_path, message
        super().__init__(str(self))

    def __str__(self) -> str:
        return f"{self.file}: {self.key_path}: {self.message}" if self.key_path else f"{self.file}: {self.message}"

    def __reduce__(self):  # picklable across processes (Ray)
        return (SpecError, (self.file, self.key_path, self.message))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


# ---------------------------------------------------------------- sections
class ToySpec(_Strict):
    d: int = Field(100, ge=1)              # number of weak (non-robust) features
    p: float = Field(0.95, gt=0.5, le=1)   # probability that the robust feature equals the label
    n_train: int = Field(5000, ge=1)
    n_test: int = Field(2000, ge=1)
    seed: int = 0


class DataSpec(_Strict):
    dataset: Literal["fashion_mnist", "cifar10", "toy"]
    root: Optional[str] = None
    test_size: Optional[int] = Field(None, ge=1)
    toy: Optional[ToySpec] = None

    @model_validator(mode="after")
    def _toy_only_with_toy(self):
        if self.toy is not None and self.dataset != "toy":
            raise ValueError("'toy' options are only allowed with dataset: toy")
        return self


class RunSpec(_Strict):
    """Where and how to run; never part of a node key."""
    store: str = "./store"
    max_concurrent_trials: int = Field(2, ge=1)
    cpus_per_trial: float = Field(1, gt=0)
    gpus_per_trial: Union[float, dict[str, float]] = 0
    synthesis_actors: Union[Literal["auto"], int] = "auto"  # auto: one per GPU (or per cpus_per_trial CPUs)
    shard_size: int = Field(500, ge=1)
    max_failures: int = Field(2, ge=0)
    wandb: Literal["offline", "online", "disabled"] = "offline"
    robust_curve: "RobustCurveSpec" = Field(default_factory=lambda: RobustCurveSpec())

    @field_validator("synthesis_actors")
    @classmethod
    def _actors(cls, v):
        if isinstance(v, int) and v < 1:
            raise ValueError("synthesis_actors must be 'auto' or a number >= 1")
        return v

    @field_validator("gpus_per_trial")
    @classmethod
    def _gpus(cls, v):
        vals = v.values() if isinstance(v, dict) else [v]
        if any(x < 0 for x in vals):
            raise ValueError("GPU counts must be >= 0")
        if isinstance(v, dict) and "default" not in v:
            raise ValueError("a mapping arch -> GPUs needs a 'default' entry")
        return v


class TrainSpec(_Strict):
    epochs: int = Field(ge=1)
    batch_size: int = Field(128, ge=1)
    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: float = Field(0.1, gt=0)
    momentum: float = Field(0.9, ge=0)
    weight_decay: float = Field(5.0e-4, ge=0)
    schedule: Literal["step", "cosine", "constant"] = "cosine"
    step_every: int = Field(50, ge=1)      # epochs between lr drops (schedule: step)
    gamma: float = Field(0.1, gt=0)        # lr factor per drop (schedule: step)
    augment: bool = False


def parse_fraction(v: Any) -> Any:
    """'8/255' -> 0.0313...; plain numbers pass through. No eval."""
    if isinstance(v, str):
        parts = v.split("/")
        try:
            if len(parts) == 1:
                return float(parts[0])
            if len(parts) == 2:
                return float(parts[0]) / float(parts[1])
        except (ValueError, ZeroDivisionError):
            pass
        raise ValueError(f"expected a number or a fraction like '8/255', got {v!r}")
    return v


class AttackSpec(_Strict):
    norm: Literal["l2", "linf"]
    eps: float = Field(ge=0)                      # radius of the ball, in [0,1] pixel units
    steps: int = Field(10, ge=1)
    step_size: Optional[float] = Field(None, gt=0)  # null: the attack's default (2.5 * eps / steps)
    random_start: bool = False
    restarts: int = Field(1, ge=1)

    @field_validator("eps", "step_size", mode="before")
    @classmethod
    def _fraction(cls, v):
        return parse_fraction(v)


class RobustCurveSpec(_Strict):
    """Robust accuracy during training, on the first ``size`` images of the sweep's test subset (0: off).
    ``attack: auto`` takes the first attack of the evaluate stage that scores the model; ``every: auto``
    gives at most 10 points per run (always including the last epoch)."""
    size: int = Field(100, ge=0)
    every: Union[Literal["auto"], int] = "auto"
    attack: Union[Literal["auto"], AttackSpec] = "auto"

    @field_validator("every")
    @classmethod
    def _every(cls, v):
        if isinstance(v, int) and v < 1:
            raise ValueError("every must be 'auto' or a number of epochs >= 1")
        return v


RunSpec.model_rebuild()


class InversionSpec(_Strict):
    steps: int = Field(300, ge=1)
    step_size: float = Field(0.1, gt=0)
    start: Literal["other_image", "noise"] = "other_image"
    loss: Literal["l2", "relative"] = "l2"
    step_decay: Literal["none", "cosine"] = "none"
    tol: float = Field(0.0, ge=0)


# ---------------------------------------------------------------- stages
class TrainStage(_Strict):
    kind: Literal["train"]
    arch: Arch
    train_size: Optional[int] = Field(None, ge=1)
    from_: Optional[str] = Field(None, alias="from")   # a synthesize stage: train on its output
    train: TrainSpec
    adversarial: Optional[AttackSpec] = None
    seed: Optional[int] = None

    @model_validator(mode="after")
    def _size_xor_from(self):
        if self.from_ is not None and self.train_size is not None:
            raise ValueError("'train_size' is not allowed with 'from' (the synthesized set fixes the size)")
        return self


class SynthesizeStage(_Strict):
    kind: Literal["synthesize"]
    from_: str = Field(alias="from")                  # a train stage: the source model
    method: Literal["inversion", "relabel"]
    size: Optional[int] = Field(None, ge=1)          # first N of the seeded permutation (null: all)
    inversion: Optional[InversionSpec] = None
    targets: Optional[Literal["random", "deterministic"]] = None
    attack: Optional[AttackSpec] = None
    seed: Optional[int] = None

    @model_validator(mode="after")
    def _method_fields(self):
        if self.method == "inversion":
            if self.inversion is None:
                raise ValueError("method inversion needs 'inversion'")
            if self.targets is not None or self.attack is not None:
                raise ValueError("'targets' and 'attack' are only allowed with method: relabel")
        else:
            if self.targets is None or self.attack is None:
                raise ValueError("method relabel needs 'targets' and 'attack'")
            if self.inversion is not None:
                raise ValueError("'inversion' is only allowed with method: inversion")
        return self


class EvaluateStage(_Strict):
    kind: Literal["evaluate"]
    from_: Union[str, list[str]] = Field(alias="from")  # train stages
    attacks: list[AttackSpec] = []
    seed: Optional[int] = None

    @property
    def sources(self) -> list[str]:
        return [self.from_] if isinstance(self.from_, str) else list(self.from_)


class TransferStage(_Strict):
    kind: Literal["transfer"]
    from_: str = Field(alias="from")                  # a relabel synthesize stage
    models: list[str] = Field(min_length=1)           # train stages


Stage = Annotated[Union[TrainStage, SynthesizeStage, EvaluateStage, TransferStage], Field(discriminator="kind")]
STAGE_MODELS: dict[str, type[BaseModel]] = {"train": TrainStage, "synthesize": SynthesizeStage,
                                            "evaluate": EvaluateStage, "transfer": TransferStage}


class Sweep(_Strict):
    """The validated sweep. ``stages`` holds the raw stages as written (grids included);
    ``points[name]`` the expanded ``(point, stage_model)`` pairs of each stage."""
    name: str = Field(pattern=r"^[A-Za-z0-9_-]+$")
    description: Optional[str] = None
    seed: int = 0
    data: DataSpec
    run: RunSpec = RunSpec()
    stages: dict[str, dict[str, Any]] = Field(min_length=1)
    _points: dict = PrivateAttr(default_factory=dict)
    _source: str = PrivateAttr(default="<string>")

    @field_validator("stages")
    @classmethod
    def _stage_names(cls, v):
        for k in v:
            if not isinstance(k, str) or not k.replace("_", "").replace("-", "").isalnum():
                raise ValueError(f"stage name {k!r} must match [A-Za-z0-9_-]+")
        return v

    @property
    def points(self) -> dict[str, list[tuple[dict, BaseModel]]]:
        return self._points

    @property
    def source(self) -> str:
        return self._source


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
    tags = {"int", "float", "str", "bool", "list", "dict"}
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
