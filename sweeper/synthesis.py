"""Constructing the training sets of Ilyas et al. 2019: relabelled adversarial examples (D_rand, D_det)
and representation inversion (D_R, D_NR)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .attacks import AttackConfig, eval_mode, pgd

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


def relabel(model, x, y, *, policy, num_classes, attack: AttackConfig, bounds=(0.0, 1.0), generator=None) -> dict:
    """Targeted PGD toward chosen targets; the new label is the target.

    Arguments:
        model (nn.Module): source model, images in [0,1] -> logits.
        x (Tensor): (N,C,H,W) in [0,1]; y (Tensor): (N,) true labels.
        policy (str): "random" | "deterministic" (see :func:`choose_targets`).
        attack (AttackConfig): the targeted attack (eps in pixel units).

    Returns:
        {"x": x_adv, "y": targets, "orig_y": y, "hit": (N,) bool, model(x_adv).argmax == target (eval mode),
         "loss": (N,) cross-entropy of model(x_adv) toward the target (what the attack minimised)}
    """
    targets = choose_targets(y, policy, num_classes, generator).to(x.device)
    x_adv = pgd(model, x, targets, attack, targeted=True, bounds=bounds, generator=generator)
    with eval_mode(model), torch.no_grad():
        logits = model(x_adv)
        hit = logits.argmax(dim=1) == targets
        loss = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
    return {"x": x_adv, "y": targets, "orig_y": torch.as_tensor(y).to(x.device), "hit": hit, "loss": loss}


def start_points(x_pool, n, mode: str, generator=None, exclude: Tensor | None = None) -> Tensor:
    """Starting images for inversion.

    Arguments:
        x_pool (Tensor): (P,C,H,W) images to draw from.
        n (int): how many start points.
        mode (str): "other_image": random pool images, for each i an index different from exclude[i]
            (when exclude is given); "noise": 0.5 + Gaussian noise of std 0.05, clamped to [0,1].
        exclude (Tensor | None): (n,) pool indices to avoid (the indices of the inversion targets).
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
        return x_pool[idx].clone()
    if mode == "noise":
        shape = (n, *x_pool.shape[1:])
        if generator is None:
            noise = torch.randn(shape, dtype=x_pool.dtype, device=device)
        else:
            noise = torch.randn(shape, generator=generator, dtype=x_pool.dtype, device=generator.device).to(device)
        return (0.5 + 0.05 * noise).clamp(0.0, 1.0)
    raise ValueError(f"unknown start mode {mode!r}; expected 'other_image' or 'noise'")


def _distance(a: Tensor, b: Tensor) -> Tensor:
    return (a - b).flatten(1).norm(p=2, dim=1)


def invert(model, x_target, x_init, *, steps: int, step_size: float, loss: str = "l2",
           step_decay: str = "none", tol: float = 0.0, bounds=(0.0, 1.0)) -> tuple[Tensor, Tensor]:
    """Representation inversion: find z with g(z) close to g(x_target), g = model.representation.

    Minimises ||g(z)-g(x_target)||_2 ("l2") or that divided by ||g(x_target)||_2 ("relative") with
    L2-normalised gradient steps (per example), clamped to bounds, no ball. Per example the two losses
    differ by a positive constant, so their normalised steps coincide.

    Arguments:
        model (nn.Module): with ``representation(x) -> (N, F)``; run in eval mode, modes restored after.
        x_target (Tensor): (N,C,H,W) in [0,1]; x_init (Tensor): (N,C,H,W) start points.
        steps (int): iterations (>= 0); step_size (float): L2 length of each step in pixel units.
        step_decay (str): "none" or "cosine" (step size cosine-annealed towards 0 over the steps).
        tol (float): > 0: stop once every example's relative change of distance over the last 10 steps < tol.
        bounds (tuple | None): box; None -> no box.

    Returns:
        (z, dist): z (N,C,H,W) detached; dist (N,) the final absolute distance ||g(z)-g(x_target)||_2.
    """
    if loss not in ("l2", "relative"):
        raise ValueError(f"unknown inversion loss {loss!r}; expected 'l2' or 'relative'")
    if step_decay not in ("none", "cosine"):
        raise ValueError(f"unknown step_decay {step_decay!r}; expected 'none' or 'cosine'")
    if int(steps) < 0 or step_size < 0 or tol < 0:
        raise ValueError("invert: steps, step_size and tol must be >= 0")
    steps = int(steps)

    def box(t: Tensor) -> Tensor:
        return t if bounds is None else t.clamp(bounds[0], bounds[1])

    window = 10
    with eval_mode(model):
        with torch.no_grad():
            target = model.representation(x_target.detach()).flatten(1)
        z = box(x_init.detach().to(device=x_target.device, dtype=x_target.dtype).clone())
        history: list[Tensor] = []
        for t in range(steps):
            z.requires_grad_(True)
            with torch.enable_grad():
                rep = model.representation(z).flatten(1)
                sq = (rep - target).pow(2).sum(dim=1)  # same normalised direction as the distance
                (grad,) = torch.autograd.grad(sq.sum(), z)
            z = z.detach()
            if tol > 0:
                dist = sq.detach().clamp_min(0).sqrt()
                history.append(dist)
                if len(history) > window:
                    old = history.pop(0)
                    rel = (old - dist).abs() / old.clamp_min(_TINY)
                    if bool((rel < tol).all()):
                        break
            lr = step_size
            if step_decay == "cosine":
                lr = step_size * 0.5 * (1.0 + math.cos(math.pi * t / steps))
            gnorm = grad.flatten(1).norm(p=2, dim=1).clamp_min(_TINY).view(-1, *([1] * (z.dim() - 1)))
            z = box(z - lr * grad / gnorm)
        with torch.no_grad():
            dist = _distance(model.representation(z), target)
    return z.detach(), dist
