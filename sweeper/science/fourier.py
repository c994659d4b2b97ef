"""Fourier sensitivity (torch only): a model's error under additive noise along one Fourier basis image, for
every frequency, drawn as a heatmap (Yin et al. 2019, "A Fourier Perspective on Model Robustness in Computer
Vision"; the control Gilmer & Hendrycks ran in the Distill discussion of Ilyas et al. 2019).

Conventions (one place, used by the sweep's ``fourier`` stage, its report figure and the tests):

- Frequencies are *centred*, as ``torch.fft.fftshift`` places them: heatmap cell ``(r, c)`` of an (H, W) image is
  the frequency ``(i, j) = (r - H // 2, c - W // 2)``, so the zero frequency (a constant image) is at
  ``(H // 2, W // 2)``, low frequencies in the centre and the highest ones on the border. For H = 28, i runs
  over -14 .. 13.
- The basis image ``U_{i,j}`` is real: the inverse 2-D FFT of a pair of unit deltas at ``(i, j)`` and
  ``(-i, -j)`` (indices mod H, W), i.e. a cosine wave ``cos(2 pi (i m / H + j n / W))``, normalised to unit L2
  norm over its H x W pixels. Where ``(i, j)`` and ``(-i, -j)`` are the same frequency (the zero frequency and
  the Nyquist ones, ``2i = 0 mod H`` and ``2j = 0 mod W``) the pair is that one delta. ``U_{i,j} = U_{-i,-j}``,
  so the heatmap is point-symmetric about the centre and only one frequency of each pair is evaluated.
- A C-channel image receives the same ``U_{i,j}`` in every channel: each channel-image gets noise of L2 norm
  ``eps``, the whole image ``eps * sqrt(C)`` (before clipping).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["frequency", "index_of", "mirror", "fourier_basis", "basis_images", "pair_representatives",
           "fourier_heatmap", "frequency_radius", "band_errors", "LOW_BAND", "HIGH_BAND"]

# the frequency bands of the report's summaries, in units of the normalised radius (see frequency_radius)
LOW_BAND = 1 / 3    # low frequencies: radius <= LOW_BAND
HIGH_BAND = 2 / 3   # high frequencies: radius > HIGH_BAND


def frequency(r: int, c: int, shape: tuple[int, int]) -> tuple[int, int]:
    """The centred frequency (i, j) of heatmap cell (r, c) of an (H, W) heatmap: (r - H // 2, c - W // 2)."""
    h, w = shape
    return r - h // 2, c - w // 2


def index_of(i: int, j: int, shape: tuple[int, int]) -> tuple[int, int]:
    """The heatmap cell (r, c) of frequency (i, j), taken mod (H, W): the inverse of :func:`frequency`."""
    h, w = shape
    return (i + h // 2) % h, (j + w // 2) % w


def mirror(r: int, c: int, shape: tuple[int, int]) -> tuple[int, int]:
    """The heatmap cell of the frequency (-i, -j) when (r, c) is (i, j): the other half of its pair."""
    i, j = frequency(r, c, shape)
    return index_of(-i, -j, shape)


def pair_representatives(shape: tuple[int, int]) -> list[tuple[int, int]]:
    """One heatmap cell of each symmetric pair {(i, j), (-i, -j)}, the first in row-major order: every basis
    image there is once (about H * W / 2 of them)."""
    h, w = shape
    return [(r, c) for r in range(h) for c in range(w) if (r, c) <= mirror(r, c, shape)]


def basis_images(cells: list[tuple[int, int]], shape: tuple[int, int], *, dtype=torch.float32,
                 device=None) -> Tensor:
    """(len(cells), H, W): the unit-norm basis image U_{i,j} of each heatmap cell (module docstring), computed
    as the real part of ``ifft2`` of the pair of deltas (its imaginary part is zero up to rounding)."""
    h, w = shape
    k = len(cells)
    deltas = torch.zeros(k, h, w, dtype=torch.complex128)
    for n, (r, c) in enumerate(cells):
        i, j = frequency(r, c, shape)
        deltas[n, i % h, j % w] = 1.0
        deltas[n, (-i) % h, (-j) % w] = 1.0  # the same cell for a self-symmetric frequency: one delta
    u = torch.fft.ifft2(deltas).real
    u = u / u.flatten(1).norm(dim=1).view(k, 1, 1)
    return u.to(dtype=dtype, device=device)


def fourier_basis(shape: tuple[int, int, int], i: int, j: int) -> Tensor:
    """The basis image U_{i,j} of the centred frequency (i, j) for images of ``shape`` (C, H, W): a real
    (C, H, W) float32 tensor, the same unit-L2-norm (H, W) image in every channel (module docstring)."""
    ch, h, w = shape
    u = basis_images([index_of(i, j, (h, w))], (h, w))[0]
    return u.expand(ch, h, w).clone()


def fourier_heatmap(model: nn.Module, x: Tensor, y: Tensor, eps: float, *, batch_size: int = 2048,
                    generator: torch.Generator | None = None) -> Tensor:
    """(H, W) error rates: heatmap cell (r, c) is the fraction of the N images ``x`` (N, C, H, W) in [0, 1]
    that ``model`` misclassifies (argmax of its output != ``y``) as ``clip(x + s * eps * U_{i,j}, 0, 1)``,
    with (i, j) the cell's centred frequency, U_{i,j} its unit-norm basis image in every channel and ``s`` a
    random sign (+1 or -1) per image and frequency, drawn from ``generator`` (CPU). Clipping to [0, 1] can
    shrink the noise: near-black or near-white pixels leave it less than ``eps`` of L2 norm.

    Speed: a frequency and its mirror share one evaluation (their basis images are the same), and several
    frequencies are stacked into one forward pass of about ``batch_size`` images (the model is run in eval mode
    without gradients, on ``x``'s device). The signs of all frequencies are drawn before any evaluation, so the
    result does not depend on ``batch_size``.
    """
    if x.dim() != 4:
        raise ValueError(f"fourier_heatmap: x must be images (N, C, H, W); got shape {tuple(x.shape)}")
    if len(y) != len(x) or len(x) == 0:
        raise ValueError(f"fourier_heatmap: {len(x)} images and {len(y)} labels; expected the same number, >= 1")
    n, ch, h, w = x.shape
    dev = x.device
    cells = pair_representatives((h, w))
    signs = (torch.randint(0, 2, (len(cells), n), generator=generator) * 2 - 1).to(dev, x.dtype)
    per = max(1, batch_size // n)  # frequencies per forward pass
    heat = torch.empty(h, w)
    y = y.to(dev)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for a in range(0, len(cells), per):
                chunk = cells[a:a + per]
                k = len(chunk)
                u = basis_images(chunk, (h, w), dtype=x.dtype, device=dev)  # (k, H, W)
                noise = (eps * signs[a:a + k]).view(k, n, 1, 1, 1) * u.view(k, 1, 1, h, w)
                xb = (x.unsqueeze(0) + noise).clamp_(0.0, 1.0).view(k * n, ch, h, w)
                pred = torch.cat([model(xb[b:b + batch_size]).argmax(1) for b in range(0, k * n, batch_size)])
                err = (pred.view(k, n) != y.view(1, n)).float().mean(1).cpu()
                for (r, c), e in zip(chunk, err.tolist()):
                    heat[r, c] = e
                    heat[mirror(r, c, (h, w))] = e
    finally:
        model.train(was_training)
    return heat


def frequency_radius(shape: tuple[int, int]) -> Tensor:
    """(H, W): each cell's normalised frequency radius sqrt((i / (H/2))^2 + (j / (W/2))^2): 0 at the zero
    frequency, 1 on the circle through the Nyquist frequencies of either axis (up to sqrt(2) in the corners)."""
    h, w = shape
    i = torch.arange(h, dtype=torch.float64) - h // 2
    j = torch.arange(w, dtype=torch.float64) - w // 2
    return torch.sqrt((i.view(h, 1) / (h / 2)) ** 2 + (j.view(1, w) / (w / 2)) ** 2)


def band_errors(heat: Tensor) -> dict[str, float]:
    """The heatmap's summaries: ``mean_error`` (over every frequency), ``low_freq_error`` (mean over the
    frequencies of radius <= LOW_BAND, :func:`frequency_radius`; the zero frequency included) and
    ``high_freq_error`` (radius > HIGH_BAND)."""
    rad = frequency_radius(tuple(heat.shape))
    heat = heat.double()
    low, high = heat[rad <= LOW_BAND], heat[rad > HIGH_BAND]
    return {"mean_error": float(heat.mean()),
            "low_freq_error": float(low.mean()) if low.numel() else math.nan,
            "high_freq_error": float(high.mean()) if high.numel() else math.nan}
