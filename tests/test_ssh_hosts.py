"""Worker hosts started by the lab over real SSH: a real sshd in each of three network
namespaces (tests/sshd.py), the lab in a fourth, and ``hosts=["ssh://h1", ...]``. No mock of
SSH anywhere. Skipped, with the reason, where root, iproute2 or openssh are missing.

Remote processes do not inherit the test's environment (sshd starts them afresh), so each test
names its hosts with a fresh tag: every process a host runs carries COMLAB_HOST=<that name>, and
``remote_left`` finds them, with any sshd session still open.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil
import pytest

from sshd import LAB_IP, ssh_namespaces
from test_hosts import LAB, fake_python, run_lab

REPO = str(Path(__file__).resolve().parents[1])


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """One set of namespaces and sshds for the module (each test tags its own hosts)."""
    with ssh_namespaces(tmp_path_factory.mktemp("sshlab"), n_hosts=3) as lab:
        yield lab


def entries(lab, tag: str) -> list[str]:
    """One worker per host, this interpreter and checkout (the hosts share its disk)."""
    return [f"ssh://{h.alias} workers=1 name={h.alias}-{tag} python={sys.executable} "
            f"workdir={REPO}" for h in lab.hosts]


def remote_left(lab, tag: str) -> list[str]:
    """What still runs for this test on the hosts: processes named by the tag, sshd sessions."""
    left = []
    for p in psutil.process_iter():
        try:
            if p.environ().get("COMLAB_HOST", "").endswith(f"-{tag}") \
                    and p.status() != psutil.STATUS_ZOMBIE:
                left.append(" ".join(p.cmdline())[:120])
        except psutil.Error:
            continue
    for h in lab.hosts:
        try:
            left += [" ".join(c.cmdline())[:120] for c in psutil.Process(h.sshd_pid).children()
                     if c.status() != psutil.STATUS_ZOMBIE]
        except psutil.Error:
            pass
    return left


def gone_within(lab, tag: str, seconds: float) -> list[str]:
    deadline = time.monotonic() + seconds
    while (left := remote_left(lab, tag)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


def sweep_kw(lab, make_data, tmp_path, tag, wait: float = 0.005, **kw) -> dict:
    client_file, server_file = make_data(n=96, wait=wait)
    return {"batch_sizes": [4], "workers": [0], "repeats": 2, "commands": str(client_file),
            "server_map": str(server_file), "results_dir": str(tmp_path / "results"),
            "name": "ssh", "progress": False, "hosts": entries(lab, tag),
            "ssh_config": lab.ssh_config, "server_address": LAB_IP, "client_address": LAB_IP,
            **kw}


def in_lab(lab) -> list[str]:
    return [*lab.exec_in(lab.lab_ns), "env", "COMLAB_HOST=lab"]


@pytest.mark.timeout(90)
def test_sweep_over_three_ssh_hosts(lab, make_data, tmp_path):
    """The done-when test: records with ``host`` filled by each host, clock offsets estimated
    and applied, each host's log saved beside the results, nothing left on any host."""
    tag = uuid.uuid4().hex[:8]
    kw = sweep_kw(lab, make_data, tmp_path, tag)
    code, out, err = run_lab(kw, prefix=in_lab(lab), timeout=80)
    assert code == 0, (out, err[-3000:])
    names = [f"{h.alias}-{tag}" for h in lab.hosts]
    assert out["hosts"] == sorted(names)
    assert out["status"]["ok"] == 2 * 96 and sum(out["status"].values()) == 2 * 96
    result = tmp_path / "results" / "ssh"
    meta = json.loads((result / "meta.json").read_text())
    assert [h["name"] for h in meta["hosts"]] == names
    for run in meta["runs"]:
        clock = run["clock"]
        assert clock["client_host"] == "lab" and set(names) <= set(clock["hosts"])
        for name in names:  # one kernel, one clock: the estimate is within its uncertainty
            h = clock["hosts"][name]
            assert h["applied"] and h["via"] == "server", clock
            assert abs(h["offset_s"]) <= h["uncertainty_s"], clock
    for name in names:
        log = (result / "hosts" / f"{name}.log").read_text()
        assert f"comlab worker-host {name}: 1 workers" in log and "exit code 0" in log
    assert not gone_within(lab, tag, 2.0)


