"""GPU throughput of sweeper's own training, PGD and inversion on CIFAR-shaped inputs, and the single-GPU
wall time they imply for the paper-scale CIFAR-10 sweeps (search_spaces/cifar10_table1.yaml, cifar10_figure2.yaml).

Inputs are random pixels (throughput does not depend on them); ResNet-18 and ResNet-50 as in `sweeper.science.models`,
batch 128 with the Trainer's bf16 autocast and augmentation; adversarial training with 7-step L2 PGD (the
paper's robust source); targeted L2 PGD as in relabelling and representation inversion, both fp32, on batches
of 1,024 images, 50 steps each after a warm-up call. The projection multiplies these rates by the sweeps'
budgets (50,000 training images; 150 epochs; relabelling 100 steps; inversion 1,000 steps) and adds no
scheduling overhead: it is the work of one GPU, not a run.

    python benchmarks/bench_gpu.py                  # on a GPU machine, ~75 s on an H100
    python benchmarks/bench_gpu.py --small --archs resnet18   # a CPU smoke run of the script itself
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from _results import RESULTS, record  # noqa: E402
from sweeper import models  # noqa: E402
from sweeper.science.attacks import pgd  # noqa: E402
from sweeper.science.data import CIFAR_MEAN, CIFAR_STD  # noqa: E402
from sweeper.sweep.schema import AttackConfig, InversionConfig, TrainConfig  # noqa: E402
from sweeper.science.synthesis import invert  # noqa: E402
from sweeper.science.training import Trainer  # noqa: E402

TRAIN_N, EPOCHS, RELABEL_STEPS, INVERT_STEPS = 50_000, 150, 100, 1000  # the CIFAR-10 sweep files' budgets


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--archs", default="resnet18,resnet50")
    p.add_argument("--small", action="store_true", help="1/20 of the images (a smoke run)")
    p.add_argument("--results", default=str(RESULTS), help="where the JSON goes (default benchmarks/results)")
    a = p.parse_args()
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cudnn.benchmark = True
    scale = 0.05 if a.small else 1.0

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def timed(fn) -> float:
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        return time.perf_counter() - t0

    def build(arch):
        torch.manual_seed(0)
        return models.build(arch, num_classes=10, in_shape=(3, 32, 32), mean=CIFAR_MEAN, std=CIFAR_STD).to(dev)

    rates: dict[str, dict[str, float]] = {}
    for arch in a.archs.split(","):
        r = rates[arch] = {}
        n = max(256, int(12_800 * scale))
        x, y = torch.rand(n, 3, 32, 32, device=dev), torch.randint(0, 10, (n,), device=dev)
        cfg = TrainConfig(epochs=2, batch_size=128, optimizer="sgd", lr=0.1, schedule="cosine", augment=True)
        tr = Trainer(build(arch), x, y, cfg)
        tr.run_epoch()  # warm-up (cudnn autotuning)
        r["train_img_s"] = n / timed(tr.run_epoch)
        na = max(128, n // 4)
        tr = Trainer(build(arch), x[:na], y[:na], cfg, adversarial=AttackConfig(norm="l2", eps=0.5, steps=7,
                                                                                  step_size=0.1))
        tr.run_epoch()
        r["adv7_train_img_s"] = na / timed(tr.run_epoch)
        m = build(arch).eval()
        b, steps = max(64, int(1024 * scale)), 50
        xa, ya = x[:b], y[:b]
        atk = AttackConfig(norm="l2", eps=0.5, steps=steps, step_size=0.1)
        pgd(m, xa[:64], ya[:64], atk, targeted=True)
        r["pgd_img_steps_s"] = b * steps / timed(lambda: pgd(m, xa, ya, atk, targeted=True))
        inv = InversionConfig(steps=steps, step_size=0.1)
        invert(m, xa[:64], xa[:64].flip(0), inv)
        r["invert_img_steps_s"] = b * steps / timed(lambda: invert(m, xa, xa.flip(0), inv))
        print(arch, {k: round(v) for k, v in r.items()}, flush=True)

    arch = a.archs.split(",")[-1]
    r = rates[arch]
    std = EPOCHS * TRAIN_N / r["train_img_s"] / 3600
    rob = EPOCHS * TRAIN_N / r["adv7_train_img_s"] / 3600
    relabel = TRAIN_N * RELABEL_STEPS / r["pgd_img_steps_s"] / 3600
    inv = TRAIN_N * INVERT_STEPS / r["invert_img_steps_s"] / 3600
    hours = {"standard training, 150 epochs": std, "adversarial training (PGD-7), 150 epochs": rob,
             "relabelling 50k images x 100 steps": relabel, "inversion 50k images x 1,000 steps": inv,
             "cifar10_table1 (2 sources + 2 relabellings + 2 retrainings)": 4 * std + 2 * relabel,
             "cifar10_figure2 (std + robust + 2 inversions + 2 retrainings)": 3 * std + rob + 2 * inv}
    for k, v in hours.items():
        print(f"  {arch}: {k}: {v:.2f} GPU-hours")
    device = torch.cuda.get_device_name(0) if dev.type == "cuda" else "cpu"
    rows = [[k, f"{v['train_img_s']:.0f}", f"{v['adv7_train_img_s']:.0f}", f"{v['pgd_img_steps_s']:.0f}",
             f"{v['invert_img_steps_s']:.0f}"] for k, v in rates.items()]
    record("bench_gpu", {f"{arch} {k} (GPU-hours)": round(v, 2) for k, v in hours.items()},
           title=f"GPU throughput and single-GPU projection of the CIFAR-10 sweeps ({device})",
           params={"device": device, "archs": a.archs, "small": a.small},
           tables=[{"title": "images (or image-steps) per second", "header": [
               "arch", "train img/s (bf16, bs 128)", "adv. train img/s (PGD-7)", "PGD image-steps/s",
               "inversion image-steps/s"], "rows": rows}],
           notes=["Work of one GPU at these rates, without scheduling overhead or evaluation; a cluster divides "
                  "the independent stages (sources, syntheses, retrainings) between its GPUs."],
           results=Path(a.results))


if __name__ == "__main__":
    main()
