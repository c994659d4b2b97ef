"""Per-epoch training checkpoints are checksummed: a damaged newest one is reported, removed, and training
resumes from the one before it, ending with the undisturbed model (on local disk and on the S3 server)."""
import pathlib

import pytest
import torch

from sweeper.run import kinds
from sweeper.run.kinds import Context
from sweeper.sweep.plan import build_plan
from sweeper.sweep.spec import load
from sweeper.store.store import Store

TOY = pathlib.Path(__file__).resolve().parents[1] / "search_spaces" / "toy.yaml"


class Killed(Exception):
    pass


def test_damaged_checkpoint_falls_back_to_the_previous_epoch(store_uri, tmp_path, capsys):
    plan = build_plan(load(TOY))
    std = next(n for n in plan.nodes.values() if n.stage == "std")
    ref = Store(str(tmp_path / "ref"))
    kinds.run_train(std, Context.of(plan, ref))

    store = Store(store_uri)
    ctx = Context.of(plan, store)

    def die_after_epoch_4(row):
        if row["epoch"] == 4:
            raise Killed()

    with pytest.raises(Killed):
        kinds.run_train(std, ctx, die_after_epoch_4)
    names = sorted(i.base_name for i in store.listdir(f"checkpoints/{std.key}"))
    assert names == ["00003.pt", "00004.pt"]  # this epoch's and the one before
    newest = f"checkpoints/{std.key}/00004.pt"
    raw = bytearray(store.read_bytes(newest))
    raw[len(raw) // 2] ^= 0xFF
    store.write_bytes(newest, bytes(raw))

    epochs = []
    meta = kinds.run_train(std, ctx, lambda row: epochs.append(row["epoch"]))
    err = capsys.readouterr().err
    assert f"checkpoint {newest} is damaged" in err and "resuming from the one before it" in err
    assert epochs == list(range(4, 11))  # epoch 4 again (its checkpoint was lost), then the rest
    assert [r["epoch"] for r in meta["history"]] == list(range(1, 11))
    got, want = store.load_tensors(std.key), ref.load_tensors(std.key)
    assert all(torch.equal(got[k], want[k]) for k in want)
    assert store.listdir(f"checkpoints/{std.key}") == []  # removed once the node is saved


def test_changing_the_shard_size_never_mixes_two_partitions(tmp_path):
    """Shards of a node resumed with another run.shard_size belong to another partition: the merged set has
    every image exactly once, in order, and the old partition's shards are removed with the rest."""
    plan = build_plan(load(TOY))
    std = next(n for n in plan.nodes.values() if n.stage == "std")
    synth = next(n for n in plan.nodes.values() if n.kind == "synthesize")
    store = Store(str(tmp_path / "store"))
    ctx = Context.of(plan, store)
    kinds.run_train(std, ctx)
    model = kinds.load_model(store, std.key, plan.sweep.data)
    shards_of_1000 = Context(plan.sweep.data, 0, store, shard_size=1000)
    kinds.run_shard(synth, 0, 0, 1000, model, shards_of_1000)  # an interrupted run with shards of 1,000
    kinds.run_shard(synth, 2, 2000, 3000, model, shards_of_1000)
    meta = kinds.run_synthesize(synth, Context(plan.sweep.data, 0, store, shard_size=700))  # resumed: shards of 700
    _, _, index = kinds.synth_inputs(synth, ctx)
    got = store.load_tensors(synth.key)
    assert meta["shard_size"] == 700 and meta["shards"] == -(-len(index) // 700)
    assert torch.equal(got["index"], index)  # every image once, in order
    assert store.listdir(f"shards/{synth.key}") == []
