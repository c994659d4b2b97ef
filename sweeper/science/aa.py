"""AutoAttack-class evaluation attacks (APGD-CE, APGD-DLR, APGD-T, FAB, Square, AutoAttack) behind one call.

sweeper's own PGD (``attacks.pgd``) synthesizes the datasets; these attacks come from torchattacks (a port of
Croce & Hein's AutoAttack) and exist to make robust accuracy a worst case rather than the reading of one
optimiser. Every result is projected once more onto the eps-ball and the pixel box, so a flag computed from
it is a statement about the declared threat model whatever the library did.

``steps`` means the attack's iterations (APGD, FAB); for Square it is the number of queries. AutoAttack
(version "standard": APGD-CE, APGD-T, FAB-T, Square with 5,000 queries) uses its own budgets.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from sweeper.science.threat import make_threat

METHODS = ("apgd-ce", "apgd-dlr", "apgd-t", "fab", "square", "autoattack")
TARGETED = ("square",)  # targeted mode that works (torchattacks 3.5.1's FAB attacks only where argmax == label)
_NORMS = {"l2": "L2", "linf": "Linf"}


def _num_classes(model: nn.Module, x: Tensor) -> int:
    with torch.no_grad():
        return int(model(x[:1]).shape[1])


def build(model: nn.Module, *, method: str, norm: str, eps: float, steps: int, restarts: int = 1, seed: int = 0,
          n_classes: int = 10, n_targets: int | None = None):
    """The torchattacks object for ``method`` (see METHODS). ``n_targets``: APGD-T's target classes (the
    highest-scoring wrong classes; None: all C - 1, as AutoAttack's standard version does on 10 classes)."""
    try:
        import torchattacks as ta
    except ImportError as e:
        raise ImportError(f"attack method {method} needs torchattacks: pip install --no-deps torchattacks==3.5.1 "
                          "(`make setup` does; --no-deps because it pins an old requests)") from e

    if method not in METHODS:
        raise ValueError(f"unknown attack method {method!r}; expected one of {', '.join(METHODS)} (or pgd)")
    if norm not in _NORMS:
        raise ValueError(f"attack {method}: norm {norm!r} is not supported; expected l2 or linf")
    n, seed, restarts = _NORMS[norm], int(seed) % (2 ** 31), int(restarts)
    if method in ("apgd-ce", "apgd-dlr"):
        return ta.APGD(model, norm=n, eps=eps, steps=steps, n_restarts=restarts, seed=seed,
                       loss="ce" if method == "apgd-ce" else "dlr")
    if method == "apgd-t":
        atk = ta.APGDT(model, norm=n, eps=eps, steps=steps, n_restarts=restarts, seed=seed, n_classes=n_classes)
        if n_targets is not None:
            atk.n_target_classes = max(1, min(int(n_targets), n_classes - 1))
        return atk
    if method == "fab":
        return ta.FAB(model, norm=n, eps=eps, steps=steps, n_restarts=restarts, seed=seed, n_classes=n_classes,
                      multi_targeted=False)
    if method == "square":
        return ta.Square(model, norm=n, eps=eps, n_queries=steps, n_restarts=restarts, seed=seed)
    return ta.AutoAttack(model, norm=n, eps=eps, version="standard", n_classes=n_classes, seed=seed)


def run_attack(model: nn.Module, x: Tensor, y: Tensor, *, method: str, norm: str, eps: float, steps: int,
               restarts: int = 1, seed: int = 0, bounds=(0.0, 1.0), targets: Tensor | None = None,
               n_targets: int | None = None) -> Tensor:
    """Adversarial images for ``x`` (labels ``y``), same shape, inside the eps-ball around x and the box.

    With ``targets`` the attack is targeted (Square only). The model must map images in [0, 1] to
    logits (sweeper's models normalise inside), and is left in the train/eval mode it came in. torchattacks
    seeds torch's global generators; their state is restored afterwards, so nothing else in the process moves.
    """
    if bounds is None or tuple(bounds) != (0.0, 1.0):
        raise ValueError(f"attack {method}: torchattacks needs images in [0, 1], got bounds {bounds}")
    if len(x) == 0:
        return x.clone()
    if targets is not None and method not in TARGETED:
        raise ValueError(f"attack {method} has no targeted mode; targeted attacks: pgd, {', '.join(TARGETED)}")
    was_training = model.training
    model.eval()
    devices = [x.device] if x.device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            atk = build(model, method=method, norm=norm, eps=float(eps), steps=int(steps), restarts=restarts,
                        seed=seed, n_classes=_num_classes(model, x), n_targets=n_targets)
            atk.set_device(x.device)
            if targets is not None:
                atk.set_mode_targeted_by_label(quiet=True)
                adv = atk(x, targets)
            else:
                adv = atk(x, y)
    finally:
        model.train(was_training)
    threat = make_threat(norm, float(eps), bounds)
    return threat.project(adv.detach().to(x.dtype), x)
