"""The sweep file's schema: strict, frozen pydantic v2 models for every section and stage kind.

These models are the configs all the way down: a stage's ``attack`` is the :class:`AttackConfig` that
``attacks.pgd`` runs, its ``train`` the :class:`TrainConfig` that ``training.train`` runs, its ``inversion`` the
:class:`InversionConfig` of ``synthesis.invert``; a plan node holds its stage model. Every value is parsed
once, here (eps: :func:`parse_eps`), with one set of defaults. Every model forbids unknown keys, so a misspelt
option fails loudly instead of silently doing nothing. :mod:`sweeper.sweep.spec` loads files against these models,
expands grids and turns errors into readable lines. No Ray, no W&B, no torch here.
"""
from __future__ import annotations

import math
import numbers
import re
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_serializer, model_validator


ARCHS = ("small_cnn", "wide_cnn", "resnet_small", "mlp", "linear", "resnet18", "resnet50", "vgg16", "densenet121",
         "airbench")
Arch = Literal[ARCHS]
KINDS = ("train", "synthesize", "evaluate", "transfer", "fourier")
AutoOrCount = Union[Literal["auto"], Annotated[int, Field(ge=1)]]  # "auto", or a whole number >= 1
NAME_PATTERN = re.compile(r"[A-Za-z0-9_-]+")  # sweep and stage names (ASCII only: they become paths and labels)

# Sanity bounds (sweep files are input: an absurd number should fail here, not hours later in synthesis).
# Every float must be finite (``allow_inf_nan=False`` below). Radii and step sizes are in [0,1] pixel units;
# the tighter per-dataset eps bounds of ``eps_limit`` are checked by sweeper.sweep.spec, which knows the dataset.
MAX_EPS = 1000.0        # any eps or attack/inversion step size, any dataset (the toy's features are not pixels)
MAX_GRID_POINTS = 10_000  # default of run.max_grid_points: grid points summed over all stages
MAX_CHAINS = 100          # whole-chain seeds (``chains:``)
CHAIN_STRIDE = 1000       # chain k adds CHAIN_STRIDE * k to every stage's seed
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


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, allow_inf_nan=False, frozen=True)


class _Keyed(_Strict):
    """A model whose dump is hashed into node keys: options added after keys existed (``_OMIT_AT_DEFAULT``)
    are left out of its dumps at their defaults, so older nodes keep their keys."""
    _OMIT_AT_DEFAULT: ClassVar[tuple[str, ...]] = ()

    @model_serializer(mode="wrap")
    def _dump(self, handler):
        out = handler(self)
        for name in self._OMIT_AT_DEFAULT:
            if name in out and out[name] == type(self).model_fields[name].default:
                del out[name]
        return out


# ---------------------------------------------------------------- sections
class ToySpec(_Strict):
    d: int = Field(100, ge=1, description="number of weak (non-robust) features")
    p: float = Field(0.95, gt=0.5, le=1, description="probability that the robust feature equals the label")
    n_train: int = Field(5000, ge=1, description="training examples")
    n_test: int = Field(2000, ge=1, description="test examples")
    seed: int = Field(0, description="seed of the toy's data")


class DataSpec(_Strict):
    dataset: Literal["fashion_mnist", "cifar10", "toy"] = Field(
        description="the dataset: fashion_mnist, cifar10, or toy (the paper's theory model)")
    root: Optional[str] = Field(None, description="where the dataset's files are: a folder; store: the copy that "
                                "`sweeper data push` put into this sweep's store; null: the default places")
    test_size: Optional[int] = Field(None, ge=1, description="evaluate on the first N of a seeded permutation of "
                                                             "the test set (null: all)")
    toy: Optional[ToySpec] = Field(None, description="the toy's options (only with dataset: toy)")

    @model_validator(mode="after")
    def _toy_only_with_toy(self):
        if self.toy is not None and self.dataset != "toy":
            raise ValueError("'toy' options are only allowed with dataset: toy")
        return self


