"""What each kind of plan node computes, given its inputs in the store (torch only; no Ray, no W&B).

The executor (local or on Ray) calls these functions; they read inputs from the :class:`~sweeper.store.Store`,
compute, and write their output back atomically. Everything a node needs comes from its ``params``, its
input keys and the sweep's ``data`` section, so the same node computes the same artifact anywhere.

Outputs per kind (``<store>/nodes/<key>``):
  train       tensors: the model's state dict; meta: arch, shapes, per-epoch history, final test accuracy
  synthesize  tensors: x, y (the new labels), orig_y, index (+ hit or dist); meta: hit rate / mean distance
  evaluate    tensors: per-example flags; meta: clean, shifted-label and robust accuracies per attack
  transfer    meta: how often the probe model reads the target / the original label on the synthesized set
"""

from __future__ import annotations

import functools
import hashlib
import io
import sys
import time
from typing import Any, Callable

import torch

from . import data as data_mod
from . import models
from .attacks import AttackConfig
from .evaluation import evaluate
from .store import Store, StoreIOError, provenance
from .synthesis import invert, relabel, start_points
from .training import TrainConfig, Trainer

EpochCallback = Callable[[dict], None]
HISTORY_TEST_SIZE = 1000  # test images scored after every epoch (the full evaluation is its own node)


# ----------------------------------------------------------------------------------------------- data
@functools.lru_cache(maxsize=8)
def _load_cached(dataset: str, root: str | None, split: str, toy: tuple) -> data_mod.Dataset:
    from .data_store import local_root

    # a pushed dataset (a URI, or a folder with manifest.json) is first copied into the node-local cache, checked
    return data_mod.load(dataset, split, root=local_root(dataset, root), **dict(toy))


def load_split(data_spec: dict, split: str) -> data_mod.Dataset:
    """The sweep's real dataset (train or test split), cached per process."""
    toy = data_spec.get("toy") or {}
    if data_spec["dataset"] == "toy":
        toy = {"d": toy.get("d", 100), "p": toy.get("p", 0.95), "n_train": toy.get("n_train", 5000),
               "n_test": toy.get("n_test", 2000), "seed": toy.get("seed", 0)}
    else:
        toy = {}
    return _load_cached(data_spec["dataset"], data_spec.get("root"), split, tuple(sorted(toy.items())))


def real_subset(data_spec: dict, split: str, n: int | None, seed: int):
    """(x, y, index): the first ``n`` images of a seeded permutation of a split (all when n is None)."""
    ds = load_split(data_spec, split)
    idx = data_mod.subset_indices(len(ds.y), n, seed)
    return ds.x[idx], ds.y[idx], idx


def test_set(data_spec: dict, seed: int):
    x, y, _ = real_subset(data_spec, "test", data_spec.get("test_size"), seed)
    return x, y


