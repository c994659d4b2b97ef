"""The streaming scheduler without Ray: a node is handed out as soon as its inputs are done (no wave barrier),
leases are taken in batches and only for nodes about to start, a failure blocks only its descendants, and one
store look per node at the start is all the store hears from it (counted)."""
import pathlib
import threading

import pytest

from sweeper.store.leases import Leases
from sweeper.sweep.plan import build_plan
from sweeper.run.scheduling import Scheduler
from sweeper.sweep.spec import load
from sweeper.store.store import Store

ROOT = pathlib.Path(__file__).resolve().parents[1]
PLAN = build_plan(load(ROOT / "search_spaces" / "toy.yaml"))  # std, robust -> d_det -> train_d_det, probe, evals


def _sched(tmp_path, **kw):
    store = Store(str(tmp_path / "store"))
    store.claim()
    leases = Leases(store, settle=0.01, poll=0.05)
    return Scheduler(PLAN, store, leases, lambda m: None, **kw), store, leases


def _labels(nodes):
    return sorted(n.label for n in nodes)


def _by(stage):
    return next(n for n in PLAN.nodes.values() if n.stage == stage)


def test_a_node_is_ready_when_its_own_inputs_are_done_not_its_wave(tmp_path):
    sched, _, leases = _sched(tmp_path)
    first = sched.take("tune", 8)
    assert _labels(first) == ["robust", "std"]  # the only nodes without inputs
    assert set(leases.held) == {n.key for n in first}
    assert sched.take("pool", 1) == [] and sched.take("tune", 8) == []
    sched.finish(_by("std").key)  # robust still runs: in wave order nothing of depth 1 would start
    ready = _labels(sched.take("pool", 1) + sched.take("tune", 8))
    assert "d_det" in ready and "robust" not in ready
    assert all(PLAN.nodes[i].stage == "std" for n in sched.take("tune", 8) for i in n.inputs.values())
    assert _by("std").key not in leases.held  # released when it ended


def test_barrier_holds_a_node_until_every_shallower_node_is_done(tmp_path):
    sched, _, _ = _sched(tmp_path, barrier=True)
    assert _labels(sched.take("tune", 8)) == ["robust", "std"]
    sched.finish(_by("std").key)
    assert sched.take("pool", 1) == []  # robust (depth 0) is still running
    sched.finish(_by("robust").key)
    assert _labels(sched.take("pool", 1)) == ["d_det"]


def test_a_failure_blocks_its_descendants_only_and_is_raised_at_the_end(tmp_path):
    sched, _, _ = _sched(tmp_path)
    sched.take("tune", 8)
    sched.finish(_by("robust").key)
    boom = RuntimeError("boom")
    sched.finish(_by("std").key, boom)
    blocked = {PLAN.nodes[k].stage for k in sched.blocked}
    assert "d_det" in blocked and "train_d_det" in blocked and "robust" not in blocked
    # the evaluation of robust alone does not need std: it still runs
    left = sched.take("tune", 8)
    assert left and all(_by("std").key not in n.inputs.values() for n in left)
    for n in left:
        sched.finish(n.key)
    assert sched.over() and sched.finished()
    with pytest.raises(RuntimeError, match="boom"):
        sched.raise_failures()


def test_ready_nodes_come_in_order_of_the_work_that_waits_on_them(tmp_path):
    sched, _, _ = _sched(tmp_path)
    assert sched.height[_by("std").key] > sched.height[_by("eval").key] == 1
    sched.take("tune", 8)
    for stage in ("std", "robust"):
        sched.finish(_by(stage).key)
    got = sched.take("tune", 1)  # the evaluations of std/robust (leaves) wait behind nothing else here
    assert got and got[0].kind == "evaluate"