class RunSpec(_Strict):
    """Where and how to run; never part of a node key."""
    store: str = Field("./store", description="the artifact store: a local folder or a URI (file://, "
                                              "s3://bucket/prefix, gs://...); --store overrides it")
    max_concurrent_trials: int = Field(2, ge=1, description="training and evaluation trials running at once")
    cpus_per_trial: float = Field(1, gt=0, description="CPUs reserved for each trial")
    gpus_per_trial: Union[float, dict[str, float]] = Field(
        0, description="GPUs for each trial: a number, or arch -> GPUs with a 'default' entry, e.g. "
                       "{default: 1, airbench: 0.5}")
    synthesis_actors: AutoOrCount = Field("auto", description="actors synthesizing shards at once; auto: one "
                                                              "per GPU (or per cpus_per_trial CPUs)")
    shard_size: int = Field(500, ge=1, description="images per synthesis shard (the unit of resume)")
    max_failures: int = Field(2, ge=0, description="retries of a failed trial or shard before the run stops")
    wandb: Literal["offline", "online", "disabled"] = Field(
        "offline", description="W&B mode: offline (runs kept in the store), online or disabled")
    max_grid_points: int = Field(MAX_GRID_POINTS, ge=1,  # refuse sweeps whose stages have more points in all
                                 description="refuse the file if its stages have more grid points than this, in all")
    lease_ttl: float = Field(180, ge=10,  # seconds a driver's lease on a node lasts unless its heartbeat renews it
                             description="seconds a driver's lease on a node lasts unless renewed (several "
                                         "drivers sharing one store)")
    robust_curve: "RobustCurveSpec" = Field(default_factory=lambda: RobustCurveSpec(),
                                            description="robust accuracy measured during training (W&B curves)")

    @field_validator("gpus_per_trial")
    @classmethod
    def _gpus(cls, v):
        vals = v.values() if isinstance(v, dict) else [v]
        if any(x < 0 for x in vals):
            raise ValueError("GPU counts must be >= 0")
        if isinstance(v, dict) and "default" not in v:
            raise ValueError("a mapping arch -> GPUs needs a 'default' entry")
        return v


class TrainConfig(_Strict):
    """How ``training.train`` trains (the ``train:`` section of a train stage)."""
    epochs: int = Field(ge=1, description="training epochs")
    batch_size: int = Field(128, ge=1, description="images per batch")
    optimizer: Literal["sgd", "adam"] = Field("sgd", description="sgd (with momentum) or adam")
    lr: float = Field(0.1, gt=0, description="learning rate at the start of the schedule")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum, in [0, 1)")
    weight_decay: float = Field(5.0e-4, ge=0, description="L2 weight decay")
    schedule: Literal["step", "cosine", "constant"] = Field(
        "cosine", description="learning-rate schedule: cosine, step (x gamma every step_every epochs) or constant")
    step_every: int = Field(50, ge=1, description="epochs between lr drops (schedule: step)")
    gamma: float = Field(0.1, gt=0, description="lr factor per drop (schedule: step)")
    augment: bool = Field(False, description="random crop (pad 4) and horizontal flip")


def parse_eps(v: Any) -> float:
    """A radius or step length: a number, or a fraction string such as ``"8/255"`` (no eval); finite, >= 0.

    The one parser of these values: the schema calls it, everything downstream receives floats.
    Raises ValueError naming the value."""
    if isinstance(v, bool) or not isinstance(v, (numbers.Real, str)):
        raise ValueError(f"not a number (got {v!r}); expected a number or a fraction like '8/255'")
    out = None
    if isinstance(v, str):
        parts = [p.strip() for p in v.split("/")]
        try:
            out = float(parts[0]) if len(parts) == 1 else float(parts[0]) / float(parts[1]) if len(parts) == 2 else None
        except (ValueError, ZeroDivisionError, OverflowError):
            pass
        if out is None:
            raise ValueError(f"not a number or a fraction (got {v!r}); expected a number or a fraction like '8/255'")
    else:
        out = float(v)
    if not math.isfinite(out):
        raise ValueError(f"not a finite number (got {v!r}); expected a finite number")
    if out < 0:
        raise ValueError(f"must be greater than or equal to 0 (got {v!r}); expected a number >= 0")
    return out


METHODS = ("pgd", "apgd-ce", "apgd-t", "apgd-dlr", "fab", "square", "autoattack")


