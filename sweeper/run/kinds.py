"""The node kinds: what each computes from its inputs in the store, the numbers it reports, one line about it.

``KINDS[kind] = Kind(run, metrics, summary, size, unit, engine)`` is the one table that the local engine,
the Tune trials and the synthesis actor pool call, through :func:`execute`; no other module dispatches on a
node's kind. A node's typed spec, its input keys and the sweep's data section are all it needs, so the same
node computes the same artifact anywhere. torch only (no Ray, no W&B).

Outputs per kind (``<store>/nodes/<key>``):
  train       tensors: the model's state dict; meta: arch, per-epoch history, final test accuracy
  synthesize  tensors: x, y (the new labels), orig_y, index (each image's index in the training split),
              start_index (the training-split index of the image its synthesis started from: the image itself
              for relabel and wrong_labels, the other image for inversion from other_image, -1 from noise), hit
              or dist, with an ensemble keep and keep_each; meta: hit rate (and ensemble_keeps) / mean feature
              distance / wrong_labels: pool_size, kept, labels_differ (its set has fewer images than the pool)
  evaluate    tensors: per-example flags; meta: clean, shifted-label and robust accuracies per attack
  transfer    meta: how often the probe model reads the target / the original label on the synthesized set
  fourier     tensors: heatmap (H, W), the error at each centred frequency; meta: eps, size, n, clean_error,
              mean_error, low_freq_error, high_freq_error (sweeper.science.fourier)
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import torch

from sweeper.store import checkpoints

from sweeper.science import data_store

from sweeper.science import models
from sweeper.science.data import Dataset
from sweeper.science.evaluation import evaluate
from sweeper.sweep.plan import Node, Plan, ensemble_keys, seed_for
from sweeper.sweep.schema import DataSpec
from sweeper.store.store import Store, provenance
from sweeper.science.synthesis import invert, relabel, start_points, wrong_labels
from sweeper.science.training import train

Progress = Callable[[dict], None]  # numbers as they come: an epoch's row, a finished shard's metrics
HISTORY_TEST_SIZE = 1000  # test images scored after every epoch (the full evaluation is its own node)


def _warn(msg: str) -> None:
    print(f"sweeper: warning: {msg}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Context:
    """What the nodes of one sweep share: its data section and seed, the store, the shard size, and where
    warnings go (a Tune trial forwards them to the driver)."""
    data: DataSpec
    seed: int
    store: Store
    shard_size: int = 500
    warn: Callable[[str], None] = field(default=_warn, compare=False)

    @classmethod
    def of(cls, plan: Plan, store: Store, **kw) -> "Context":
        return cls(plan.sweep.data, int(plan.sweep.seed), store, int(plan.sweep.run.shard_size), **kw)


# --------------------------------------------------------------------------------------------- models
def device() -> torch.device:
    """Where this process computes: the GPU when it has one (a Tune trial or actor given ``num_gpus`` sees it;
    Ray hides GPUs from tasks that asked for none), else the CPU. Artifacts are stored from the CPU either way."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def new_model(arch: str, ds: Dataset, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return models.build(arch, num_classes=ds.num_classes, in_shape=tuple(ds.x.shape[1:]), mean=ds.mean,
                        std=ds.std).to(device())


def new_probe(store: Store, features: str, data: DataSpec, ds: Dataset, seed: int) -> models.Probe:
    """A linear probe (``features:``) on the stored model ``features``, frozen, with a fresh head seeded by
    ``seed`` (see :class:`sweeper.science.models.Probe` for what "robust features" means here)."""
    extractor = load_model(store, features, data)
    torch.manual_seed(seed)
    return models.probe(extractor, ds.num_classes).to(device())


def load_model(store: Store, key: str, data: DataSpec) -> torch.nn.Module:
    """A trained model from the store, in eval mode. A probe's artifact holds its frozen extractor's weights
    too (meta ``features``: the features model's key and arch), so it loads without its features node."""
    meta, state = store.load(key)  # one read of the node's manifest for both
    ds = data_store.load_split(data, "train")
    feats = meta.get("features")
    model = models.build(feats["arch"] if feats else meta["arch"], num_classes=ds.num_classes,
                         in_shape=tuple(ds.x.shape[1:]), mean=ds.mean, std=ds.std)
    if feats:
        model = models.probe(model, ds.num_classes)
    model.load_state_dict(state)
    if len(ds.x.shape) == 4:  # images: channels_last convolutions, ~1.5x faster input gradients on CPU (measured)
        model.to(memory_format=torch.channels_last)
    return model.to(device()).eval()


