"""Projected gradient descent (Madry et al. 2018) in the L2 and Linf threat models.

One loop serves every norm and both target modes; steps follow the authors' robustness library
(L2: normalised-gradient step, renorm onto the ball, clamp to the box; Linf: signed step, clamp).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .threat import make_threat, parse_eps

_NORMS = ("l2", "linf")


@contextlib.contextmanager
def eval_mode(model: nn.Module):
    """Put every submodule in eval mode; restore each module's own flag afterwards (even on error)."""
    flags = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        yield model
    finally:
        for m, flag in flags:
            m.training = flag


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


@dataclass(frozen=True)
class AttackConfig:
    r"""Settings of one PGD attack.

    Arguments:
        norm (str): "l2" or "linf". (Default: "l2")
        eps (float | str): radius in pixel units ([0,1] scale); "8/255" is accepted. (Default: 0.5)
        steps (int): number of gradient steps, >= 1. (Default: 20)
        step_size (float | None): step length in pixel units; None -> 2.5 * eps / steps. (Default: None)
        random_start (bool): start from a random point in the ball (L2: norm eps; Linf: uniform). (Default: False)
        restarts (int): independent runs; per example the best one is kept. (Default: 1)
        keep_best (bool): return the highest-loss (untargeted) / lowest-loss (targeted) iterate instead of
            the last one. (Default: False)
    """

    norm: str = "l2"
    eps: float = 0.5
    steps: int = 20
    step_size: float | None = None
    random_start: bool = False
    restarts: int = 1
    keep_best: bool = False

    def __post_init__(self):
        if self.norm not in _NORMS:
            raise ValueError(f"AttackConfig.norm must be one of {_NORMS}, got {self.norm!r}")
        object.__setattr__(self, "eps", parse_eps(self.eps))
        if not _is_int(self.steps) or self.steps < 1:
            raise ValueError(f"AttackConfig.steps must be an int >= 1, got {self.steps!r}")
        if not _is_int(self.restarts) or self.restarts < 1:
            raise ValueError(f"AttackConfig.restarts must be an int >= 1, got {self.restarts!r}")
        if self.step_size is not None:
            ss = parse_eps(self.step_size)
            if ss <= 0:
                raise ValueError(f"AttackConfig.step_size must be > 0 or None, got {self.step_size!r}")
            object.__setattr__(self, "step_size", ss)
        if not isinstance(self.random_start, bool):
            raise ValueError(f"AttackConfig.random_start must be a bool, got {self.random_start!r}")
        if not isinstance(self.keep_best, bool):
            raise ValueError(f"AttackConfig.keep_best must be a bool, got {self.keep_best!r}")

    def resolved_step_size(self) -> float:
        """The step length actually used: step_size, or 2.5 * eps / steps when None."""
        if self.step_size is not None:
            return float(self.step_size)
        return 2.5 * self.eps / self.steps

    def name(self) -> str:
        """Short unique label, e.g. "l2_eps0.5_s20"; non-default options add suffixes."""
        out = f"{self.norm}_eps{self.eps:g}_s{self.steps}"
        if self.step_size is not None:
            out += f"_ss{self.step_size:g}"
        if self.random_start:
            out += "_rs"
        if self.restarts > 1:
            out += f"_r{self.restarts}"
        if self.keep_best:
            out += "_best"
        return out


def _default_loss(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    return F.cross_entropy(model(x), y, reduction="none")


def _select(mask: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """Per example: a where mask else b."""
    return torch.where(mask.view(-1, *([1] * (a.dim() - 1))), a, b)


def pgd(model, x, y, cfg: AttackConfig, *, targeted: bool = False, loss_fn=None,
        bounds=(0.0, 1.0), generator: torch.Generator | None = None) -> Tensor:
    r"""PGD in the paper 'Towards Deep Learning Models Resistant to Adversarial Attacks'
    [https://arxiv.org/abs/1706.06083]

    Distance Measure : L2 or Linf (``cfg.norm``)

    Untargeted: maximise ``loss(model(x'), y)``; targeted: ``y`` holds the targets and the loss of the
    targets is minimised. The model runs in eval mode during the attack; its modes are restored after.
    Gradients are taken only with respect to the input (parameter ``.grad`` is never touched).

    Arguments:
        model (nn.Module): maps images in [0,1] to logits (normalisation inside the model).
        x (Tensor): clean images, pixel units.
        y (Tensor): labels (untargeted) or target labels (targeted).
        cfg (AttackConfig): norm, eps (pixel units), steps, step size, random start, restarts, keep_best.
        targeted (bool): minimise the loss of ``y`` instead of maximising it. (Default: False)
        loss_fn (callable | None): ``loss_fn(model, x_adv, y) -> (N,)`` per-example loss;
            None -> cross-entropy. (Default: None)
        bounds (tuple[float, float] | None): pixel box; None -> no box. (Default: (0.0, 1.0))
        generator (torch.Generator | None): randomness of random starts. (Default: None)

    Shape:
        - x: :math:`(N, C, H, W)` in [0,1] (any (N, ...) works, e.g. (N, D) for the toy).
        - y: :math:`(N)` integer class indices.
        - output: same shape, device and dtype as x, detached.
    """
    if not isinstance(cfg, AttackConfig):
        raise TypeError(f"cfg must be an AttackConfig, got {type(cfg).__name__}")
    loss_fn = _default_loss if loss_fn is None else loss_fn
    threat = make_threat(cfg.norm, cfg.eps, bounds)
    step_size = cfg.resolved_step_size()
    sign = -1.0 if targeted else 1.0  # ascend on sign * loss
    x = x.detach()
    y = y.detach().to(x.device)
    track = cfg.keep_best or cfg.restarts > 1

    with eval_mode(model):
        best_x = best_score = best_hit = None
        for _ in range(cfg.restarts):
            x_adv = threat.random_start(x, generator) if cfg.random_start else x.clone()
            run_best_x = run_best_score = None
            for _ in range(cfg.steps):
                x_adv.requires_grad_(True)
                with torch.enable_grad():
                    losses = loss_fn(model, x_adv, y)
                    (grad,) = torch.autograd.grad(losses.sum() * sign, x_adv)
                x_adv = x_adv.detach()
                if cfg.keep_best:
                    score = sign * losses.detach()
                    if run_best_x is None:
                        run_best_x, run_best_score = x_adv, score
                    else:
                        better = score > run_best_score
                        run_best_x = _select(better, x_adv, run_best_x)
                        run_best_score = torch.where(better, score, run_best_score)
                x_adv = threat.project(threat.step(x_adv, grad, step_size), x)
            if not track:
                return x_adv.detach()
            with torch.no_grad():
                final_score = sign * loss_fn(model, x_adv, y)
                if cfg.keep_best:
                    better = final_score > run_best_score
                    x_adv = _select(better, x_adv, run_best_x)
                    score = torch.where(better, final_score, run_best_score)
                else:
                    score = final_score
                if cfg.restarts == 1:
                    return x_adv.detach()
                pred = model(x_adv).argmax(dim=1)
                hit = pred == y if targeted else pred != y
                if best_x is None:
                    best_x, best_score, best_hit = x_adv, score, hit
                else:
                    # success first, then the better loss
                    better = (hit & ~best_hit) | ((hit == best_hit) & (score > best_score))
                    best_x = _select(better, x_adv, best_x)
                    best_score = torch.where(better, score, best_score)
                    best_hit = best_hit | hit
        return best_x.detach()
