"""Representation inversion: distance left against wall time, per step schedule (CPU, one process).

Trains the demo's two source models (standard: 10,000 images, 3 epochs; L2-robust: 5,000 images, 4 epochs of
5-step PGD at eps 1.0), then inverts 200 training images from another training image (the paper's start) with
each schedule and prints the mean of ||g(z) - g(x)|| / ||g(x0) - g(x)|| left at the end and the wall time.
The paper's budget is 1,000 steps of 0.1 (constant); the demo's is 200 cosine-decayed steps of 0.5.

    python benchmarks/bench_inversion.py            # ~5 min on 2 cores
"""

from __future__ import annotations

import time

import torch

from sweeper.science import data, models
from sweeper.science.synthesis import invert
from sweeper.sweep.schema import TrainConfig
from sweeper.science.training import train

from _results import record

SCHEDULES = [  # (name, steps, step_size, decay)
    ("60 x 0.5 cosine (old demo)", 60, 0.5, "cosine"),
    ("100 x 0.5 cosine", 100, 0.5, "cosine"),
    ("200 x 0.5 cosine (demo)", 200, 0.5, "cosine"),
    ("500 x 0.1 constant", 500, 0.1, "none"),
    ("1000 x 0.1 constant (paper)", 1000, 0.1, "none"),
]


def main() -> None:
    torch.manual_seed(0)
    ds = data.load("fashion_mnist", "train")
    idx = data.subset_indices(len(ds.y), 10000, 0)
    x, y = ds.x[idx], ds.y[idx]

    def fit(n, epochs, adversarial=None):
        torch.manual_seed(0)
        m = models.build("small_cnn", num_classes=10, in_shape=(1, 28, 28), mean=ds.mean, std=ds.std)
        train(m, x[:n], y[:n], TrainConfig(epochs=epochs, batch_size=128, lr=0.05), adversarial=adversarial)
        return m.eval()

    from sweeper.sweep.schema import AttackConfig

    t0 = time.time()
    sources = {"standard": fit(10000, 3),
               "robust": fit(5000, 4, AttackConfig(norm="l2", eps=1.0, steps=5, step_size=0.4))}
    print(f"sources trained in {time.time() - t0:.0f} s; {torch.get_num_threads()} threads")
    n = 200
    xt = x[:n]
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(3))
    perm[perm == torch.arange(n)] = (perm[perm == torch.arange(n)] + 1) % n
    x0 = xt[perm]
    rows = []
    print(f"{'schedule':32s} {'source':9s} {'distance left':>13s} {'wall s':>7s} {'img-steps/s':>11s}")
    for name, steps, lr, decay in SCHEDULES:
        for sname, m in sources.items():
            with torch.no_grad():
                start = (m.representation(x0) - m.representation(xt)).norm(dim=1)
            t = time.time()
            _, dist = invert(m, xt, x0, steps=steps, step_size=lr, step_decay=decay)
            wall = time.time() - t
            left = float((dist / start).mean())
            rows.append({"schedule": name, "source": sname, "distance_left": round(left, 4),
                         "wall_s": round(wall, 1), "img_steps_per_s": round(n * steps / wall)})
            print(f"{name:32s} {sname:9s} {left:13.3f} {wall:7.1f} {n * steps / wall:11.0f}")
    record("bench_inversion", {"rows": rows, "images": n})


if __name__ == "__main__":
    main()
