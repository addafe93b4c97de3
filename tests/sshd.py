"""A real-sshd test lab: one namespace for the lab, one per SSH host, all on one bridge.

Layout (10.78.0.0/24, distinct from test_remote's 10.77.0.0/24)::

    bridge namespace (br0) --veth-- lab namespace   10.78.0.1    ssh client, server
                           --veth-- h1 namespace    10.78.0.11   /usr/sbin/sshd on :22
                           --veth-- h2 namespace    10.78.0.12   /usr/sbin/sshd on :22 ...

Each host runs a real ``sshd -D -e`` (under ``ip netns exec``) with its own sshd_config, its own
ed25519 host key and root login by key only; every key and file lives in ``tmp_dir``. The lab
gets an ssh client config (``Host h1 10.78.0.11`` ...) whose known_hosts holds each host's real key, so
``ip netns exec LAB ssh -F CONFIG h1 true`` logs in with no prompt. The namespaces share the
PID namespace of the tests: psutil sees remote processes.

Every namespace is named ``comlab-ssh{br,lab,1,2..}-PIDxTAG``, PID the test process that made it.
A test run killed before its teardown (SIGKILL, a lost terminal) leaves its namespaces and sshds
behind: the next ``ssh_namespaces`` stops and deletes those whose maker is gone
(``clear_leftovers``), never those of a run still in progress.

``ssh_namespaces`` skips (pytest.skip.Exception) where the machine cannot host this (not root,
no iproute2 or OpenSSH, namespaces refused); an sshd that will not start is a failure. On exit
every process in our namespaces is stopped (SIGTERM, then SIGKILL) and the namespaces deleted.
/run/sshd (sshd's privilege-separation dir) is created if missing and left in place: another
sshd may be using it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path

import psutil
import pytest

LAB_IP = "10.78.0.1"
SSHD = "/usr/sbin/sshd"
READY_TIMEOUT_S = 10.0
# ours: comlab-sshbr-, comlab-sshlab-, comlab-ssh1- ... then the maker's pid (names without
# one, made by an older version of this file, are left alone: their maker may be running)
OUR_NAMESPACE = re.compile(r"comlab-ssh(?:br|lab|\d+)-(\d+)x[0-9a-f]+")
STOP_GRACE_S = 2.0


def host_ip(i: int) -> str:
    """Address of host number i (1-based): 10.78.0.11, .12, ..."""
    return f"10.78.0.{10 + i}"


@dataclasses.dataclass
class SshHost:
    alias: str
    ns: str
    ip: str
    sshd_pid: int
    sshd_log: Path


@dataclasses.dataclass
class SshLab:
    lab_ns: str
    hosts: list[SshHost]
    ssh_config: str
    tmp_dir: Path
    client_key: Path

    @staticmethod
    def exec_in(ns: str) -> list[str]:
        return ["ip", "netns", "exec", ns]

    def ssh(self, alias: str, *command: str, config: str | None = None) -> list[str]:
        """argv that runs ``command`` on host ``alias`` from the lab namespace."""
        return [*self.exec_in(self.lab_ns), "ssh", "-F", config or self.ssh_config, alias,
                "--", *command]

    def remote_processes(self) -> list[psutil.Process]:
        """Live processes in the host namespaces other than sshd's own (listeners and
        sessions): what a remote command left running. conftest's leak check cannot see
        these once their session ended (re-parented to PID 1, without the run mark)."""
        found = []
        for h in self.hosts:
            for p in processes_in(h.ns):
                with contextlib.suppress(psutil.Error):
                    if p.name() != "sshd" and p.status() != psutil.STATUS_ZOMBIE:
                        found.append(p)
        return found

    def config_with_wrong_host_key(self) -> str:
        """A second client config, identical but for a known_hosts that holds a different
        (fresh) key for every host: ssh must refuse with "Host key verification failed"."""
        d = self.tmp_dir / "wrong"
        d.mkdir(exist_ok=True)
        keys = {}
        for h in self.hosts:
            keys[h.ip] = _pub(_keygen(d / f"{h.alias}_key", "wrong"))
        known = d / "known_hosts"
        _write_known_hosts(known, keys)
        path = d / "lab.ssh_config"
        path.write_text(_client_config(self.hosts, self.client_key, known))
        return str(path)


def _run(*argv, check=True, timeout=10) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout,
                          check=check)


def _keygen(path: Path, comment: str) -> Path:
    _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path))
    return path


def _pub(key: Path) -> str:
    """'ssh-ed25519 AAAA...' of a private key file (its .pub, without the comment)."""
    return " ".join(Path(f"{key}.pub").read_text().split()[:2])


def _write_known_hosts(path: Path, keys: dict[str, str]) -> None:
    path.write_text("".join(f"{ip} {pub}\n" for ip, pub in keys.items()))


def _client_config(hosts: list[SshHost], client_key: Path, known_hosts: Path) -> str:
    blocks = []
    for h in hosts:
        blocks.append(f"""Host {h.alias} {h.ip}
    HostName {h.ip}
    User root
    Port 22
    IdentityFile {client_key}
    IdentitiesOnly yes
    UserKnownHostsFile {known_hosts}
    GlobalKnownHostsFile /dev/null
    StrictHostKeyChecking yes
    UpdateHostKeys no
    BatchMode yes
    LogLevel ERROR
    ConnectTimeout 5
    ControlMaster no
    ControlPath none