def _meta(node: Node, t0: float, **fields) -> dict:
    """The metadata every node stores: kind, key, label, its spec (the YAML's names), inputs, wall time,
    provenance, and the kind's own fields."""
    return {"kind": node.kind, "key": node.key, "label": node.label, **fields,
            "params": node.spec.model_dump(mode="json", by_alias=True), "inputs": node.inputs,
            "wall_s": time.time() - t0, "provenance": provenance()}


# ---------------------------------------------------------------------------------------------- train
def run_train(node: Node, ctx: Context, progress: Optional[Progress] = None) -> dict:
    """Train a model (standard or adversarial) on real data or on a synthesized set; resumable per epoch.
    With a ``features`` input the model is a linear probe on that model's frozen representation
    (:func:`new_probe`): only its head trains.

    Every epoch scores the first HISTORY_TEST_SIZE test images; with ``node.robust_curve`` the first ``size``
    of them are also attacked every ``every`` epochs and at the last one (``robust_acc`` in the epoch's row;
    its own seeded generator, so training itself is unchanged). Each epoch ends with a checkpoint.
    """
    spec, store, curve = node.spec, ctx.store, node.robust_curve
    t0 = time.time()
    ds = data_store.load_split(ctx.data, "train")
    if "data" in node.inputs:
        t = store.load_tensors(node.inputs["data"])
        x, y = t["x"], t["y"]
        if len(y) == 0:  # a wrong_labels set whose source got every pool image right
            raise ValueError(f"{node.label}: the synthesized set it trains on ({node.inputs['data']}) has no "
                             "images (a wrong_labels source that misclassified none of its pool); expected a "
                             "weaker source or a larger size")
    else:
        x, y, _ = data_store.real_subset(ctx.data, "train", spec.train_size, ctx.seed)
    feats = node.inputs.get("features")  # a linear probe on that model's frozen representation
    model = new_probe(store, feats, ctx.data, ds, spec.seed) if feats else new_model(spec.arch, ds, spec.seed)
    x_te, y_te = (t.to(device()) for t in data_store.test_set(ctx.data, ctx.seed))
    x_cu, y_cu = (x_te[:curve.size], y_te[:curve.size]) if curve else (None, None)
    x_te, y_te = x_te[:HISTORY_TEST_SIZE], y_te[:HISTORY_TEST_SIZE]
    epochs = spec.train.epochs

    def on_epoch(trainer, history: list) -> None:
        row = history[-1]
        model.eval()
        with torch.no_grad():
            row["test_acc"] = float((model(x_te).argmax(1) == y_te).float().mean())
        if curve is not None and (trainer.epoch % curve.every == 0 or trainer.epoch == epochs):
            gen = torch.Generator().manual_seed(seed_for(ctx.seed, node.key, "curve", trainer.epoch))
            res = evaluate(model, x_cu, y_cu, {"curve": curve.attack}, bounds=ds.bounds, generator=gen)
            row["robust_acc"] = res.robust_acc["curve"]
        checkpoints.save(store, node.key, trainer.epoch, {"trainer": trainer.state_dict(), "history_rows": history})
        if progress is not None:
            progress(dict(row))

    history = train(model, x, y, spec.train, adversarial=spec.adversarial, seed=spec.seed, bounds=ds.bounds,
                    resume=checkpoints.load(store, node.key, node.label, ctx.warn), on_epoch=on_epoch)
    model.eval()
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    probe = {"features": {"key": feats, "arch": store.load_meta(feats)["arch"]}} if feats else {}
    meta = _meta(node, t0, arch=spec.arch, n_train=int(len(y)), history=history, **probe,
                 test_acc=history[-1]["test_acc"] if history else None,
                 robust_curve=({"attack": curve.attack.name(), "size": int(len(y_cu)), "every": curve.every}
                               if curve is not None else None))
    store.save(node.key, meta=meta, tensors=state)
    checkpoints.drop(store, node.key)
    return meta


# ----------------------------------------------------------------------------------------- synthesize
def shard_ranges(n: int, shard_size: int) -> list[tuple[int, int]]:
    return [(s, min(s + shard_size, n)) for s in range(0, n, shard_size)]


def synth_inputs(node: Node, ctx: Context):
    """The real images a synthesis node transforms: (x, y, index into the training split)."""
    return data_store.real_subset(ctx.data, "train", node.spec.size, ctx.seed)


