"""Worker hosts started by the lab (comlab.lab.hosts): entries, the version probe, and lifetime.

Here the hosts are ``local`` entries and command prefixes, so these run anywhere; the same paths
over a real sshd in network namespaces are in test_ssh_hosts.py. Every process a host starts
carries its host name in COMLAB_HOST (prefix entries) or descends from this test (local ones):
``host_processes`` finds them, and each lifetime test asserts that none is left.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
import uuid

import psutil
import pytest

from comlab.lab import hosts as H


# -- entries -----------------------------------------------------------------------------------
@pytest.mark.parametrize("text, kind, target, port, workers, name", [
    ("ssh://h1", "ssh", "h1", None, 1, "h1"),
    ("ssh://bob@h1:2222 workers=4", "ssh", "bob@h1", 2222, 4, "h1"),
    ("ssh://10.0.0.5 workers=2 name=big python=/opt/py/bin/python workdir=/srv", "ssh",
     "10.0.0.5", None, 2, "big"),
    ("local", "local", "", None, 1, "local"),
    ("local workers=3 name=second", "local", "", None, 3, "second"),
    ("ip netns exec h1 workers=2", "prefix", "ip netns exec h1", None, 2, "h1"),
    ("docker exec -i c1", "prefix", "docker exec -i c1", None, 1, "c1"),
])
def test_entries_parse(text, kind, target, port, workers, name):
    h = H.parse_entry(text)
    assert (h.kind, h.target, h.port, h.workers, h.name) == (kind, target, port, workers, name)


@pytest.mark.parametrize("text, says", [
    ("ssh://", "ssh://[user@]host[:port]"),
    ("ssh://h1:0", "ssh://[user@]host[:port]"),
    ("ssh://h1:ssh", "ssh://[user@]host[:port]"),
    ("ssh://h1/path", "ssh://[user@]host[:port]"),
    ("ftp://h1", "unknown scheme 'ftp'"),
    ("workers=2", "names no host"),
    ("local workers=0", "workers must be an integer >= 1"),
    ("local workers=2.5", "workers must be an integer >= 1"),
    ("local workers=2 workers=3", "workers= given twice"),
    ("local workers=2 more", "'more' after the options"),
    ("local python=", "python= is empty"),
    ("ssh://a b", "one word"),
    ("local 'unclosed", "cannot parse"),
])
def test_bad_entries_say_what_is_wrong(text, says):
    with pytest.raises(ValueError, match=None) as info:
        H.parse_entry(text)
    assert says in str(info.value) and "\n" not in str(info.value)


def test_hosts_file_errors_name_file_and_line(tmp_path):
    f = tmp_path / "hosts.txt"
    f.write_text("# lab hosts\nlocal workers=2\n\nssh://h2 workers=x   # the big one\n")
    with pytest.raises(ValueError, match=rf"{f}:4: host entry 'ssh://h2 workers=x'"):
        H.parse_hosts(str(f))
    f.write_text("local\nlocal\n")
    with pytest.raises(ValueError, match="two hosts are named 'local'"):
        H.parse_hosts(str(f))
    f.write_text("# nothing\n")
    with pytest.raises(ValueError, match="has no entries"):
        H.parse_hosts(str(f))
    with pytest.raises(ValueError, match="cannot read hosts file"):
        H.parse_hosts(str(tmp_path / "missing.txt"))


def test_ssh_command_is_quoted_for_the_remote_shell():
    h = H.parse_entry("ssh://bob@h1:2222 python=/opt/my\\ py/bin/python workdir='/srv/a b'")
    cmd = H.command(h, ["-m", "comlab.system.worker_host", "tcp://10.0.0.1:5558"], "cfg")
    assert cmd[:1] == ["ssh"] and cmd[cmd.index("-F") + 1] == "cfg"
    assert cmd[cmd.index("-p") + 1] == "2222" and "ControlPath=none" in cmd
    assert cmd[-3:-1] == ["bob@h1", "--"]
    assert cmd[-1] == ("cd '/srv/a b' && exec env COMLAB_HOST=h1 '/opt/my py/bin/python' -m "
                       "comlab.system.worker_host tcp://10.0.0.1:5558")


def test_far_ssh_host_with_loopback_addresses_is_refused_before_anything_starts(tmp_path):
    import comlab
    with pytest.raises(ValueError, match="host h9 cannot reach server_address 127.0.0.1"):
        comlab.run_experiment(hosts=["ssh://h9"], workers=0, results_dir=str(tmp_path))
    assert not any(tmp_path.iterdir())


# -- the probe ---------------------------------------------------------------------------------
def fake_python(tmp_path, version="0.0.1", protocol=1) -> str:
    """A "remote Python" whose comlab is another version: a wrapper putting a fake comlab
    package first on the path."""
    pkg = tmp_path / "fake" / "comlab"
    (pkg / "system").mkdir(parents=True)
    (pkg / "__init__.py").write_text(f"__version__ = {version!r}\n")
    (pkg / "system" / "__init__.py").write_text("")
    (pkg / "system" / "protocol.py").write_text(f"VERSION = {protocol}\n")
    wrapper = tmp_path / "python"
    wrapper.write_text(f"#!/bin/sh\nPYTHONPATH={tmp_path / 'fake'} exec {sys.executable} "
                       f'"$@"\n')
    wrapper.chmod(0o755)
    return str(wrapper)


@pytest.mark.timeout(30)
def test_probe_finds_this_comlab():
    found = H.probe(H.parse_entry("local"))
    from comlab import __version__
    from comlab.system.protocol import VERSION
    assert (found["comlab"], found["protocol"], found["executable"]) == (
        __version__, VERSION, sys.executable)


@pytest.mark.timeout(30)
def test_version_mismatch_is_one_line_naming_the_host(tmp_path):
    h = H.parse_entry(f"local name=old python={fake_python(tmp_path)} workdir={tmp_path}")
    with pytest.raises(H.HostError) as info:
        H.probe(h)
    text = str(info.value)
    assert text.startswith("host old (local name=old") and "\n" not in text
    assert "comlab 0.0.1 (protocol 1) there" in text and "install this comlab" in text


@pytest.mark.timeout(30)
def test_wrong_python_and_no_comlab_are_named(tmp_path):
    with pytest.raises(H.HostError, match=r"host local .*cannot run /nonexistent/python"):
        H.probe(H.parse_entry("local python=/nonexistent/python"))
    bare = tmp_path / "bare"
    bare.write_text(f"#!/bin/sh\nexec {sys.executable} -I -S \"$@\"\n")  # no site: no comlab
    bare.chmod(0o755)
    with pytest.raises(H.HostError, match="cannot import comlab: ModuleNotFoundError"):
        H.probe(H.parse_entry(f"local python={bare}"))


# -- the worker host's own lifetime rules -------------------------------------------------------
@pytest.mark.timeout(30)
@pytest.mark.parametrize("how", ["eof", "silence"])
def test_worker_host_stops_when_stdin_closes_or_falls_silent(how, free_url):
    """EOF on stdin stops it at once; a stdin that stays open but silent stops it after the
    death timeout. Either way its workers go with it."""
    proc = subprocess.Popen([sys.executable, "-m", "comlab.system.worker_host", free_url(),
                             "--workers", "2", "--watch-stdin", "--death-timeout", "2",
                             "--ready-json"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        info = json.loads(proc.stdout.readline())
        workers = [c for c in psutil.Process(proc.pid).children(recursive=True)]
        assert len(info["workers"]) == 2 and workers
        t0 = time.monotonic()
        if how == "eof":
            proc.stdin.close()
        proc.wait(10)
        took = time.monotonic() - t0
        err = proc.stderr.read().decode()
        assert proc.returncode == 0, err
        want = "the lab closed the connection" if how == "eof" else "no word from the lab for 2 s"
        assert want in err
        assert took < (2.0 if how == "eof" else 5.0), took
        _, alive = psutil.wait_procs(workers, timeout=2.0)  # workers and forkserver
        assert not [w for w in alive if w.status() != psutil.STATUS_ZOMBIE]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            stream.close()


# -- sweeps over hosts, in a fresh lab process --------------------------------------------------
LAB = textwrap.dedent("""
    import json, os, sys
    import comlab
    from comlab.lab import session
    kw = json.loads(sys.argv[1])
    fail_after = kw.pop("fail_after", None)
    if fail_after is not None:  # an exception in the lab after that many runs
        measure, calls = session.Session.measure, []
        def failing(self, *a, **k):
            calls.append(1)
            if len(calls) > fail_after:
                raise RuntimeError("the lab broke")
            return measure(self, *a, **k)
        session.Session.measure = failing
    kill_host_in_run = kw.pop("kill_host_in_run", None)
    if kill_host_in_run is not None:  # SIGKILL one host's worker-host process mid-run
        import signal, threading, time
        measure, calls = session.Session.measure, []
        def killing(self, server, spec, **k):
            calls.append(1)
            if len(calls) == kill_host_in_run:
                p = self.hosts.procs[kw_host]
                pid = p.info["pid"]
                threading.Timer(0.3, os.kill, (pid, signal.SIGKILL)).start()
            return measure(self, server, spec, **k)
        kw_host = kw.pop("kill_host")
        session.Session.measure = killing
    disturb = kw.pop("disturb_in_run", None)
    if disturb is not None:  # freeze a host 5 s, or SIGKILL a local worker, 0.3 s into run N
        import signal, threading, psutil
        measure, calls = session.Session.measure, []
        def disturbing(self, server, spec, **k):
            calls.append(1)
            if len(calls) == disturb["run"] and disturb["what"] == "freeze":
                pg = self.hosts.procs[disturb["host"]].proc.pid  # its own session and group
                threading.Timer(0.3, os.killpg, (pg, signal.SIGSTOP)).start()
                threading.Timer(5.3, os.killpg, (pg, signal.SIGCONT)).start()
            elif len(calls) == disturb["run"]:
                worker = [c for c in psutil.Process(server.proc.pid).children()
                          if "multiprocessing" not in " ".join(c.cmdline())][0]
                threading.Timer(0.3, worker.kill).start()
            return measure(self, server, spec, **k)
        session.Session.measure = disturbing
    print("LAB-PID", os.getpid(), flush=True)
    try:
        df = comlab.run_experiment(**kw)
    except Exception as exc:
        print("ERROR", json.dumps(f"{type(exc).__name__}: {exc}"), flush=True)
        sys.exit(3)
    print("RESULT", json.dumps({"hosts": sorted(map(str, df["host"].dropna().unique())),
                                "workers": sorted(map(str, df["worker"].unique())),
                                "status": df["status"].value_counts().to_dict(),
                                "runs": sorted(map(int, df["run"].unique()))}), flush=True)