class AttackConfig(_Keyed):
    r"""One attack: sweeper's PGD (``method: pgd``, :func:`sweeper.science.attacks.pgd`) or an AutoAttack-class method
    (:func:`sweeper.science.aa.run_attack`).

    Arguments:
        norm (str): "l2" or "linf".
        eps (float | str): radius in [0,1] pixel units; "8/255" is accepted.
        steps (int): gradient steps (queries for square), >= 1. (Default: 10)
        step_size (float | None): PGD's step length in pixel units; None -> 2.5 * eps / steps. (Default: None)
        random_start (bool): start from a random point in the ball (L2: norm eps; Linf: uniform). (Default: False)
        restarts (int): independent runs; per example the best one is kept (sweep files: PGD needs
            random_start for restarts > 1). (Default: 1)
        method (str): pgd | apgd-ce | apgd-t | apgd-dlr | fab | square | autoattack. (Default: "pgd")
        loss (str): PGD's loss: "ce" (cross-entropy) or "margin" (max other logit - true logit; targeted:
            target logit - max other logit). (Default: "ce")
        keep_best (bool): return the highest-loss (untargeted) / lowest-loss (targeted) iterate instead of
            the last one. (Default: False)
        n_targets (int | None): APGD-T's number of target classes (None: its default). (Default: None)
    """
    norm: Literal["l2", "linf"] = Field(description="the threat model's norm: l2 or linf")
    eps: float = Field(ge=0, le=MAX_EPS, description="the radius in [0,1] pixel units: a number or a fraction "
                                                     "such as \"8/255\"")
    steps: int = Field(10, ge=1, description="gradient steps (queries for method: square)")
    step_size: Optional[float] = Field(None, gt=0, le=MAX_EPS, description="PGD's step length in pixel units; "
                                                                          "null: 2.5 * eps / steps")
    random_start: bool = Field(False, description="start from a random point in the ball")
    restarts: int = Field(1, ge=1, description="independent runs, the best kept per example (PGD: more than 1 "
                                               "needs random_start)")
    method: Literal["pgd", "apgd-ce", "apgd-t", "apgd-dlr", "fab", "square", "autoattack"] = Field(
        "pgd", description="pgd (sweeper's PGD) or an AutoAttack-class method from torchattacks")
    loss: Literal["ce", "margin"] = Field("ce", description="PGD's loss: ce (cross-entropy) or margin (the CW "
                                                          "logit margin)")
    keep_best: bool = Field(False, description="return the best iterate instead of the last one")
    n_targets: Optional[int] = Field(None, ge=1, description="APGD-T's number of target classes (only with "
                                                             "method: apgd-t; null: its default)")

    # options added after node keys existed: left out of dumps (and so of node keys) at their defaults
    _OMIT_AT_DEFAULT: ClassVar[tuple[str, ...]] = ("method", "loss", "keep_best", "n_targets")

    @field_validator("eps", "step_size", mode="before")
    @classmethod
    def _parse(cls, v):
        return v if v is None else parse_eps(v)

    def resolved_step_size(self) -> float:
        """The step length actually used: step_size, or 2.5 * eps / steps when None."""
        if self.step_size is not None:
            return float(self.step_size)
        return 2.5 * self.eps / self.steps

    def name(self) -> str:
        """The attack's one display name (evaluation meta, report column ``robust_acc[<name>]``, W&B metric
        ``robust_acc/<name>`` with dots as ``p``: tracking.wandb_name): "l2_eps0.5_s10", then a suffix per option
        not at its default."""
        out = f"{self.norm}_eps{self.eps:g}_s{self.steps}"
        if self.step_size is not None:
            out += f"_ss{self.step_size:g}"
        if self.random_start:
            out += "_rs"
        if self.restarts > 1:
            out += f"_r{self.restarts}"
        if self.keep_best:
            out += "_best"
        if self.loss != "ce":
            out += f"_{self.loss}"
        if self.method != "pgd":
            out += f"_{self.method}"
        if self.n_targets is not None:
            out += f"_t{self.n_targets}"
        return out


