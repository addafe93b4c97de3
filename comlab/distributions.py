"""The distributions a generated workload draws from: service times (waits) and key popularity.

A spec is a name with an optional parameter after a colon, the same on the command line and in
Python: waits ``constant``, ``uniform``, ``exponential``, ``lognormal[:SIGMA]``,
``pareto[:ALPHA]`` (heavy tails) and ``empirical:FILE`` (durations in seconds, one a line,
drawn with replacement); popularity ``uniform`` or ``zipf[:S]`` (the key of rank k is named with
probability proportional to 1 / k^S). Every sampler takes a ``random.Random``, so a seed
reproduces the workload; bad specs are a ValueError naming the spec (and file:line).
"""

from __future__ import annotations

import bisect
import itertools
import math
import random
from pathlib import Path

WAITS = ("constant", "uniform", "exponential", "lognormal", "pareto", "empirical")
POPULARITY = ("uniform", "zipf")
LOGNORMAL_SIGMA = 1.0  # of the underlying normal: a p99 / median of about 10
PARETO_ALPHA = 2.5  # tail index: a finite variance, p99.9 / mean of about 10
ZIPF_S = 1.0


def _split(spec: str, names: tuple, what: str) -> tuple[str, str | None]:
    if not isinstance(spec, str):
        raise ValueError(f"{what} must be a string such as {names[0]!r}, not {spec!r}")
    name, _, param = spec.partition(":")
    if name not in names:
        raise ValueError(f"{what} {spec!r}: expected one of {', '.join(names)}")
    return name, (param or None)


def _number(text: str, spec: str, minimum: float, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= minimum:
        raise ValueError(f"{what} {spec!r}: the parameter must be a number > {minimum:g}")
    return value


def read_durations(path) -> list[float]:
    """Durations in seconds, one a line (blank lines and # comments skipped)."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: cannot read durations ({exc.__class__.__name__}: "
                         f"{getattr(exc, 'strerror', None) or exc})") from None
    out = []
    for number, line in enumerate(lines, 1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"{path}:{number}: bad duration {text!r} (a number of seconds >= 0)")
        out.append(value)
    if not out:
        raise ValueError(f"{path}: no durations in it")
    return out


def wait_sampler(spec: str, mean: float, rng: random.Random):
    """A function drawing one wait (s). ``mean`` sets the mean of every distribution but the
    empirical one, whose values are taken as they are."""
    name, param = _split(spec, WAITS, "wait")
    if name == "empirical":
        if not param:
            raise ValueError(f"wait {spec!r}: give the file, empirical:FILE")
        values = read_durations(param)
        return lambda: rng.choice(values)
    if param is not None and name in ("constant", "uniform", "exponential"):
        raise ValueError(f"wait {spec!r}: {name} takes no parameter")
    if mean == 0:
        return lambda: 0.0
    if name == "constant":
        return lambda: mean
    if name == "uniform":
        return lambda: rng.uniform(0, 2 * mean)
    if name == "exponential":
        return lambda: rng.expovariate(1 / mean)
    if name == "lognormal":
        sigma = LOGNORMAL_SIGMA if param is None else _number(param, spec, 0, "wait")
        mu = math.log(mean) - sigma ** 2 / 2  # so that the mean is ``mean``
        return lambda: rng.lognormvariate(mu, sigma)
    alpha = PARETO_ALPHA if param is None else _number(param, spec, 1, "wait")
    scale = mean * (alpha - 1) / alpha  # the minimum, so that the mean is ``mean``
    return lambda: scale * rng.paretovariate(alpha)


def pick_keys(spec: str, keys: list, n: int, rng: random.Random) -> list:
    """``n`` keys named by tasks: ``uniform`` draws each key alike, ``zipf:S`` by rank."""
    name, param = _split(spec, POPULARITY, "popularity")
    if name == "uniform":
        if param is not None:
            raise ValueError(f"popularity {spec!r}: uniform takes no parameter")
        return rng.choices(keys, k=n)
    s = ZIPF_S if param is None else _number(param, spec, 0, "popularity")
    cumulative = list(itertools.accumulate(1 / k ** s for k in range(1, len(keys) + 1)))
    total = cumulative[-1]
    last = len(keys) - 1
    return [keys[min(bisect.bisect_left(cumulative, rng.random() * total), last)]
            for _ in range(n)]
