"""Worker hosts the lab starts itself: over SSH, on this machine, or under a command prefix.

An entry says where and how (``hosts=[...]``, ``comlab sweep --hosts``, a hosts file, one entry
per line)::

    ssh://[user@]host[:port] [workers=N] [python=PATH] [workdir=DIR] [name=NAME]
    local [workers=N] [python=PATH] [workdir=DIR]
    ip netns exec h1 [workers=N] ...          (any command prefix: the words before the options)

For each host the lab first runs a probe with the host's Python (its comlab and protocol
version must be this one's: a mismatch is a one-line error naming the host), then starts
``comlab.system.worker_host`` there with ``--watch-stdin --death-timeout``, hands it the
CurveZMQ worker keys on stdin when the sweep is secure, and waits for its ready line. Its stderr
(through SSH, as it is written) goes to ``<result>/hosts/<name>.log``.

SSH is the system OpenSSH client, as Ray's launcher does, not asyncssh (dask): users' hosts
are already set up in ``~/.ssh/config`` (aliases, keys, agents, ProxyJump, known_hosts), which
OpenSSH reads and asyncssh only partly; it needs no new dependency; and its process gives the
lifetime rule for free. Connection sharing is switched off (``ControlPath=none``) so that each
host's channel is its own and closes with its ``ssh`` process.

Lifetime: a host lives as long as its stdin. The lab's exit, exception, Ctrl-C or a kernel
interrupt closes it (``HostGroup.__exit__``); a SIGKILLed lab's pipes close with it; either way
ssh sends EOF on the channel, and the worker host stops its workers within 2 s. A lab that is
frozen or cut off without the channel closing stops sending its 1 s heartbeat, and the host
stops after ``DEATH_TIMEOUT_S``; ssh's ServerAlive probes end the lab's side of a dead
connection after ~6 s, which the lab reports as a lost host.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import shlex
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import processes

OPTIONS = ("workers", "python", "workdir", "name")
HEARTBEAT_S = 1.0
DEATH_TIMEOUT_S = 10.0     # long enough for a lab busy in one long C call (GIL held)
PROBE_TIMEOUT_S = 30.0
READY_TIMEOUT_S = 60.0     # a remote Python and its workers start: slow on a loaded machine
READY_LINE_MAX = 1 << 20  # bytes of stdout before the ready line (a login banner is fine)
STOP_GRACE_S = 3.0         # stdin closed -> the host's own 2 s stop -> ssh exits
TERM_GRACE_S = 0.5         # after a SIGTERM, before the SIGKILL
SSH_OPTIONS = ("-T", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10",
               "-o", "ServerAliveInterval=2", "-o", "ServerAliveCountMax=3",
               "-o", "ControlMaster=no", "-o", "ControlPath=none")
PROBE_MARK = "COMLAB-PROBE "
PROBE = (
    "import json, os, socket, sys\n"
    "try:\n"
    "    import comlab\n"
    "    from comlab.system import protocol\n"
    "    found = {'comlab': comlab.__version__, 'protocol': protocol.VERSION}\n"
    "except Exception as exc:\n"
    "    found = {'error': type(exc).__name__ + ': ' + str(exc)}\n"
    "found.update(python=sys.version.split()[0], executable=sys.executable,\n"
    "             hostname=socket.gethostname(), cpus=os.cpu_count(), cwd=os.getcwd())\n"
    f"print({PROBE_MARK!r} + json.dumps(found), flush=True)\n")


class HostError(RuntimeError):
    """A host could not be used: bad entry, unreachable, wrong Python, version mismatch, or it
    did not start."""


class HostLost(HostError):
    """A host that had joined is gone: the run it was part of is not a measurement."""


class WorkersLost(HostLost):
    """The server lost or retried a worker during a run (a host gone or frozen, a local worker
    killed or wedged): the run is not a measurement, and is refused as for a lost host."""


@dataclass(frozen=True)
class Host:
    """One entry: ``kind`` is "ssh", "local" or "prefix"."""
    kind: str
    target: str = ""            # ssh: [user@]host; prefix: the command words, shell-quoted
    port: int | None = None
    workers: int = 1
    python: str | None = None   # None: this interpreter (local, prefix) or python3 (ssh)
    workdir: str | None = None
    name: str = ""
    entry: str = field(default="", compare=False)

    @property
    def prefix(self) -> list[str]:
        return shlex.split(self.target) if self.kind == "prefix" else []

    def interpreter(self) -> str:
        if self.python:
            return self.python
        return "python3" if self.kind == "ssh" else sys.executable

    def describe(self) -> dict:
        """What meta.json keeps (and a resume compares)."""
        return {"entry": self.entry, "name": self.name, "workers": self.workers,
                "python": self.interpreter(), "workdir": self.workdir}


def parse_entry(text: str, default_workers: int = 1, where: str = "") -> Host:
    """One entry (see the module doc); ``where`` ("hosts.txt:3") prefixes any error."""
    at = f"{where}: " if where else ""
    try:
        words = shlex.split(text)
    except ValueError as exc:
        raise ValueError(f"{at}cannot parse host entry {text!r}: {exc}") from None
    opts, head = {}, []
    for word in words:
        key, eq, value = word.partition("=")
        if eq and key in OPTIONS:
            if key in opts:
                raise ValueError(f"{at}{key}= given twice in host entry {text!r}")
            opts[key] = value
        elif opts:
            raise ValueError(f"{at}host entry {text!r}: {word!r} after the options; put the "
                             f"host first, then {', '.join(k + '=' for k in OPTIONS)}")
        else:
            head.append(word)
    if not head:
        raise ValueError(f"{at}host entry {text!r} names no host (ssh://HOST, local or a "
                         f"command prefix)")
    workers = default_workers
    if "workers" in opts:
        try:
            workers = int(opts["workers"])
        except ValueError:
            workers = 0
        if workers < 1 or str(workers) != opts["workers"]:
            raise ValueError(f"{at}host entry {text!r}: workers must be an integer >= 1, got "
                             f"{opts['workers']!r}")
    for key in ("python", "workdir", "name"):
        if key in opts and not opts[key]:
            raise ValueError(f"{at}host entry {text!r}: {key}= is empty")
    common = dict(workers=workers, python=opts.get("python"), workdir=opts.get("workdir"),
                  entry=text.strip())
    first = head[0]
    if first.startswith("ssh://"):
        if len(head) > 1:
            raise ValueError(f"{at}host entry {text!r}: an ssh:// entry is one word, then "
                             f"options")
        target, port = _ssh_target(first, at)
        host = target.rpartition("@")[2]
        return Host("ssh", target, port, name=opts.get("name", host), **common)
    if "://" in first:
        raise ValueError(f"{at}host entry {text!r}: unknown scheme "
                         f"{first.partition('://')[0]!r}; use ssh://, local or a command prefix")
    if head == ["local"]:
        return Host("local", name=opts.get("name", "local"), **common)
    return Host("prefix", shlex.join(head), name=opts.get("name", head[-1]), **common)


def _ssh_target(url: str, at: str) -> tuple[str, int | None]:
    rest = url[len("ssh://"):].rstrip("/")
    user, _, hostport = rest.rpartition("@")
    host, colon, port = hostport.partition(":")
    bad = (not host or "/" in hostport or any(c.isspace() for c in rest)
           or (user == "" and "@" in rest))
    if colon:
        bad = bad or not port.isdigit() or not 0 < int(port) < 65536
    if bad:
        raise ValueError(f"{at}bad ssh entry {url!r}: expected ssh://[user@]host[:port]")
    return (f"{user}@{host}" if user else host), (int(port) if colon else None)


def parse_hosts(hosts, default_workers: int = 1) -> list[Host]:
    """``hosts``: a list of entries (strings or Host), or the path of a hosts file (one entry
    per line, ``#`` comments). Names must be unique; errors name the file and line."""
    if isinstance(hosts, (str, os.PathLike)):
        return read_hosts_file(hosts, default_workers)
    if not isinstance(hosts, (list, tuple)):
        raise TypeError(f"hosts must be a list of entries or a hosts file's path, got "
                        f"{type(hosts).__name__}")
    out = [h if isinstance(h, Host) else parse_entry(_entry_text(h), default_workers)
           for h in hosts]
    return _unique(out, "hosts")


def _entry_text(h) -> str:
    if not isinstance(h, str):
        raise TypeError(f"a host entry is a string like 'ssh://user@host workers=4', got "
                        f"{type(h).__name__}")
    return h


def read_hosts_file(path, default_workers: int = 1) -> list[Host]:
    try:
        lines = Path(path).read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read hosts file {path}: {exc}") from None
    out = []
    for n, line in enumerate(lines, 1):
        line = line.split("#", 1)[0].strip()
        if line:
            out.append(parse_entry(line, default_workers, where=f"{path}:{n}"))
    if not out:
        raise ValueError(f"hosts file {path} has no entries")
    return _unique(out, str(path))


def _unique(hosts: list[Host], where: str) -> list[Host]:
    seen = set()
    for h in hosts:
        if h.name in seen:
            raise ValueError(f"{where}: two hosts are named {h.name!r}: give one a name=")
        seen.add(h.name)
    if not hosts:
        raise ValueError("hosts is empty")
    return hosts


# -- one host ---------------------------------------------------------------------------------
def command(host: Host, argv: list[str], ssh_config: str | None = None) -> list[str]:
    """The local command that runs ``argv`` (a Python command line) on ``host``."""
    env = [] if host.kind == "local" else ["env", f"COMLAB_HOST={host.name}"]
    if host.kind != "ssh":
        return [*host.prefix, *env, host.interpreter(), *argv]
    remote = shlex.join(["exec", *env, host.interpreter(), *argv])
    if host.workdir:
        remote = f"cd {shlex.quote(host.workdir)} && {remote}"
    ssh = ["ssh", *SSH_OPTIONS]
    if ssh_config:
        ssh += ["-F", str(ssh_config)]
    if host.port:
        ssh += ["-p", str(host.port)]
    return [*ssh, host.target, "--", remote]


def _cwd(host: Host) -> str | None:
    return host.workdir if host.kind != "ssh" else None


def probe(host: Host, ssh_config: str | None = None, timeout: float = PROBE_TIMEOUT_S) -> dict:
    """Run the probe with the host's Python; its answer, or HostError saying what went wrong."""
    from .. import __version__
    from ..system.protocol import VERSION
    where = f"host {host.name} ({host.entry})"
    try:
        done = subprocess.run(command(host, ["-c", PROBE], ssh_config), capture_output=True,
                              text=True, timeout=timeout, stdin=subprocess.DEVNULL,
                              cwd=_cwd(host), errors="replace")
    except subprocess.TimeoutExpired:
        raise HostError(f"{where}: no answer within {timeout:g} s") from None
    except OSError as exc:  # no ssh, a prefix that is not a command, a missing workdir
        raise HostError(f"{where}: cannot run {exc.filename or 'it'}: {exc.strerror}") from None
    said = _last_line(done.stderr)
    line = next((x for x in done.stdout.splitlines() if x.startswith(PROBE_MARK)), None)
    found = None
    if line is not None:
        try:
            found = json.loads(line[len(PROBE_MARK):])
            if not (isinstance(found, dict) and "executable" in found and
                    ("error" in found or {"comlab", "protocol"} <= found.keys())):
                raise ValueError(line)
        except ValueError:
            raise HostError(f"{where}: its probe answered {line[:120]!r}, not comlab's "
                            f"answer") from None
    if found is None:
        if host.kind == "ssh" and done.returncode == 255:
            raise HostError(f"{where}: ssh failed: {said or 'exit code 255'}")
        if done.returncode in (126, 127):
            raise HostError(f"{where}: cannot run {host.interpreter()} there: "
                            f"{said or f'exit code {done.returncode}'}")
        raise HostError(f"{where}: {host.interpreter()} exited with code {done.returncode}"
                        f"{': ' + said if said else ''}")
    if "error" in found:
        raise HostError(f"{where}: {found['executable']} cannot import comlab: "
                        f"{found['error']}")
    if (found["comlab"], found["protocol"]) != (__version__, VERSION):
        raise HostError(f"{where}: comlab {found['comlab']} (protocol {found['protocol']}) "
                        f"there, {__version__} (protocol {VERSION}) here: install this comlab "
                        f"on it (python={found['executable']})")
    return found


def _last_line(text: str) -> str:
    lines = [x.strip() for x in (text or "").splitlines() if x.strip()]
    return lines[-1] if lines else ""


def _each(fn, items: list) -> list:
    """``fn`` over items in parallel (a hundred ssh logins one after another take minutes);
    the first error in the items' order is raised."""
    if len(items) == 1:
        return [fn(items[0])]
    with concurrent.futures.ThreadPoolExecutor(min(32, len(items))) as pool:
        futures = [pool.submit(fn, x) for x in items]
        return [f.result() for f in futures]


def probe_all(hosts: list[Host], ssh_config: str | None = None) -> dict:
    """Every host's probe, in parallel: name -> what it found (HostError for the first bad)."""
    return dict(zip((h.name for h in hosts), _each(lambda h: probe(h, ssh_config), hosts)))


def _ready_info(line: bytes) -> dict | None:
    try:
        info = json.loads(line)
    except ValueError:
        return None
    return info if isinstance(info, dict) and "workers" in info else None


class HostProcess:
    """``comlab.system.worker_host`` running on one host, its stderr in ``log_path``."""

    def __init__(self, host: Host, workers_url: str, log_path, *, keys: dict | None = None,
                 ssh_config: str | None = None, death_timeout: float = DEATH_TIMEOUT_S) -> None:
        self.host, self.log_path = host, Path(log_path)
        self.where = f"host {host.name} ({host.entry})"
        argv = ["-m", "comlab.system.worker_host", workers_url, "--workers", str(host.workers),
                "--watch-stdin", "--death-timeout", f"{death_timeout:g}", "--ready-json"]
        if keys is not None:
            argv.append("--keys-stdin")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")
        self._log.write(f"--- comlab lab: starting {host.entry} at "
                        f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode())
        self._log.flush()
        self.lock = threading.Lock()  # the heartbeat thread and the owner both write stdin
        try:
            self.proc = subprocess.Popen(command(host, argv, ssh_config), stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, stderr=self._log,
                                         cwd=_cwd(host), start_new_session=True,
                                         env={**os.environ, "PYTHONUNBUFFERED": "1"})
        except OSError as exc:
            self._log.close()
            raise HostError(f"{self.where}: cannot start: {exc}") from None
        self.info: dict | None = None
        if keys is not None:
            self.send((json.dumps(keys) + "\n").encode())

    def send(self, data: bytes) -> bool:
        with self.lock:
            try:
                self.proc.stdin.write(data)
                self.proc.stdin.flush()
                return True
            except (OSError, ValueError):
                return False

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> dict:
        """The worker host's ready line (its host name, pid and worker names); lines before it
        (a login banner, a profile's echo) are skipped."""
        import selectors
        fd = self.proc.stdout.fileno()
        buf = b""
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while True:
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    info = _ready_info(line)
                    if info is not None:
                        self.info = info
                        return info
                left = deadline - time.monotonic()
                if left <= 0 or not sel.select(left):
                    raise self.failure(f"not ready within {timeout:g} s")
                chunk = os.read(fd, 65536)
                if not chunk:
                    self.proc.wait(STOP_GRACE_S)
                    raise self.failure(f"exited before it was ready (exit code "
                                       f"{self.proc.returncode})")
                buf += chunk
                if len(buf) > READY_LINE_MAX:  # a host printing without end: not comlab's
                    raise self.failure(f"printed {len(buf)} bytes and no ready line")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def failure(self, what: str, cls=HostError) -> HostError:
        self._log.flush()
        last = processes.tail(self.log_path, 10)
        last = "\n".join(x for x in last.splitlines() if not x.startswith("--- comlab lab:"))
        return cls(f"{self.where}: {what}; its log {self.log_path}"
                   + (f", last lines:\n{last}" if last.strip() else " is empty"))

    def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """Close stdin (the host stops itself), then SIGTERM, then SIGKILL ssh: bounded."""
        with self.lock:
            with contextlib.suppress(OSError, ValueError):
                self.proc.stdin.close()
        self.reap(grace_s)

    def reap(self, grace_s: float) -> None:
        """The lab's stop policy (comlab.lab.processes.end) on the local process (ssh, or the
        worker host itself): ``grace_s`` to exit, SIGTERM, TERM_GRACE_S, SIGKILL of its group;
        close up."""
        proc = self.proc
        processes.end(proc, grace_s, TERM_GRACE_S)
        with contextlib.suppress(OSError, ValueError):
            proc.stdout.close()
        if not self._log.closed:
            self._log.write(f"--- comlab lab: {self.host.name} ended with exit code "
                            f"{proc.returncode}\n".encode())
            self._log.close()


# -- all hosts of a sweep ---------------------------------------------------------------------
class HostGroup:
    """Every host of a sweep, started together and stopped together (a context manager).

    ``check()`` raises HostLost when a host is gone; ``restart(name)`` starts it again."""

    def __init__(self, hosts: list[Host], workers_url: str, log_dir, *,
                 ssh_config: str | None = None, keys: dict | None = None,
                 death_timeout: float = DEATH_TIMEOUT_S, probes: dict | None = None) -> None:
        """``probes``: what ``probe_all`` found already (else the hosts are probed first)."""
        self.hosts, self.workers_url, self.log_dir = hosts, workers_url, Path(log_dir)
        self.ssh_config, self.keys, self.death_timeout = ssh_config, keys, death_timeout
        self.procs: dict[str, HostProcess] = {}
        self.probes: dict[str, dict] = dict(probes or {})
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    def __enter__(self) -> "HostGroup":
        try:
            if set(self.probes) != {h.name for h in self.hosts}:
                self.probes = probe_all(self.hosts, self.ssh_config)
            for h in self.hosts:
                self.procs[h.name] = self._start(h)
            _each(lambda p: p.wait_ready(), list(self.procs.values()))
            self._beat = threading.Thread(target=self._heartbeat, daemon=True,
                                          name="comlab-host-heartbeat")
            self._beat.start()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        procs = list(self.procs.values())
        for p in procs:  # every host hears EOF at once: the stops overlap
            with p.lock, contextlib.suppress(OSError, ValueError):
                p.proc.stdin.close()
        deadline = time.monotonic() + STOP_GRACE_S  # one bound for all, however many hosts
        for p in procs:
            processes.exits_within(p.proc, max(0.0, deadline - time.monotonic()))
        for p in procs:
            processes.terminate(p.proc)  # ssh gone: the remote side sees EOF all the same
        for p in procs:
            p.reap(max(0.0, deadline + 1.0 - time.monotonic()))
        if self._beat is not None:
            self._beat.join(HEARTBEAT_S + 1)

    def _start(self, h: Host) -> HostProcess:
        keys = self.keys(h.name) if callable(self.keys) else self.keys  # per host, or shared
        return HostProcess(h, self.workers_url, self.log_dir / f"{h.name}.log", keys=keys,
                           ssh_config=self.ssh_config, death_timeout=self.death_timeout)

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            for p in list(self.procs.values()):
                if p.alive():
                    p.send(b".")

    def lost(self) -> list[HostProcess]:
        return [p for p in self.procs.values() if not p.alive()]

    def check(self, wait_s: float = 0.0) -> None:
        """HostLost naming every host that is gone (waiting up to ``wait_s`` for one to be),
        with what it printed last."""
        deadline = time.monotonic() + wait_s
        while not (gone := self.lost()) and time.monotonic() < deadline:
            time.sleep(0.02)
        if gone:
            p = gone[0]
            raise p.failure(f"was lost (exit code {p.proc.returncode})"
                            + (f"; also lost: {', '.join(q.host.name for q in gone[1:])}"
                               if gone[1:] else ""), cls=HostLost)

    def restart(self, name: str) -> dict:
        """Start a lost host again; its ready line."""
        old = self.procs[name]
        old.reap(0.0)
        p = self.procs[name] = self._start(old.host)
        return p.wait_ready()

    def worker_names(self) -> set[str]:
        return {w for p in self.procs.values() if p.info for w in p.info["workers"]}

    def describe(self) -> list[dict]:
        """meta.json's account of the hosts: the entries and what their probes found."""
        return [{**h.describe(), **{k: v for k, v in self.probes.get(h.name, {}).items()
                                    if k in ("hostname", "python", "executable", "cpus",
                                             "comlab", "protocol")}}
                for h in self.hosts]