def test_tune_is_held_back_while_higher_synthesis_waits_for_room(tmp_path, monkeypatch):
    import sweeper.run.scheduling as scheduling

    sched, _, _ = _sched(tmp_path)
    sched.take("tune", 8)
    for stage in ("std", "robust"):
        sched.finish(_by(stage).key)
    sched.hold_tune_for(sched.height[_by("d_det").key])  # d_det's shards wait for an actor
    assert not sched.has_ready("tune") and sched.take("tune", 8) == []
    sched.hold_tune_for(0)
    assert sched.has_ready("tune") and sched.take("tune", 1)
    sched.hold_tune_for(sched.height[_by("d_det").key])
    monkeypatch.setattr(scheduling, "HOLD_MAX", 0.0)  # a pool that never gets room does not hold Tune forever
    assert sched.take("tune", 1)


def test_leases_are_taken_in_batches_for_nodes_about_to_start(tmp_path):
    sched, _, leases = _sched(tmp_path, batch=1)
    got = sched.take("tune", 1)
    assert len(got) == 1 and len(leases.held) == 1  # the other ready node stays free for other drivers
    assert len(sched.take("tune", 1)) == 1 and len(leases.held) == 2


def test_a_node_held_by_another_driver_is_waited_for_and_its_dependents_follow(tmp_path):
    sched, store, _ = _sched(tmp_path)
    other = Leases(store, settle=0.01)
    std = _by("std")
    assert other.acquire([std.key]) == [std.key]
    assert _labels(sched.take("tune", 8)) == ["robust"]
    assert std.key in sched.others
    from sweeper.run import kinds

    kinds.execute(std, kinds.Context.of(PLAN, store), _NoRun())  # the other driver computes it
    other.release(std.key)
    sched.wait(0.1)
    got = _labels(sched.take("pool", 1) + sched.take("tune", 8))
    assert "d_det" in got and sched.by_others == 1


def test_has_ready_alone_notices_a_node_another_driver_finished(tmp_path):
    """The Tune loop only asks has_ready() once the synthesis feeder is gone: that must look at other drivers'
    nodes too, or a run whose last trials wait on another driver never ends."""
    sched, store, _ = _sched(tmp_path)
    other = Leases(store, settle=0.01)
    std = _by("std")
    other.acquire([std.key])
    sched.take("tune", 8)
    from sweeper.run import kinds

    kinds.execute(std, kinds.Context.of(PLAN, store), _NoRun())
    import time

    time.sleep(0.1)  # past the poll interval
    assert sched.has_ready("pool")  # d_det needs only std
    assert sched.by_others == 1


