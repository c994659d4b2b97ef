"""``sweeper migrate-keys``: carry a store's finished nodes over from the old node keys (sweeper 0.1.0 hashed
``data.root``, the place the data was read from) to today's (which hash the data's content,
:mod:`sweeper.sweep.data_id`), so that nothing is computed again.

The old keys of a sweep are computed as the old code did (:func:`legacy_plan`), for the ``data.root`` the store's
nodes were planned with (``old_root``; default: the sweep file's, after ``--set``). Both plans have the same nodes
in the same order (the data part is common to every key), so node i of one is node i of the other. For each
node whose old key is done and new key is not, :meth:`Store.copy_node` copies the old files into a fresh attempt
folder of the new key and writes the manifest last (the store's commit protocol: nothing is renamed, so it works
on S3 as on a local folder; a crash leaves an attempt folder that no manifest names, and running again finishes).
The copy's meta names its new key and inputs; its manifest says ``migrated_from``. Running it again copies
nothing. The old entries stay unless ``remove_old`` (another sweep file in the same store may share them).

Only finished nodes move: an unfinished node's partial work (synthesis shards, epoch checkpoints) was seeded from
its old key, so it is not carried over and that node is computed afresh. No Ray, no torch.
"""
from __future__ import annotations

from typing import Callable, Optional

from sweeper.sweep.data_id import legacy_identity
from sweeper.sweep.plan import Node, Plan, _build_plan, gc_paused, node_key
from sweeper.sweep.schema import Sweep
from sweeper.store.store import Store

FILE_ROOT = object()  # old_root meaning "the data.root of the sweep file (after --set)"


def legacy_data(sweep: Sweep, root=FILE_ROOT) -> dict:
    """What the old keys hashed about the data: the ``data:`` section with ``root`` as planned then (``root``;
    default the file's), and the sweep seed."""
    data = sweep.data if root is FILE_ROOT else sweep.data.model_copy(update={"root": root})
    return {**legacy_identity(data), "sweep_seed": sweep.seed}


def legacy_plan(sweep: Sweep, root=FILE_ROOT) -> Plan:
    """The plan of ``sweep`` with the old keys (see :func:`legacy_data`)."""
    with gc_paused():
        return _build_plan(sweep, legacy_data(sweep, root))


def key_pairs(plan: Plan, old: Plan) -> list[tuple[Node, Node]]:
    """(old node, new node) for every node: the i-th of each plan (same structure, same order)."""
    pairs = list(zip(old.nodes.values(), plan.nodes.values()))
    if len(old.nodes) != len(plan.nodes) or any(o.label != n.label for o, n in pairs):
        raise AssertionError("the old and the new plan differ in structure")  # the data is common to all keys
    return pairs


def _rekeyed(meta: dict, node: Node, mapping: dict[str, str]) -> dict:
    """The old meta, naming the new keys: its own (``key``), its inputs', and evaluate's ``model``."""
    out = {**meta, "key": node.key, "inputs": dict(node.inputs)}
    if isinstance(out.get("model"), str):
        out["model"] = mapping.get(out["model"], out["model"])
    return out


def migrate(plan: Plan, store: Store, *, old_root=FILE_ROOT, remove_old: bool = False,
            log: Callable[[str], None] = print) -> dict:
    """Copy every node done under its old key to its new key (see the module). Returns counts: ``copied``,
    ``present`` (done under the new key already: kept), ``absent`` (done under neither: the next run computes
    it), ``removed`` (old entries deleted, with ``remove_old``, once their copy is committed)."""
    plan.require_data()  # provisional keys must never be written to
    pairs = key_pairs(plan, legacy_plan(plan.sweep, old_root))
    mapping = {o.key: n.key for o, n in pairs}
    new_keys = set(mapping.values())
    counts = {"copied": 0, "present": 0, "absent": 0, "removed": 0}
    for old, new in pairs:
        if old.key == new.key:
            continue
        if store.is_done(new.key):
            counts["present"] += 1
        elif (meta := store.done_meta(old.key)) is None:
            counts["absent"] += 1
            continue
        else:
            store.claim()
            store.copy_node(old.key, new.key, _rekeyed(meta, new, mapping), migrated_from=old.key)
            counts["copied"] += 1
            log(f"  {new.label}: {old.key} -> {new.key}")
        if remove_old and old.key not in new_keys and store.exists(f"nodes/{old.key}") and store.is_done(new.key):
            store.delete(f"nodes/{old.key}")  # only once its copy is committed; never a key of this plan
            counts["removed"] += 1
    log(f"sweep {plan.sweep.name}: {counts['copied']} node(s) copied to their new keys, {counts['present']} had "
        f"them already, {counts['absent']} done under neither key (the next run computes them); "
        + (f"{counts['removed']} old entries removed" if remove_old else "old entries kept") + f"; store {store.uri}")
    return counts


def legacy_hint(plan: Plan, store: Store) -> Optional[str]:
    """A one-line note when the plan's first node is not done but its old key is (a store written before keys
    hashed the data's content, with the same data.root), else None. Costs one or two manifest reads."""
    if plan.data_error or not plan.nodes:
        return None
    first = next(iter(plan.nodes.values()))  # no inputs: the first node of a topological order
    old = node_key(first.kind, first.spec, {}, legacy_data(plan.sweep))
    if old == first.key or store.is_done(first.key) or not store.is_done(old):
        return None
    return (f"this store holds this sweep's nodes under the old keys (which hashed data.root); run `sweeper "
            f"migrate-keys` with the same file, --store and --set to reuse them instead of computing them again")