class RobustCurveSpec(_Strict):
    """Robust accuracy during training, on the first ``size`` images of the sweep's test subset (0: off).
    ``attack: auto`` takes the first attack of the evaluate stage that scores the model; ``every: auto``
    gives at most 10 points per run (always including the last epoch)."""
    size: int = Field(100, ge=0, description="the first N images of the sweep's test subset (0: off)")
    every: AutoOrCount = Field("auto", description="epochs between points; auto: at most 10 points, always the "
                                                   "last epoch")
    attack: Union[Literal["auto"], AttackConfig] = Field(
        "auto", description="auto: the first attack of the evaluate stage that scores the model; or an attack")


RunSpec.model_rebuild()


class InversionConfig(_Strict):
    """How ``synthesis.invert`` inverts a representation (the ``inversion:`` section of a synthesize stage):
    ``steps`` L2-normalised steps of ``step_size`` (pixel units), ``step_decay`` none | cosine, stopping early
    once every example's distance changed by less than ``tol`` (relative) over 10 steps (0: never)."""
    steps: int = Field(300, ge=1, description="L2-normalised gradient steps")
    step_size: float = Field(0.1, gt=0, le=MAX_EPS, description="step length in pixel units")
    start: Literal["other_image", "noise"] = Field(
        "other_image", description="the starting image: another random training image, or noise")
    loss: Literal["l2", "relative"] = Field(
        "l2", description="distance to the target representation: l2, or relative to the target's norm")
    step_decay: Literal["none", "cosine"] = Field("none", description="decay of the step length: none or cosine")
    tol: float = Field(0.0, ge=0, description="stop once every distance changed by less than this (relative) "
                                              "over 10 steps (0: never)")


# ---------------------------------------------------------------- stages
class TrainStage(_Keyed):
    kind: Literal["train"] = Field(description="train: train a model")
    arch: Arch = Field(description="the model's architecture")
    train_size: Optional[int] = Field(None, ge=1, description="train on the first N of a seeded permutation of "
                                                              "the training set (null: all; not with from)")
    from_: Optional[str] = Field(None, alias="from",   # a synthesize stage: train on its output
                                 description="a synthesize stage: train on the set it made (null: real data)")
    train: TrainConfig = Field(description="how to train")
    adversarial: Optional[AttackConfig] = Field(None, description="adversarial training against this PGD attack "
                                                                  "(null: standard training)")
    seed: Optional[int] = Field(None, description="the stage's seed (null: the sweep's seed)")
    features: Optional[str] = Field(None, description=(
        "a train stage, normally the adversarially trained source: train a linear probe (needs arch: linear) on "
        "that model's frozen representation instead of on pixels. Robust features here = the penultimate-layer "
        "activations of that model (the representation a D_R synthesis inverts), its weights and batch-norm "
        "statistics frozen; only the linear head trains (with adversarial: against attacks on the whole image -> "
        "features -> head). Goh's robust-feature-leakage probe (Distill discussion) restricted a linear classifier "
        "to robust linear directions of pixel space; a nonlinear robust model's representation is a broader "
        "notion, so a D_det image whose perturbation moves robust features of its target class can leak through "
        "it. Combines with from (D_rand, D_det: trained on their relabelled targets, scored on the true labels) or "
        "real data; one probe per node of that stage (and per set of from). Null: an ordinary model"))

    # options added after node keys existed: left out of dumps (and so of node keys) at their defaults
    _OMIT_AT_DEFAULT: ClassVar[tuple[str, ...]] = ("features",)

    @model_validator(mode="after")
    def _size_xor_from(self):
        if self.from_ is not None and self.train_size is not None:
            raise ValueError("'train_size' is not allowed with 'from' (the synthesized set fixes the size)")
        return self