def shard_metrics(meta: dict) -> dict:
    """A finished shard's numbers, as logged (``shard/index``, ``shard/n``, ...)."""
    keys = ("index", "n", "images_per_s", "hit_rate", "attack_loss", "mean_dist", "ensemble_keeps", "kept")
    return {f"shard/{k}": meta[k] for k in keys if k in meta}


def load_ensemble(store: Store, node: Node, data: DataSpec) -> list[torch.nn.Module]:
    """A synthesis node's ensemble models (its inputs ``ensemble0``, ``ensemble1``...; [] without one), in eval
    mode: the models Nakkiran's bugs-only attack keeps at the true labels."""
    return [load_model(store, k, data) for k in ensemble_keys(node)]


def run_shard(node: Node, index: int, start: int, stop: int, model: torch.nn.Module, ctx: Context,
              worker: Optional[dict] = None, ensemble: Sequence[torch.nn.Module] = ()) -> dict:
    """Synthesize images [start, stop) of a node's inputs into shard ``index`` of the ``ctx.shard_size``
    partition; idempotent (a shard already in the store is kept). Randomness: seed_for(sweep seed, key, index).
    ``worker``: where it ran (e.g. the actor's pid and Ray node), kept in the shard's metadata. ``ensemble``:
    the node's ensemble models (:func:`load_ensemble`), required when it has one. A wrong_labels shard keeps
    only the images of [start, stop) that the source misclassifies (possibly none); its meta's ``n`` counts the
    pool images it examined, ``kept`` those it kept."""
    store, spec = ctx.store, node.spec
    if len(ensemble) != len(ensemble_keys(node)):
        raise ValueError(f"{node.label}: synthesis needs its {len(ensemble_keys(node))} ensemble model(s) "
                         f"(got {len(ensemble)}); load them with load_ensemble")
    if store.has_shard(node.key, index, size=ctx.shard_size):
        return {"index": index, "skipped": True, "n": stop - start}
    x_all, y_all, idx_all = synth_inputs(node, ctx)
    ds = data_store.load_split(ctx.data, "train")
    dev = next(model.parameters()).device
    x, y = x_all[start:stop].to(dev), y_all[start:stop].to(dev)
    gen = torch.Generator().manual_seed(seed_for(ctx.seed, node.key, index))
    t0 = time.time()
    index_ = idx_all[start:stop].clone()
    if spec.method == "relabel":
        out = relabel(model, x, y, policy=spec.targets, num_classes=ds.num_classes, attack=spec.attack,
                      bounds=ds.bounds, generator=gen, ensemble=ensemble)
        tensors = {"x": out["x"], "y": out["y"], "orig_y": out["orig_y"], "hit": out["hit"].to(torch.uint8),
                   "start_index": index_.clone()}
        stats = {"hit_rate": float(out["hit"].float().mean()), "attack_loss": float(out["loss"].mean())}
        if ensemble:
            tensors.update(keep=out["keep"].to(torch.uint8), keep_each=out["keep_each"].to(torch.uint8))
            stats["ensemble_keeps"] = float(out["keep"].float().mean())
    elif spec.method == "wrong_labels":
        out = wrong_labels(model, x, y)
        index_ = index_[out["wrong"].cpu()]
        tensors = {"x": out["x"], "y": out["y"], "orig_y": out["orig_y"], "start_index": index_.clone()}
        stats = {"kept": int(out["wrong"].sum())}
    else:
        x0, pos = start_points(x_all, len(y), spec.inversion.start, generator=gen, exclude=torch.arange(start, stop))
        z, dist = invert(model, x, x0.to(dev), spec.inversion, bounds=ds.bounds)
        pos = pos.cpu()
        start_index = torch.where(pos >= 0, idx_all[pos.clamp_min(0)], torch.full_like(pos, -1))
        tensors = {"x": z, "y": y.clone(), "orig_y": y.clone(), "dist": dist, "start_index": start_index}
        stats = {"mean_dist": float(dist.mean())}
    tensors["index"] = index_
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    meta = {"index": index, "start": start, "stop": stop, "n": stop - start, "wall_s": time.time() - t0,
            "images_per_s": (stop - start) / max(time.time() - t0, 1e-9), **stats,
            **({"worker": worker} if worker else {})}
    store.save_shard(node.key, index, tensors, meta, size=ctx.shard_size)
    return meta


