"""Checks of ``run_experiment``'s arguments, before any file is written or process started: a
TypeError or ValueError that names the parameter, never a silent truncation (``repeats=2.5``).

The command lines check their flags with the same functions (``arg``, ``listed``): a check
called with the name ``""`` says what is wrong without naming it, and argparse names the flag.
"""

from __future__ import annotations

import math
import numbers
import os
from pathlib import Path

from .. import ComlabWarning

# Longest timeout accepted (s): libzmq's poll takes milliseconds in a C int (about 24 days).
MAX_TIMEOUT_S = 1e6


def _named(name: str, text: str) -> str:
    """A check's message about ``name`` ("": the flag argparse names)."""
    return f"{name} {text}" if name else text


def count(value, name: str, minimum: int = 1) -> int:
    """An integer >= ``minimum`` (bool and 2.5 refused; numpy integers accepted)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(_named(name, f"must be an integer, not {value!r}"))
    if value < minimum:
        raise ValueError(_named(name, f"must be at least {minimum}, not {value}"))
    return int(value)


def counts(values, name: str, minimum: int = 1) -> list[int]:
    """A value or a non-empty list of them, each checked by ``count``."""
    values = list(values) if isinstance(values, (list, tuple)) else [values]
    if not values:
        raise ValueError(f"{name} is empty: give at least one value")
    return [count(v, f"{name} value", minimum) for v in values]


def seconds(value, name: str, *, maximum: float = MAX_TIMEOUT_S, none_ok: bool = False):
    """A finite number of seconds > 0 and <= ``maximum`` (or None when ``none_ok``)."""
    if value is None and none_ok:
        return None
    positive(value, name)
    if value > maximum:
        raise ValueError(_named(name, f"must be at most {maximum:g} s, not {value!r}"))
    return float(value)


def positive(value, name: str) -> float:
    """A finite number > 0."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(_named(name, f"must be a number, not {value!r}"))
    if not math.isfinite(value) or value <= 0:
        raise ValueError(_named(name, f"must be a finite number > 0, not {value!r}"))
    return float(value)


def rates(values, name: str = "rate") -> list:
    """None (closed loop) or tasks/s > 0, a value or a list."""
    values = list(values) if isinstance(values, (list, tuple)) else [values]
    if not values:
        raise ValueError(f"{name} is empty: give at least one value (None: closed loop)")
    return [None if v is None else positive(v, f"{name} value") for v in values]


def names(values, name: str) -> list[str]:
    """A non-empty string or a non-empty list of them."""
    values = list(values) if isinstance(values, (list, tuple)) else [values]
    if not values:
        raise ValueError(f"{name} is empty: give at least one value")
    for v in values:
        if not isinstance(v, str) or not v:
            raise ValueError(f"{name} must be non-empty strings, not {v!r}")
    return values


def results_dir(path, name: str = "results_dir") -> Path:
    """A directory that exists and is writable, or can be made (its nearest existing parent
    is a writable directory)."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise ValueError(_named(name, f"{str(p)!r} is a file, not a directory"))
    existing = p
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(_named(name, f"{str(p)!r}: {str(existing)!r} is a file, not a "
                                      f"directory"))
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(_named(name, f"{str(p)!r}: {str(existing)!r} is not writable"))
    return p


def non_negative(value, name: str, *, maximum: float = math.inf) -> float:
    """A finite number >= 0 and <= ``maximum`` (a wait scale of 0: zero-wait tasks, the
    harness alone)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(_named(name, f"must be a number, not {value!r}"))
    if not math.isfinite(value) or value < 0:
        raise ValueError(_named(name, f"must be a finite number >= 0, not {value!r}"))
    if value > maximum:
        raise ValueError(_named(name, f"must be at most {maximum:g}, not {value!r}"))
    return float(value)


