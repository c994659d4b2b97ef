"""Constructing the training sets of Ilyas et al. 2019: relabelled adversarial examples (D_rand, D_det)
and representation inversion (D_R, D_NR), both as PGD (:func:`sweeper.science.attacks.descend`); and two
controls of the Distill discussion: relabelling by a bugs-only attack that an ensemble of other models does
not read (Nakkiran: :func:`relabel` with ``ensemble``), and real images a weak model gets wrong, labelled with
its wrong prediction and not perturbed (Wallace: :func:`wrong_labels`)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from sweeper.science.attacks import eval_mode, descend, perturb
from sweeper.sweep.schema import AttackConfig, InversionConfig
from sweeper.science.threat import Unconstrained

_TINY = 1e-12


def _randint(low: int, high: int, n: int, generator, device) -> Tensor:
    if generator is None:
        return torch.randint(low, high, (n,), device=device)
    return torch.randint(low, high, (n,), generator=generator, device=generator.device).to(device)


def choose_targets(y, policy: str, num_classes: int, generator=None) -> Tensor:
    """Target labels for relabelling.

    Arguments:
        y (Tensor): (N,) true labels.
        policy (str): "random" (uniform over the classes other than y) or "deterministic" ((y+1) % C).
        num_classes (int): C >= 2.
        generator (torch.Generator | None): randomness for "random".
    """
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes!r}")
    y = torch.as_tensor(y).long()
    if policy == "deterministic":
        return (y + 1) % num_classes
    if policy == "random":
        shift = _randint(1, num_classes, y.numel(), generator, y.device).view_as(y)
        return (y + shift) % num_classes
    raise ValueError(f"unknown target policy {policy!r}; expected 'random' or 'deterministic'")


def relabel(model, x, y, *, policy, num_classes, attack: AttackConfig, bounds=(0.0, 1.0), generator=None,
            ensemble=()) -> dict:
    """A targeted attack toward chosen targets; the new label is the target.

    Arguments:
        model (nn.Module): source model, images in [0,1] -> logits.
        x (Tensor): (N,C,H,W) in [0,1]; y (Tensor): (N,) true labels.
        policy (str): "random" | "deterministic" (see :func:`choose_targets`).
        attack (AttackConfig): the targeted attack (eps in pixel units).
        ensemble (sequence of nn.Module): Nakkiran's bugs-only attack: PGD on the source's loss toward the
            target plus the mean loss of these models on the true labels
            (:func:`sweeper.science.attacks.keep_labels`); () -> the ordinary attack. (Default: ())

    Returns:
        {"x": x_adv, "y": targets, "orig_y": y, "hit": (N,) bool, model(x_adv).argmax == target (eval mode),
         "loss": (N,) cross-entropy of model(x_adv) toward the target}; with an ensemble also
        "keep_each": (N, len(ensemble)) bool, member i predicts y on x_adv, and "keep": (N,) bool, every member
        does.
    """
    ensemble = list(ensemble)
    y = torch.as_tensor(y).to(x.device)
    targets = choose_targets(y, policy, num_classes, generator).to(x.device)
    x_adv = perturb(model, x, y, attack, targets=targets, bounds=bounds, generator=generator, ensemble=ensemble)
    with eval_mode(model), torch.no_grad():
        logits = model(x_adv)
        hit = logits.argmax(dim=1) == targets
        loss = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
    out = {"x": x_adv, "y": targets, "orig_y": y, "hit": hit, "loss": loss}
    if ensemble:
        each = []
        for f in ensemble:
            with eval_mode(f), torch.no_grad():
                each.append(f(x_adv).argmax(dim=1) == y)
        out["keep_each"] = torch.stack(each, dim=1)
        out["keep"] = out["keep_each"].all(dim=1)
    return out


def wrong_labels(model, x, y) -> dict:
    """Wallace's distillation control ("Learning from incorrectly labeled data", Distill 2019): the images
    among ``x`` that ``model`` misclassifies, unperturbed, labelled with its (wrong) prediction.

    Arguments:
        model (nn.Module): the (weak) source model, images -> logits; run in eval mode, modes restored after.
        x (Tensor): (N,...) real images; y (Tensor): (N,) their true labels.

    Returns:
        {"x": the kept images (the very values of x), "y": the model's predictions on them (all != orig_y),
         "orig_y": their true labels, "wrong": (N,) bool, which of the N images were kept}
    """
    y = torch.as_tensor(y).to(x.device)
    with eval_mode(model), torch.no_grad():
        pred = model(x).argmax(dim=1)
    wrong = pred != y
    return {"x": x[wrong], "y": pred[wrong], "orig_y": y[wrong], "wrong": wrong}


def start_points(x_pool, n, mode: str, generator=None, exclude: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Starting images for inversion, and which pool image each one is.

    Arguments:
        x_pool (Tensor): (P,C,H,W) images to draw from.
        n (int): how many start points.
        mode (str): "other_image": random pool images, for each i an index different from exclude[i]
            (when exclude is given); "noise": 0.5 + Gaussian noise of std 0.05, clamped to [0,1].
        exclude (Tensor | None): (n,) pool indices to avoid (the indices of the inversion targets).

    Returns:
        (x0, index): x0 (n,C,H,W); index (n,) int64, the pool index of each start (-1 for noise).
    """
    n = int(n)
    device = x_pool.device
    if mode == "other_image":
        p = x_pool.shape[0]
        if exclude is None:
            if p < 1:
                raise ValueError("start_points: empty pool")
            idx = _randint(0, p, n, generator, device)
        else:
            exclude = torch.as_tensor(exclude).long().to(device).view(-1)
            if exclude.numel() != n:
                raise ValueError(f"start_points: exclude has {exclude.numel()} indices, expected {n}")
            if p < 2:
                raise ValueError("start_points: 'other_image' needs a pool of at least 2 images")
            idx = (exclude + _randint(1, p, n, generator, device)) % p
        return x_pool[idx].clone(), idx.long()
    if mode == "noise":
        shape = (n, *x_pool.shape[1:])
        if generator is None:
            noise = torch.randn(shape, dtype=x_pool.dtype, device=device)
        else:
            noise = torch.randn(shape, generator=generator, dtype=x_pool.dtype, device=generator.device).to(device)
        return (0.5 + 0.05 * noise).clamp(0.0, 1.0), torch.full((n,), -1, dtype=torch.long, device=device)
    raise ValueError(f"unknown start mode {mode!r}; expected 'other_image' or 'noise'")


