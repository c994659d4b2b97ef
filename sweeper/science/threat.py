"""Threat models for PGD: the eps-ball (L2, Linf or none), the pixel box, steps and random starts.

Every tensor is a batch: the first dim indexes examples, norms are taken per example over all the other
dims. Images live in [0,1] (``bounds=(0.0, 1.0)``); ``bounds=None`` means no box (the theory toy).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

_TINY = 1e-12


def _per_example_norm(t: Tensor) -> Tensor:
    """L2 norm of each example, shaped (N, 1, ..., 1) to broadcast against t."""
    return t.flatten(1).norm(p=2, dim=1).view(-1, *([1] * (t.dim() - 1)))


def _randn_like(x: Tensor, generator: torch.Generator | None) -> Tensor:
    if generator is None:
        return torch.randn(x.shape, device=x.device, dtype=x.dtype)
    return torch.randn(x.shape, generator=generator, device=generator.device, dtype=x.dtype).to(x.device)


def _rand_like(x: Tensor, generator: torch.Generator | None) -> Tensor:
    if generator is None:
        return torch.rand(x.shape, device=x.device, dtype=x.dtype)
    return torch.rand(x.shape, generator=generator, device=generator.device, dtype=x.dtype).to(x.device)


def _l2_normalise(grad: Tensor) -> Tensor:
    """grad / ||grad||_2 per example; a zero gradient gives a zero step."""
    return grad / _per_example_norm(grad).clamp_min(_TINY)


class ThreatModel:
    """Base class: an eps-ball around the clean point plus an optional box.

    Args:
        eps (float): radius in pixel units ([0,1] scale), finite and >= 0 (parsed by the schema, not here).
        bounds (tuple[float, float] | None): box for every coordinate, e.g. (0.0, 1.0); None: no box.
    """

    norm: str = ""

    def __init__(self, eps: float, bounds: tuple[float, float] | None = (0.0, 1.0)):
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps < 0:
            raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")
        self.eps = float(eps)
        if bounds is not None:
            lo, hi = float(bounds[0]), float(bounds[1])
            if not lo <= hi:
                raise ValueError(f"bounds must satisfy low <= high, got {bounds!r}")
            bounds = (lo, hi)
        self.bounds = bounds

    def __repr__(self) -> str:
        return f"{type(self).__name__}(eps={self.eps!r}, bounds={self.bounds!r})"

    def clamp_box(self, x: Tensor) -> Tensor:
        if self.bounds is None:
            return x
        return x.clamp(self.bounds[0], self.bounds[1])

    def project(self, x: Tensor, x0: Tensor) -> Tensor:
        """Project x into the eps-ball around x0, then into the box."""
        raise NotImplementedError

    def step(self, x: Tensor, grad: Tensor, step_size: float) -> Tensor:
        """One ascent step on the loss whose gradient at x is grad (no projection)."""
        raise NotImplementedError

    def random_start(self, x0: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """A random point inside the ball around x0 and the box."""
        raise NotImplementedError


class L2(ThreatModel):
    """L2 ball: normalised-gradient steps, renorm projection, random start of norm eps."""

    norm = "l2"

    def project(self, x: Tensor, x0: Tensor) -> Tensor:
        delta = x - x0
        norms = _per_example_norm(delta)
        factor = torch.clamp(self.eps / norms.clamp_min(_TINY), max=1.0)
        return self.clamp_box(x0 + delta * factor)

    def step(self, x: Tensor, grad: Tensor, step_size: float) -> Tensor:
        return x + step_size * _l2_normalise(grad)

    def random_start(self, x0: Tensor, generator: torch.Generator | None = None) -> Tensor:
        # As in the authors' robustness library: Gaussian direction rescaled to norm eps, then the box.
        noise = _randn_like(x0, generator)
        return self.clamp_box(x0 + self.eps * _l2_normalise(noise))


class Linf(ThreatModel):
    """Linf ball: signed-gradient steps, coordinatewise clamp, uniform random start in [-eps, eps]."""

    norm = "linf"

    def project(self, x: Tensor, x0: Tensor) -> Tensor:
        delta = torch.clamp(x - x0, -self.eps, self.eps)
        return self.clamp_box(x0 + delta)

    def step(self, x: Tensor, grad: Tensor, step_size: float) -> Tensor:
        return x + step_size * grad.sign()

    def random_start(self, x0: Tensor, generator: torch.Generator | None = None) -> Tensor:
        noise = (_rand_like(x0, generator) * 2.0 - 1.0) * self.eps
        return self.clamp_box(x0 + noise)


class Unconstrained(ThreatModel):
    """No ball, only the box; L2-normalised gradient steps (representation inversion). ``eps`` is ignored.

    ``random_start`` returns x0 (clamped to the box): there is no ball to sample from.
    """

    norm = "none"

    def __init__(self, eps: float = 0.0, bounds: tuple[float, float] | None = (0.0, 1.0)):
        super().__init__(eps, bounds)

    def project(self, x: Tensor, x0: Tensor) -> Tensor:
        return self.clamp_box(x)

    def step(self, x: Tensor, grad: Tensor, step_size: float) -> Tensor:
        # (step_size * grad) / ||grad||, in this order: the arithmetic of sweeper's inversion before it became
        # PGD, so inverted sets stay bit-identical (their node keys did not change)
        return x + step_size * grad / _per_example_norm(grad).clamp_min(_TINY)

    def random_start(self, x0: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return self.clamp_box(x0.clone())


_THREATS = {"l2": L2, "linf": Linf, "none": Unconstrained}


def make_threat(norm: str, eps: float, bounds=(0.0, 1.0)) -> ThreatModel:
    """Build a threat model; norm in {"l2", "linf", "none"}."""
    if norm not in _THREATS:
        raise ValueError(f"unknown norm {norm!r}; expected one of {sorted(_THREATS)}")
    return _THREATS[norm](eps, bounds)