@pytest.mark.timeout(90)
def test_secure_sweep_hands_keys_over_stdin(lab, make_data, tmp_path):
    tag = uuid.uuid4().hex[:8]
    kw = sweep_kw(lab, make_data, tmp_path, tag, secure=True, repeats=1)
    kw["hosts"] = kw["hosts"][:2]
    code, out, err = run_lab(kw, prefix=in_lab(lab), timeout=80)
    assert code == 0, (out, err[-3000:])
    assert out["status"]["ok"] == 96 and len(out["hosts"]) == 2
    assert json.loads((tmp_path / "results" / "ssh" / "meta.json").read_text())["params"][
        "secure"] is True
    assert not gone_within(lab, tag, 2.0)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("fault", ["host key", "python", "version"])
def test_a_host_that_cannot_start_is_named(fault, lab, make_data, tmp_path):
    """Wrong host key, a remote Python that is not there, another comlab there: one line
    naming the host, before the result exists, and nothing started anywhere."""
    tag = uuid.uuid4().hex[:8]
    kw = sweep_kw(lab, make_data, tmp_path, tag)
    if fault == "host key":
        kw["ssh_config"] = lab.config_with_wrong_host_key()
        want = "ssh failed: Host key verification failed."
    elif fault == "python":
        kw["hosts"][1] = kw["hosts"][1].replace(f"python={sys.executable}",
                                                "python=/nonexistent/python")
        want = "cannot run /nonexistent/python there"
    else:
        fake = fake_python(tmp_path)
        kw["hosts"][1] = (kw["hosts"][1].replace(f"python={sys.executable}", f"python={fake}")
                          .replace(f"workdir={REPO}", f"workdir={tmp_path}"))
        want = "comlab 0.0.1 (protocol 1) there"
    code, out, err = run_lab(kw, prefix=in_lab(lab), timeout=50)
    assert code == 3, (out, err[-2000:])
    host = lab.hosts[0 if fault == "host key" else 1].alias
    assert out.startswith(f"HostError: host {host}-{tag} (ssh://{host} ") and want in out, out
    assert "\n" not in out
    assert not (tmp_path / "results" / "ssh").exists()
    assert not gone_within(lab, tag, 2.0)


@pytest.mark.timeout(90)
def test_host_killed_mid_run_is_named_and_nothing_is_left(lab, make_data, tmp_path):
    """The kill is sent 0.3 s into run 1; on a loaded machine it may land in a later run (or
    between two): whichever run it hit is the one refused, named, and the sweep's last. Six
    repeats so that it always lands inside the sweep; "stop" measures none after it."""
    tag = uuid.uuid4().hex[:8]
    kw = sweep_kw(lab, make_data, tmp_path, tag, wait=0.05, repeats=6, kill_host_in_run=2,
                  kill_host=f"{lab.hosts[1].alias}-{tag}")
    code, out, err = run_lab(kw, prefix=in_lab(lab), timeout=80)
    name = f"{lab.hosts[1].alias}-{tag}"
    assert code == 3 and out.startswith(f"HostLost: host {name} (ssh://"), (out, err[-2000:])
    assert "was lost (exit code" in out
    meta = json.loads((tmp_path / "results" / "ssh" / "meta.json").read_text())
    hit, = [f["run"] for f in meta["failed_runs"]]
    assert hit >= 1 and f"host {name} (ssh://" in meta["failed_runs"][0]["error"]
    assert [r["run"] for r in meta["runs"]] == list(range(hit)) and not meta["complete"]
    assert not gone_within(lab, tag, 2.0)


