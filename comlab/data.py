"""Read, validate and generate comlab's data files.

Two plain-text formats drive every experiment:

* client data, one task per line: ``ip:command``
* server data, one entry per line: ``ip:command:response:wait`` (wait in seconds)

Blank lines and ``#`` comment lines are ignored, surrounding whitespace and CRLF
endings are tolerated. Everything else must be valid: a malformed line silently
dropped would skew a benchmark without anyone noticing, so the default is to
raise a :class:`DataError` naming ``file:line``; ``lenient=True`` skips bad lines
instead, but keeps them in ``.skipped`` and logs a warning.
"""

from __future__ import annotations

import codecs
import ipaddress
import itertools
import logging
import math
import operator
import os
import random
from collections.abc import Iterable, Mapping
from importlib import resources
from pathlib import Path

from . import distributions

__all__ = [
    "DataError",
    "Commands",
    "ServerMap",
    "read_commands",
    "read_server_map",
    "scale_waits",
    "seed_path",
    "generate",
]

log = logging.getLogger(__name__)

SEED_FILES = ("client_data.txt", "server_data.txt")
WAIT_DISTRIBUTIONS = distributions.WAITS


class DataError(ValueError):
    """A bad data file or line.

    ``source`` (a file path, ``'<list>'`` or ``'<dict>'``), ``line`` (1-based, or
    None when the problem is not tied to one line) and ``reason`` are kept as
    attributes so callers can report or filter errors without parsing messages.
    """

    def __init__(self, source: str, line: int | None, reason: str):
        self.source, self.line, self.reason = str(source), line, reason
        where = self.source if line is None else f"{self.source}:{line}"
        super().__init__(f"{where}: {reason}")

    def __reduce__(self):
        # Errors may cross process boundaries (workers); the default exception
        # pickling would call __init__ with the message only.
        return type(self), (self.source, self.line, self.reason)


class Commands(list):
    """The client's tasks: ``(ip, command)`` tuples in file order, duplicates kept."""

    def __init__(self, tasks: Iterable[tuple[str, str]] = (), *, source: str = "<list>",
                 skipped: Iterable[DataError] = ()):
        super().__init__(tasks)
        self.source = source
        self.skipped = list(skipped)


class ServerMap(dict):
    """The server's answers: ``ip -> {command -> (response, wait)}``."""

    def __init__(self, entries: Mapping = (), *, source: str = "<dict>",
                 skipped: Iterable[DataError] = ()):
        super().__init__(entries)
        self.source = source
        self.skipped = list(skipped)

    def flat(self) -> dict[str, tuple[int, float]]:
        """``"ip:command" -> (response, wait)``: the server looks requests up by
        their wire key in O(1) without splitting it."""
        return {f"{ip}:{command}": answer
                for ip, commands in self.items() for command, answer in commands.items()}


class _Bad(Exception):
    """A field failed validation; turned into a DataError with the line number."""


class _Parser:
    """State of one parse: the error policy and caches of tokens already validated.

    Data files repeat a few ips and commands many times, so each distinct token is
    checked once; the caches die with the parse instead of growing forever.
    """

    def __init__(self, source: str, lenient: bool):
        self.source, self.lenient = source, lenient
        self.skipped: list[DataError] = []
        self._ips: set[str] = set()
        self._commands: set[str] = set()

    def bad(self, line: int | None, reason: str) -> None:
        error = DataError(self.source, line, reason)
        if not self.lenient:
            raise error
        self.skipped.append(error)

    def lines(self, source) -> Iterable:
        """The text lines of a path, or the iterable itself."""
        if not _is_path(source):
            return source
        try:
            raw = Path(os.fsdecode(source)).read_bytes()
        except FileNotFoundError:
            raise DataError(self.source, None, "no such file") from None
        except OSError as exc:
            raise DataError(self.source, None, exc.strerror or str(exc)) from None
        raw = raw.removeprefix(codecs.BOM_UTF8)
        try:
            return raw.decode("utf-8").split("\n")
        except UnicodeDecodeError:
            pass
        # Slow path, only for broken files: find which lines are not UTF-8.
        lines = []
        for number, chunk in enumerate(raw.split(b"\n"), 1):
            try:
                lines.append(chunk.decode("utf-8"))
            except UnicodeDecodeError as exc:
                self.bad(number, f"not valid UTF-8 (byte {chunk[exc.start]:#04x} "
                                 f"at column {exc.start + 1})")
                lines.append("")
        return lines

    def records(self, lines: Iterable, nfields: int, layout: str):
        """Yield ``(line number, fields)`` for each data line with ``nfields`` fields."""
        for number, line in enumerate(lines, 1):
            if not isinstance(line, str):
                self.bad(number, f"expected a string, found {type(line).__name__}")
                continue
            line = line.strip()
            if not line or line[0] == "#":
                continue
            fields = line.split(":")
            if len(fields) == nfields:
                yield number, fields
            elif len(fields) > nfields and _is_ipv6(fields[:len(fields) - nfields + 1]):
                self.bad(number, "IPv6 addresses are not supported: IPv4 only")
            else:
                self.bad(number, f"expected {nfields} fields ({layout}), found {len(fields)}")

    def key(self, ip: str, command: str) -> None:
        if ip not in self._ips:
            try:
                ipaddress.IPv4Address(ip)
            except ValueError:
                raise _Bad(f"bad IPv4 address {ip!r}") from None
            self._ips.add(ip)
        if command not in self._commands:
            _check_command(command)
            self._commands.add(command)

    def finish(self, result, what: str):
        """Attach the report to ``result``, warn about skipped lines, refuse emptiness."""
        result.source, result.skipped = self.source, self.skipped
        if self.skipped:
            shown = ", ".join(str(e.line) if e.line is not None else e.reason
                              for e in self.skipped[:10])
            more = f" and {len(self.skipped) - 10} more" if len(self.skipped) > 10 else ""
            log.warning("%s: skipped %d bad line(s): %s%s; first: %s", self.source,
                        len(self.skipped), shown, more, self.skipped[0].reason)
        if not result:
            detail = (f"{len(self.skipped)} bad line(s) skipped" if self.skipped
                      else "only blank or comment lines")
            raise DataError(self.source, None, f"no {what} ({detail})")
        return result


