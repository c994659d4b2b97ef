"""Standard and adversarial training on in-memory tensors (torch only; no DataLoader, no tracking library).

Batches come from a seeded ``torch.Generator`` permutation per epoch, so a run is reproducible given the
model's initial weights (seeding torch before building the model is the caller's job) and ``seed``.

Adversarial training (Madry et al.; the robust sources of Ilyas et al.): each batch is replaced by
``perturb(model, xb, yb, adversarial, bounds=bounds)``. Choice: the attack runs with the model in **eval
mode** (BatchNorm uses running statistics and is not updated by the attack's forward passes), then the
update runs in train mode on the adversarial batch. The authors' robustness library attacks in train mode;
eval mode keeps the attack a deterministic function of the weights and keeps BN statistics those of the
adversarial training inputs only.
"""

from __future__ import annotations

import math
import time
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sweeper.science.attacks import perturb
from sweeper.science.data import augment_batch
from sweeper.sweep.schema import AttackConfig, TrainConfig

__all__ = ["TrainConfig", "Trainer", "train"]


class Trainer:
    """Epoch-wise trainer; ``state_dict`` holds everything needed to resume bit-identically.

    ``adversarial``: the attack that replaces each batch (None: standard training); ``seed``: the batch order,
    augmentation (``seed``) and the attack's random starts (``seed + 1``)."""

    def __init__(self, model: nn.Module, x: Tensor, y: Tensor, cfg: TrainConfig, *,
                 adversarial: AttackConfig | None = None, seed: int = 0, bounds=(0.0, 1.0)):
        if not isinstance(cfg, TrainConfig):
            raise TypeError(f"cfg must be a TrainConfig, got {type(cfg).__name__}")
        if adversarial is not None and not isinstance(adversarial, AttackConfig):
            raise ValueError(f"adversarial must be an AttackConfig or None, got {adversarial!r}")
        if len(x) != len(y):
            raise ValueError(f"x and y differ in length: {len(x)} vs {len(y)}")
        if len(y) == 0:
            raise ValueError("empty training set")
        self.model, self.cfg, self.bounds, self.adversarial = model, cfg, bounds, adversarial
        self.device = next(model.parameters()).device
        self.cuda = self.device.type == "cuda"
        self.x = x.to(self.device, torch.float32)
        self.y = y.to(self.device, torch.int64)
        if self.x.dim() == 4:  # channels_last: ~1.4x faster convolutions on CPU too (measured here)
            self.model.to(memory_format=torch.channels_last)
        params = [p for p in model.parameters() if p.requires_grad]
        if cfg.optimizer == "sgd":
            self.optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum,
                                             weight_decay=cfg.weight_decay, nesterov=False)
        else:
            self.optimizer = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        n, bs = len(self.y), cfg.batch_size
        self.steps_per_epoch = max(1, math.ceil(n / bs) if n % bs != 1 or n == 1 else n // bs)
        self.total_steps = max(1, self.steps_per_epoch * cfg.epochs)
        self.iteration = 0
        self.epoch = 0
        self.generator = torch.Generator().manual_seed(int(seed))       # permutations, augmentation (CPU)
        self.attack_generator = torch.Generator(device=self.device).manual_seed(int(seed) + 1)  # random starts
        self._set_lr()

    # -------------------------------------------------------------------------------------- schedule
    def lr_at(self, iteration: int) -> float:
        c = self.cfg
        if c.schedule == "constant":
            return c.lr
        if c.schedule == "step":
            return c.lr * c.gamma ** ((iteration // self.steps_per_epoch) // c.step_every)
        return c.lr * 0.5 * (1.0 + math.cos(math.pi * min(iteration, self.total_steps) / self.total_steps))

    def _set_lr(self) -> float:
        lr = self.lr_at(self.iteration)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        return lr

    # ------------------------------------------------------------------------------------------ epoch
    def run_epoch(self) -> dict:
        cfg, model = self.cfg, self.model
        n, bs = len(self.y), cfg.batch_size
        perm = torch.randperm(n, generator=self.generator).to(self.device)
        t0 = time.perf_counter()
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.int64)
        seen = 0
        lr = self._set_lr()
        model.train()
        for b in range(self.steps_per_epoch):
            idx = perm[b * bs:(b + 1) * bs] if b < self.steps_per_epoch - 1 else perm[b * bs:]
            xb, yb = self.x[idx], self.y[idx]
            if cfg.augment:
                xb = augment_batch(xb, self.generator)
            if self.adversarial is not None:
                model.eval()
                xb = perturb(model, xb, yb, self.adversarial, bounds=self.bounds, generator=self.attack_generator)
                model.train()
            if xb.dim() == 4:
                xb = xb.contiguous(memory_format=torch.channels_last)
            lr = self._set_lr()
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.cuda):
                logits = model(xb)
                loss = F.cross_entropy(logits.float(), yb)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.iteration += 1
            loss_sum += loss.detach() * len(yb)
            correct += (logits.detach().argmax(1) == yb).sum()
            seen += len(yb)
        self._set_lr()
        elapsed = time.perf_counter() - t0
        self.epoch += 1
        return {"epoch": self.epoch, "train_loss": float(loss_sum) / max(seen, 1),
                "train_acc": float(correct) / max(seen, 1), "lr": float(lr),
                "images_per_s": seen / max(elapsed, 1e-9)}

    # ------------------------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        """Tensors, numbers, strings, dicts and lists only: ``torch.load(weights_only=True)`` reads it."""
        return {
            "model": {k: v.detach().clone() for k, v in self.model.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": {"schedule": self.cfg.schedule, "iteration": int(self.iteration),
                          "steps_per_epoch": int(self.steps_per_epoch)},
            "epoch": int(self.epoch),
            "generator": self.generator.get_state(),
            "attack_generator": self.attack_generator.get_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.iteration = int(state["scheduler"]["iteration"])
        self.epoch = int(state["epoch"])
        self.generator.set_state(state["generator"].cpu())
        if "attack_generator" in state:
            self.attack_generator.set_state(state["attack_generator"].cpu())
        self._set_lr()


EpochHook = Callable[[Trainer, list], None]


def train(model: nn.Module, x: Tensor, y: Tensor, cfg: TrainConfig, *, adversarial: AttackConfig | None = None,
          seed: int = 0, bounds=(0.0, 1.0), resume: dict | None = None,
          on_epoch: EpochHook | None = None) -> list[dict]:
    """Train for ``cfg.epochs`` epochs; returns the per-epoch rows.

    ``resume``: a checkpoint ``{"trainer": Trainer.state_dict(), "history_rows": rows so far}`` to continue
    from (bit-identically). ``on_epoch(trainer, history)`` runs after every epoch, with the epoch's row last
    in ``history``: it may add numbers to that row (they stay in the history) and write a checkpoint.
    """
    trainer = Trainer(model, x, y, cfg, adversarial=adversarial, seed=seed, bounds=bounds)
    history: list[dict] = []
    if resume is not None:
        trainer.load_state_dict(resume["trainer"])
        history = list(resume["history_rows"])
    while trainer.epoch < cfg.epochs:
        history.append(trainer.run_epoch())
        if on_epoch is not None:
            on_epoch(trainer, history)
    return history