""")


def run_lab(kw: dict, prefix=(), timeout: float = 60, env=None):
    """The sweep in a fresh interpreter; (exit code, RESULT or ERROR payload, stderr)."""
    proc = subprocess.run([*prefix, sys.executable, "-c", LAB, json.dumps(kw)],
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})
    payload = None
    for line in proc.stdout.splitlines():
        if line.startswith(("RESULT ", "ERROR ")):
            payload = json.loads(line.split(" ", 1)[1])
    return proc.returncode, payload, proc.stderr


def tagged(tag: str) -> list[psutil.Process]:
    """Live processes whose environment carries COMLAB_TEST_TAG=tag (all the lab started)."""
    found = []
    for p in psutil.process_iter():
        try:
            if p.environ().get("COMLAB_TEST_TAG") == tag and p.status() != psutil.STATUS_ZOMBIE:
                found.append(p)
        except psutil.Error:
            continue
    return found


def gone_within(tag: str, seconds: float) -> list:
    deadline = time.monotonic() + seconds
    while (left := tagged(tag)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


def sweep_kw(make_data, tmp_path, **kw) -> dict:
    client_file, server_file = make_data(n=96, wait=0.005)
    return {"batch_sizes": [4], "workers": [0], "repeats": 2, "commands": str(client_file),
            "server_map": str(server_file), "results_dir": str(tmp_path), "name": "hosts",
            "progress": False, **kw}


@pytest.mark.timeout(60)
def test_sweep_over_local_and_prefix_hosts(make_data, tmp_path):
    """Hosts of both kinds join every run; each host's log is saved beside the results; the
    hosts and what their probes found are in meta.json; nothing is left."""
    tag = uuid.uuid4().hex
    kw = sweep_kw(make_data, tmp_path, hosts=["local workers=2",
                                               "env COMLAB_X=1 workers=1 name=pre"])
    code, out, err = run_lab(kw, env={"COMLAB_TEST_TAG": tag})
    assert code == 0, err[-3000:]
    assert out["status"]["ok"] == 2 * 96 and sum(out["status"].values()) == 2 * 96
    assert "pre" in out["hosts"] and len(out["workers"]) == 3, out
    meta = json.loads((tmp_path / "hosts" / "meta.json").read_text())
    assert [h["name"] for h in meta["hosts"]] == ["local", "pre"]
    assert meta["hosts"][1]["executable"] == sys.executable and meta["complete"]
    assert all(r["workers"] == 3 for r in meta["runs"])
    log = (tmp_path / "hosts" / "hosts" / "pre.log").read_text()
    assert "comlab worker-host pre: 1 workers" in log and "ended with exit code 0" in log
    assert not gone_within(tag, 2.0)


@pytest.mark.timeout(60)
def test_lab_exception_stops_every_host(make_data, tmp_path):
    tag = uuid.uuid4().hex
    kw = sweep_kw(make_data, tmp_path, hosts=["local workers=2"], fail_after=1)
    code, out, err = run_lab(kw, env={"COMLAB_TEST_TAG": tag})
    assert code == 3 and out == "RuntimeError: the lab broke", (out, err[-2000:])
    meta = json.loads((tmp_path / "hosts" / "meta.json").read_text())
    assert len(meta["runs"]) == 1 and not meta["complete"]  # the saved run is kept
    assert not gone_within(tag, 2.0)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_killed_or_interrupted_lab_takes_its_hosts_along(sig, make_data, tmp_path):
    """SIGKILL the lab while its hosts run: their stdin closes, they stop within 5 s. SIGINT
    (Ctrl-C, a notebook's interrupt): the lab's own teardown stops them."""
    tag = uuid.uuid4().hex
    kw = sweep_kw(make_data, tmp_path, hosts=["local workers=2", "env workers=1 name=pre"],
                  repeats=50)
    proc = subprocess.Popen([sys.executable, "-c", LAB, json.dumps(kw)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            env={**os.environ, "COMLAB_TEST_TAG": tag}, text=True)
    try:
        deadline = time.monotonic() + 30
        while not (tmp_path / "hosts" / "parts" / "run-00000.parquet").exists():
            assert proc.poll() is None and time.monotonic() < deadline, "no run finished"
            time.sleep(0.05)
        hosts = [p for p in tagged(tag) if "comlab.system.worker_host" in p.cmdline()]
        assert len(hosts) == 2
        proc.send_signal(sig)
        assert proc.wait(10) == -sig  # SIGINT: KeyboardInterrupt, then re-raised at exit
        left = gone_within(tag, 5.0)
        assert not left, [p.cmdline() for p in left]
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stdout.close()
        for p in tagged(tag):
            p.kill()


@pytest.mark.timeout(90)
@pytest.mark.parametrize("policy", ["stop", "continue"])
def test_host_killed_mid_run(policy, make_data, tmp_path):
    """A host SIGKILLed 0.3 s into run 1 (on a loaded machine: a later run, or between two):
    the run it hit is refused (HostLost names the host and its log); "stop" ends the sweep
    keeping the runs before, "continue" starts the host again and measures the rest, listing
    the failed run in meta.json. Four repeats: the kill lands before the last run ends."""
    tag = uuid.uuid4().hex
    client_file, server_file = make_data(n=96, wait=0.05)
    repeats = 4
    kw = {"batch_sizes": [4], "workers": [1], "repeats": repeats, "commands": str(client_file),
          "server_map": str(server_file), "results_dir": str(tmp_path), "name": "hosts",
          "progress": False, "hosts": ["local workers=1", "env workers=1 name=pre"],
          "kill_host_in_run": 2, "kill_host": "pre", "on_host_loss": policy}
    code, out, err = run_lab(kw, env={"COMLAB_TEST_TAG": tag}, timeout=80)
    meta = json.loads((tmp_path / "hosts" / "meta.json").read_text())
    hit, = [f["run"] for f in meta["failed_runs"]]
    assert 1 <= hit < repeats, meta["failed_runs"]
    assert "host pre (env workers=1 name=pre): was lost" in meta["failed_runs"][0]["error"]
    assert "pre.log" in meta["failed_runs"][0]["error"]
    assert not meta["complete"]
    if policy == "stop":
        assert code == 3 and out.startswith("HostLost: host pre"), (out, err[-2000:])
        assert [r["run"] for r in meta["runs"]] == list(range(hit))
    else:
        rest = [r for r in range(repeats) if r != hit]
        assert code == 0, err[-2000:]
        assert out["runs"] == rest and sum(out["status"].values()) == len(rest) * 96
        assert out["status"]["ok"] == len(rest) * 96
        assert "runs failed because a host or worker was lost" in err
        log = (tmp_path / "hosts" / "hosts" / "pre.log").read_text()
        starts = 2 if hit < repeats - 1 else 1  # started again for the runs after the hit
        assert log.count("--- comlab lab: starting") == starts
    assert not gone_within(tag, 2.0)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("what, policy", [("freeze", "stop"), ("freeze", "continue"),
                                          ("kill-local-worker", "stop"),
                                          ("kill-local-worker", "continue")])
def test_a_run_that_lost_any_worker_is_refused_like_a_lost_host(what, policy, make_data,
                                                                 tmp_path):
    """Issue 25: a lab-started host frozen 5 s mid-run (alive again after: only the server saw
    it lost, and retried its batch) or a local worker SIGKILLed mid-run. Before: the run was
    saved as a normal measurement. Now the one rule: the run is refused (WorkersLost, a
    HostLost) and on_host_loss decides, as for a host that died."""
    tag = uuid.uuid4().hex
    client_file, server_file = make_data(n=96, wait=0.05)
    kw = {"batch_sizes": [4], "workers": [1 if what == "freeze" else 2], "repeats": 3,
          "commands": str(client_file), "server_map": str(server_file),
          "results_dir": str(tmp_path), "name": "hosts", "progress": False,
          "on_host_loss": policy, "disturb_in_run": {"run": 2, "what": what, "host": "pre"}}
    if what == "freeze":
        kw["hosts"] = ["env workers=1 name=pre"]
    code, out, err = run_lab(kw, env={"COMLAB_TEST_TAG": tag}, timeout=100)
    meta = json.loads((tmp_path / "hosts" / "meta.json").read_text())
    assert [f["run"] for f in meta["failed_runs"]] == [1], (out, err[-2000:])
    assert "the server lost or retried workers during it" in meta["failed_runs"][0]["error"]
    assert re.search(r"retried [1-9]", meta["failed_runs"][0]["error"])
    assert not meta["complete"]
    if policy == "stop":
        assert code == 3 and out.startswith("WorkersLost: run 1 ("), (out, err[-2000:])
        assert [r["run"] for r in meta["runs"]] == [0]
    else:
        assert code == 0, err[-2000:]
        assert out["runs"] == [0, 2] and out["status"]["ok"] == 2 * 96, out
        assert all(r["server"]["retried"] == 0 for r in meta["runs"])
    assert not gone_within(tag, 2.0)


@pytest.mark.timeout(30)
def test_cli_host_that_cannot_start_is_one_line_exit_2(tmp_path):
    """The probe fails before the result exists: nothing is written, one line names the host."""
    proc = subprocess.run([sys.executable, "-m", "comlab", "sweep", "--hosts",
                           "local python=/nonexistent/python", "--workers", "0",
                           "--results-dir", str(tmp_path / "r")], capture_output=True,
                          text=True, timeout=25)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: host local (local python=/nonexistent/python): cannot run /nonexistent/python: "
        "No such file or directory"]
    assert not (tmp_path / "r").exists()


@pytest.mark.timeout(60)
def test_queue_design_serves_a_remote_only_server(make_data, tmp_path):
    """dispatch "queue" with workers=0: every batch goes to the hosts' workers (none is put on
    a shared queue that no local worker reads)."""
    kw = sweep_kw(make_data, tmp_path, hosts=["local workers=2"], dispatch="queue", repeats=1,
                  batch_sizes=[1], timeout=20)
    code, out, err = run_lab(kw)
    assert code == 0, err[-2000:]
    assert out["status"]["ok"] == 96 and sum(out["status"].values()) == 96


@pytest.mark.timeout(30)
def test_lines_before_the_ready_line_are_skipped(tmp_path, free_url):
    """A login banner or a profile's echo on stdout comes before the worker host's ready line."""
    noisy = tmp_path / "python"
    noisy.write_text(f"#!/bin/sh\necho 'Welcome to the lab host'\necho '{{\"not\": 1}}'\n"
                     f"exec {sys.executable} \"$@\"\n")
    noisy.chmod(0o755)
    group = H.HostGroup([H.parse_entry(f"local python={noisy}")], free_url(), tmp_path / "logs")
    with group:
        assert len(group.procs["local"].info["workers"]) == 1
    assert not group.procs["local"].alive()


@pytest.mark.timeout(30)
def test_a_host_deaf_to_eof_is_stopped_within_the_bound(tmp_path, free_url):
    """A host that does not stop when its stdin closes (here: a worker host started without
    --watch-stdin) is terminated by the lab's teardown after the grace period: bounded."""
    deaf = tmp_path / "python"
    deaf.write_text(f"#!{sys.executable}\nimport os, sys\n"
                    "args = [a for a in sys.argv[1:] if a != '--watch-stdin']\n"
                    "os.execv(sys.executable, [sys.executable, *args])\n")
    deaf.chmod(0o755)
    group = H.HostGroup([H.parse_entry(f"local python={deaf}")], free_url(), tmp_path / "logs")
    with group:
        proc = group.procs["local"].proc
        assert "--watch-stdin" not in psutil.Process(proc.pid).cmdline()
        t0 = time.monotonic()
    took = time.monotonic() - t0
    assert proc.returncode is not None and took < H.STOP_GRACE_S + 2.0, took