def finish_synthesis(node: Node, n_shards: int, ctx: Context, t0: float) -> dict:
    """Concatenate the shards into the node's artifact (after every shard exists), then remove the shards
    once the merged artifact reads back intact. ``shard_meta`` keeps each shard's metrics and write attempt."""
    store, size = ctx.store, ctx.shard_size
    parts = [store.load_shard(node.key, i, size=size) for i in range(n_shards)]
    names = [k for k in parts[0][0] if all(k in t for t, _ in parts)]  # shards of older code lack start_index
    tensors = {k: torch.cat([t[k] for t, _ in parts]) for k in names}
    stats = {}
    if "hit" in tensors:
        stats["hit_rate"] = float(tensors["hit"].float().mean())
    if "dist" in tensors:
        stats["mean_dist"] = float(tensors["dist"].mean())
    if "keep" in tensors:  # bugs-only relabelling: how often the ensemble still reads the true label
        stats["ensemble_keeps"] = float(tensors["keep"].float().mean())
        stats["ensemble_keeps_each"] = [float(v) for v in tensors["keep_each"].float().mean(dim=0)]
    if node.spec.method == "wrong_labels":  # the pool examined, what was kept, checked on the merged tensors
        pool = sum(int(m["n"]) for _, m in parts)
        kept = int(len(tensors["y"]))
        stats.update(pool_size=pool, kept=kept, source_error_rate=kept / pool if pool else None,
                     labels_differ=bool((tensors["y"] != tensors["orig_y"]).all()))
    meta = _meta(node, t0, method=node.spec.method, n=int(len(tensors["y"])), shards=n_shards, **stats,
                 shard_meta=[m for _, m in parts], shard_size=int(size))
    store.save(node.key, meta=meta, tensors=tensors)
    if store.is_done(node.key, verify=True):
        store.drop_shards(node.key)
    return meta


def run_synthesize(node: Node, ctx: Context, progress: Optional[Progress] = None) -> dict:
    """Every shard in this process, then the merge (on Ray, shards.synthesize_on_pool spreads them instead)."""
    t0 = time.time()
    n = len(synth_inputs(node, ctx)[1])
    model = load_model(ctx.store, node.inputs["source"], ctx.data)
    ensemble = load_ensemble(ctx.store, node, ctx.data)
    ranges = shard_ranges(n, ctx.shard_size)
    for i, (a, b) in enumerate(ranges):
        m = run_shard(node, i, a, b, model, ctx, ensemble=ensemble)
        if progress is not None:
            progress(shard_metrics(m))
    return finish_synthesis(node, len(ranges), ctx, t0)


# ------------------------------------------------------------------------------------ evaluate/transfer
def run_evaluate(node: Node, ctx: Context, progress: Optional[Progress] = None) -> dict:
    """Clean, shifted-label ((y+1) mod C) and robust accuracy of one model on the sweep's test subset."""
    t0 = time.time()
    model = load_model(ctx.store, node.inputs["model"], ctx.data)
    x, y = data_store.test_set(ctx.data, ctx.seed)
    ds = data_store.load_split(ctx.data, "test")
    attacks = {a.name(): a for a in node.spec.attacks}
    gen = torch.Generator().manual_seed(seed_for(ctx.seed, node.key))
    res = evaluate(model, x, y, attacks, bounds=ds.bounds, generator=gen)
    with torch.no_grad():
        pred = torch.cat([model(x[i:i + 1000].to(device())).argmax(1).cpu() for i in range(0, len(y), 1000)])
    shifted = float((pred == (y + 1) % ds.num_classes).float().mean())
    robust = [{"attack": name, "norm": a.norm, "eps": a.eps, "steps": a.steps, "step_size": a.resolved_step_size(),
               "method": a.method, "loss": a.loss, "acc": res.robust_acc[name]} for name, a in attacks.items()]
    meta = _meta(node, t0, model=node.inputs["model"], n=res.n, clean_acc=res.clean_acc, shifted_acc=shifted,
                 robust=robust, worst_acc=res.worst_acc, worst_by_ball=res.worst_by_ball)
    flags = {"clean": res.clean_flags.to(torch.uint8).contiguous()}
    flags.update({f"robust.{k}": v.to(torch.uint8).contiguous() for k, v in res.robust_flags.items()})
    ctx.store.save(node.key, meta=meta, tensors=flags)
    return meta


