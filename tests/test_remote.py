"""Beyond one host: worker hosts over TCP, a lost remote worker, CurveZMQ, clock offsets, and a
real sweep across three network namespaces (client, server, worker host) joined by a bridge.

Loopback only, or addresses inside namespaces this module creates (10.77.0.0/24, in a bridge
namespace of its own) and deletes. Every test has a timeout; the conftest leak check guards
every test, and each process started here is stopped at teardown.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid

import numpy as np
import psutil
import pytest
import zmq

from comlab import data
from comlab.system import protocol as P
from comlab.system.client import Client, NoServer

from conftest import _Drain, _read_ready_line, free_tcp_url


# -- helpers -----------------------------------------------------------------------------------
def keys_of(client_file) -> list[str]:
    return [f"{ip}:{cmd}" for ip, cmd in data.read_commands(client_file)]


def control(url: str, *request, timeout: float = 5.0):
    """One request on a server's control socket; the answer's payload."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(url)
        sock.send(P.Control(request[0], list(request[1:])).pack())
        assert sock.poll(timeout * 1000), f"no answer to {request!r} from {url}"
        return P.ControlReply.decode(sock.recv()).payload
    finally:
        sock.close(0)
        ctx.term()


def wait_workers(ctl: str, n: int, timeout: float = 20.0) -> list:
    deadline = time.monotonic() + timeout
    while True:
        workers = control(ctl, "stats")["workers"]
        if len(workers) >= n or time.monotonic() > deadline:
            return workers
        time.sleep(0.05)


class WorkerHosts:
    """Factory for ``comlab.system.worker_host`` processes (optionally under a command prefix);
    every one is stopped (SIGTERM, then SIGKILL) at teardown."""

    def __init__(self):
        self.procs: list[tuple[subprocess.Popen, _Drain]] = []

    def start(self, url: str, n: int, *extra: str, host: str, prefix=(),
              wait_ready: bool = True) -> subprocess.Popen:
        cmd = [*prefix, sys.executable, "-m", "comlab.system.worker_host", url, "--workers", str(n),
               "--ready-json", *extra]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                start_new_session=True,
                                env={**os.environ, "COMLAB_HOST": host})
        err = _Drain(proc.stderr)
        self.procs.append((proc, err))
        if wait_ready:
            info, raw = _read_ready_line(proc, 30)
            assert info is not None, f"worker host not ready: {raw!r} {err.text()[-2000:]}"
            assert len(info["workers"]) == n and info["host"] == host
            proc.info = info
        return proc

    def stop(self, proc: subprocess.Popen, grace: float = 5.0) -> float:
        """SIGTERM; the seconds it took the host (and so its workers) to exit."""
        t0 = time.monotonic()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        return time.monotonic() - t0

    def close(self):
        for proc, err in self.procs:
            self.stop(proc)
            err.join(1)
            for pipe in (proc.stdout, proc.stderr):
                pipe.close()


@pytest.fixture
def worker_hosts(no_process_leak):
    hosts = WorkerHosts()
    yield hosts
    hosts.close()


def workers_of(host: subprocess.Popen) -> list[psutil.Process]:
    """The worker processes of a worker host: the children of its forkserver."""
    out = []
    for child in psutil.Process(host.pid).children():
        try:
            if "forkserver" in " ".join(child.cmdline()):
                out += child.children()
        except psutil.Error:
            pass
    return out