def warm_threads(strategy: str, batch_size: int) -> int:
    """Threads a worker keeps for ``strategy`` after batches of ``batch_size`` tasks."""
    from ..system.gang import MAX_THREADS
    from ..system.strategies import ThreadPerTask, ThreadPool, lookup
    cls, param = lookup(strategy)
    if issubclass(cls, ThreadPerTask):
        return min(batch_size, MAX_THREADS)
    if issubclass(cls, ThreadPool):
        return min(batch_size, cls.parse(param))
    return 0


def machine_room(specs, n_tasks: int, host_workers: int = 0) -> None:
    """Before anything starts: the sweep's largest pool (plus the workers of worker hosts on
    this machine), each worker with the threads every strategy of the sweep keeps warm at its
    largest batch, fits this machine's processes/threads and memory (comlab.system.limits);
    a ValueError naming the workers and how many would fit."""
    from ..system import limits
    if not specs:
        return
    largest = max(s.workers for s in specs) + host_workers
    threads = limits.WORKER_THREADS + sum(
        warm_threads(st, min(n_tasks, max(s.batch_size for s in specs if s.strategy == st)))
        for st in {s.strategy for s in specs})
    where = f" (+{host_workers} on worker hosts here)" if host_workers else ""
    limits.check_workers(largest, threads,
                         f"workers {largest - host_workers}{where}")


def batch_sizes_for(batch_sizes, n_tasks: int) -> list[int]:
    """A batch larger than the tasks is all of them: sizes above ``n_tasks`` become
    ``n_tasks`` (said once, in a warning), so no memory follows a size beyond the tasks."""
    import warnings
    sizes = [int(b) for b in (batch_sizes if isinstance(batch_sizes, (list, tuple))
                              else [batch_sizes])]
    over = [b for b in sizes if b > n_tasks]
    if over:
        warnings.warn(f"batch sizes above the {n_tasks:,} tasks run as {n_tasks:,} (all tasks "
                      f"in one batch): {', '.join(f'{b:,}' for b in over)}", ComlabWarning,
                      stacklevel=3)
    return list(dict.fromkeys(min(b, n_tasks) for b in sizes))
# --- addresses, ports, names, output files (issue 25: every argument checked up front) ----------
ANY_INTERFACE = ("*", "0.0.0.0")


def local_address(address, name: str) -> str:
    """An IPv4 address of this machine (it can be bound), ``*``/``0.0.0.0`` (every interface)
    or ``localhost``: a server or client bound elsewhere would fail only once started."""
    import ipaddress
    import socket
    text = str(address)
    if text in ANY_INTERFACE or text == "localhost":
        return text
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        try:
            ip = ipaddress.ip_address(socket.getaddrinfo(text, None, socket.AF_INET)[0][4][0])
        except (OSError, UnicodeError, IndexError):
            raise ValueError(_named(name, f"{text!r} is not an IPv4 address (nor a name of "
                                          f"one)")) from None
    if ip.version != 4:
        raise ValueError(_named(name, f"{text!r} is IPv6: the lab binds IPv4 addresses only "
                                      f"(127.0.0.1 for loopback)"))
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((str(ip), 0))
    except OSError as exc:
        raise ValueError(_named(name, f"{text!r} is not an address of this machine "
                                      f"({exc.strerror}): use one of its interfaces, 127.0.0.1 "
                                      f"or 0.0.0.0")) from None
    return text


def tcp_port(url, name: str) -> str:
    """A URL whose tcp port, if any, is 1-65535 or ``*`` (libzmq takes 99999 and silently
    binds 34463). Other mistakes in a URL are libzmq's to name (run_client.check_connect_url)."""
    text = str(url)
    if not text.startswith("tcp://"):
        return text
    host, sep, port = text[len("tcp://"):].rpartition(":")
    if sep and host and port != "*" and not (port.isdigit() and 1 <= int(port) <= 65535):
        raise ValueError(_named(name, f"{text!r}: port {port!r} is not in 1-65535 (or * for a "
                                      f"free one)"))
    return text


