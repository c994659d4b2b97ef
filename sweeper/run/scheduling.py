"""Which of a plan's nodes this driver may start now: streaming over the DAG, no wave barrier (no Ray here).

A node is *ready* when every input is done; the engines ask for ready nodes of their kind (``take``) and say
when one ends (``finish``). Readiness is kept incrementally (a count of unfinished inputs per node), so the
driver does one ``is_done`` per node at the start, one more once it holds the node's lease (another driver may
have finished it just before), and otherwise works from what it has seen end: per-node store requests stay
flat however large the sweep. Leases (leases.Leases) are taken in batches, one settle delay per
batch, only for nodes about to start (a few more than the engine can run at once), so other drivers on the same
store still find work. A node another driver holds is looked at again every ``leases.poll`` seconds: done
(its dependents become ready) or its lease expired (this driver takes it).

A node that fails blocks its descendants; everything else goes on, and the run raises the first failure at the
end (``errors()``). ``fatal`` (the store itself failing, Ctrl-C) stops handing out work at once.
"""
from __future__ import annotations

import heapq
import sys
import threading
import time
from collections import deque
from typing import Callable, Optional

from sweeper.run.kinds import KINDS
from sweeper.store.leases import Leases
from sweeper.sweep.plan import Node, Plan
from sweeper.store.store import Store

ENGINES = ("pool", "tune", "driver")
HOLD_MAX = 120.0  # seconds Tune may be held back at most, in one stretch, for synthesis shards waiting for room