@pytest.mark.timeout(90)
@pytest.mark.parametrize("end", ["SIGKILL", "SIGINT", "exception"])
def test_lab_end_takes_every_remote_host_along(end, lab, make_data, tmp_path):
    """SIGKILL of the lab mid-sweep: its ssh clients see stdin close, the channels close, the
    remote hosts stop: nothing left on any host within 5 s. SIGINT (Ctrl-C, a notebook's
    interrupt) and an exception: the same, by the lab's own teardown."""
    tag = uuid.uuid4().hex[:8]
    kw = sweep_kw(lab, make_data, tmp_path, tag, repeats=40)
    if end == "exception":
        kw["fail_after"] = 1
    proc = subprocess.Popen([*in_lab(lab), sys.executable, "-c", LAB, json.dumps(kw)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        part = tmp_path / "results" / "ssh" / "parts" / "run-00000.parquet"
        deadline = time.monotonic() + 60
        while not part.exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
            time.sleep(0.05)
        running = [p for p in remote_left(lab, tag) if "comlab.system.worker_host" in p]
        if end != "exception":
            assert len(running) == 3, running
            assert psutil.Process(proc.pid).cmdline()[1] == "-c"  # ip netns exec, env: exec'd
            t0 = time.monotonic()
            os.kill(proc.pid, signal.SIGKILL if end == "SIGKILL" else signal.SIGINT)
        else:
            t0 = time.monotonic()
        left = gone_within(lab, tag, 5.0)
        print(f"{end}: remote hosts gone {time.monotonic() - t0:.2f} s after")
        assert not left, left
        proc.wait(10)
        assert proc.returncode == {"SIGKILL": -9, "SIGINT": -2, "exception": 3}[end]  # -2: KeyboardInterrupt re-raised
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()


@pytest.mark.timeout(90)
def test_cli_sweep_over_ssh_hosts(lab, make_data, tmp_path):
    """``comlab sweep --hosts a,b --ssh-config F``: the command line's path to the same."""
    tag = uuid.uuid4().hex[:8]
    kw = sweep_kw(lab, make_data, tmp_path, tag)
    proc = subprocess.run(
        [*in_lab(lab), sys.executable, "-m", "comlab", "sweep", "--hosts", ",".join(kw["hosts"]),
         "--ssh-config", lab.ssh_config, "--server-address", LAB_IP, "--client-address", LAB_IP,
         "--workers", "0", "--batch-sizes", "4", "--repeats", "1", "--commands",
         kw["commands"], "--map", kw["server_map"], "--results-dir", kw["results_dir"],
         "--name", "cli", "--no-plots", "--no-progress"],
        capture_output=True, text=True, timeout=80)
    assert proc.returncode == 0, proc.stderr[-3000:]
    meta = json.loads((tmp_path / "results" / "cli" / "meta.json").read_text())
    assert meta["complete"] and [r["workers"] for r in meta["runs"]] == [3]
    assert sorted(h["name"] for h in meta["hosts"]) == [f"h{i}-{tag}" for i in (1, 2, 3)]
    assert not gone_within(lab, tag, 2.0)


def validation_sweeps(results_dir: str = "results", per_host=(2, 8)) -> None:
    """The simulation's multi-host validation (README "Simulation"): ``comlab run``'s batch
    sizes on 3 ssh hosts in namespaces, ``per_host`` workers each, the shipped seed (10 ms
    tasks), 2 repeats; results in ``results_dir/hosts3-wN``."""
    import tempfile
    with ssh_namespaces(tempfile.mkdtemp(prefix="comlab-validate-"), n_hosts=3) as lab:
        for n in per_host:
            kw = {"batch_sizes": [1, 4, 16, 64], "workers": [0], "repeats": 2,
                  "results_dir": os.path.abspath(results_dir), "name": f"hosts3-w{n}",
                  "fresh": True, "ssh_config": lab.ssh_config, "server_address": LAB_IP,
                  "client_address": LAB_IP,
                  "hosts": [f"ssh://{h.alias} workers={n} python={sys.executable} "
                            f"workdir={REPO}" for h in lab.hosts]}
            code, out, err = run_lab(kw, prefix=in_lab(lab), timeout=900)
            assert code == 0, err[-3000:]
            print(f"{results_dir}/hosts3-w{n}: {out['status']}")


if __name__ == "__main__":  # python tests/test_ssh_hosts.py (as root): the validation sweeps
    validation_sweeps()