def _is_path(source) -> bool:
    return isinstance(source, (str, bytes, os.PathLike))


def _is_ipv6(parts: list[str]) -> bool:
    try:
        ipaddress.IPv6Address(":".join(parts))
    except ValueError:
        return False
    return True


def _check_command(command: str) -> None:
    if not command:
        raise _Bad("empty command")
    if ":" in command:
        raise _Bad(f"command {command!r} contains ':'")
    if command.split() != [command]:
        raise _Bad(f"command {command!r} contains whitespace")


def _response(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise _Bad(f"bad response {text[:40]!r} (expected an integer)") from None
    if not -(2 ** 63) <= value < 2 ** 63:  # the wire and the records carry 64-bit integers
        raise _Bad(f"response {text[:40]} is outside the signed 64-bit range "
                   f"[-2**63, 2**63 - 1]")
    return value


MAX_WAIT_S = 86400.0  # a task longer than a day is a typo; its timeout would overflow a poll


def _wait(text: str) -> float:
    try:
        wait = float(text)
    except ValueError:
        raise _Bad(f"bad wait {text!r} (expected a number of seconds)") from None
    if not math.isfinite(wait) or wait < 0:
        raise _Bad(f"bad wait {text!r} (expected a finite number >= 0)")
    if wait > MAX_WAIT_S:
        raise _Bad(f"bad wait {text!r} (at most {MAX_WAIT_S:g} s: a day)")
    return wait


def read_commands(source, *, lenient: bool = False) -> Commands:
    """Read the client's tasks from a path or an iterable of ``"ip:command"`` strings."""
    parser = _Parser(os.fsdecode(source) if _is_path(source) else "<list>", lenient)
    tasks = Commands()
    for number, (ip, command) in parser.records(parser.lines(source), 2, "ip:command"):
        try:
            parser.key(ip, command)
        except _Bad as exc:
            parser.bad(number, str(exc))
            continue
        tasks.append((ip, command))
    return parser.finish(tasks, "tasks")


def _dict_records(parser: _Parser, mapping: Mapping):
    """Yield a dict's entries as string fields, so they pass the same checks as lines."""
    for ip, commands in mapping.items():
        if not isinstance(commands, Mapping):
            parser.bad(None, f"entry {ip}: expected a dict command -> (response, wait), "
                             f"found {type(commands).__name__}")
            continue
        for command, answer in commands.items():
            try:
                response, wait = answer
            except (TypeError, ValueError):
                parser.bad(None, f"entry {ip}:{command}: expected (response, wait), "
                                 f"found {answer!r}")
                continue
            yield None, [str(ip), str(command), str(response), str(wait)]


def read_server_map(source, *, lenient: bool = False) -> ServerMap:
    """Read the server's answers from a path, a dict ``ip -> command -> (response, wait)``
    or an iterable of ``"ip:command:response:wait"`` strings."""
    if isinstance(source, Mapping):
        parser = _Parser("<dict>", lenient)
        records = _dict_records(parser, source)
    else:
        parser = _Parser(os.fsdecode(source) if _is_path(source) else "<list>", lenient)
        records = parser.records(parser.lines(source), 4, "ip:command:response:wait")
    server_map = ServerMap()
    first_line: dict[tuple[str, str], int | None] = {}
    for number, (ip, command, response, wait) in records:
        # Lines are located by number; dict entries only by their key.
        where = "" if number is not None else f"entry {ip}:{command}: "
        try:
            parser.key(ip, command)
            answer = (_response(response), _wait(wait))
        except _Bad as exc:
            parser.bad(number, f"{where}{exc}")
            continue
        if (ip, command) in first_line:
            earlier = first_line[ip, command]
            parser.bad(number, f"{where}duplicate key {ip}:{command}"
                               + (f" (first on line {earlier})" if earlier is not None else ""))
            continue
        first_line[ip, command] = number
        server_map.setdefault(ip, {})[command] = answer
    return parser.finish(server_map, "server entries")


def scale_waits(server_map: ServerMap, factor: float) -> ServerMap:
    """A new map with every wait multiplied by ``factor``: lets one data file serve
    experiments at different time scales."""
    factor = float(factor)
    if not math.isfinite(factor) or factor < 0:
        raise ValueError(f"factor must be a finite number >= 0, not {factor!r}")
    return ServerMap(
        {ip: {command: (response, wait * factor) for command, (response, wait) in commands.items()}
         for ip, commands in server_map.items()},
        source=server_map.source, skipped=server_map.skipped)


def seed_path(name: str) -> Path:
    """Path of a data file shipped inside the package (``'client_data.txt'`` or
    ``'server_data.txt'``), found the same way whether installed or run from the repo."""
    if name not in SEED_FILES:
        raise ValueError(f"unknown seed file {name!r}, expected one of {SEED_FILES}")
    return Path(resources.files(__package__) / "seed" / name)


def _format_wait(wait: float) -> str:
    # Microsecond resolution, no float noise: "1", "0.25", "2.718282".
    return f"{wait:.6f}".rstrip("0").rstrip(".")


def generate(out_dir, *, hosts: int = 256, commands: Iterable[str] = ("foo", "bar"),
             network: str = "192.168.1.0/24", response: int = 1, wait: str = "constant",
             wait_mean: float = 1.0, seed: int = 0, unknown: int = 0,
             popularity: str = "uniform", tasks: int | None = None) -> tuple[Path, Path]:
    """Write ``client_data.txt`` and ``server_data.txt`` into ``out_dir``.

    Hosts are the first ``hosts`` addresses of ``network``; every host gets every
    command, in order. Waits follow ``wait``, a spec of comlab.distributions with mean
    ``wait_mean``: ``constant``, ``uniform`` on ``[0, 2*wait_mean]``, ``exponential``,
    ``lognormal[:SIGMA]``, ``pareto[:ALPHA]``, or ``empirical:FILE`` (durations as they are),
    each capped at a day; drawn from ``random.Random(seed)`` so a run can be reproduced.
    The client file names every key once, in order; with ``tasks`` (or a ``popularity`` other
    than ``uniform``) it names ``tasks`` keys (default: as many as there are keys) drawn by
    ``popularity``: ``uniform`` or ``zipf[:S]`` (rank k with weight 1 / k^S, in the map's
    order), from a generator of its own so the map does not change with it. ``unknown``
    appends that many client tasks the server has no entry for, to exercise the error path.
    The defaults reproduce the shipped seed files.
    """
    commands = list(commands)
    response = operator.index(response)
    net = ipaddress.IPv4Network(network)
    if hosts < 1 or hosts > net.num_addresses:
        raise ValueError(f"hosts must be between 1 and {net.num_addresses} for {network}, "
                         f"not {hosts}")
    if not commands:
        raise ValueError("at least one command is needed")
    for command in commands:
        try:
            _check_command(command)
        except _Bad as exc:
            raise ValueError(str(exc)) from None
    if not math.isfinite(wait_mean) or wait_mean < 0:
        raise ValueError(f"wait_mean must be a finite number >= 0, not {wait_mean!r}")
    if unknown < 0:
        raise ValueError(f"unknown must be >= 0, not {unknown}")
    if tasks is not None and (isinstance(tasks, bool) or operator.index(tasks) < 1):
        raise ValueError(f"tasks must be at least 1, not {tasks!r}")

    rng = random.Random(seed)
    sample = distributions.wait_sampler(wait, wait_mean, rng)

    def draw() -> float:
        return min(sample(), MAX_WAIT_S)

    ips = [str(ip) for ip in itertools.islice(net, hosts)]
    keys = [f"{ip}:{command}" for ip in ips for command in commands]
    named = keys
    if tasks is not None or popularity != "uniform":
        named = distributions.pick_keys(popularity, keys, tasks or len(keys),
                                        random.Random(f"{seed}-popularity"))
    absent = next(name for name in (f"unknown{i}" for i in itertools.count())
                  if name not in commands)
    keys_unknown = [f"{ips[i % hosts]}:{absent}" for i in range(unknown)]

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    client, server = out / "client_data.txt", out / "server_data.txt"
    made_by = f"generated by comlab.data.generate(hosts={hosts}, network={network!r}"
    client.write_text(
        f"# comlab client tasks, one ip:command per line; {made_by}, unknown={unknown}"
        + (f", popularity={popularity!r}, tasks={len(named)})\n" if named is not keys else ")\n")
        + "".join(f"{key}\n" for key in named + keys_unknown),
        encoding="utf-8", newline="\n")
    server.write_text(
        f"# comlab server map, one ip:command:response:wait (seconds) per line; {made_by}, "
        f"response={response}, wait={wait!r}, wait_mean={wait_mean}, seed={seed})\n"
        + "".join(f"{key}:{response}:{_format_wait(draw())}\n" for key in keys),
        encoding="utf-8", newline="\n")
    return client, server
