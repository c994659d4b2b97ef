"""Time sweeper.science.attacks.pgd against torchattacks PGD (Linf) and PGDL2 on the same model, batch and steps.

Usage: .venv/bin/python benchmarks/bench_pgd.py [--device cpu|cuda] [--batch 256] [--steps 20] [--repeats 5]
Prints median wall times and the ratio torchattacks_time / sweeper_time (>= 1.0: sweeper is not slower).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torchattacks
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from _results import record  # noqa: E402
from sweeper.science.attacks import AttackConfig, pgd  # noqa: E402


def small_cnn(num_classes: int = 10) -> nn.Module:
    """conv 32/64/128 (3x3, pad 1) each + ReLU + 2x2 maxpool, fc 256, fc 10; input 1x28x28."""
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),    # 14x14
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),   # 7x7
        nn.Conv2d(64, 128, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 3x3
        nn.Flatten(), nn.Linear(128 * 3 * 3, 256), nn.ReLU(), nn.Linear(256, num_classes),
    )


def _time(fn, device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    device = torch.device(args.device)

    torch.manual_seed(0)
    model = small_cnn().to(device).eval()
    g = torch.Generator().manual_seed(0)
    x = torch.rand((args.batch, 1, 28, 28), generator=g).to(device)
    y = torch.randint(0, 10, (args.batch,), generator=g).to(device)

    cases = {
        "linf": (AttackConfig(norm="linf", eps=8 / 255, steps=args.steps, step_size=2 / 255),
                 torchattacks.PGD(model, eps=8 / 255, alpha=2 / 255, steps=args.steps, random_start=False)),
        "l2": (AttackConfig(norm="l2", eps=0.5, steps=args.steps, step_size=0.1),
               torchattacks.PGDL2(model, eps=0.5, alpha=0.1, steps=args.steps, random_start=False)),
    }
    print(f"device={device} torch={torch.__version__} torchattacks={torchattacks.__version__} "
          f"threads={torch.get_num_threads()} batch={args.batch} steps={args.steps} repeats={args.repeats}")
    rows, figures = [], {}
    print(f"{'attack':<6} {'sweeper_s':>10} {'torchattacks_s':>15} {'ratio ta/sw':>12} {'max|diff|':>10}")
    for name, (cfg, atk) in cases.items():
        ours = pgd(model, x, y, cfg)  # warm-up + correctness check
        ref = atk(x, y)
        diff = (ours - ref).abs().max().item()
        t_sw, t_ta = [], []
        for i in range(args.repeats):  # interleave to share any background load fairly
            if i % 2 == 0:
                t_sw.append(_time(lambda: pgd(model, x, y, cfg), device))
                t_ta.append(_time(lambda: atk(x, y), device))
            else:
                t_ta.append(_time(lambda: atk(x, y), device))
                t_sw.append(_time(lambda: pgd(model, x, y, cfg), device))
        m_sw, m_ta = statistics.median(t_sw), statistics.median(t_ta)
        print(f"{name:<6} {m_sw:>10.4f} {m_ta:>15.4f} {m_ta / m_sw:>12.3f} {diff:>10.2e}")
        rows.append([name, round(m_sw, 4), round(m_ta, 4), round(m_ta / m_sw, 3), f"{diff:.1e}"])
        figures[f"speed_ratio_torchattacks_over_sweeper_{name}"] = round(m_ta / m_sw, 3)
    record("bench_pgd", title="sweeper's PGD against torchattacks' PGD / PGDL2: median wall time, same model, "
           "batch and steps (ratio >= 1: sweeper is not slower).", figures=figures,
           params={"device": str(device), "threads": torch.get_num_threads(), "batch": args.batch,
                   "steps": args.steps, "repeats": args.repeats},
           tables=[{"header": ["attack", "sweeper s", "torchattacks s", "ratio ta/sw", "max abs diff"], "rows": rows}],
           extra_packages=["torchattacks"])


if __name__ == "__main__":
    main()
