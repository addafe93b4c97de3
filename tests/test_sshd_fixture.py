"""The real-sshd lab of tests/sshd.py: logins land in the host's own namespace, a wrong host key
is refused, nothing of ours outlives the context, and a remote command ends when its local ssh
client's stdin closes or the client is SIGKILLed (what the lab's worker-host lifetime relies on).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from sshd import (LAB_IP, processes_in, ssh_lab,  # noqa: F401  (ssh_lab is a fixture)
                  ssh_namespaces)


def _netns_inode(ns: str) -> int:
    return os.stat(f"/run/netns/{ns}").st_ino


@pytest.mark.timeout(60)
def test_login_runs_python_in_each_hosts_namespace(ssh_lab):
    code = ("import comlab, os, socket; "
            "print(os.readlink('/proc/self/ns/net'), os.environ['SSH_CONNECTION'], "
            "os.path.dirname(comlab.__file__))")
    lab_inode = _netns_inode(ssh_lab.lab_ns)
    for h in ssh_lab.hosts:
        r = subprocess.run(ssh_lab.ssh(h.alias, sys.executable, "-c", f'"{code}"'),
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
        netns, client_ip, _, server_ip, port, where = r.stdout.split()
        assert netns == f"net:[{_netns_inode(h.ns)}]" != f"net:[{lab_inode}]"
        assert (client_ip, server_ip, port) == (LAB_IP, h.ip, "22")
        assert where.endswith("comlab")
        addrs = subprocess.run(ssh_lab.ssh(h.alias, "ip", "-o", "-4", "addr"),
                               capture_output=True, text=True, timeout=30).stdout
        mine = {w.split("/")[0] for line in addrs.splitlines() for w in line.split()[3:4]}
        assert mine == {"127.0.0.1", h.ip}, addrs


@pytest.mark.timeout(60)
def test_wrong_host_key_is_refused(ssh_lab):
    wrong = ssh_lab.config_with_wrong_host_key()
    for h in ssh_lab.hosts:
        r = subprocess.run(ssh_lab.ssh(h.alias, "true", config=wrong), capture_output=True,
                           text=True, timeout=30)
        assert r.returncode == 255 and "Host key verification failed" in r.stderr, r.stderr
    for target in ("h1", "root@h1", ssh_lab.hosts[0].ip):  # the right config still works
        ok = subprocess.run(ssh_lab.ssh(target, "true"), capture_output=True, timeout=30)
        assert ok.returncode == 0, (target, ok.stderr)


@pytest.mark.timeout(60)
def test_nothing_of_ours_survives_the_context(tmp_path):
    with ssh_namespaces(tmp_path, n_hosts=2) as lab:
        namespaces = [lab.lab_ns] + [h.ns for h in lab.hosts]
        sshds = [psutil.Process(h.sshd_pid) for h in lab.hosts]
        assert all(p.name() == "sshd" for p in sshds)
        # a session left running inside a host namespace must be stopped too
        remote = subprocess.Popen(lab.ssh("h1", "exec sleep 300"), stdin=subprocess.PIPE,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while _names(lab.remote_processes()) != ["sleep"]:
            assert time.monotonic() < deadline, "remote sleep never started"
            time.sleep(0.02)
        in_hosts = {p.pid for h in lab.hosts for p in processes_in(h.ns)}
    remote.wait(timeout=5)
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in sshds)
    assert not [pid for pid in in_hosts if psutil.pid_exists(pid)
                and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not [ns for ns in namespaces if ns in listed]
    assert not [p for p in psutil.process_iter(["cmdline"])
                if str(tmp_path) in " ".join(p.info["cmdline"] or ())]


def _names(procs) -> list[str]:
    names = []
    for p in procs:
        try:
            names.append(p.name())
        except psutil.Error:  # ended meanwhile
            pass
    return names


def _wait_ended(proc: psutil.Process, timeout: float) -> float:
    """Seconds until ``proc`` ended (gone or a zombie). psutil's wait() on a process that is not
    our child also waits for its reaping: an orphaned zombie waits for PID 1, here ~1.7 s."""
    t0 = time.monotonic()
    while True:
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                break
        except psutil.NoSuchProcess:
            break
        assert time.monotonic() - t0 < timeout, f"{proc} still running after {timeout} s"
        time.sleep(0.005)
    return time.monotonic() - t0


def _start_remote_cat(lab, alias):
    """A local ssh running ``cat`` on the host; returns (ssh Popen, the remote cat process)."""
    ssh = subprocess.Popen(lab.ssh(alias, "echo $$; exec cat"), stdin=subprocess.PIPE,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    remote = psutil.Process(int(ssh.stdout.readline()))  # the shell's pid, cat's after its exec
    ssh.stdin.write(b"ping\n")
    ssh.stdin.flush()
    assert ssh.stdout.readline() == b"ping\n"  # the pipe works end to end
    assert remote.name() == "cat"  # only cat echoes: the exec has happened (not so before ping)
    return ssh, remote


@pytest.mark.timeout(60)
def test_remote_command_ends_with_its_local_ssh(ssh_lab):
    ssh, remote = _start_remote_cat(ssh_lab, "h1")
    assert os.readlink(f"/proc/{remote.pid}/ns/net") == f"net:[{_netns_inode(ssh_lab.hosts[0].ns)}]"
    ssh.stdin.close()  # EOF reaches the remote cat
    eof_s = _wait_ended(remote, 5)
    assert ssh.wait(timeout=5) == 0

    ssh, remote = _start_remote_cat(ssh_lab, "h2")
    ssh.send_signal(signal.SIGKILL)  # no goodbye from the client: only the TCP close
    kill_s = _wait_ended(remote, 5)
    ssh.wait(timeout=5)
    print(f"remote cat ended {eof_s * 1e3:.0f} ms after stdin closed, "
          f"{kill_s * 1e3:.0f} ms after SIGKILL of the local ssh")


def _our_namespaces() -> list[str]:
    """This process's namespaces (their names end in its pid and a tag): another pytest on the
    machine (an xdist worker, a second user) makes and deletes its own meanwhile."""
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    names = [line.split()[0] for line in listed.splitlines() if "comlab-ssh" in line]
    return [n for n in names if n.rsplit("-", 1)[-1].startswith(f"{os.getpid()}x")]


@pytest.mark.timeout(60)
def test_an_sshd_that_cannot_start_fails_loudly_and_cleans_up(tmp_path):
    before = _our_namespaces()
    with pytest.raises(RuntimeError, match="exited with.*NoSuchOption"):
        with ssh_namespaces(tmp_path, n_hosts=1, sshd_options={"NoSuchOption": "1"}):
            pass
    assert _our_namespaces() == before


@pytest.mark.timeout(60)
def test_an_exception_in_the_body_still_tears_down(tmp_path):
    with pytest.raises(KeyError):
        with ssh_namespaces(tmp_path, n_hosts=1) as lab:
            sshd_pid, ns = lab.hosts[0].sshd_pid, lab.hosts[0].ns
            raise KeyError("boom")
    assert not psutil.pid_exists(sshd_pid) or psutil.Process(sshd_pid).name() != "sshd"
    assert ns not in _our_namespaces()


def test_not_root_skips_with_a_reason(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(pytest.skip.Exception, match="need root"):
        with ssh_namespaces(tmp_path):
            pass


@pytest.mark.timeout(60)
def test_a_remote_command_that_ignores_stdin_outlives_its_ssh(ssh_lab):
    """No pty, so no SIGHUP: when the client dies, sshd's session ends and a command that never
    reads stdin is re-parented to PID 1 and runs on. A remote worker host must watch its stdin
    (the fixture's teardown stops such leftovers)."""
    host = ssh_lab.hosts[0]
    ssh = subprocess.Popen(ssh_lab.ssh("h1", "echo $$; exec sleep 60"), stdin=subprocess.PIPE,
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    sleeper = psutil.Process(int(ssh.stdout.readline()))
    sessions = [p for p in processes_in(host.ns) if p.pid != host.sshd_pid and p.name() == "sshd"]
    assert sessions
    ssh.kill()
    ssh.wait(timeout=5)
    for s in sessions:
        _wait_ended(s, 5)
    assert sleeper.is_running() and sleeper.status() != psutil.STATUS_ZOMBIE
    assert sleeper.ppid() != sessions[-1].pid
    assert [p.pid for p in ssh_lab.remote_processes()] == [sleeper.pid]


def _dead_pid() -> int:
    """The pid of a process that has ended (and been reaped)."""
    gone = subprocess.Popen(["true"])
    gone.wait(timeout=10)
    return gone.pid


@pytest.mark.timeout(60)
def test_what_a_killed_run_left_is_cleared_by_the_next(tmp_path):
    """A pytest killed before its teardown leaves namespaces and a daemon in them; the next
    ssh_namespaces removes them, but not the namespaces of a run still in progress (here: ours,
    made by this live process)."""
    if os.geteuid() != 0 or subprocess.run(["ip", "netns", "list"],
                                           capture_output=True).returncode != 0:
        pytest.skip("network namespaces need root and iproute2")
    dead, tag = _dead_pid(), os.urandom(2).hex()
    left = [f"comlab-sshbr-{dead}x{tag}", f"comlab-ssh1-{dead}x{tag}", f"comlab-sshlab-{dead}x{tag}"]
    alive = f"comlab-ssh7-{os.getpid()}x{tag}"
    daemon = None
    try:
        for ns in [*left, alive]:
            subprocess.run(["ip", "netns", "add", ns], check=True, timeout=10)
        # a daemon as the fixture starts sshd: its own session, inside a host namespace
        daemon = subprocess.Popen(["ip", "netns", "exec", left[1], "sleep", "300"],
                                  start_new_session=True)
        deadline = time.monotonic() + 10
        while [p.pid for p in processes_in(left[1])] != [daemon.pid]:
            assert time.monotonic() < deadline, "the daemon never entered its namespace"
            time.sleep(0.02)
        with ssh_namespaces(tmp_path, n_hosts=1) as lab:
            listed = _our_namespaces()
            assert not set(left) & set(listed), listed
            assert alive in listed  # a live maker's namespace is not a leftover
            assert daemon.wait(timeout=5) is not None  # stopped, not merely orphaned
            assert lab.hosts[0].ns.split("-")[-1].startswith(f"{os.getpid()}x")
    finally:
        if daemon is not None and daemon.poll() is None:
            daemon.kill()
            daemon.wait(timeout=5)
        for ns in [*left, alive]:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)
    assert alive not in _our_namespaces()