class Scheduler:
    """Thread-safe: the Tune searcher (Tune's loop), the synthesis feeder and node threads all call it."""

    def __init__(self, plan: Plan, store: Store, leases: Leases, log: Callable[[str], None], *,
                 barrier: bool = False, batch: int = 16):
        self.plan, self.store, self.leases, self.log = plan, store, leases, log
        self.batch = max(1, int(batch))
        self.barrier = barrier  # wave order (the benchmark's baseline): a node waits for every shallower node
        self.engine = {k: KINDS[n.kind].engine for k, n in plan.nodes.items()}
        self.children: dict[str, list[str]] = {k: [] for k in plan.nodes}
        for k, n in plan.nodes.items():
            for i in set(n.inputs.values()):
                self.children[i].append(k)
        self.done = {k for k in plan.nodes if store.is_done(k)}
        self.done_at_start = len(self.done)
        self.todo = [k for k in plan.nodes if k not in self.done]  # plan order: a node after its inputs
        self.missing = {k: sum(1 for i in set(plan.nodes[k].inputs.values()) if i not in self.done)
                        for k in self.todo}
        self.open = {e: 0 for e in ENGINES}  # todo nodes per engine neither done, failed nor blocked
        for k in self.todo:
            self.open[self.engine[k]] += 1
        self.depth = {n.key: d for d, wave in enumerate(plan.waves()) for n in wave} if barrier else {}
        self.open_below = [0] * (max(self.depth.values(), default=0) + 2)
        for k in self.todo:
            if barrier:
                self.open_below[self.depth[k]] += 1
        # priority: the longest chain of nodes still to come after a node first (its height), then plan order,
        # so that work others wait for starts before leaves such as evaluations
        self.order = {k: i for i, k in enumerate(plan.nodes)}
        self.height = {k: 1 for k in plan.nodes}
        for k in reversed(list(plan.nodes)):
            for c in self.children[k]:
                self.height[k] = max(self.height[k], 1 + self.height[c])
        self._ready: dict[str, list] = {e: [] for e in ENGINES}  # heaps of ready nodes without a lease yet
        for k in self.todo:
            if self.missing[k] == 0:
                self._push(k)
        self._hold = 0          # height of the synthesis work waiting for room (see hold_tune_for)
        self._held_since = None
        self.claimed: dict[str, deque] = {e: deque() for e in ENGINES}  # leased, not started
        self.running: set[str] = set()
        self.others: dict[str, float] = {}  # leased by another driver -> when to look again
        self.failed: dict[str, BaseException] = {}
        self.blocked: set[str] = set()
        self.ran = 0
        self.by_others = 0
        self.fatal: Optional[BaseException] = None
        self.started: dict[str, float] = {}
        self.ended: dict[str, float] = {}
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._acquiring = threading.Lock()  # one lease batch at a time (each sleeps a settle delay)

    # ------------------------------------------------------------------------------------------ queries
    def todo_count(self, engine: Optional[str] = None) -> int:
        return sum(1 for k in self.todo if engine is None or self.engine[k] == engine)

    def _open(self, k: str) -> bool:
        return k not in self.done and k not in self.failed and k not in self.blocked

    def over(self, engine: Optional[str] = None) -> bool:
        """Nothing more of ``engine`` (or of any engine) can start or is running here: every such node is done,
        failed or blocked by a failure; or the run stops (``fatal``)."""
        with self._lock:
            if self.fatal is not None:
                return True
            return (sum(self.open.values()) if engine is None else self.open[engine]) == 0

    def finished(self) -> bool:
        with self._lock:
            return not self.running and (self.fatal is not None or self.over())

    def wait(self, timeout: float) -> None:
        """Until something ends (or ``timeout``)."""
        with self._changed:
            self._changed.wait(timeout)

    # ------------------------------------------------------------------------------------------ taking
    def _gate(self, k: str) -> bool:
        if not self.barrier:
            return True
        d = self.depth[k]
        return all(n == 0 for n in self.open_below[:d])

    def take(self, engine: str, n: int = 1) -> list[Node]:
        """Up to ``n`` ready nodes of ``engine`` whose leases this driver now holds, marked running."""
        self._claim(engine, want=n)
        out = []
        with self._lock:
            q, held = self.claimed[engine], []
            while q and len(out) < n and self.fatal is None:
                k = q.popleft()
                if self._held(engine, k):
                    held.append(k)  # stays claimed; a higher node behind it may start
                    continue
                if not self._open(k):
                    self.leases.release(k)
                    continue
                self.running.add(k)
                self.started[k] = time.time()
                out.append(self.plan.nodes[k])
            q.extendleft(reversed(held))
        return out

    def prefetch(self) -> None:
        """Take the leases of a first batch of ready nodes of every engine (before the engines start)."""
        for engine in ENGINES:
            self._claim(engine, want=1)

    def _push(self, k: str) -> None:
        heapq.heappush(self._ready[self.engine[k]], (-self.height[k], self.order[k], k))

    def hold_tune_for(self, height: int) -> None:
        """Synthesis of this height (0: none) waits for room: Tune starts no trial of a smaller height meanwhile,
        so the CPUs/GPUs that trials give back go to the pool first (work that others wait for comes first).
        A hold lasts at most HOLD_MAX seconds in one stretch (a pool that can never be placed holds nothing)."""
        with self._lock:
            if height and not self._hold:
                self._held_since = time.time()
            self._hold = height
            if not height:
                self._held_since = None
            self._changed.notify_all()

    def tune_held(self) -> bool:
        """Whether a hold is on (hold_tune_for), within its HOLD_MAX."""
        with self._lock:
            return bool(self._hold) and time.time() - self._held_since < HOLD_MAX

    def _held(self, engine: str, k: str) -> bool:
        if engine != "tune" or not self._hold or self.height[k] >= self._hold:
            return False
        return time.time() - self._held_since < HOLD_MAX

    def _claim(self, engine: str, want: int) -> None:
        """Take leases for a batch of ready nodes when fewer than ``want`` are claimed; look again at nodes
        another driver holds once their poll time has come."""
        self._look_at_others()
        with self._lock:
            if len(self.claimed[engine]) >= want or self.fatal is not None:
                return
        if not self._acquiring.acquire(blocking=False):
            return  # another thread is taking a batch (it sleeps a settle delay): no second batch meanwhile
        try:
            with self._lock:
                q, batch = self._ready[engine], []
                skipped = []
                while q and len(batch) < max(self.batch, want):
                    k = heapq.heappop(q)[2]
                    if not self._open(k) or k in self.others or k in self.running or k in self.claimed[engine]:
                        continue
                    if not self._gate(k):
                        skipped.append(k)
                        continue
                    batch.append(k)
                for k in skipped:
                    self._push(k)
            if not batch:
                return
            got = set(self.leases.acquire(batch))
            # another driver may have computed a node and released it between our look and our lease
            finished = {k for k in got if self.store.is_done(k)}
            for k in finished:
                self.leases.release(k)
            with self._lock:
                for k in batch:
                    if k in finished:
                        self.others.pop(k, None)
                        self.by_others += 1
                        self.log(f"  {self.plan.nodes[k].kind} {self.plan.nodes[k].label}: done by another driver")
                        self._mark_done(k)
                    elif k in got:
                        self.claimed[engine].append(k)
                    else:
                        first = k not in self.others
                        self.others[k] = time.time() + self.leases.poll
                        if first:
                            self.log(f"  {self.plan.nodes[k].kind} {self.plan.nodes[k].label}: leased by another "
                                     f"driver ({self.leases.holder(k)}); waiting for it")
        finally:
            self._acquiring.release()

    def _look_at_others(self) -> None:
        now = time.time()
        with self._lock:
            due = [k for k, t in self.others.items() if t <= now]
        for k in due:
            done = self.store.is_done(k)
            with self._lock:
                if self.others.pop(k, None) is None:
                    continue  # another thread looked at it meanwhile
                if done:
                    self.by_others += 1
                    self.log(f"  {self.plan.nodes[k].kind} {self.plan.nodes[k].label}: done by another driver")
                    self._mark_done(k)
                else:  # try its lease again in the next batch (it may have expired)
                    self._push(k)

    def has_ready(self, engine: str) -> bool:
        """A node of ``engine`` could be taken now (claimed, or ready and not held elsewhere). Looks again at the
        nodes other drivers hold whose time has come (done? lease expired?)."""
        self._look_at_others()
        with self._lock:
            if self.fatal is not None:
                return False
            if any(self._open(k) and not self._held(engine, k) for k in self.claimed[engine]):
                return True
            return any(self._open(k) and k not in self.others and self._gate(k) and not self._held(engine, k)
                       for _, _, k in self._ready[engine])

    def _close(self, k: str) -> None:
        """``k`` leaves the open set (done, failed or blocked); called once per node of the todo list."""
        if k in self.missing:
            self.open[self.engine[k]] -= 1
            if self.barrier:
                self.open_below[self.depth[k]] -= 1

    def _mark_done(self, k: str) -> None:
        if k in self.done:
            return
        self.done.add(k)
        self._close(k)
        for c in self.children[k]:
            if c in self.missing:
                self.missing[c] -= 1
                if self.missing[c] == 0 and self._open(c):
                    self._push(c)
        self._changed.notify_all()

    def finish(self, key: str, error: Optional[BaseException] = None, *, fatal: bool = False,
               found_done: bool = False) -> None:
        """``key`` ended here: done (``error`` None), failed (its descendants are blocked), or failed so that
        the whole run must stop (``fatal``: the store is unusable, or the run was interrupted)."""
        with self._lock:
            self.running.discard(key)
            self.ended[key] = time.time()
            if error is None:
                if found_done:  # the trial found it done (by another driver) and computed nothing
                    self.by_others += 1
                else:
                    self.ran += 1
                self._mark_done(key)
            elif key not in self.failed:
                if self._open(key):
                    self._close(key)
                self.failed[key] = error
                if fatal and self.fatal is None:
                    self.fatal = error
                stack = list(self.children[key])
                while stack:
                    c = stack.pop()
                    if self._open(c):
                        self._close(c)
                        self.blocked.add(c)
                        stack.extend(self.children[c])
                self._changed.notify_all()
        self.leases.release(key)

    def stop(self, error: BaseException) -> None:
        """Hand out nothing more (Ctrl-C, a fatal error elsewhere)."""
        with self._lock:
            if self.fatal is None:
                self.fatal = error
            self._changed.notify_all()

    def release_unstarted(self) -> None:
        with self._lock:
            keys = [k for q in self.claimed.values() for k in q]
            for q in self.claimed.values():
                q.clear()
        for k in keys:
            self.leases.release(k)

    def raise_failures(self, trials_failed: Optional[BaseException] = None) -> None:
        """After the run: the fatal error if there was one; else the first failure of a node outside Tune (a
        synthesis or probe, with its own message and exit code), else ``trials_failed`` (Tune's summary of its
        failed trials). Every other failure is printed on stderr first."""
        if self.fatal is not None:
            raise self.fatal
        own = [e for k, e in self.failed.items() if self.engine[k] != "tune"]
        tune = [e for k, e in self.failed.items() if self.engine[k] == "tune"]
        errors = own + ([trials_failed] if trials_failed is not None else tune)
        if not errors:
            return
        for e in errors[1:]:
            print(f"sweeper: error: {e}", file=sys.stderr, flush=True)
        if self.blocked:
            self.log(f"sweeper: {len(self.blocked)} node(s) that need a failed node were not run")
        raise errors[0]
