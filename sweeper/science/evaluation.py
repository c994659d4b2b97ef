"""Clean and robust accuracy with per-example flags (torch only)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from sweeper.science.attacks import perturb
from sweeper.sweep.schema import AttackConfig

__all__ = ["EvalResult", "accuracy", "evaluate", "check_model", "worst_by_ball", "ball_name"]


@dataclass
class EvalResult:
    clean_acc: float
    robust_acc: dict[str, float]
    worst_acc: float | None
    clean_flags: Tensor                      # bool (N,): clean prediction correct
    robust_flags: dict[str, Tensor] = field(default_factory=dict)   # bool (N,): clean AND correct under attack
    n: int = 0
    worst_by_ball: dict[str, dict] = field(default_factory=dict)    # see worst_by_ball()


def ball_name(norm: str, eps: float) -> str:
    return f"{norm}_eps{eps:g}"


def worst_by_ball(attacks: dict[str, AttackConfig], flags: dict[str, Tensor]) -> dict[str, dict]:
    """Per threat ball (norm, eps) of the listed attacks: robust accuracy as the per-example worst case over
    every attack of that norm with eps <= the ball's (a perturbation inside a smaller ball is inside this one).

    Returns {ball: {"norm", "eps", "acc", "attacks": [names], "pgd_acc": the best-reading PGD attack at exactly
    this eps (None without one), "gap": pgd_acc - acc}}: the gap is how optimistic PGD alone would have been.
    """
    out: dict[str, dict] = {}
    for norm, eps in sorted({(a.norm, a.eps) for a in attacks.values()}):
        names = [k for k, a in attacks.items() if a.norm == norm and a.eps <= eps]
        w = flags[names[0]].clone()
        for k in names[1:]:
            w &= flags[k]
        n = len(w)
        acc = float(w.float().mean()) if n else float("nan")
        pgd = [float(flags[k].float().mean()) for k, a in attacks.items()
               if a.norm == norm and a.eps == eps and a.method == "pgd"] if n else []
        pgd_acc = max(pgd) if pgd else None
        out[ball_name(norm, eps)] = {"norm": norm, "eps": eps, "acc": acc, "attacks": names, "pgd_acc": pgd_acc,
                                     "gap": (pgd_acc - acc) if pgd_acc is not None else None}
    return out


def _device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    if p is None:
        p = next(model.buffers(), None)
    return p.device if p is not None else torch.device("cpu")


@torch.no_grad()
def _predict(model: nn.Module, x: Tensor, batch_size: int) -> Tensor:
    dev = _device(model)
    return torch.cat([model(x[i:i + batch_size].to(dev)).argmax(1).cpu() for i in range(0, len(x), batch_size)])


def accuracy(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 1000) -> float:
    """Clean top-1 accuracy (the model must be in eval mode)."""
    if model.training:
        raise ValueError("accuracy: model is in training mode; call model.eval() first")
    if len(y) == 0:
        return float("nan")
    return float((_predict(model, x, batch_size) == y.cpu()).float().mean())


def check_model(model: nn.Module, x: Tensor | None = None) -> None:
    """Refuse models that would make robust accuracy meaningless (ValueError):
    train mode (BatchNorm/dropout change outputs), probability outputs (softmax before the loss flattens
    gradients), randomised outputs (two identical forward passes differ: gradient masking by noise).
    ``x``: a probe batch; default a small random batch of the model's ``in_shape`` (if it has one)."""
    if model.training:
        raise ValueError("check_model: model is in training mode; call model.eval() before evaluating it")
    if x is None:
        in_shape = getattr(model, "in_shape", None)
        if in_shape is None:
            return
        x = torch.rand((8, *in_shape), generator=torch.Generator().manual_seed(0))
    x = x[:8].to(_device(model))
    with torch.no_grad():
        a = model(x).float()
        b = model(x).float()
    if a.dim() != 2:
        raise ValueError(f"check_model: expected logits of shape (N, classes), got {tuple(a.shape)}")
    if (a >= 0).all() and torch.allclose(a.sum(1), torch.ones(len(a), device=a.device), atol=1e-4):
        raise ValueError("check_model: outputs look like probabilities (non-negative, rows sum to 1); "
                         "the model must return logits (no softmax)")
    if not torch.allclose(a, b, rtol=1e-4, atol=1e-5):
        raise ValueError("check_model: two identical forward passes gave different outputs; the model is "
                         "randomised (dropout in eval, noise layers), which masks gradients")


def evaluate(model: nn.Module, x: Tensor, y: Tensor, attacks: dict[str, AttackConfig], *, batch_size: int = 500,
             bounds=(0.0, 1.0), generator: torch.Generator | None = None) -> EvalResult:
    """Clean and robust accuracy. Robust flag = clean-correct AND still correct under that attack (only
    clean-correct examples are attacked); worst = AND over all attacks (None without attacks)."""
    check_model(model, x[:8] if len(x) else None)
    dev = _device(model)
    n = len(y)
    clean = torch.zeros(n, dtype=torch.bool)
    robust = {name: torch.zeros(n, dtype=torch.bool) for name in attacks}
    for i in range(0, n, batch_size):
        xb, yb = x[i:i + batch_size].to(dev), y[i:i + batch_size].to(dev)
        with torch.no_grad():
            ok = model(xb).argmax(1) == yb
        clean[i:i + len(yb)] = ok.cpu()
        if not ok.any():
            continue
        xa, ya = xb[ok], yb[ok]
        pos = torch.nonzero(ok.cpu()).flatten() + i
        for name, cfg in attacks.items():
            x_adv = perturb(model, xa, ya, cfg, bounds=bounds, generator=generator)
            with torch.no_grad():
                still = (model(x_adv).argmax(1) == ya).cpu()
            robust[name][pos] = still
    worst = None
    if attacks:
        w = torch.ones(n, dtype=torch.bool)
        for f in robust.values():
            w &= f
        worst = float(w.float().mean()) if n else float("nan")
    mean = (lambda f: float(f.float().mean())) if n else (lambda f: float("nan"))
    return EvalResult(clean_acc=mean(clean), robust_acc={k: mean(v) for k, v in robust.items()},
                      worst_acc=worst, clean_flags=clean, robust_flags=robust, n=n,
                      worst_by_ball=worst_by_ball(attacks, robust))
