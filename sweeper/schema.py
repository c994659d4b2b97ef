"""The sweep file's schema: strict pydantic v2 models for every section and stage kind.

Every model forbids unknown keys, so a misspelt option fails loudly instead of silently doing nothing.
:mod:`sweeper.spec` loads files against these models, expands grids and turns errors into readable lines.
No Ray, no W&B, no torch here.
"""
from __future__ import annotations

import math
import re
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

ARCHS = ("small_cnn", "mlp", "linear", "resnet18", "resnet50", "vgg16", "densenet121", "airbench")
Arch = Literal["small_cnn", "mlp", "linear", "resnet18", "resnet50", "vgg16", "densenet121", "airbench"]
KINDS = ("train", "synthesize", "evaluate", "transfer")
AutoOrCount = Union[Literal["auto"], Annotated[int, Field(ge=1)]]  # "auto", or a whole number >= 1
NAME_PATTERN = re.compile(r"[A-Za-z0-9_-]+")  # sweep and stage names (ASCII only: they become paths and labels)

# Sanity bounds (sweep files are input: an absurd number should fail here, not hours later in synthesis).
# Every float must be finite (``allow_inf_nan=False`` below). Radii and step sizes are in [0,1] pixel units;
# the tighter per-dataset eps bounds of ``eps_limit`` are checked by sweeper.spec, which knows the dataset.
MAX_EPS = 1000.0        # any eps or attack/inversion step size, any dataset (the toy's features are not pixels)
MAX_GRID_POINTS = 10_000  # default of run.max_grid_points: grid points summed over all stages
IMAGE_SHAPES = {"fashion_mnist": (1, 28, 28), "cifar10": (3, 32, 32)}


def eps_limit(norm: str, dataset: str) -> Optional[tuple[float, str]]:
    """(largest meaningful eps, why) for an attack on ``dataset``; None where only MAX_EPS applies (toy)."""
    shape = IMAGE_SHAPES.get(dataset)
    if shape is None:
        return None
    if norm == "linf":
        return 1.0, "pixels are in [0,1], no pixel can move further than 1"
    dims = shape[0] * shape[1] * shape[2]
    return math.sqrt(dims), f"the diagonal of the [0,1] image cube, sqrt({dims})"


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
    model_config = ConfigDict(extra="forbid", populate_by_name=True, allow_inf_nan=False)


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
    synthesis_actors: AutoOrCount = "auto"  # auto: one per GPU (or per cpus_per_trial CPUs)
    shard_size: int = Field(500, ge=1)
    max_failures: int = Field(2, ge=0)
    wandb: Literal["offline", "online", "disabled"] = "offline"
    max_grid_points: int = Field(MAX_GRID_POINTS, ge=1)  # refuse sweeps whose stages have more points in all
    lease_ttl: float = Field(180, ge=10)  # seconds a driver's lease on a node lasts unless its heartbeat renews it
    robust_curve: "RobustCurveSpec" = Field(default_factory=lambda: RobustCurveSpec())

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
    if isinstance(v, bool):
        raise ValueError(f"not a number (got {v!r}); expected a number or a fraction like '8/255'")
    if isinstance(v, str):
        parts = v.split("/")
        try:
            if len(parts) == 1:
                return float(parts[0])
            if len(parts) == 2:
                return float(parts[0]) / float(parts[1])
        except (ValueError, ZeroDivisionError):
            pass
        raise ValueError(f"not a number or a fraction (got {v!r}); expected a number or a fraction like '8/255'")
    return v


class AttackSpec(_Strict):
    norm: Literal["l2", "linf"]
    eps: float = Field(ge=0, le=MAX_EPS)          # radius of the ball, in [0,1] pixel units
    steps: int = Field(10, ge=1)
    step_size: Optional[float] = Field(None, gt=0, le=MAX_EPS)  # null: the attack's default (2.5 * eps / steps)
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
    every: AutoOrCount = "auto"
    attack: Union[Literal["auto"], AttackSpec] = "auto"


RunSpec.model_rebuild()


class InversionSpec(_Strict):
    steps: int = Field(300, ge=1)
    step_size: float = Field(0.1, gt=0, le=MAX_EPS)
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
            if not isinstance(k, str) or not NAME_PATTERN.fullmatch(k):
                raise ValueError(f"invalid stage name (got {k!r}); expected letters, digits, _ and - only "
                                 "([A-Za-z0-9_-]+)")
        return v

    @property
    def points(self) -> dict[str, list[tuple[dict, BaseModel]]]:
        return self._points

    @property
    def source(self) -> str:
        return self._source