def test_two_threads_looking_at_another_drivers_node_queue_it_once(tmp_path):
    """The feeder and Tune's loop may look at a node another driver holds at the same moment (its store read
    is slow on S3): it must come back into the ready queue once, or this driver would run it twice."""
    import time

    sched, store, _ = _sched(tmp_path)
    std = _by("std")
    Leases(store, settle=0.01).acquire([std.key])  # another driver holds std
    sched.take("tune", 8)
    with sched._lock:
        assert std.key in sched.others
        sched.others[std.key] = 0.0  # due now
    real = store.is_done
    store.is_done = lambda k, **kw: time.sleep(0.2) or real(k, **kw)
    threads = [threading.Thread(target=sched._look_at_others) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [k for _, _, k in sched._ready["tune"]].count(std.key) == 1


def test_two_store_looks_per_node_at_most(tmp_path):
    store = Store(str(tmp_path / "store"))
    store.claim()
    calls = []
    real = store.is_done
    store.is_done = lambda k, **kw: calls.append(k) or real(k, **kw)
    sched = Scheduler(PLAN, store, Leases(store, settle=0.01), lambda m: None)
    assert sorted(calls) == sorted(PLAN.nodes)
    calls.clear()
    while not sched.over():
        for engine in ("tune", "pool", "driver"):
            for n in sched.take(engine, 8):
                sched.finish(n.key)
    assert sorted(calls) == sorted(PLAN.nodes)  # once more each, after its lease was taken


def test_a_node_finished_elsewhere_just_before_our_lease_is_not_run_again(tmp_path):
    """Another driver computed std and released its lease without this driver ever seeing the lease: the
    check after taking the lease finds it done, so it is not handed out (a double run seen with two drivers)."""
    sched, store, leases = _sched(tmp_path)
    std = _by("std")
    from sweeper.run import kinds

    kinds.execute(std, kinds.Context.of(PLAN, store), _NoRun())
    got = sched.take("tune", 8)
    assert std.key not in {n.key for n in got} and sched.by_others == 1
    assert std.key not in leases.held


def test_take_is_safe_from_several_threads(tmp_path):
    sched, _, _ = _sched(tmp_path)
    seen, lock = [], threading.Lock()

    def worker(engine):
        while not sched.over():
            for n in sched.take(engine, 1):
                with lock:
                    seen.append(n.key)
                sched.finish(n.key)
            sched.wait(0.01)

    threads = [threading.Thread(target=worker, args=(e,)) for e in ("tune", "tune", "pool", "driver")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(seen) == sorted(PLAN.nodes)  # every node once


class _NoRun:
    error = None

    def log(self, *a, **k):
        pass

    def summary(self, *a, **k):
        pass


def test_a_searcher_held_back_for_synthesis_stops_suggesting_so_tune_frees_its_cached_actor(tmp_path):
    """While a trial runs, a searcher with nothing to suggest returns None: Tune then keeps an idle trial actor
    cached (with its CPU) for the next trial. When the nodes are held back for synthesis waiting for room, it
    returns FINISHED instead, so that Tune frees that actor and the pool gets the room."""
    from ray.tune.search import Searcher

    from sweeper.run.tuning import NodeSearcher

    sched, _, _ = _sched(tmp_path)
    searcher = NodeSearcher(sched, {k: PLAN.describe(n) for k, n in PLAN.nodes.items()})
    first, second = searcher.suggest("t1"), searcher.suggest("t2")  # std and robust, both training
    assert {first["key"], second["key"]} == {_by("std").key, _by("robust").key}
    assert searcher.suggest("t3") is None  # nothing ready while they train: Tune asks again later
    sched.finish(_by("std").key)
    searcher.on_trial_complete("t1" if first["key"] == _by("std").key else "t2", {"done": 1})
    sched.hold_tune_for(sched.height[_by("d_det").key])  # d_det's shards wait for an actor; eval(std) is held
    assert searcher.suggest("t3") is Searcher.FINISHED


def test_tunes_failed_state_upload_is_one_warning_line_not_a_traceback(capsys):
    """Tune's background upload of its experiment state can race its own save (seen on Ctrl-C): the error it
    logs with a traceback reaches the user as one warning line naming the cause; other records pass."""
    import logging

    from sweeper.run.tuning import _TrialFailureLines

    lines: list[str] = []
    logger = logging.getLogger("ray.tune.execution.experiment_state")
    handler = logging.StreamHandler()
    logger.addHandler(handler)
    try:
        with _TrialFailureLines(lines.append):
            try:
                raise FileNotFoundError("[Errno 2] Failed to open local file '.tmp-searcher-state.pkl'")
            except FileNotFoundError:
                logger.error("Saving experiment state to storage at '/s/tune' failed with exception: ", exc_info=True)
            logger.warning("Saving the experiment state took ~31.00 seconds")  # not an error: passes through
        logger.error("Saving experiment state to storage at '/s/tune' failed", exc_info=(
            FileNotFoundError, FileNotFoundError("after the run"), None))  # outside a run: Tune's own output
    finally:
        logger.removeHandler(handler)
    err = capsys.readouterr().err
    assert len(lines) == 1 and "could not upload its experiment state: FileNotFoundError" in lines[0], lines
    assert "took ~31.00 seconds" in err and err.count("Traceback") == 0 and "after the run" in err