# -- (a) a worker host on loopback -------------------------------------------------------------
@pytest.mark.timeout(45)
def test_worker_host_serves_a_remote_only_server(make_data, server_proc, worker_hosts,
                                                 tmp_path):
    client_file, server_file = make_data(n=64, wait=0.01)
    wurl, ctl = free_tcp_url(), f"ipc://{tmp_path}/ctl"
    server = server_proc(server_file, 0, "--workers-url", wurl, "--control", ctl)
    assert server.info["workers"] == 0
    host = worker_hosts.start(wurl, 2, host="remote-a")
    joined = wait_workers(ctl, 2)
    assert sorted(w["name"] for w in joined) == sorted(host.info["workers"])
    assert {w["host"] for w in joined} == {"remote-a"}
    assert all(name.startswith(f"remote-a/{host.pid}/") for name in host.info["workers"])

    run = Client(keys_of(client_file), 8, "tcp://127.0.0.1:*", server.url, timeout=20).run()
    cols = run.columns()
    assert (cols["status"] == P.OK).all(), np.bincount(cols["status"])
    assert set(cols["host"]) == {"remote-a"}
    assert set(cols["worker"]) <= set(host.info["workers"])

    # Clock exchange with the worker host over the ROUTER: same machine, so the estimated
    # offset is within the round trip.
    assert control(ctl, "clock-workers", 5) == ["remote-a"]
    deadline = time.monotonic() + 5
    while (clk := control(ctl, "worker-clocks").get("remote-a", {})).get("samples", 0) < 5:
        assert time.monotonic() < deadline, clk
        time.sleep(0.01)
    assert abs(clk["offset_ns"]) <= clk["rtt_ns"], clk

    # SIGTERM: the host and its workers are gone within 2 s (the leak check sees the rest).
    workers = workers_of(host)
    assert len(workers) == 2
    assert worker_hosts.stop(host) < 2.0
    assert not [p for p in workers if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


@pytest.mark.timeout(45)
def test_lost_remote_worker_batch_is_retried(make_data, server_proc, worker_hosts, tmp_path):
    """Workers SIGKILLed mid-batch on one host: the server sees the disconnect, probes, gets
    EHOSTUNREACH and retries their batches; the host starts replacements."""
    client_file, server_file = make_data(n=32, wait=0.4)
    wurl, ctl = free_tcp_url(), f"ipc://{tmp_path}/ctl"
    server = server_proc(server_file, 0, "--workers-url", wurl, "--control", ctl)
    doomed = worker_hosts.start(wurl, 2, host="doomed")
    worker_hosts.start(wurl, 2, host="steady")
    assert len(wait_workers(ctl, 4)) == 4
    victims = workers_of(doomed)

    def kill_later():
        deadline = time.monotonic() + 15
        while control(ctl, "stats")["busy"] < 4 and time.monotonic() < deadline:
            time.sleep(0.01)  # until every worker holds a batch (0.4 s each)
        for p in victims:
            p.kill()

    killer = threading.Thread(target=kill_later)
    killer.start()
    run = Client(keys_of(client_file), 4, "tcp://127.0.0.1:*", server.url, timeout=20).run()
    killer.join()
    cols = run.columns()
    assert (cols["status"] == P.OK).all(), np.bincount(cols["status"])
    assert (cols["attempt"] == 1).sum() >= 4  # at least one batch ran twice
    stats = control(ctl, "stats")
    assert stats["retried"] >= 1 and stats["workers_lost"] >= 1, stats
    assert len(wait_workers(ctl, 4)) >= 4  # the replacements joined


@pytest.mark.timeout(60)
def test_run_experiment_with_remote_workers(make_data, worker_hosts, tmp_path):
    import comlab
    client_file, server_file = make_data(n=64, wait=0.01)
    wurl = free_tcp_url()
    worker_hosts.start(wurl, 2, host="remote-b")
    df = comlab.run_experiment(batch_sizes=[8], workers=[0, 1], remote_workers=2,
                               workers_url=wurl, repeats=1, commands=str(client_file),
                               server_map=str(server_file), results_dir=tmp_path,
                               name="remote", progress=False)
    assert (df["status"] == "ok").all()
    assert sorted(df["workers"].unique()) == [2, 3]  # local + remote
    assert set(df.loc[df["workers"] == 2, "host"]) == {"remote-b"}
    assert "remote-b" in set(df.loc[df["workers"] == 3, "host"])  # rejoined the 2nd server
    assert (df["t_started"] >= df["t_server_in"]).all()
    meta = comlab.load_meta(tmp_path / "remote")
    for run in meta["runs"]:
        hosts = run["clock"]["hosts"]
        assert "remote-b" in hosts and hosts["remote-b"]["applied"]
        for h in hosts.values():  # one machine: each estimate within its uncertainty
            assert abs(h["offset_s"]) <= h["uncertainty_s"], hosts


# -- (b) CurveZMQ --------------------------------------------------------------------------------
def make_keys(tmp_path):
    """A deployment (comlab keys) plus a copy where one role's keypair is a stranger's."""
    good = tmp_path / "keys"
    out = subprocess.run([sys.executable, "-m", "comlab.cli", "keys", str(good)],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert (good / "authorized" / "client.key").exists()
    import zmq.auth
    bad = tmp_path / "stranger"
    shutil.copytree(good, bad)
    for role in ("client", "worker"):
        zmq.auth.create_certificates(bad, role)  # not in the server's authorized/
    return good, bad


@pytest.mark.timeout(45)
def test_curve_trusted_client_served_stranger_refused(make_data, server_proc, tmp_path):
    from comlab.system.security import Curve
    good, bad = make_keys(tmp_path)
    client_file, server_file = make_data(n=32, wait=0.0)
    server = server_proc(server_file, 1, "--curve-keys", good)
    keys = keys_of(client_file)

    run = Client(keys, 8, "tcp://127.0.0.1:*", server.url, timeout=20,
                 security=Curve.load(good, "client")).run()
    assert (run.columns()["status"] == P.OK).all()

    for security in (Curve.load(bad, "client"), None):  # unknown key; no keys at all
        t0 = time.monotonic()
        with pytest.raises(NoServer):
            Client(keys, 8, "tcp://127.0.0.1:*", server.url, timeout=5, hello_timeout=1.0,
                   security=security).run()
        assert time.monotonic() - t0 < 5

    run = Client(keys, 8, "tcp://127.0.0.1:*", server.url, timeout=20,
                 security=Curve.load(good, "client")).run()  # still fine
    assert (run.columns()["status"] == P.OK).all()


@pytest.mark.timeout(45)
def test_curve_stranger_worker_host_gets_no_work(make_data, server_proc, worker_hosts,
                                                 tmp_path):
    from comlab.system.security import Curve
    good, bad = make_keys(tmp_path)
    client_file, server_file = make_data(n=32, wait=0.0)
    wurl, ctl = free_tcp_url(), f"ipc://{tmp_path}/ctl"
    server = server_proc(server_file, 0, "--workers-url", wurl, "--control", ctl,
                         "--curve-keys", good)
    keys = keys_of(client_file)
    worker_hosts.start(wurl, 1, "--curve-keys", str(bad), host="stranger")
    time.sleep(0.5)
    assert control(ctl, "stats")["workers"] == []
    run = Client(keys, 8, "tcp://127.0.0.1:*", server.url, timeout=1.0,
                 security=Curve.load(good, "client")).run()
    assert (run.columns()["status"] == P.LOST).all()  # nobody did anything

    worker_hosts.start(wurl, 1, "--curve-keys", str(good), host="trusted")
    assert [w["host"] for w in wait_workers(ctl, 1)] == ["trusted"]
    run = Client(keys, 8, "tcp://127.0.0.1:*", server.url, timeout=20,
                 security=Curve.load(good, "client")).run()
    cols = run.columns()
    assert (cols["status"] == P.OK).all() and set(cols["host"]) == {"trusted"}
    assert [w["host"] for w in control(ctl, "stats")["workers"]] == ["trusted"]


# -- (c) three network namespaces ------------------------------------------------------------------
SUBNET = "10.77.0"
CLIENT_IP, SERVER_IP, WORKER_IP = f"{SUBNET}.1", f"{SUBNET}.2", f"{SUBNET}.3"
WORKERS_PORT = 5558

# The same sweep runs on one host for comparison (README's closing data).
SWEEP = dict(batch_sizes=[2, 8, 32], workers=[0], remote_workers=2, repeats=1,
             wait_scale=0.01, progress=False)

SWEEP_SCRIPT = textwrap.dedent("""
    import json, sys
    import comlab
    kw = json.loads(sys.argv[1])
    df = comlab.run_experiment(**kw)
    s = comlab.summarize(df)
    out = {"hosts": sorted(map(str, df["host"].dropna().unique())),
           "status": df["status"].value_counts().to_dict(),
           "summary": s[["batch_size", "workers", "n_ok", "makespan_s", "ideal_s",
                         "throughput_tps", "latency_p50_s"]].to_dict("records")}
    print(json.dumps(out, default=str))
""")


def run_sweep(kw: dict, prefix=(), timeout: float = 45) -> dict:
    """The sweep in a fresh interpreter (optionally under ``prefix``); its JSON answer."""
    proc = subprocess.run([*prefix, sys.executable, "-c", SWEEP_SCRIPT, json.dumps(kw)],
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _ip(*args, check=True):
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10,
                          check=check)


@contextlib.contextmanager
def make_namespaces():
    """Namespaces client, server, worker (10.77.0.1-3/24), each with a veth to a bridge in a
    fourth namespace; all deleted on exit (which deletes the veths with them). Raises
    pytest.skip.Exception where namespaces cannot be made."""
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    if shutil.which("ip") is None:
        pytest.skip("no `ip` command (iproute2)")
    tag = uuid.uuid4().hex[:6]
    names = {role: f"comlab-{role}-{tag}" for role in ("client", "server", "worker", "bridge")}
    made = []
    try:
        first = _ip("netns", "add", names["bridge"], check=False)
        if first.returncode != 0:
            pytest.skip(f"`ip netns add` failed: {first.stderr.strip()}")
        made.append(names["bridge"])
        br = names["bridge"]
        try:
            _ip("-n", br, "link", "add", "br0", "type", "bridge")
            _ip("-n", br, "link", "set", "br0", "up")
            for i, (role, addr) in enumerate((("client", CLIENT_IP), ("server", SERVER_IP),
                                              ("worker", WORKER_IP))):
                ns = names[role]
                _ip("netns", "add", ns)
                made.append(ns)
                _ip("link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name",
                    f"p{i}", "netns", br)
                _ip("-n", br, "link", "set", f"p{i}", "master", "br0", "up")
                _ip("-n", ns, "addr", "add", f"{addr}/24", "dev", "eth0")
                _ip("-n", ns, "link", "set", "eth0", "up")
                _ip("-n", ns, "link", "set", "lo", "up")
        except subprocess.CalledProcessError as exc:
            pytest.skip(f"cannot set up namespaces: {' '.join(exc.cmd)}: {exc.stderr.strip()}")
        if shutil.which("ping"):
            ping = subprocess.run(["ip", "netns", "exec", names["client"], "ping", "-c", "1",
                                   "-W", "2", WORKER_IP], capture_output=True, text=True,
                                  timeout=10)
            assert ping.returncode == 0, f"namespaces not connected: {ping.stdout}{ping.stderr}"
        yield names
    finally:
        for ns in reversed(made):
            _ip("netns", "del", ns, check=False)


@pytest.fixture
def namespaces():
    with make_namespaces() as names:
        yield names


@pytest.mark.timeout(60)
def test_sweep_across_three_namespaces(namespaces, worker_hosts, tmp_path):
    """The server in its namespace (python -m comlab.run_server, started by the lab under
    ``ip netns exec``), a worker host in another, and a real sweep from the client's."""
    ns = namespaces
    exec_in = lambda role, *env: ["ip", "netns", "exec", ns[role], "env", *env]  # noqa: E731
    workers_url = f"tcp://{SERVER_IP}:{WORKERS_PORT}"
    worker_hosts.start(workers_url, 2, host="ns-worker", prefix=exec_in("worker"))
    kw = dict(SWEEP, workers_url=workers_url, server_address=SERVER_IP, secure=False,
              client_address=CLIENT_IP, server_prefix=exec_in("server", "COMLAB_HOST=ns-server"),
              results_dir=str(tmp_path), name="netns")
    out = run_sweep(kw, prefix=exec_in("client", "COMLAB_HOST=ns-client"))
    print("namespaces:", json.dumps(out["summary"]))
    assert out["status"].get("ok") == 3 * 512 and sum(out["status"].values()) == 3 * 512
    assert [r["n_ok"] for r in out["summary"]] == [512] * 3
    assert out["hosts"] == ["ns-worker"]
    meta = json.loads((tmp_path / "netns" / "meta.json").read_text())
    for run in meta["runs"]:
        clock = run["clock"]
        assert clock["client_host"] == "ns-client"
        assert set(clock["hosts"]) == {"ns-server", "ns-worker"}
        for h in clock["hosts"].values():  # one kernel, one clock: within the uncertainty
            assert h["applied"] and abs(h["offset_s"]) <= h["uncertainty_s"], clock


@pytest.mark.timeout(45)
def test_worker_host_cut_off_is_noticed(namespaces, worker_hosts, make_data, tmp_path):
    """The worker namespace loses its link mid-batch: no FIN, nothing; the ZMTP heartbeat
    times out (3 s), the server probes, finds the worker gone and retries its batch on the
    server's own worker. Server and client are the command lines, each in its namespace."""
    from conftest import stop_server
    ns = namespaces
    client_file, server_file = make_data(n=32, wait=0.5)
    ctl = f"ipc://{tmp_path}/ctl"
    workers_url = f"tcp://{SERVER_IP}:{WORKERS_PORT}"
    server = subprocess.Popen(
        ["ip", "netns", "exec", ns["server"], sys.executable, "-m", "comlab.run_server",
         str(server_file), f"tcp://{SERVER_IP}:5557", "", "1", "--workers-url", workers_url,
         "--insecure", "--control", ctl, "--ready-json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    err = _Drain(server.stderr)
    try:
        info, raw = _read_ready_line(server, 30)
        assert info is not None, f"{raw!r} {err.text()[-2000:]}"
        worker_hosts.start(workers_url, 1, host="ns-worker",
                           prefix=["ip", "netns", "exec", ns["worker"]])
        assert len(wait_workers(ctl, 2)) == 2
        client = subprocess.Popen(
            ["ip", "netns", "exec", ns["client"], sys.executable, "-m", "comlab.run_client",
             str(client_file), "4", f"tcp://{CLIENT_IP}:5556", f"tcp://{SERVER_IP}:5557",
             "--json", "--timeout", "30"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True)
        deadline = time.monotonic() + 20
        while control(ctl, "stats")["busy"] < 2:  # both workers hold a batch: cut now
            assert time.monotonic() < deadline and client.poll() is None, "no batch running"
            time.sleep(0.02)
        _ip("-n", ns["worker"], "link", "set", "eth0", "down")
        out, errs = client.communicate(timeout=35)
        assert client.returncode == 0, errs
        summary = json.loads(out.strip().splitlines()[-1])
        assert summary["ok"] == 32 and summary["lost"] == summary["failed"] == 0, summary
        stats = control(ctl, "stats")
        assert stats["workers_lost"] == 1 and stats["retried"] >= 1, stats
        assert [w["name"] for w in stats["workers"]] == ["w0"]
    finally:
        stop_server(server)
        err.join(1)
        server.stdout.close()
        server.stderr.close()


def compare(repeats: int = 3, results_dir: str = "results") -> None:
    """README's figures: the namespace sweep next to the same sweep on one host (loopback),
    ``repeats`` each; prints the median makespan and p50 latency per batch size."""
    import statistics
    out = {}
    hosts = WorkerHosts()
    try:
        with make_namespaces() as ns:
            exec_in = lambda role, *env: ["ip", "netns", "exec", ns[role], "env", *env]  # noqa
            url = f"tcp://{SERVER_IP}:{WORKERS_PORT}"
            hosts.start(url, 2, host="ns-worker", prefix=exec_in("worker"))
            kw = dict(SWEEP, repeats=repeats, workers_url=url, server_address=SERVER_IP,
                      secure=False,
                      client_address=CLIENT_IP, results_dir=results_dir, name="remote-netns",
                      server_prefix=exec_in("server", "COMLAB_HOST=ns-server"), resume=False)
            out["3 namespaces"] = run_sweep(kw, exec_in("client", "COMLAB_HOST=ns-client"),
                                            timeout=600)["summary"]
        hosts.close()
        hosts = WorkerHosts()
        url = free_tcp_url()
        hosts.start(url, 2, host="local-worker")
        kw = dict(SWEEP, repeats=repeats, workers_url=url, results_dir=results_dir,
                  name="remote-one-host", resume=False)
        out["one host"] = run_sweep(kw, timeout=600)["summary"]
    finally:
        hosts.close()
    for where, rows in out.items():
        for size in SWEEP["batch_sizes"]:
            mine = [r for r in rows if r["batch_size"] == size]
            print(f"{where:>12}  batch {size:>2}: makespan "
                  f"{statistics.median(r['makespan_s'] for r in mine):.3f} s "
                  f"(ideal {mine[0]['ideal_s']:.2f}), latency p50 "
                  f"{statistics.median(r['latency_p50_s'] for r in mine) * 1e3:.0f} ms, "
                  f"{sum(r['n_ok'] for r in mine)}/{512 * len(mine)} ok")


if __name__ == "__main__":  # python tests/test_remote.py (as root): the README's comparison
    compare()