def name_max(folder) -> int:
    """Longest file name the file system of ``folder`` (or its nearest existing parent) takes."""
    p = Path(folder).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return os.pathconf(p, "PC_NAME_MAX")
    except (OSError, ValueError):
        return 255


def output_file(path, name: str) -> Path:
    """A file that can be written: not a directory, in a writable directory that exists.
    Checked before the work whose result it keeps."""
    p = Path(path)
    if p.is_dir():
        raise ValueError(_named(name, f"{str(p)!r} is a directory, not a file"))
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise ValueError(_named(name, f"{str(p)!r}: no directory {str(parent)!r}"))
    if not os.access(parent, os.W_OK | os.X_OK) or (p.exists() and not os.access(p, os.W_OK)):
        raise ValueError(_named(name, f"{str(p)!r} is not writable"))
    if len(p.name.encode()) > name_max(parent):
        raise ValueError(_named(name, f"{str(p)!r}: the file name is longer than the file "
                                      f"system takes ({name_max(parent)} bytes)"))
    return p


# -- the same checks as argparse types (comlab/cli.py, run_client, run_server, worker_host) --
def arg(check, parse=float, what: str = "a number", *, name: str = "", as_given: bool = False,
        **options):
    """argparse type: the text parsed by ``parse`` ("expected WHAT, got 'TEXT'" when it does
    not), then ``check(value, name, **options)``, whose message says what is wrong (argparse
    names the flag). ``as_given``: the text itself once checked (a path stays a string)."""
    import argparse

    def typed(text: str):
        try:
            value = parse(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        try:
            checked = check(value, name, **options)
        except (TypeError, ValueError) as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        return text if as_given else checked
    typed.__name__ = what
    return typed


def listed(one, what: str):
    """argparse type of a comma-separated list, each item by ``one`` (an argparse type, or a
    function raising ValueError/TypeError saying what is wrong)."""
    import argparse

    def typed(text: str) -> list:
        values = [x.strip() for x in text.split(",") if x.strip()]
        if not values:
            raise argparse.ArgumentTypeError(f"expected comma-separated {what}, got {text!r}")
        try:
            return [one(x) for x in values]
        except (TypeError, ValueError) as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    typed.__name__ = what
    return typed


def at_least_arg(minimum: int):
    """argparse type of an integer >= ``minimum``."""
    return arg(count, int, "an integer", minimum=minimum)


def url_arg(name: str):
    """argparse type of a URL argument named ``name``: its port checked by ``tcp_port``."""
    return arg(tcp_port, str, "a URL", name=name)


def output_file_arg(name: str = ""):
    """argparse type of an output file (``output_file``), kept as given."""
    return arg(output_file, str, "a file", name=name, as_given=True)


seconds_arg = arg(seconds)  # a timeout: finite, > 0, at most MAX_TIMEOUT_S
positive_arg = arg(positive)  # a finite number > 0
non_negative_arg = arg(non_negative)  # a finite number >= 0
batch_size_arg = at_least_arg(1)
results_dir_arg = arg(results_dir, str, "a directory", as_given=True)
local_address_arg = arg(local_address, str, "an address")


def _spec_arg(parse):
    """argparse type of a spec that ``parse`` reads (a file it names is read here, so its
    errors name file:line), kept as given."""
    import argparse

    def typed(text: str) -> str:
        try:
            parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        return text
    return typed


def _rate(text: str):
    return None if text in ("none", "max") else positive_arg(text)


rates_arg = listed(_rate, "rates (tasks/s) or none")  # open loop, or none: the closed loop


def _arrivals(text: str):
    from .. import arrivals
    return arrivals.parse(text)


def _wait(text: str):
    import random

    from .. import distributions
    return distributions.wait_sampler(text, 1.0, random.Random(0))


arrivals_arg = _spec_arg(_arrivals)  # comlab.arrivals: constant, poisson, ..., trace:FILE
wait_spec_arg = _spec_arg(_wait)  # comlab.distributions: constant, ..., empirical:FILE