class SynthesizeStage(_Keyed):
    kind: Literal["synthesize"] = Field(description="synthesize: build a training set from a model")
    from_: str = Field(alias="from",                  # a train stage: the source model
                       description="a train stage: its model is the source")
    method: Literal["inversion", "relabel", "wrong_labels"] = Field(
        description="inversion: invert the source's representation (D_R, D_NR); relabel: a targeted attack, "
                    "labelled with its target (D_rand, D_det; with ensemble: D_det_bugs, D_rand_bugs); "
                    "wrong_labels: Wallace's distillation control (D_wallace): of the first `size` images of the "
                    "seeded permutation of the training set, keep only those the source misclassifies, "
                    "unperturbed, labelled with its wrong prediction (so the set has fewer than `size` images); "
                    "takes no attack, targets, inversion or ensemble")
    size: Optional[int] = Field(None, ge=1,          # first N of the seeded permutation (null: all)
                                description="the first N of a seeded permutation of the training set (null: all)")
    inversion: Optional[InversionConfig] = Field(None, description="how to invert (method: inversion)")
    targets: Optional[Literal["random", "deterministic"]] = Field(
        None, description="the target class: random (D_rand) or deterministic, (y + 1) mod C (D_det); "
                          "method: relabel")
    attack: Optional[AttackConfig] = Field(None, description="the targeted attack (method: relabel)")
    seed: Optional[int] = Field(None, description="the stage's seed (null: the sweep's seed)")
    ensemble: list[str] = Field([], description=(
        "method relabel: train stages (each with exactly one model, none of them the source) whose models must "
        "keep the true label: PGD minimises CE(source(x), target) + mean_i CE(f_i(x), y), Nakkiran's bugs-only "
        "attack of the Distill discussion (deterministic targets: D_det_bugs, random: D_rand_bugs); needs "
        "attack method pgd; the set's meta records ensemble_keeps, the fraction of images every one of them "
        "still reads as the true label. []: an ordinary relabelling"))

    # options added after node keys existed: left out of dumps (and so of node keys) at their defaults
    _OMIT_AT_DEFAULT: ClassVar[tuple[str, ...]] = ("ensemble",)

    @model_validator(mode="after")
    def _method_fields(self):
        if self.method == "inversion":
            if self.inversion is None:
                raise ValueError("method inversion needs 'inversion'")
            if self.targets is not None or self.attack is not None:
                raise ValueError("'targets' and 'attack' are only allowed with method: relabel")
        elif self.method == "relabel":
            if self.targets is None or self.attack is None:
                raise ValueError("method relabel needs 'targets' and 'attack'")
            if self.inversion is not None:
                raise ValueError("'inversion' is only allowed with method: inversion")
        else:  # wrong_labels
            given = [k for k in ("attack", "targets", "inversion") if getattr(self, k) is not None]
            given += ["ensemble"] if self.ensemble else []
            if given:
                raise ValueError(f"method wrong_labels takes no {', '.join(repr(k) for k in given)} (got "
                                 f"{' and '.join(given)}); expected only from, size and seed: it keeps the real "
                                 "images the source misclassifies, unperturbed, labelled with its prediction")
        if self.ensemble:
            if self.method != "relabel":
                raise ValueError(f"'ensemble' is only allowed with method: relabel (got method: {self.method})")
            if self.attack.method != "pgd":
                raise ValueError(f"'ensemble' needs attack method: pgd, whose loss carries the ensemble's term "
                                 f"(got attack method: {self.attack.method})")
            if self.from_ in self.ensemble:
                raise ValueError(f"'ensemble' names the source stage {self.from_!r} (got ensemble: "
                                 f"{self.ensemble}); expected other train stages: the source moves to the target "
                                 "while the ensemble keeps the true label")
            twice = sorted({e for e in self.ensemble if self.ensemble.count(e) > 1})
            if twice:
                raise ValueError(f"'ensemble' names {', '.join(map(repr, twice))} more than once (got ensemble: "
                                 f"{self.ensemble}); expected each train stage once")
        return self


class EvaluateStage(_Strict):
    kind: Literal["evaluate"] = Field(description="evaluate: clean and robust test accuracy of models")
    from_: Union[str, list[str]] = Field(alias="from",  # train stages
                                         description="a train stage or a list of them: the models to score")
    attacks: list[AttackConfig] = Field([], description="robust accuracy: the per-example worst case over these, "
                                                        "per threat ball ([]: clean accuracy only)")
    seed: Optional[int] = Field(None, description="the stage's seed (null: the sweep's seed)")

    @property
    def sources(self) -> list[str]:
        return [self.from_] if isinstance(self.from_, str) else list(self.from_)


class TransferStage(_Strict):
    kind: Literal["transfer"] = Field(description="transfer: how a relabel set's adversarial examples read on "
                                                  "other models")
    from_: str = Field(alias="from",                  # a relabel synthesize stage
                       description="a relabel synthesize stage")
    models: list[str] = Field(min_length=1,           # train stages
                              description="train stages: the models its examples are read on")


