"""When an open-loop client sends: arrival processes, drawn before the clock starts.

A spec names the process, the same on the command line (``--arrivals``) and in Python
(``arrivals=``); ``rate`` is the mean task rate (tasks/s) where the process needs one:

* ``constant``: evenly spaced batches, batch b at b * size / rate (comlab's first schedule).
* ``poisson``: exponential gaps between batches, mean size / rate (Gatling's and locust's
  Poisson injection; with batch 1, tasks arrive as a Poisson process).
* ``bursty:ON,OFF``: an on/off Markov-modulated Poisson process: ON and OFF periods last
  exponential times with those means (s); batches arrive only while ON, at the rate that keeps
  the long-run mean at ``rate``.
* ``ramp:R0,R1,SECONDS``: the rate goes linearly from R0 to R1 tasks/s over SECONDS, then stays
  at R1 (k6's ramping-arrival-rate, ghz's line schedule); evenly spaced at each instant.
* ``step:R1@T1,R2@T2,...``: rate R1 from T1 s, R2 from T2 s, ... (T1 = 0; ghz's step schedule).
* ``trace:FILE``: replay a CSV of ``offset_s,ip:command`` rows (a header line is allowed): the
  tasks and their send offsets come from the file; a batch leaves when its last task is due.

``offsets`` returns each batch's send offset in seconds from the start; a schedule is a pure
function of the spec, the sizes and the seed, so a run records its seed and can be redrawn.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

NAMES = ("constant", "poisson", "bursty", "ramp", "step", "trace")
NEEDS_RATE = ("constant", "poisson", "bursty")


@dataclass(frozen=True)
class Trace:
    """A replayed trace: per task, its offset (s, non-decreasing) and its ``ip:command``."""

    offsets: np.ndarray
    keys: list

    @classmethod
    def read(cls, path) -> "Trace":
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"{path}: cannot read the trace ({exc.__class__.__name__}: "
                             f"{getattr(exc, 'strerror', None) or exc})") from None
        offsets, keys = [], []
        for number, row in enumerate(csv.reader(text.splitlines()), 1):
            if not row or not "".join(row).strip() or row[0].lstrip().startswith("#"):
                continue
            if number == 1 and _not_number(row[0]):
                continue  # a header
            if len(row) != 2:
                raise ValueError(f"{path}:{number}: expected offset_s,ip:command, "
                                 f"got {len(row)} fields")
            offset = _number(row[0].strip(), f"{path}:{number}: offset", minimum=0.0)
            if offsets and offset < offsets[-1]:
                raise ValueError(f"{path}:{number}: offset {offset:g} s before the previous "
                                 f"row's {offsets[-1]:g} s (a trace is in time order)")
            key = row[1].strip()
            if key.count(":") != 1 or not all(key.split(":")):
                raise ValueError(f"{path}:{number}: bad task {key!r} (expected ip:command)")
            offsets.append(offset)
            keys.append(key)
        if not keys:
            raise ValueError(f"{path}: no tasks in the trace")
        return cls(np.asarray(offsets, float), keys)


def _not_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return True
    return False


def _number(text: str, what: str, minimum: float = 0.0, strict: bool = False) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < minimum or (strict and value == minimum):
        raise ValueError(f"{what} {text!r}: expected a number {'>' if strict else '>='} "
                         f"{minimum:g}")
    return value


@dataclass(frozen=True)
class Arrivals:
    name: str
    params: tuple = ()
    trace: Trace | None = None
    spec: str = "constant"

    @property
    def needs_rate(self) -> bool:
        return self.name in NEEDS_RATE

    def offsets(self, n_batches: int, batch_size: int, rate: float | None,
                seed: int = 0) -> np.ndarray:
        """Each batch's send offset (s) from the start, non-decreasing, the first at 0 for
        every process but a trace (its first row's offset)."""
        if self.needs_rate and not (rate and rate > 0):
            raise ValueError(f"arrivals {self.spec!r} needs a rate (tasks/s)")
        if n_batches <= 0:
            return np.zeros(0)
        rng = np.random.default_rng(seed)
        if self.name == "constant":
            return np.arange(n_batches) * (batch_size / rate)
        if self.name == "poisson":
            gaps = rng.exponential(batch_size / rate, n_batches - 1)
            return np.concatenate(([0.0], np.cumsum(gaps)))
        if self.name == "bursty":
            return _bursty(n_batches, batch_size, rate, *self.params, rng)
        if self.name == "trace":
            ends = np.minimum(np.arange(1, n_batches + 1) * batch_size, len(self.trace.keys))
            return self.trace.offsets[ends - 1]
        return _by_rate(self._pieces(), np.arange(n_batches) * batch_size)

    def _pieces(self):
        """The rate as linear pieces (t0, t1, rate at t0, rate at t1), then a constant tail."""
        if self.name == "ramp":
            r0, r1, span = self.params
            return [(0.0, span, r0, r1)], r1
        steps = self.params
        return [(a[1], b[1], a[0], a[0]) for a, b in zip(steps, steps[1:])], steps[-1][0]


def _by_rate(pieces, counts: np.ndarray) -> np.ndarray:
    """When ``counts`` tasks have been sent, under a piecewise-linear rate: the inverse of
    its integral (a quadratic on a ramp's piece)."""
    pieces, tail_rate = pieces
    out = np.empty(len(counts))
    for i, n in enumerate(counts):
        sent = 0.0
        for t0, t1, r0, r1 in pieces:
            span = t1 - t0
            in_piece = (r0 + r1) / 2 * span
            if n <= sent + in_piece:
                dn, slope = n - sent, (r1 - r0) / span
                dt = dn / r0 if abs(slope) < 1e-12 else \
                    (math.sqrt(r0 * r0 + 2 * slope * dn) - r0) / slope
                out[i] = t0 + dt
                break
            sent += in_piece
        else:
            end = pieces[-1][1] if pieces else 0.0
            out[i] = end + (n - sent) / tail_rate
    return out


def _bursty(n_batches, batch_size, rate, on_s, off_s, rng) -> np.ndarray:
    on_rate = rate * (on_s + off_s) / on_s / batch_size  # batches/s while ON
    out, t, left = [], 0.0, n_batches
    while left:
        period_end = t + rng.exponential(on_s)
        while left:
            if out:
                t += rng.exponential(1 / on_rate)
            if t > period_end and out:
                break
            out.append(t)
            left -= 1
        t = period_end + rng.exponential(off_s)
    return np.asarray(out[:n_batches])


def parse(spec: str) -> Arrivals:
    """An ``Arrivals`` from its spec, or ValueError naming what is wrong (trace: file:line)."""
    if not isinstance(spec, str):
        raise ValueError(f"arrivals must be a string such as 'poisson', not {spec!r}")
    name, _, param = spec.partition(":")
    if name not in NAMES:
        raise ValueError(f"arrivals {spec!r}: expected one of {', '.join(NAMES)}")
    if name in ("constant", "poisson"):
        if param:
            raise ValueError(f"arrivals {spec!r}: {name} takes no parameter")
        return Arrivals(name, spec=spec)
    if not param:
        raise ValueError(f"arrivals {spec!r}: {name} needs parameters "
                         f"({_FORMS[name]})")
    if name == "trace":
        return Arrivals(name, trace=Trace.read(param), spec=spec)
    parts = param.split(",")
    what = f"arrivals {spec!r}:"
    if name == "bursty":
        if len(parts) != 2:
            raise ValueError(f"{what} expected {_FORMS[name]}")
        return Arrivals(name, tuple(_number(p, what, strict=True) for p in parts), spec=spec)
    if name == "ramp":
        if len(parts) != 3:
            raise ValueError(f"{what} expected {_FORMS[name]}")
        r0, r1, span = (_number(p, what, strict=True) for p in parts)
        return Arrivals(name, (r0, r1, span), spec=spec)
    steps = []
    for part in parts:
        rate, at, start = part.partition("@")
        if not at:
            raise ValueError(f"{what} expected {_FORMS[name]}")
        steps.append((_number(rate, what, strict=True), _number(start, what)))
    if steps[0][1] != 0 or any(b[1] <= a[1] for a, b in zip(steps, steps[1:])):
        raise ValueError(f"{what} the first step starts at 0 and the times increase")
    return Arrivals(name, tuple(steps), spec=spec)


CONSTANT = Arrivals("constant")  # evenly spaced (with a rate), or the closed loop (without)

_FORMS = {"bursty": "bursty:ON_S,OFF_S", "ramp": "ramp:R0,R1,SECONDS",
          "step": "step:R1@T1,R2@T2,... with T1 = 0", "trace": "trace:FILE"}
