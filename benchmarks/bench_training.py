"""Training throughput: sweeper's Trainer vs a plain DataLoader(TensorDataset) loop.

Same model (small_cnn), same Fashion-MNIST subset (10k images), batch 128, SGD (lr 0.05, momentum 0.9,
wd 5e-4), 1 epoch per measurement, one warm-up epoch each, median of 3. Prints images/s and the ratio.

    .venv/bin/python benchmarks/bench_training.py [--n 10000] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from _results import record
from sweeper.science import data, models
from sweeper.science.training import TrainConfig, Trainer


def make_model(ds):
    torch.manual_seed(0)
    return models.build("small_cnn", num_classes=10, in_shape=tuple(ds.x.shape[1:]), mean=ds.mean, std=ds.std)


def bench_trainer(ds, x, y, bs, reps):
    model = make_model(ds)
    cfg = TrainConfig(epochs=reps + 1, batch_size=bs, optimizer="sgd", lr=0.05, momentum=0.9,
                      weight_decay=5e-4, schedule="constant")
    trainer = Trainer(model, x, y, cfg)
    trainer.run_epoch()  # warm-up
    rates = []
    for _ in range(reps):
        t0 = time.perf_counter()
        trainer.run_epoch()
        rates.append(len(y) / (time.perf_counter() - t0))
    return rates


def bench_dataloader(ds, x, y, bs, reps):
    model = make_model(ds)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    loader = DataLoader(TensorDataset(x, y), batch_size=bs, shuffle=True,
                        generator=torch.Generator().manual_seed(0))

    def epoch():
        model.train()
        for xb, yb in loader:
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    epoch()  # warm-up
    rates = []
    for _ in range(reps):
        t0 = time.perf_counter()
        epoch()
        rates.append(len(y) / (time.perf_counter() - t0))
    return rates


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    ds = data.load("fashion_mnist", "train")
    idx = data.subset_indices(len(ds.y), a.n, seed=0)
    x, y = ds.x[idx].contiguous(), ds.y[idx].contiguous()
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, small_cnn, fashion_mnist n={a.n}, "
          f"batch {a.batch_size}, SGD, 1 epoch per rep, 1 warm-up, median of {a.reps}")
    tr = bench_trainer(ds, x, y, a.batch_size, a.reps)
    dl = bench_dataloader(ds, x, y, a.batch_size, a.reps)
    mt, md = statistics.median(tr), statistics.median(dl)
    print(f"sweeper Trainer     : {mt:8.0f} img/s  (reps: {', '.join(f'{r:.0f}' for r in tr)})")
    print(f"DataLoader loop     : {md:8.0f} img/s  (reps: {', '.join(f'{r:.0f}' for r in dl)})")
    print(f"ratio Trainer/loop  : {mt / md:8.2f}")
    record("bench_training", title="Training throughput: sweeper's Trainer against a plain DataLoader(TensorDataset) "
           "loop, same model, data and optimizer (ratio >= 1: the Trainer is not slower).",
           figures={"ratio_trainer_over_loop": round(mt / md, 3)},
           params={"threads": torch.get_num_threads(), "images": a.n, "batch": a.batch_size, "reps": a.reps},
           tables=[{"header": ["loop", "img/s (median)", "reps"],
                    "rows": [["sweeper Trainer", round(mt), ", ".join(f"{r:.0f}" for r in tr)],
                             ["DataLoader loop", round(md), ", ".join(f"{r:.0f}" for r in dl)]]}])


if __name__ == "__main__":
    main()