class FourierStage(_Strict):
    """Fourier sensitivity (Yin et al. 2019; the control of Gilmer & Hendrycks in the Distill discussion): each
    model's error on the first ``size`` images of the sweep's test subset under additive noise ``s * eps *
    U_{i,j}`` at every frequency (i, j), clipped to [0, 1] (:func:`sweeper.science.fourier.fourier_heatmap`)."""
    kind: Literal["fourier"] = Field(description="fourier: a model's error under additive Fourier-basis noise of "
                                                 "a fixed L2 norm at every frequency (a heatmap)")
    from_: Union[str, list[str]] = Field(alias="from",  # train stages
                                         description="a train stage or a list of them: the models to probe")
    eps: float = Field(ge=0, le=MAX_EPS, description="the L2 norm of the noise in [0,1] pixel units, per "
                                                     "channel (every channel gets the same basis image: an RGB "
                                                     "image gets eps * sqrt(3) in all), before clipping to [0,1]; "
                                                     "a number or a fraction such as \"8/255\"")
    size: int = Field(200, ge=1, description="the first N images of the sweep's test subset (all of it when it "
                                             "is smaller); each of the about H*W/2 frequencies costs N forward "
                                             "passes")
    seed: Optional[int] = Field(None, description="the stage's seed: the random sign of each image's noise "
                                                  "(null: the sweep's seed)")

    @field_validator("eps", mode="before")
    @classmethod
    def _parse(cls, v):
        return parse_eps(v)

    @property
    def sources(self) -> list[str]:
        return [self.from_] if isinstance(self.from_, str) else list(self.from_)


Stage = Annotated[Union[TrainStage, SynthesizeStage, EvaluateStage, TransferStage, FourierStage],
                  Field(discriminator="kind")]
STAGE_MODELS: dict[str, type[BaseModel]] = {"train": TrainStage, "synthesize": SynthesizeStage,
                                            "evaluate": EvaluateStage, "transfer": TransferStage,
                                            "fourier": FourierStage}


class SweepFile(_Strict):
    """The top level of a sweep file as written; ``stages`` are kept raw (grids included)."""
    name: str = Field(pattern=r"^[A-Za-z0-9_-]+$", description="the sweep's name: letters, digits, _ and - "
                                                               "(names its report)")
    description: Optional[str] = Field(None, description="one line saying what the sweep is for")
    seed: int = Field(0, description="picks the real-data subsets; the default seed of every stage")
    chains: int = Field(1, ge=1, le=MAX_CHAINS, description=(
        "whole-chain seeds: run every stage this many times, as independent chains; chain 0 is the sweep as "
        "written, chain k re-seeds every stage (source models, synthesis, retraining, evaluation) with its seed "
        f"+ {CHAIN_STRIDE} * k, so the report's spread and intervals cover the source models and the synthesis, "
        "not only the retraining"))
    data: DataSpec = Field(description="the dataset (part of every node's key)")
    run: RunSpec = Field(RunSpec(), description="where and how to run (never part of a node's key)")
    stages: dict[str, dict[str, Any]] = Field(
        min_length=1, description="stage name -> stage; `from` links them into a DAG; any value inside a stage "
                                  "may be a grid, {grid: [...]}")

    @field_validator("stages")
    @classmethod
    def _stage_names(cls, v):
        for k in v:
            if not isinstance(k, str) or not NAME_PATTERN.fullmatch(k):
                raise ValueError(f"invalid stage name (got {k!r}); expected letters, digits, _ and - only "
                                 "([A-Za-z0-9_-]+)")
        return v


@dataclass(frozen=True)
class Sweep:
    """A validated sweep (built by :func:`sweeper.sweep.spec.validate`): the file's sections, the raw stages as
    written, and ``points[name]``: each stage's expanded ``(point, stage model)`` pairs; ``source`` names the
    file in messages."""
    name: str
    description: Optional[str]
    seed: int
    data: DataSpec
    run: RunSpec
    stages: dict[str, dict[str, Any]]
    points: dict[str, list[tuple[dict, Stage]]]
    source: str
    chains: int = 1
