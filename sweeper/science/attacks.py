"""Projected gradient descent (Madry et al. 2018): one loop for every threat model and loss.

:func:`descend` is the loop (steps on a loss, each followed by the threat model's projection), the same for an
L2 or Linf attack and for representation inversion (``synthesis.invert``: a feature-distance loss on the
unconstrained threat, as in the authors' robustness library). :func:`pgd` adds random starts, restarts and
best-iterate tracking; :func:`perturb` runs an :class:`~sweeper.sweep.schema.AttackConfig` whatever its method (PGD
here, the AutoAttack-class methods in ``sweeper.science.aa``); :func:`keep_labels` is the loss of Nakkiran's
bugs-only attack (``pgd(..., ensemble=, keep=)``). Steps follow the robustness library (L2:
normalised-gradient step, renorm onto the ball, clamp to the box; Linf: signed step, clamp).
"""

from __future__ import annotations

import contextlib
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sweeper.sweep.schema import AttackConfig
from sweeper.science.threat import ThreatModel, make_threat

LossFn = Callable[[nn.Module, Tensor, Tensor], Tensor]  # (model, x, y) -> (N,) per-example loss


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


def cross_entropy(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    return F.cross_entropy(model(x), y, reduction="none")


def margin(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """CW-style logit margin: max over other classes of the logit minus the logit of y. Untargeted PGD
    maximises it; targeted PGD (y = targets) minimises it, i.e. maximises target logit - max other logit."""
    logits = model(x)
    own = logits.gather(1, y.view(-1, 1)).squeeze(1)
    other = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("-inf")).amax(1)
    return other - own


LOSSES: dict[str, LossFn] = {"ce": cross_entropy, "margin": margin}


def keep_labels(loss_fn: LossFn, ensemble: Sequence[nn.Module], keep: Tensor) -> LossFn:
    """Nakkiran's bugs-only loss ("Adversarial examples are just bugs, too", Distill 2019):
    ``loss_fn(model, x, t) + mean_i loss_fn(f_i, x, keep)`` over the ``ensemble`` models f_i.

    Targeted PGD minimises it: the source ``model`` is pushed toward the targets t while every ensemble model
    is held at the labels ``keep`` (the true labels), so the perturbation is one the source reads and models
    trained independently do not (a "bug" of the source rather than a feature the models share). With
    ``loss_fn`` margin both terms are margins (target's for the source, the kept label's for the ensemble).
    ``keep``: (N,) labels, one per example of the batch the returned loss is called on."""
    members = list(ensemble)
    if not members:
        raise ValueError("keep_labels: the ensemble is empty; expected at least one model")
    keep = keep.detach()

    def loss(model: nn.Module, x: Tensor, t: Tensor) -> Tensor:
        held = torch.stack([loss_fn(f, x, keep) for f in members]).mean(dim=0)
        return loss_fn(model, x, t) + held

    return loss


def _select(mask: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """Per example: a where mask else b."""
    return torch.where(mask.view(-1, *([1] * (a.dim() - 1))), a, b)


def descend(model: nn.Module, x0: Tensor, y: Tensor, loss_fn: LossFn, threat: ThreatModel, *, steps: int,
            step_size: float | Callable[[int], float], sign: float = 1.0, start: Tensor | None = None,
            keep_best: bool = False, stop: Callable[[Tensor], bool] | None = None):
    """The PGD loop: ``steps`` ascent steps on ``sign * loss_fn(model, x, y)``, each projected by ``threat``
    around ``x0``. Gradients are taken with respect to the input only.

    Arguments:
        start (Tensor | None): the first iterate (default: x0).
        step_size (float | callable): the step length, or ``step_size(t)`` for step t (a schedule).
        keep_best (bool): also track, per example, the iterate with the highest ``sign * loss``.
        stop (callable | None): ``stop(losses)`` after each gradient (before the step): True ends the loop.

    Returns:
        (x, best_x, best_score): the last iterate; with keep_best the best iterate seen before the last step
        and its score (else None, None). All detached.
    """
    x = (x0.clone() if start is None else start).detach()
    best_x = best_score = None
    for t in range(steps):
        x.requires_grad_(True)
        with torch.enable_grad():
            losses = loss_fn(model, x, y)
            (grad,) = torch.autograd.grad(losses.sum() * sign, x)
        x = x.detach()
        if keep_best:
            score = sign * losses.detach()
            if best_x is None:
                best_x, best_score = x, score
            else:
                better = score > best_score
                best_x = _select(better, x, best_x)
                best_score = torch.where(better, score, best_score)
        if stop is not None and stop(losses.detach()):
            break
        lr = step_size(t) if callable(step_size) else step_size
        x = threat.project(threat.step(x, grad, lr), x0)
    return x.detach(), best_x, best_score


def pgd(model, x, y, cfg: AttackConfig, *, targeted: bool = False, loss_fn: LossFn | None = None,
        bounds=(0.0, 1.0), generator: torch.Generator | None = None, ensemble: Sequence[nn.Module] = (),
        keep: Tensor | None = None) -> Tensor:
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
        cfg (AttackConfig): norm, eps (pixel units), steps, step size, random start, restarts, keep_best, loss.
        targeted (bool): minimise the loss of ``y`` instead of maximising it. (Default: False)
        loss_fn (callable | None): ``loss_fn(model, x_adv, y) -> (N,)`` per-example loss;
            None -> ``LOSSES[cfg.loss]``. (Default: None)
        bounds (tuple[float, float] | None): pixel box; None -> no box. (Default: (0.0, 1.0))
        generator (torch.Generator | None): randomness of random starts. (Default: None)
        ensemble (sequence of nn.Module): targeted only: models that must keep the labels ``keep`` (Nakkiran's
            bugs-only attack): the loss becomes :func:`keep_labels` of it; they run in eval mode too, modes
            restored after. Restarts still rank by the source reaching the target first. (Default: ())
        keep (Tensor | None): (N,) the labels the ensemble keeps (the true labels); required with ``ensemble``.

    Shape:
        - x: :math:`(N, C, H, W)` in [0,1] (any (N, ...) works, e.g. (N, D) for the toy).
        - y: :math:`(N)` integer class indices.
        - output: same shape, device and dtype as x, detached.
    """
    if not isinstance(cfg, AttackConfig):
        raise TypeError(f"cfg must be an AttackConfig, got {type(cfg).__name__}")
    loss_fn = LOSSES[cfg.loss] if loss_fn is None else loss_fn
    ensemble = list(ensemble)
    if ensemble:
        if not targeted or keep is None:
            raise ValueError("pgd: an ensemble needs a targeted attack and the labels it keeps (keep=)")
        loss_fn = keep_labels(loss_fn, ensemble, keep.to(x.device))
    threat = make_threat(cfg.norm, cfg.eps, bounds)
    sign = -1.0 if targeted else 1.0  # ascend on sign * loss
    x = x.detach()
    y = y.detach().to(x.device)
    track = cfg.keep_best or cfg.restarts > 1

    with eval_mode(model), contextlib.ExitStack() as modes:
        for f in ensemble:
            modes.enter_context(eval_mode(f))
        best_x = best_score = best_hit = None
        for _ in range(cfg.restarts):
            start = threat.random_start(x, generator) if cfg.random_start else x.clone()
            x_adv, run_best_x, run_best_score = descend(model, x, y, loss_fn, threat, steps=cfg.steps,
                                                        step_size=cfg.resolved_step_size(), sign=sign,
                                                        start=start, keep_best=cfg.keep_best)
            if not track:
                return x_adv
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


def perturb(model, x, y, cfg: AttackConfig, *, targets: Tensor | None = None, bounds=(0.0, 1.0),
            generator: torch.Generator | None = None, ensemble: Sequence[nn.Module] = ()) -> Tensor:
    """Adversarial images for ``x`` (true labels ``y``) under ``cfg``: untargeted, or toward ``targets``.

    ``cfg.method`` pgd runs :func:`pgd`; any other method runs ``sweeper.science.aa.run_attack``, seeded from
    ``generator`` (one draw). ``ensemble``: models that keep ``y`` while the source moves to ``targets``
    (Nakkiran's bugs-only attack, :func:`keep_labels`; PGD and targets only). Output: same shape as x, detached.
    """
    ensemble = list(ensemble)
    if ensemble and (cfg.method != "pgd" or targets is None):
        raise ValueError(f"perturb: an ensemble needs a targeted PGD attack (got method {cfg.method!r}, "
                         f"targets {'given' if targets is not None else 'None'})")
    if cfg.method == "pgd":
        if targets is None:
            return pgd(model, x, y, cfg, bounds=bounds, generator=generator)
        return pgd(model, x, targets, cfg, targeted=True, bounds=bounds, generator=generator, ensemble=ensemble,
                   keep=torch.as_tensor(y) if ensemble else None)
    from sweeper.science.aa import run_attack  # torchattacks, imported only when such an attack runs

    seed = 0 if generator is None else int(torch.randint(2 ** 31 - 1, (1,), generator=generator,
                                                         device=generator.device))
    extra = {} if cfg.n_targets is None else {"n_targets": cfg.n_targets}
    return run_attack(model, x, y, method=cfg.method, norm=cfg.norm, eps=cfg.eps, steps=cfg.steps,
                      restarts=cfg.restarts, seed=seed, bounds=bounds, targets=targets, **extra).detach()