# --------------------------------------------------------------------------------------------- models
def new_model(arch: str, ds: data_mod.Dataset, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return models.build(arch, num_classes=ds.num_classes, in_shape=tuple(ds.x.shape[1:]),
                        mean=ds.mean, std=ds.std)


def load_model(store: Store, key: str, data_spec: dict) -> torch.nn.Module:
    """A trained model from the store, in eval mode."""
    meta = store.load_meta(key)
    ds = load_split(data_spec, "train")
    model = models.build(meta["arch"], num_classes=ds.num_classes, in_shape=tuple(ds.x.shape[1:]),
                         mean=ds.mean, std=ds.std)
    model.load_state_dict(store.load_tensors(key))
    return model.eval()


def attack_config(spec: dict | None) -> AttackConfig | None:
    if not spec:
        return None
    return AttackConfig(norm=spec["norm"], eps=float(spec["eps"]), steps=int(spec["steps"]),
                        step_size=spec.get("step_size"), random_start=bool(spec.get("random_start", False)),
                        restarts=int(spec.get("restarts", 1)))


def seed_for(*parts: Any) -> int:
    """A 63-bit seed derived from any parts (sweep seed, node key, shard index...)."""
    h = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(h[:8], "little") & ((1 << 63) - 1)


# ---------------------------------------------------------------------------------------------- train
def _ckpt_path(key: str, epoch: int) -> str:
    return f"checkpoints/{key}/{int(epoch):05d}.pt"


def _warn(msg: str) -> None:
    print(f"sweeper: warning: {msg}", file=sys.stderr, flush=True)


def _load_checkpoint(store: Store, key: str, label: str, warn: Callable[[str], None] = _warn):
    """The newest intact per-epoch checkpoint of a training node, or None. A damaged one (a crash mid-upload
    on a store without atomic writes, a flipped byte) is reported, removed, and the one before it is used."""
    found = sorted((i.base_name for i in store.listdir(f"checkpoints/{key}") if i.base_name.endswith(".pt")),
                   reverse=True)
    for name in found:
        rel = f"checkpoints/{key}/{name}"
        try:
            return torch.load(io.BytesIO(store.read_checked(rel)), weights_only=True)
        except StoreIOError:  # the store itself failed (unreachable, permission): not a damaged checkpoint
            raise
        except Exception as e:  # damaged: say so, drop it, fall back to the previous epoch's
            warn(f"{label}: checkpoint {rel} is damaged ({type(e).__name__}: {e}); removed, resuming from the one "
                 "before it")
            store.delete(rel)
    return None


def run_train(node, data_spec: dict, sweep_seed: int, store: Store,
              on_epoch: EpochCallback | None = None, curve: dict | None = None,
              warn: Callable[[str], None] = _warn) -> dict:
    """Train a model (standard or adversarial) on real data or on a synthesized set; resumable per epoch.

    Every epoch scores the first HISTORY_TEST_SIZE test images; with ``curve`` (see Plan.robust_curve) the
    first ``curve["size"]`` of them are also attacked every ``curve["every"]`` epochs and at the last one
    (``robust_acc`` in the epoch's row; its own seeded generator, so training itself is unchanged).
    """
    p = node.params
    t0 = time.time()
    train_ds = load_split(data_spec, "train")
    if "data" in node.inputs:
        t = store.load_tensors(node.inputs["data"])
        x, y = t["x"], t["y"]
    else:
        x, y, _ = real_subset(data_spec, "train", p.get("train_size"), sweep_seed)
    seed = int(p["seed"])
    model = new_model(p["arch"], train_ds, seed)
    tr = dict(p["train"])
    cfg = TrainConfig(epochs=tr["epochs"], batch_size=tr["batch_size"], optimizer=tr["optimizer"], lr=tr["lr"],
                      momentum=tr["momentum"], weight_decay=tr["weight_decay"], schedule=tr["schedule"],
                      step_every=tr["step_every"], gamma=tr["gamma"], augment=tr["augment"],
                      adversarial=attack_config(p.get("adversarial")), seed=seed)
    trainer = Trainer(model, x, y, cfg, bounds=train_ds.bounds)
    history: list[dict] = []
    state = _load_checkpoint(store, node.key, node.label, warn)
    if state is not None:  # resume after an interruption
        trainer.load_state_dict(state["trainer"])
        history = state["history_rows"]
    x_te, y_te = test_set(data_spec, sweep_seed)
    curve_attack = attack_config(curve["attack"]) if curve else None
    x_cu, y_cu = (x_te[:curve["size"]], y_te[:curve["size"]]) if curve else (None, None)
    x_te, y_te = x_te[:HISTORY_TEST_SIZE], y_te[:HISTORY_TEST_SIZE]
    while trainer.epoch < cfg.epochs:
        row = trainer.run_epoch()
        model.eval()
        with torch.no_grad():
            row["test_acc"] = float((model(x_te).argmax(1) == y_te).float().mean())
        if curve_attack is not None and (trainer.epoch % curve["every"] == 0 or trainer.epoch == cfg.epochs):
            gen = torch.Generator().manual_seed(seed_for(sweep_seed, node.key, "curve", trainer.epoch))
            res = evaluate(model, x_cu, y_cu, {"curve": curve_attack}, bounds=train_ds.bounds, generator=gen)
            row["robust_acc"] = res.robust_acc["curve"]
        history.append(row)
        buf = io.BytesIO()
        torch.save({"trainer": trainer.state_dict(), "history_rows": history}, buf)
        store.write_checked(_ckpt_path(node.key, trainer.epoch), buf.getvalue())
        if trainer.epoch > 1:  # keep this epoch's and the one before (a fallback if this one is damaged)
            store.delete(_ckpt_path(node.key, trainer.epoch - 2))
        if on_epoch is not None:
            on_epoch(row)
    model.eval()
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta = {"kind": "train", "key": node.key, "label": node.label, "arch": p["arch"], "n_train": int(len(y)),
            "history": history, "test_acc": history[-1]["test_acc"] if history else None,
            "robust_curve": ({"attack": curve_attack.name(), "size": int(len(y_cu)), "every": curve["every"]}
                             if curve_attack is not None else None),
            "params": p, "inputs": node.inputs, "wall_s": time.time() - t0, "provenance": provenance()}
    store.save(node.key, meta=meta, tensors=state)
    store.delete(f"checkpoints/{node.key}")
    return meta


# ----------------------------------------------------------------------------------------- synthesize
def shard_ranges(n: int, shard_size: int) -> list[tuple[int, int]]:
    return [(s, min(s + shard_size, n)) for s in range(0, n, shard_size)]


def synth_inputs(node, data_spec: dict, sweep_seed: int):
    """The real images a synthesis node transforms: (x, y, index into the training split)."""
    return real_subset(data_spec, "train", node.params.get("size"), sweep_seed)


def run_shard(node, index: int, start: int, stop: int, model: torch.nn.Module, data_spec: dict,
              sweep_seed: int, store: Store, shard_size: int) -> dict:
    """Synthesize images [start, stop) of a node's inputs into shard ``index`` of the ``shard_size``
    partition; idempotent (a shard already in the store is kept)."""
    if store.has_shard(node.key, index, size=shard_size):
        return {"index": index, "skipped": True, "n": stop - start}
    p = node.params
    x_all, y_all, idx_all = synth_inputs(node, data_spec, sweep_seed)
    ds = load_split(data_spec, "train")
    x, y = x_all[start:stop], y_all[start:stop]
    gen = torch.Generator().manual_seed(seed_for(sweep_seed, node.key, index))
    t0 = time.time()
    if p["method"] == "relabel":
        out = relabel(model, x, y, policy=p["targets"], num_classes=ds.num_classes,
                      attack=attack_config(p["attack"]), bounds=ds.bounds, generator=gen)
        tensors = {"x": out["x"], "y": out["y"], "orig_y": out["orig_y"], "hit": out["hit"].to(torch.uint8)}
        stats = {"hit_rate": float(out["hit"].float().mean()), "attack_loss": float(out["loss"].mean())}
    else:
        inv = p["inversion"]
        x0 = start_points(x_all, len(y), inv["start"], generator=gen,
                          exclude=torch.arange(start, stop))
        z, dist = invert(model, x, x0, steps=inv["steps"], step_size=inv["step_size"], loss=inv["loss"],
                         step_decay=inv["step_decay"], tol=inv["tol"], bounds=ds.bounds)
        tensors = {"x": z, "y": y.clone(), "orig_y": y.clone(), "dist": dist}
        stats = {"mean_dist": float(dist.mean())}
    tensors["index"] = idx_all[start:stop].clone()
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    meta = {"index": index, "start": start, "stop": stop, "n": stop - start, "wall_s": time.time() - t0,
            "images_per_s": (stop - start) / max(time.time() - t0, 1e-9), **stats}
    store.save_shard(node.key, index, tensors, meta, size=shard_size)
    return meta


def finish_synthesis(node, n_shards: int, store: Store, wall_s: float, shard_size: int) -> dict:
    """Concatenate the shards into the node's artifact (after every shard exists), then remove the shards
    once the merged artifact reads back intact. ``shard_meta`` keeps each shard's metrics and write attempt."""
    parts = [store.load_shard(node.key, i, size=shard_size) for i in range(n_shards)]
    tensors = {k: torch.cat([t[k] for t, _ in parts]) for k in parts[0][0]}
    metas = [m for _, m in parts]
    p = node.params
    meta = {"kind": "synthesize", "key": node.key, "label": node.label, "method": p["method"],
            "n": int(len(tensors["y"])), "shards": n_shards, "params": p, "inputs": node.inputs,
            "wall_s": wall_s, "provenance": provenance()}
    if "hit" in tensors:
        meta["hit_rate"] = float(tensors["hit"].float().mean())
    if "dist" in tensors:
        meta["mean_dist"] = float(tensors["dist"].mean())
    meta["shard_meta"] = metas
    meta["shard_size"] = int(shard_size)
    store.save(node.key, meta=meta, tensors=tensors)
    if store.is_done(node.key, verify=True):
        store.drop_shards(node.key)
    return meta


def run_synthesize(node, data_spec: dict, sweep_seed: int, store: Store, shard_size: int,
                   on_shard: Callable[[dict], None] | None = None) -> dict:
    """Every shard in this process, then the merge (the Ray executor spreads shards over actors instead)."""
    t0 = time.time()
    n = len(synth_inputs(node, data_spec, sweep_seed)[1])
    model = load_model(store, node.inputs["source"], data_spec)
    ranges = shard_ranges(n, shard_size)
    for i, (a, b) in enumerate(ranges):
        m = run_shard(node, i, a, b, model, data_spec, sweep_seed, store, shard_size)
        if on_shard is not None:
            on_shard(m)
    return finish_synthesis(node, len(ranges), store, time.time() - t0, shard_size)


# ------------------------------------------------------------------------------------ evaluate/transfer
def run_evaluate(node, data_spec: dict, sweep_seed: int, store: Store) -> dict:
    """Clean, shifted-label ((y+1) mod C) and robust accuracy of one model on the sweep's test subset."""
    t0 = time.time()
    p = node.params
    model = load_model(store, node.inputs["model"], data_spec)
    x, y = test_set(data_spec, sweep_seed)
    ds = load_split(data_spec, "test")
    attacks = {}
    for a in p.get("attacks") or []:
        cfg = attack_config(a)
        attacks[cfg.name()] = cfg
    gen = torch.Generator().manual_seed(seed_for(sweep_seed, node.key))
    res = evaluate(model, x, y, attacks, bounds=ds.bounds, generator=gen)
    with torch.no_grad():
        pred = torch.cat([model(x[i:i + 1000]).argmax(1) for i in range(0, len(y), 1000)])
    shifted = float((pred == (y + 1) % ds.num_classes).float().mean())
    robust = [{"attack": name, "norm": cfg.norm, "eps": cfg.eps, "steps": cfg.steps,
               "step_size": cfg.resolved_step_size(), "acc": res.robust_acc[name]}
              for name, cfg in attacks.items()]
    meta = {"kind": "evaluate", "key": node.key, "label": node.label, "model": node.inputs["model"],
            "n": res.n, "clean_acc": res.clean_acc, "shifted_acc": shifted, "robust": robust,
            "worst_acc": res.worst_acc, "params": p, "inputs": node.inputs, "wall_s": time.time() - t0,
            "provenance": provenance()}
    flags = {"clean": res.clean_flags.to(torch.uint8).contiguous()}
    flags.update({f"robust.{k}": v.to(torch.uint8).contiguous() for k, v in res.robust_flags.items()})
    store.save(node.key, meta=meta, tensors=flags)
    return meta


def run_transfer(node, data_spec: dict, sweep_seed: int, store: Store) -> dict:
    """How a probe model reads a relabelled set: the target (transfer) or the original class."""
    t0 = time.time()
    model = load_model(store, node.inputs["model"], data_spec)
    t = store.load_tensors(node.inputs["data"])
    with torch.no_grad():
        pred = torch.cat([model(t["x"][i:i + 1000]).argmax(1) for i in range(0, len(t["y"]), 1000)])
    meta = {"kind": "transfer", "key": node.key, "label": node.label, "n": int(len(pred)),
            "target_rate": float((pred == t["y"]).float().mean()),
            "original_rate": float((pred == t["orig_y"]).float().mean()),
            "params": node.params, "inputs": node.inputs, "wall_s": time.time() - t0,
            "provenance": provenance()}
    store.save(node.key, meta=meta)
    return meta