def run_transfer(node: Node, ctx: Context, progress: Optional[Progress] = None) -> dict:
    """How a probe model reads a relabelled set: the target (transfer) or the original class."""
    t0 = time.time()
    model = load_model(ctx.store, node.inputs["model"], ctx.data)
    t = ctx.store.load_tensors(node.inputs["data"])
    with torch.no_grad():
        pred = torch.cat([model(t["x"][i:i + 1000].to(device())).argmax(1).cpu()
                          for i in range(0, len(t["y"]), 1000)])
    meta = _meta(node, t0, n=int(len(pred)), target_rate=float((pred == t["y"]).float().mean()),
                 original_rate=float((pred == t["orig_y"]).float().mean()))
    ctx.store.save(node.key, meta=meta)
    return meta


# -------------------------------------------------------------------------------------------- fourier
FOURIER_BATCH = 2048  # images per forward pass of a Fourier heatmap (several frequencies stacked)
FOURIER_METRICS = ("mean_error", "clean_error", "low_freq_error", "high_freq_error")


def run_fourier(node: Node, ctx: Context, progress: Optional[Progress] = None) -> dict:
    """Fourier sensitivity of one model (:func:`sweeper.science.fourier.fourier_heatmap`): its error on the
    first ``size`` images of the sweep's test subset under ``s * eps * U_{i,j}`` at every frequency, the sign
    ``s`` per image seeded by seed_for(sweep seed, key). Stores the (H, W) heatmap (centred frequencies) and
    its summaries (:func:`~sweeper.science.fourier.band_errors`) beside the clean error."""
    from sweeper.science.fourier import HIGH_BAND, LOW_BAND, band_errors, fourier_heatmap

    t0 = time.time()
    spec = node.spec
    model = load_model(ctx.store, node.inputs["model"], ctx.data)
    x, y = data_store.test_set(ctx.data, ctx.seed)
    x, y = x[:spec.size].to(device()), y[:spec.size].to(device())
    with torch.no_grad():
        clean = float(torch.cat([(model(x[i:i + FOURIER_BATCH]).argmax(1) != y[i:i + FOURIER_BATCH])
                                 for i in range(0, len(y), FOURIER_BATCH)]).float().mean())
    gen = torch.Generator().manual_seed(seed_for(ctx.seed, node.key))
    heat = fourier_heatmap(model, x, y, spec.eps, batch_size=FOURIER_BATCH, generator=gen)
    meta = _meta(node, t0, model=node.inputs["model"], n=int(len(y)), eps=spec.eps, size=spec.size,
                 shape=list(heat.shape), clean_error=clean, **band_errors(heat),
                 bands={"low": f"radius <= {LOW_BAND:.4g}", "high": f"radius > {HIGH_BAND:.4g}"})
    ctx.store.save(node.key, meta=meta, tensors={"heatmap": heat.float().contiguous()})
    return meta


def fourier_images(node: Node, ctx: Context, meta: dict) -> dict:
    """The heatmap as a picture for W&B (``fourier_heatmap``), drawn only when asked (a W&B run is open)."""
    def render() -> bytes:
        from sweeper.report.figures import fourier_figure

        heat = ctx.store.load_tensors(node.key)["heatmap"]
        return fourier_figure([(node.label, heat)], eps=meta["eps"])

    return {"fourier_heatmap": render}


def eval_metrics(meta: dict) -> dict:
    """An evaluation's final numbers under results.csv's column names (``robust_acc[<attack>]``,
    ``robust_worst[<ball>]``); W&B receives them renamed by ``tracking.wandb_name``."""
    from sweeper.report.report import attack_column, worst_column

    out = {"clean_acc": meta["clean_acc"], "shifted_acc": meta["shifted_acc"]}
    out.update({attack_column(r): r["acc"] for r in meta["robust"]})
    if meta.get("worst_acc") is not None:
        out["worst_acc"] = meta["worst_acc"]
    out.update({worst_column(b): w["acc"] for b, w in (meta.get("worst_by_ball") or {}).items()})
    return out


def eval_curve(meta: dict) -> list[dict]:
    """Robust accuracy against eps, as history rows W&B can plot with eps on the x axis: one row per eps in
    increasing order (eps 0: the clean accuracy), holding ``eps`` and, per norm with a ball of that eps,
    ``robust_at_eps[<norm>]``: the ball's worst case over its attacks (the report's robust accuracy)."""
    balls = list((meta.get("worst_by_ball") or {}).values())
    if not balls:
        return []
    by_eps: dict[float, dict] = {0.0: {w["norm"]: meta["clean_acc"] for w in balls}}
    for w in balls:
        by_eps.setdefault(float(w["eps"]), {})[w["norm"]] = w["acc"]
    return [{"eps": eps, **{f"robust_at_eps[{n}]": a for n, a in sorted(accs.items())}}
            for eps, accs in sorted(by_eps.items())]