""")
    return "\n".join(blocks)


def _sshd_config(ip: str, host_key: Path, authorized_keys: Path, pid_file: Path,
                 options: dict[str, str]) -> str:
    extra = "".join(f"{k} {v}\n" for k, v in options.items())  # first value wins in sshd
    if os.environ.get("PYTHONPATH"):  # remote sessions import the comlab under test, not an
        extra += f'SetEnv PYTHONPATH="{os.environ["PYTHONPATH"]}"\n'  # installed copy
    return extra + f"""ListenAddress {ip}:22
HostKey {host_key}
PidFile {pid_file}
AuthorizedKeysFile {authorized_keys}
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
X11Forwarding no
PrintMotd no
PrintLastLog no
"""


def processes_in(ns: str) -> list[psutil.Process]:
    """Processes whose network namespace is ``ns`` (`ip netns pids`)."""
    out = _run("ip", "netns", "pids", ns, check=False).stdout.split()
    procs = []
    for pid in out:
        with contextlib.suppress(psutil.Error, ValueError):
            procs.append(psutil.Process(int(pid)))
    return procs


def _maker_alive(ns: str, pid: str) -> bool:
    """Whether the process that made ``ns`` still runs: its pid, started before the namespace
    (a pid reused since then is another process)."""
    try:
        made = os.stat(f"/run/netns/{ns}").st_mtime
        return psutil.Process(int(pid)).create_time() <= made + 1
    except (OSError, psutil.Error):
        return False


def clear_leftovers() -> list[str]:
    """Stop every process in, and delete, the namespaces of ours whose maker is gone (a killed
    earlier run); returns their names."""
    listed = _run("ip", "netns", "list", check=False).stdout.split("\n")
    names = [line.split()[0] for line in listed if line.strip()]
    left = [ns for ns in names if (m := OUR_NAMESPACE.fullmatch(ns))
            and not _maker_alive(ns, m.group(1))]
    _stop_namespace_processes(left, [])
    for ns in left:
        _run("ip", "netns", "del", ns, check=False)
    return left


def _stop_namespace_processes(namespaces: list[str], children: list[subprocess.Popen]) -> None:
    """SIGTERM, then SIGKILL, every process in these namespaces (found with `ip netns pids`)
    and every child we started; reap our children."""
    procs = [p for ns in namespaces for p in processes_in(ns)]
    for c in children:
        with contextlib.suppress(psutil.Error):
            procs.append(psutil.Process(c.pid))
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.send_signal(signal.SIGTERM)
    _, alive = psutil.wait_procs(procs, timeout=STOP_GRACE_S)
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(alive, timeout=STOP_GRACE_S)
    for c in children:
        with contextlib.suppress(subprocess.TimeoutExpired):
            c.wait(timeout=STOP_GRACE_S)


def _wait_ready(lab: SshLab, procs: list[subprocess.Popen]) -> None:
    """Poll a login on every host until it works; an sshd that exits fails with its log."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    pending = dict(zip((h.alias for h in lab.hosts), zip(lab.hosts, procs)))
    last = {}
    while pending:
        for alias, (host, proc) in list(pending.items()):
            if proc.poll() is not None:
                raise RuntimeError(f"sshd of {alias} exited with {proc.returncode}: "
                                   f"{host.sshd_log.read_text()[-3000:]}")
            r = _run(*lab.ssh(alias, "true"), check=False, timeout=READY_TIMEOUT_S)
            if r.returncode == 0:
                del pending[alias]
            else:
                last[alias] = r.stderr.strip()
        if pending and time.monotonic() > deadline:
            logs = {a: h.sshd_log.read_text()[-1500:] for a, (h, _) in pending.items()}
            raise RuntimeError(f"no login within {READY_TIMEOUT_S:g} s on {sorted(pending)}: "
                               f"ssh said {last}; sshd logs: {logs}")
        if pending:
            time.sleep(0.05)