def feature_distance(model, z: Tensor, target: Tensor) -> Tensor:
    """(N,) squared L2 distance between ``model.representation(z)`` and ``target`` (N, F): inversion's PGD loss.
    (The squared and the plain distance, absolute or relative to ||target||, give the same normalised step.)"""
    return (model.representation(z).flatten(1) - target).pow(2).sum(dim=1)


def invert(model, x_target, x_init, cfg: InversionConfig, *, bounds=(0.0, 1.0)) -> tuple[Tensor, Tensor]:
    """Representation inversion: find z with g(z) close to g(x_target), g = model.representation.

    PGD (:func:`sweeper.science.attacks.descend`) that descends :func:`feature_distance` from ``x_init`` on the
    unconstrained threat (L2-normalised steps per example, clamped to ``bounds``, no ball): ``cfg.steps`` steps
    of ``cfg.step_size`` (cosine-annealed towards 0 with ``step_decay: cosine``); with ``cfg.tol`` > 0 it stops
    once every example's distance changed by less than tol (relative) over the last 10 steps.

    Arguments:
        model (nn.Module): with ``representation(x) -> (N, F)``; run in eval mode, modes restored after.
        x_target (Tensor): (N,C,H,W) in [0,1]; x_init (Tensor): (N,C,H,W) start points.
        cfg (InversionConfig): steps, step_size (pixel units), step_decay, tol.
        bounds (tuple | None): box; None -> no box.

    Returns:
        (z, dist): z (N,C,H,W) detached; dist (N,) the final distance ||g(z)-g(x_target)||_2.
    """
    steps, window = int(cfg.steps), 10
    threat = Unconstrained(bounds=bounds)

    def step_size(t: int) -> float:
        if cfg.step_decay == "cosine":
            return cfg.step_size * 0.5 * (1.0 + math.cos(math.pi * t / steps))
        return cfg.step_size

    history: list[Tensor] = []

    def converged(sq: Tensor) -> bool:
        if cfg.tol <= 0:
            return False
        history.append(sq.clamp_min(0).sqrt())
        if len(history) <= window:
            return False
        old = history.pop(0)
        return bool(((old - history[-1]).abs() / old.clamp_min(_TINY) < cfg.tol).all())

    with eval_mode(model):
        with torch.no_grad():
            target = model.representation(x_target.detach()).flatten(1)
        z0 = threat.clamp_box(x_init.detach().to(device=x_target.device, dtype=x_target.dtype).clone())
        z, _, _ = descend(model, z0, target, feature_distance, threat, steps=steps, step_size=step_size,
                          sign=-1.0, stop=converged)
        with torch.no_grad():
            dist = (model.representation(z).flatten(1) - target).norm(p=2, dim=1)
    return z, dist