def _synth_summary(meta: dict) -> str:
    if "pool_size" in meta:
        what = f"kept the {meta['kept']} of {meta['pool_size']} pool images the source gets wrong"
    elif "hit_rate" in meta:
        what = f"hit rate {meta['hit_rate']:.3f}"
        if "ensemble_keeps" in meta:
            what += f", ensemble keeps the true label on {meta['ensemble_keeps']:.3f}"
    else:
        what = f"mean feature distance {meta['mean_dist']:.3f}"
    return f"{meta['n']} images, {meta['shards']} shards, {what}"


# ------------------------------------------------------------------------------------------- the table
@dataclass(frozen=True)
class Kind:
    run: Callable[[Node, Context, Optional[Progress]], dict]  # computes the node into the store; returns its meta
    metrics: Callable[[dict], dict]   # meta -> the final numbers (W&B summary; a Tune trial's result)
    summary: Callable[[dict], str]    # meta -> one line for the log
    size: Callable[[Node, Context], int]  # how much progress the run reports in all, in ``unit``s
    unit: str
    engine: str                       # where run_plan_ray runs it: "pool" (synthesis actors), "tune", "driver"
    history: Callable[[dict], list] = lambda m: []  # meta -> rows logged to W&B after the run (evaluate: vs eps)
    images: Optional[Callable[[Node, Context, dict], dict]] = None  # -> {W&B name: () -> PNG bytes} (fourier)


KINDS: dict[str, Kind] = {
    "train": Kind(run_train, lambda m: {"test_acc": m["test_acc"]},
                  lambda m: f"test acc {m['test_acc']:.3f}" + (f", robust {m['history'][-1]['robust_acc']:.3f} "
                                                               "(curve subset)" if m.get("robust_curve") else ""),
                  lambda n, c: n.spec.train.epochs, "epoch", "tune"),
    "synthesize": Kind(run_synthesize, lambda m: {k: m[k] for k in ("n", "hit_rate", "mean_dist", "ensemble_keeps",
                                                                      "pool_size", "kept") if k in m},
                       _synth_summary, lambda n, c: len(synth_inputs(n, c)[1]), "img", "pool"),
    "evaluate": Kind(run_evaluate, eval_metrics,
                     lambda m: f"clean {m['clean_acc']:.3f} " + " ".join(f"{r['attack']} {r['acc']:.3f}"
                                                                        for r in m["robust"]),
                     lambda n, c: 1, "node", "tune", eval_curve),
    "transfer": Kind(run_transfer, lambda m: {"target_rate": m["target_rate"], "original_rate": m["original_rate"]},
                     lambda m: f"reads target {m['target_rate']:.3f}, original {m['original_rate']:.3f}",
                     lambda n, c: 1, "node", "driver"),
    "fourier": Kind(run_fourier, lambda m: {k: m[k] for k in FOURIER_METRICS},
                    lambda m: (f"clean error {m['clean_error']:.3f}, Fourier noise eps {m['eps']:g}: mean error "
                               f"{m['mean_error']:.3f} (low frequencies {m['low_freq_error']:.3f}, high "
                               f"{m['high_freq_error']:.3f})"),
                    lambda n, c: 1, "node", "tune", images=fourier_images),
}


def advance(event: dict) -> int:
    """How far one progress event moves its node, in its kind's unit (an epoch; a shard's images)."""
    return int(event.get("shard/n", 1))


def execute(node: Node, ctx: Context, wb, progress: Optional[Progress] = None, run=None) -> dict:
    """Run one node: ``run`` (default: its kind's; the actor pool passes its own) with every progress event
    logged to ``wb`` (a tracking.NodeRun; epoch rows at their epoch) and passed on to ``progress``; the kind's
    history rows (evaluate: accuracy against eps), images (fourier: the heatmap) and final numbers go to ``wb``.
    Returns the node's meta."""
    kind = KINDS[node.kind]

    def on(event: dict) -> None:
        wb.log(event, step=event.get("epoch"))
        if progress is not None:
            progress(event)

    meta = (run or kind.run)(node, ctx, on)
    for row in kind.history(meta):
        wb.log(row)
    for name, render in (kind.images(node, ctx, meta) if kind.images else {}).items():
        wb.image(name, render)
    wb.summary(kind.metrics(meta))
    return meta