@contextlib.contextmanager
def ssh_namespaces(tmp_dir, n_hosts: int = 3, sshd_options: dict[str, str] | None = None):
    """Yield an SshLab of ``n_hosts`` real sshd hosts; see the module docstring.
    ``sshd_options`` (e.g. {"LogLevel": "DEBUG1", "ClientAliveInterval": "1"}) go into every
    sshd_config ahead of the defaults, so they override them."""
    if os.geteuid() != 0:
        pytest.skip("network namespaces and sshd need root")
    for tool in ("ip", "ssh", "ssh-keygen"):
        if shutil.which(tool) is None:
            pytest.skip(f"no `{tool}` command (install iproute2 / openssh-client)")
    if not os.access(SSHD, os.X_OK):
        pytest.skip(f"no {SSHD} (install openssh-server)")
    tmp = Path(tmp_dir) / "sshlab"
    tmp.mkdir(parents=True, exist_ok=False)
    clear_leftovers()
    tag = f"{os.getpid()}x{uuid.uuid4().hex[:4]}"
    bridge, lab_ns = f"comlab-sshbr-{tag}", f"comlab-sshlab-{tag}"
    made: list[str] = []
    procs: list[subprocess.Popen] = []
    try:
        first = _run("ip", "netns", "add", bridge, check=False)
        if first.returncode != 0:
            pytest.skip(f"`ip netns add` failed: {first.stderr.strip()}")
        made.append(bridge)
        addrs = [(lab_ns, LAB_IP)]
        addrs += [(f"comlab-ssh{i}-{tag}", host_ip(i)) for i in range(1, n_hosts + 1)]
        try:
            _run("ip", "-n", bridge, "link", "add", "br0", "type", "bridge")
            _run("ip", "-n", bridge, "link", "set", "br0", "up")
            for i, (ns, addr) in enumerate(addrs):
                _run("ip", "netns", "add", ns)
                made.append(ns)
                _run("ip", "link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name",
                     f"p{i}", "netns", bridge)
                _run("ip", "-n", bridge, "link", "set", f"p{i}", "master", "br0", "up")
                _run("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", "eth0")
                _run("ip", "-n", ns, "link", "set", "eth0", "up")
                _run("ip", "-n", ns, "link", "set", "lo", "up")
        except subprocess.CalledProcessError as exc:
            pytest.skip(f"cannot set up namespaces: {' '.join(exc.cmd)}: {exc.stderr.strip()}")

        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        client_key = _keygen(tmp / "client_key", "comlab-lab")
        authorized = tmp / "authorized_keys"
        authorized.write_text(Path(f"{client_key}.pub").read_text())
        hosts, keys = [], {}
        for i, (ns, ip) in enumerate(addrs[1:], start=1):
            d = tmp / f"h{i}"
            d.mkdir()
            host_key = _keygen(d / "ssh_host_ed25519_key", f"h{i}")
            keys[ip] = _pub(host_key)
            cfg = d / "sshd_config"
            cfg.write_text(_sshd_config(ip, host_key, authorized, d / "sshd.pid",
                                        sshd_options or {}))
            log = d / "sshd.log"
            with open(log, "wb") as err:
                proc = subprocess.Popen(["ip", "netns", "exec", ns, SSHD, "-D", "-e", "-f",
                                         str(cfg)], stdin=subprocess.DEVNULL,
                                        stdout=err, stderr=err, start_new_session=True)
            procs.append(proc)  # `ip netns exec` execs: this pid is sshd's own
            hosts.append(SshHost(alias=f"h{i}", ns=ns, ip=ip, sshd_pid=proc.pid, sshd_log=log))
        known = tmp / "known_hosts"
        _write_known_hosts(known, keys)
        config = tmp / "lab.ssh_config"
        config.write_text(_client_config(hosts, client_key, known))
        lab = SshLab(lab_ns=lab_ns, hosts=hosts, ssh_config=str(config), tmp_dir=tmp,
                     client_key=client_key)
        _wait_ready(lab, procs)
        yield lab
    finally:
        _stop_namespace_processes(made, procs)
        for ns in reversed(made):
            _run("ip", "netns", "del", ns, check=False)


@pytest.fixture
def ssh_lab(tmp_path):
    """Three real sshd hosts (h1..h3) and a lab namespace; see ssh_namespaces."""
    with ssh_namespaces(tmp_path) as lab:
        yield lab