@pytest.mark.timeout(30)
def test_a_garbled_probe_answer_is_an_error_naming_the_host(tmp_path):
    liar = tmp_path / "python"
    liar.write_text("#!/bin/sh\necho 'COMLAB-PROBE {not json'\n")
    liar.chmod(0o755)
    with pytest.raises(H.HostError, match=r"host local .*its probe answered 'COMLAB-PROBE"):
        H.probe(H.parse_entry(f"local python={liar}"))


STUBBORN = ("import os, signal, sys, time\n"
            "signal.signal(signal.SIGTERM, signal.SIG_IGN)  # and so does the child it forks\n"
            "child = os.fork()\n"
            "if child == 0:\n"
            "    time.sleep(60)\n"
            "    os._exit(0)\n"
            "open(os.environ['COMLAB_TEST_PIDFILE'], 'w').write(str(child))\n"
            "time.sleep(60)\n")


@pytest.mark.timeout(30)
@pytest.mark.parametrize("kind", ["host", "lab process"])
def test_one_stop_policy_ends_a_stubborn_child_and_what_it_forked(kind, tmp_path, free_url,
                                                                  monkeypatch):
    """Worker hosts and the lab's own processes stop the same way (processes.end): a child
    deaf to EOF and SIGTERM is SIGKILLed with its whole process group, within the bound."""
    from comlab.lab import processes
    stubborn = tmp_path / "python"
    stubborn.write_text(f"#!{sys.executable}\n{STUBBORN}")
    stubborn.chmod(0o755)
    pidfile = tmp_path / "child.pid"
    monkeypatch.setenv("COMLAB_TEST_PIDFILE", str(pidfile))
    if kind == "host":
        p = H.HostProcess(H.parse_entry(f"local python={stubborn}"), free_url(),
                          tmp_path / "host.log")
    else:
        p = processes._Child([str(stubborn)], str(tmp_path / "child.log"))
    child = None
    try:
        deadline = time.monotonic() + 10
        while not (pidfile.exists() and pidfile.read_text()) and time.monotonic() < deadline:
            time.sleep(0.02)
        child = psutil.Process(int(pidfile.read_text()))
        t0 = time.monotonic()
        p.stop(0.4)
        took = time.monotonic() - t0
        assert p.proc.returncode is not None and took < 3.0, took
        assert psutil.wait_procs([child], timeout=2)[1] == [], "its child outlived it"
    finally:
        if child is not None and child.is_running():
            child.kill()
            child.wait(5)
        if p.proc.returncode is None:
            p.proc.kill()
            p.proc.wait()
