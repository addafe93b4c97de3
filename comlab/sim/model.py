"""The pipeline as a discrete-event model (SimPy): client, server, workers, machines' cores.

Each process of the real system is a SimPy process here, doing what its code does, in order:

* **client** (one thread): drains result messages (each costs its receive CPU; t_received is
  stamped as it takes one), then sends batches while the server's pipe is below its high-water
  mark (each costs send CPU; t_sent is stamped before it).
* **server** (one thread): its pump, as in comlab.system.server: up to 64 worker messages, then
  up to 64 batches while the ledger is not full; intake CPU per batch (t_server_in, then
  t_enqueued), CPU per WORK it sends and per DONE it reads. The ledger is the server's own
  (comlab.system.ledger.Ledger) with the server's own dispatch design (comlab.system.dispatch:
  ``broker``, ``broker:K``: a design whose ``simulated_as`` is ``ledger``); one simulated as
  ``shared-queue`` (``queue``) is the shared queue's rule around the same ledger (local workers
  take from a FIFO behind one lock, remote workers are brokered without prefetch).
* **worker** (a main thread and its task threads): takes every WORK waiting, runs its batches
  in order and sends DONE once at most one is left (comlab.system.worker.Worker.serve); it runs a
  batch as the strategy's counterpart (``Strategy.simulated_as``: ``sequential``, ``threads``,
  ``one-core``); a batch on threads (thread-per-task) costs the main thread one hand-off per
  task (CPU), each thread wakes (latency), sleeps its wait plus an overshoot drawn from the
  calibration, ends (CPU per task), then the main thread wakes and packs the RESULTS (CPU).
* **machines**: each has ``cpus`` cores (a SimPy Resource); every CPU cost holds one core, in
  slices of at most ``SLICE_S`` so that short costs of other processes interleave with long
  ones, as a time-sharing kernel lets them. Latencies (hops, wake-ups, sleeps) hold no core.

Messages between processes take one calibrated hop (plus ``latency_s`` between machines). A
batch is a handful of events, never one process per task: per-task stamps are numpy arrays
computed from the batch's events (starts spread by the hand-offs, finishes by the ends).
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import pandas as pd
import simpy

from ..system import dispatch as dispatch_mod
from ..system import strategies
from ..system.ledger import Ledger
from . import workload
from .calibrate import Calibration

SLICE_S = 100e-6   # longest CPU slice before a core is offered to others
HWM = 2000         # batches between client and server: PUSH sndhwm + PULL rcvhwm (1000 each)
PUMP = 64          # messages of each kind per pump round (comlab.system.server)


class Work(NamedTuple):
    """A batch as the ledger sees it (the fields it reads: its cost and task count); the
    model's own, so that a change of the wire's WORK message does not reach it."""
    run: int
    batch_id: int
    strategy: str
    attempt: int
    waits: list
    cost_s: float = 0.0
    n: int = 0


@dataclass(frozen=True)
class Config:
    """One configuration to simulate.

    ``hosts``: worker hosts besides the server's machine (0: every worker is the server's own,
    as in ``comlab run``); ``workers`` are spread evenly over them. ``one_machine``: every host
    shares one machine's cores (network namespaces); default True when hosts is 0. ``cpus``:
    cores per machine (default: the calibration's). ``latency_s``: added to each hop between two
    machines (a real network; 0: the calibrated loopback hop only). ``tasks``: how many
    (default: the calibration's); waits cycle through the calibration's.

    ``rate`` (tasks/s) makes the client open-loop: it sends each batch when ``arrivals`` (a
    comlab.arrivals spec: constant, poisson, bursty:ON,OFF, ramp:..., step:..., trace:FILE)
    says it is due, and latency counts from then (``t_intended``); None: closed loop, as fast
    as the pipe takes. ``wait``: a comlab.distributions spec (exponential, lognormal[:SIGMA],
    pareto[:ALPHA], empirical:FILE, ...) to draw the waits from, mean ``wait_mean_s`` (default
    the calibration's mean wait); None: the calibration's waits. Both are drawn from the run's
    seed (comlab.sim.workload); the schedule from ``arrivals_seed`` instead when set (a
    measured run's: the same schedule).
    """
    batch_size: int
    workers: int
    hosts: int = 0
    strategy: str = strategies.DEFAULT
    dispatch: str = dispatch_mod.DEFAULT
    tasks: int | None = None
    cpus: int | None = None
    one_machine: bool | None = None
    latency_s: float = 0.0
    client_with_server: bool | None = None
    rate: float | None = None
    arrivals: str = "constant"
    wait: str | None = None
    wait_mean_s: float | None = None
    arrivals_seed: int | None = None

    def check(self) -> Config:
        if self.batch_size < 1 or self.workers < 1:
            raise ValueError(f"batch size and workers must be >= 1, not {self.batch_size}, "
                             f"{self.workers}")
        if self.hosts < 0 or (self.hosts and self.workers < self.hosts):
            raise ValueError(f"{self.workers} workers cannot fill {self.hosts} hosts")
        strategies.check(self.strategy)
        if strategies.lookup(self.strategy)[0].simulated_as is None:
            known = [n for n, c in strategies.known().items() if c.simulated_as is not None]
            raise ValueError(f"the model knows strategies {', '.join(known)}, "
                             f"not {self.strategy!r}")
        dispatch_mod.check(self.dispatch)
        workload.check(self)
        return self


class Box:
    """A process's inbox: a deque and the event it waits on."""
    __slots__ = ("q", "env", "waiter")

    def __init__(self, env):
        self.q, self.env, self.waiter = deque(), env, None

    def put(self, item=None):
        if item is not None:
            self.q.append(item)
        w = self.waiter
        if w is not None and not w.triggered:
            w.succeed()

    def wait(self):
        self.waiter = self.env.event()
        return self.waiter


class Machine:
    def __init__(self, env, name: str, cpus: int):
        self.name, self.cores = name, simpy.Resource(env, capacity=cpus)


class _QueueDesign(dispatch_mod.Design):
    """The shared-queue design around the server's ledger: free local workers take from a FIFO;
    remote workers are brokered, strictly (as comlab.system.dispatch.SharedQueue)."""
    name = "shared-queue"  # the model's counterpart of any design simulated as one
    simulated_as = "shared-queue"

    def __init__(self, sim):
        self.sim = sim

    def takes_more(self, w):
        return False

    def brokers(self, ident, ledger):
        return ident not in ledger.local

    def place(self, ledger, work):
        if ledger.to_free_worker(work, remote_only=True):
            return True
        if not ledger.local:  # remote workers only: pending, as SharedQueue.place
            return False
        self.sim.outbox.append((None, work))
        return True

    def queued(self):
        return len(self.sim.shared.q)

    def busy(self):
        return 0

    def drop_run(self, run):
        return 0

    def lost_local(self, ident):
        return []


class Simulation:
    def __init__(self, cal: Calibration, cfg: Config, waits: np.ndarray, seed: int = 0):
        self.cal, self.cfg = cal, cfg
        self.rng = np.random.default_rng(seed)
        env = self.env = simpy.Environment()
        cpus = cfg.cpus or cal.cpus
        one = cfg.hosts == 0 if cfg.one_machine is None else cfg.one_machine
        self.server_m = Machine(env, "server", cpus)
        with_server = one or (cfg.client_with_server if cfg.client_with_server is not None
                              else cfg.hosts == 0)
        self.client_m = self.server_m if with_server else Machine(env, "client", cpus)
        n = len(waits)
        size = cfg.batch_size
        self.n_batches = -(-n // size)
        self.waits = waits
        self.bounds = [(i * size, min(n, (i + 1) * size)) for i in range(self.n_batches)]
        self.wait_lists = [waits[lo:hi].tolist() for lo, hi in self.bounds]
        nb = self.n_batches
        self.b_sent, self.b_in, self.b_enq, self.b_rec = (np.full(nb, np.nan) for _ in range(4))
        self.t_started, self.t_finished = np.full(n, np.nan), np.full(n, np.nan)
        self.b_worker = np.zeros(nb, dtype=np.int32)
        self.intended = workload.schedule(cfg, nb, seed)  # per batch; None: closed loop
        self.busy = {"server": 0.0, "client": 0.0}
        # workers: local ones on the server's machine, or spread over the hosts
        self.workers = []
        if cfg.hosts == 0:
            placement = [(self.server_m, "local")] * cfg.workers
        else:
            machines = [self.server_m if one else Machine(env, f"host{h}", cpus)
                        for h in range(cfg.hosts)]
            per = np.array_split(np.arange(cfg.workers), cfg.hosts)
            placement = [(machines[h], f"host{h}") for h, ids in enumerate(per) for _ in ids]
        on = {}
        for m, _ in placement:
            on[id(m)] = on.get(id(m), 0) + 1
        self.idle_wake = {k: max(cal.idle_wake.at(n), 0.0) for k, n in on.items()}
        for i, (m, host) in enumerate(placement):
            self.workers.append(dict(i=i, ident=f"w{i}".encode(), machine=m, host=host,
                                     box=Box(env), local=cfg.hosts == 0))
        self.server_box, self.client_box = Box(env), Box(env)
        self.pipe = deque()      # batches sent, not yet read by the server
        self.in_flight = 0       # sent and not read (high-water mark)
        self.client_blocked = False
        self.outbox = []
        self.shared = Box(env)   # the queue design's FIFO
        self.qlock = simpy.Resource(env, capacity=1)
        local = {w["ident"] for w in self.workers if w["local"]}
        self.queue_design = dispatch_mod.simulated_as(cfg.dispatch) == "shared-queue"
        policy = _QueueDesign(self) if self.queue_design else dispatch_mod.make(cfg.dispatch)
        self.ledger = Ledger(self._send, self._fail, policy=policy,
                             local=local, max_pending=2 * max(len(local), 1) + 16,
                             clock=lambda: env.now)
        for w in self.workers:
            self.ledger.ready(w["ident"], w["ident"].decode(), w["host"], 0, local=w["local"])
        self.outbox.clear()  # nothing pending yet: READY gave nothing
        self.by_ident = {w["ident"]: w for w in self.workers}
        self.extra = cfg.latency_s
        self.one = one
        cls, param = strategies.lookup(cfg.strategy)
        self.runs_as, self.pool_size = cls.simulated_as, cls.threads(param) or None

    # -- plumbing --------------------------------------------------------------------------
    def hop(self, a: Machine, b: Machine) -> float:
        return self.cal.hop_s + (self.extra if a is not b else 0.0)

    def later(self, delay: float, box: Box, item):
        if delay <= 0:
            box.put(item)
        else:
            self.env.timeout(delay).callbacks.append(lambda _e: box.put(item))

    def cpu(self, machine: Machine, seconds: float, who: str | None = None):
        """Hold one core of ``machine`` for ``seconds`` (in slices)."""
        env, cores = self.env, machine.cores
        if who is not None:
            self.busy[who] += seconds
        while seconds > 0:
            piece = min(seconds, SLICE_S)
            with cores.request() as req:
                yield req
                yield env.timeout(piece)
            seconds -= piece

    def _send(self, ident, work) -> bool:
        self.outbox.append((ident, work))
        return True

    def _fail(self, work, name):  # no worker is lost in the model
        raise AssertionError("the model loses no worker")

    # -- client ----------------------------------------------------------------------------
    def client(self):
        cal, env, box, m = self.cal, self.env, self.client_box, self.client_m
        nb, sent, left = self.n_batches, 0, len(self.waits)
        to_server = self.hop(m, self.server_m)
        due = self.intended
        while left > 0:
            while box.q:
                b = box.q.popleft()
                self.b_rec[b] = env.now
                lo, hi = self.bounds[b]
                yield from self.cpu(m, cal.client_recv.at(hi - lo), "client")
                left -= hi - lo
            self.client_blocked = False
            while sent < nb and self.in_flight < HWM and (due is None or
                                                         due[sent] <= env.now + 1e-12):
                lo, hi = self.bounds[sent]
                self.b_sent[sent] = env.now
                yield from self.cpu(m, cal.client_send.at(hi - lo), "client")
                self.in_flight += 1
                self.later(to_server, self.server_box, ("batch", sent))
                sent += 1
            if left > 0 and not box.q:
                self.client_blocked = sent < nb and self.in_flight >= HWM
                if due is not None and sent < nb and not self.client_blocked:
                    # open loop: a result or the next batch's time, whichever comes first
                    yield env.any_of([box.wait(), env.timeout(due[sent] - env.now)])
                else:
                    yield box.wait()

    # -- server ----------------------------------------------------------------------------
    def server(self):
        env, cal, box, ledger, m = self.env, self.cal, self.server_box, self.ledger, \
            self.server_m
        worker_q, batch_q = deque(), self.pipe
        while True:
            while box.q:  # sort arrivals by socket
                kind, x = box.q.popleft()
                (batch_q if kind == "batch" else worker_q).append((kind, x))
            if not worker_q and (not batch_q or ledger.full):
                yield box.wait()
                continue
            for _ in range(PUMP):
                if not worker_q:
                    break
                kind, x = worker_q.popleft()
                yield from self.cpu(m, cal.server_done_s, "server")
                ledger.done(x[0], 0, x[1])
                yield from self.flush()
            for _ in range(PUMP):
                if ledger.full or not batch_q:
                    break
                _, b = batch_q.popleft()
                self.in_flight -= 1
                if self.client_blocked:
                    self.client_box.put()
                lo, hi = self.bounds[b]
                self.b_in[b] = env.now
                yield from self.cpu(m, cal.server_intake.at(hi - lo), "server")
                self.b_enq[b] = env.now
                waits = self.wait_lists[b]
                ledger.submit(Work(0, b, self.cfg.strategy, 0, waits,
                                   strategies.duration(self.cfg.strategy, waits), len(waits)))
                yield from self.flush()
                while box.q:
                    kind, x = box.q.popleft()
                    (batch_q if kind == "batch" else worker_q).append((kind, x))

    def flush(self):
        """Send what the ledger handed out: a WORK to a worker, or a put on the shared queue."""
        cal, m = self.cal, self.server_m
        while self.outbox:
            ident, work = self.outbox.pop(0)
            s = len(work.waits)
            yield from self.cpu(m, cal.server_dispatch.at(s), "server")
            if ident is None:
                self.later(cal.hop_s, self.shared, work)
            else:
                w = self.by_ident[ident]
                self.later(self.hop(m, w["machine"]), w["box"], work)

    # -- workers ---------------------------------------------------------------------------
    def worker(self, w):
        cal, box, m = self.cal, w["box"], w["machine"]
        backlog = deque()
        to_server = self.hop(m, self.server_m)
        wake = self.idle_wake[id(m)]
        while True:
            if not box.q:
                yield box.wait()
                if wake > 0:  # a sleeping process among many takes long to run again
                    yield self.env.timeout(wake)
                continue
            finished = None
            while True:
                while box.q:
                    work = box.q.popleft()
                    yield from self.cpu(m, cal.worker_recv.at(len(work.waits)))
                    backlog.append(work)
                if not backlog:
                    break
                work = backlog.popleft()
                yield from self.run_batch(w, work)
                finished = work
                if len(backlog) <= 1:
                    yield from self.cpu(m, cal.done_send_s)
                    self.later(to_server, self.server_box, ("done", (w["ident"],
                                                                     finished.batch_id)))
                    finished = None
            if finished is not None:
                yield from self.cpu(m, cal.done_send_s)
                self.later(to_server, self.server_box, ("done", (w["ident"], finished.batch_id)))

    def queue_worker(self, w):
        """A local worker of the queue design: take the next batch when free; no DONE."""
        cal, m, shared = self.cal, w["machine"], self.shared
        while True:
            with self.qlock.request() as req:
                yield req
                while not shared.q:
                    yield shared.wait()
                work = shared.q.popleft()
                self.server_box.put()  # a full ledger may read the next batch now
                yield from self.cpu(m, cal.queue_take_s)
            yield from self.cpu(m, cal.worker_recv.at(len(work.waits)))
            yield from self.run_batch(w, work)

    def run_batch(self, w, work):
        cal, env, m, rng = self.cal, self.env, w["machine"], self.rng
        b = work.batch_id
        lo, hi = self.bounds[b]
        s = hi - lo
        waits = self.waits[lo:hi]
        self.b_worker[b] = w["i"]
        k = np.arange(s)
        if not waits.any():  # inline, one stamp per task
            t0 = env.now
            yield from self.cpu(m, s * cal.inline_task_s)
            stamps = t0 + (k + 1) * cal.inline_task_s
            self.t_started[lo:hi] = self.t_finished[lo:hi] = stamps
        else:
            over = rng.choice(cal.overshoot_s, s)
            if self.runs_as == "sequential":
                t0 = env.now
                yield from self.cpu(m, s * cal.inline_task_s)
                spans = waits + over
                ends = t0 + s * cal.inline_task_s + np.cumsum(spans)
                starts = ends - spans
                if ends[-1] > env.now:
                    yield env.timeout(ends[-1] - env.now)
            elif self.runs_as == "one-core":
                t0 = env.now
                yield from self.cpu(m, s * cal.handoff_s)
                starts = t0 + (k + 1) * cal.handoff_s + cal.thread_wake_s
                if starts[0] > env.now:
                    yield env.timeout(starts[0] - env.now)
                t1 = env.now
                yield from self.cpu(m, float(waits.sum()))  # one core: the GIL
                ends = t1 + np.cumsum(waits) * (env.now - t1) / float(waits.sum())
            else:
                t0 = env.now
                yield from self.cpu(m, s * cal.handoff_s)
                starts = t0 + (k + 1) * cal.handoff_s + cal.thread_wake_s
                if self.pool_size is not None and self.pool_size < s:
                    starts, ends = _pool_schedule(starts, waits + over, self.pool_size)
                else:
                    ends = starts + waits + over
                last = float(ends.max())
                if last > env.now:
                    yield env.timeout(last - env.now)
                t_end0 = env.now
                yield from self.cpu(m, s * cal.task_end_s)
                ends = ends + (env.now - t_end0) * (k + 1) / s
            self.t_started[lo:hi], self.t_finished[lo:hi] = starts, ends
            yield env.timeout(cal.result_wake_s)
        yield from self.cpu(m, cal.worker_result.at(s))
        self.later(self.hop(m, self.client_m), self.client_box, b)

    # -- run ---------------------------------------------------------------------------------
    def run(self) -> dict:
        env = self.env
        done = env.process(self.client())
        env.process(self.server())
        for w in self.workers:
            if self.queue_design and w["local"]:
                env.process(self.queue_worker(w))
            else:
                env.process(self.worker(w))
        env.run(until=done)
        return self.columns()

    def columns(self) -> dict:
        per_task = np.repeat(np.arange(self.n_batches), [hi - lo for lo, hi in self.bounds])
        names = [w["ident"].decode() for w in self.workers]
        hosts = [w["host"] for w in self.workers]
        wk = self.b_worker[per_task]
        due = workload.task_due(self.cfg, self.intended, self.bounds)
        planned = {} if due is None else {"t_intended": due}
        return {**planned, "batch_id": per_task, "t_sent": self.b_sent[per_task],
                "t_server_in": self.b_in[per_task], "t_enqueued": self.b_enq[per_task],
                "t_started": self.t_started, "t_finished": self.t_finished,
                "t_received": self.b_rec[per_task],
                "worker": np.asarray(names, dtype=object)[wk],
                "host": np.asarray(hosts, dtype=object)[wk]}


def _pool_schedule(ready: np.ndarray, spans: np.ndarray, n: int):
    """Tasks in order on the first free of n threads, none before its hand-off."""
    import heapq
    free = [0.0] * n
    starts, ends = np.empty(len(spans)), np.empty(len(spans))
    for i, (r, d) in enumerate(zip(ready, spans)):
        t = max(heapq.heappop(free), r)
        starts[i], ends[i] = t, t + d
        heapq.heappush(free, ends[i])
    return starts, ends


def simulate(cal: Calibration, cfg: Config, waits: np.ndarray, seed: int = 0) -> tuple:
    """Per-task columns of one simulated run, and what the run used (utilisations, wall)."""
    t0 = time.perf_counter()
    sim = Simulation(cal, cfg, np.asarray(waits, float), seed)
    cols = sim.run()
    makespan = float(np.nanmax(cols["t_received"]) - np.nanmin(cols["t_sent"]))
    info = {"server_utilisation": sim.busy["server"] / makespan if makespan > 0 else np.nan,
            "client_utilisation": sim.busy["client"] / makespan if makespan > 0 else np.nan,
            "sim_wall_s": time.perf_counter() - t0}
    return cols, info


def records(cols: dict, waits: np.ndarray, cfg: Config, run: int, repeat: int,
            experiment: str) -> pd.DataFrame:
    """Records in comlab.schema's columns for one simulated run (every task ok)."""
    from ..lab.records import STATUS, in_schema_order
    n = len(waits)
    df = pd.DataFrame({
        "experiment": experiment, "run": run, "repeat": repeat,
        "batch_size": cfg.batch_size, "workers": cfg.workers, "strategy": cfg.strategy,
        "transport": "tcp", "dispatch": cfg.dispatch, "task_id": np.arange(n),
        "batch_id": cols["batch_id"], "wait_s": waits,
        "status": pd.Categorical(["ok"] * n, dtype=STATUS), "attempt": np.zeros(n, np.int8),
        "worker": cols["worker"], "host": cols["host"],
        **{k: cols[k] for k in ("t_sent", "t_server_in", "t_enqueued", "t_started",
                                "t_finished", "t_received")}})
    if cfg.hosts:
        df["remote_workers"] = cfg.workers
    if "t_intended" in cols:  # open loop: latency counts from when the batch was due
        df["t_intended"] = cols["t_intended"]
        if cfg.rate is not None:
            df["rate"] = float(cfg.rate)
        df["arrivals"] = cfg.arrivals
    df["latency_s"] = df["t_received"] - df.get("t_intended", df["t_sent"])
    df["overhead_s"] = df["latency_s"] - df["wait_s"]
    return in_schema_order(df)
