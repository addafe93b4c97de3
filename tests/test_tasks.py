"""The operator's own task (comlab.system.usertask): a function or a command per task instead of
the emulated sleep, its answers the records' responses, its failures failed records."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import textwrap
import threading
import time
import warnings

import pandas as pd
import pytest

import comlab
from comlab.system import usertask

USER_MODULE = textwrap.dedent("""
    def answer(ip, command, response, wait):
        if command == "boom":
            raise RuntimeError(f"boom at {ip}")
        return response * 1000 + len(command)
""")
# Zero waits too: with a task a wait is only an input, so those tasks run the function too.
MAP = "10.0.0.1:foo:1:0.0\n10.0.0.2:foo:2:0.001\n10.0.0.3:boom:3:0.001\n10.0.0.4:bar:4:0\n"
COMMANDS = "10.0.0.1:foo\n10.0.0.2:foo\n10.0.0.3:boom\n10.0.0.4:bar\n10.0.0.1:foo\n10.0.0.4:bar\n"


@pytest.fixture
def user_task(tmp_path, monkeypatch):
    """A module of the user's own on the path of this process and of the lab's processes."""
    (tmp_path / "mytask.py").write_text(USER_MODULE)
    (tmp_path / "map.txt").write_text(MAP)
    (tmp_path / "commands.txt").write_text(COMMANDS)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", f"{tmp_path}:{os.environ.get('PYTHONPATH', '')}")
    return tmp_path


def sweep(tmp_path, **kw):
    kw = {"batch_sizes": [1, 4], "workers": [2], "repeats": 1, "progress": False,
          "commands": str(tmp_path / "commands.txt"), "server_map": str(tmp_path / "map.txt"),
          "results_dir": str(tmp_path / "results"), "name": "t", **kw}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # failed tasks, a busy machine: said, not tested here
        return comlab.run_experiment(**kw)


@pytest.mark.timeout(120)
def test_a_functions_answers_are_the_records_responses(user_task):
    """Under every threaded design and sequential, at batch 1 and 4: what the function returns
    is the response (the batch tokens still hold: no task is taken for a forgery), a raise is
    that task's failed record with the error text, the stamps are taken around the call."""
    df = sweep(user_task, task="mytask:answer",
               strategy=["thread-per-task", "thread-pool:2", "sequential"])
    assert len(df) == 6 * 2 * 3
    ok = df[df["command"] != "boom"]
    assert (ok["status"] == "ok").all(), ok[ok["status"] != "ok"]["error"].tolist()
    expected = ok["ip"].str.rsplit(".", n=1).str[1].astype(int) * 1000 + ok["command"].str.len()
    assert ok["response"].astype(int).tolist() == expected.tolist()
    boom = df[df["command"] == "boom"]
    assert (boom["status"] == "failed").all() and boom["response"].isna().all()
    assert set(boom["error"]) == {"RuntimeError: boom at 10.0.0.3"}
    assert (df["t_finished"] >= df["t_started"]).all()
    meta = json.loads((user_task / "results" / "t" / "meta.json").read_text())
    assert meta["params"]["task"] == "mytask:answer"


@pytest.mark.timeout(60)
def test_an_unimportable_task_is_refused_before_anything_starts(user_task):
    for spec, says in (("no_such_module:f", "No module named 'no_such_module'"),
                       ("mytask:nothing", "has no attribute 'nothing'"),
                       ("mytask", "expected 'module:function'")):
        with pytest.raises(ValueError, match=says):
            sweep(user_task, task=spec)
    assert not (user_task / "results" / "t").exists()
    with pytest.raises(ValueError, match="exclude each other"):
        sweep(user_task, task="mytask:answer", task_command="true")
    with pytest.raises(ValueError, match="unknown field {host}"):
        sweep(user_task, task_command="ping {host}")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("command", [["run"], ["server", "MAP", "tcp://127.0.0.1:*", "", "1"]])
def test_cli_refuses_an_unimportable_task_in_one_line(user_task, command):
    argv = [sys.executable, "-m", "comlab", *[str(user_task / "map.txt") if a == "MAP" else a
                                              for a in command], "--task", "no_such_module:f"]
    if command == ["run"]:
        argv += ["--results-dir", str(user_task / "results"), "--no-progress"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "no_such_module:f" in lines[0], proc.stderr


PROBE = ("import sys, time\n"
         "ip, command = sys.argv[1:]\n"
         "if command == 'slow': time.sleep(30)\n"
         "if command == 'bad': sys.exit('no such thing at ' + ip)\n"
         "print('noise'); print(len(ip) + 100)\n")


@pytest.mark.timeout(90)
def test_a_command_task_on_loopback(user_task):
    """Exit 0: ok, the last stdout line the response; exit 1: failed with its stderr; still
    running at the timeout: killed, failed "timeout" (and no process left: the leak check)."""
    (user_task / "map.txt").write_text("10.0.0.1:ok:5:0\n10.0.0.22:ok:6:0\n10.0.0.3:bad:7:0\n"
                                       "10.0.0.4:slow:8:0\n")
    (user_task / "commands.txt").write_text("10.0.0.1:ok\n10.0.0.22:ok\n10.0.0.3:bad\n"
                                            "10.0.0.4:slow\n")
    template = shlex.join([sys.executable, "-c", PROBE]) + " {ip} {command}"
    df = sweep(user_task, batch_sizes=[4], workers=[1], task_command=template, task_timeout=2)
    by = df.set_index("command")
    ok = df[df["command"] == "ok"]
    assert (ok["status"] == "ok").all() and ok["response"].tolist() == [108, 109]
    assert by.loc["bad", "status"] == "failed"
    assert by.loc["bad", "error"] == "CommandFailed: exit status 1: no such thing at 10.0.0.3"
    assert by.loc["slow", "status"] == "failed" and "timeout" in by.loc["slow", "error"]
    meta = json.loads((user_task / "results" / "t" / "meta.json").read_text())
    assert meta["params"]["task_command"] == template and meta["params"]["task_timeout"] == 2


CONNECT = ("import socket, sys\n"
           "try:\n"
           "    socket.create_connection((sys.argv[1], 9), timeout=1).close()\n"
           "except ConnectionRefusedError:\n"
           "    pass  # the host answered (nothing listens on port 9): reachable\n"
           "except OSError as exc:\n"
           "    sys.exit('%s: %s' % (sys.argv[1], exc))\n")


@pytest.mark.timeout(90)
def test_a_command_task_against_namespace_hosts(tmp_path):
    """A TCP connect from the client's namespace to each host namespace (tests/test_remote's
    namespaces, names of their own): both hosts there answer, an address nobody holds fails."""
    from test_remote import SERVER_IP, WORKER_IP, make_namespaces, run_sweep
    with make_namespaces() as ns:
        (tmp_path / "map.txt").write_text(f"{SERVER_IP}:tcp:1:0\n{WORKER_IP}:tcp:2:0\n"
                                          "10.77.0.99:tcp:3:0\n")
        (tmp_path / "commands.txt").write_text(f"{SERVER_IP}:tcp\n{WORKER_IP}:tcp\n"
                                               "10.77.0.99:tcp\n")
        kw = {"batch_sizes": [3], "workers": [1], "repeats": 1, "progress": False,
              "commands": str(tmp_path / "commands.txt"),
              "server_map": str(tmp_path / "map.txt"), "results_dir": str(tmp_path),
              "name": "ns",
              "task_command": shlex.join([sys.executable, "-c", CONNECT]) + " {ip}",
              "task_timeout": 5}
        out = run_sweep(kw, prefix=["ip", "netns", "exec", ns["client"]], timeout=60)
    assert {k: v for k, v in out["status"].items() if v} == {"ok": 2, "failed": 1}, out
    df = pd.read_parquet(tmp_path / "ns" / "records.parquet")
    failed = df[df["status"] == "failed"]
    assert failed["ip"].tolist() == ["10.77.0.99"]
    assert failed["error"].iloc[0].startswith("CommandFailed: exit status 1: 10.77.0.99: ")


def test_command_output_is_kept_bounded_and_commands_die_with_close():
    big = usertask.Command(shlex.join([sys.executable, "-c",
                                       "print('x' * 1000000); print(42)"]), 10, 1)
    code, out, err = big.run(big.argv)
    assert code == 0 and len(out) == usertask.OUTPUT_TAIL and out.endswith(b"42\n")
    assert big("1.2.3.4", "c", 7, 0) == 42
    slow = usertask.Command("sleep 30", 30, 1)
    result = {}
    t = threading.Thread(target=lambda: result.setdefault("code", slow.run(slow.argv)[0]))
    t.start()
    deadline = time.monotonic() + 5
    while not slow.running and time.monotonic() < deadline:
        time.sleep(0.01)
    slow.close()
    t.join(5)
    assert not t.is_alive() and result["code"] == -9


@pytest.mark.timeout(30)
def test_a_worker_that_cannot_import_the_task_exits_2_naming_it(tmp_path):
    """The server imports the task first; should a worker still fail to (another path), it
    says so in one line and exits 2 before it is ready (the server then names its exit)."""
    code = ("from comlab.system import worker; worker.main('w0', 'ipc://%s/none', "
            "task={'function': 'no_such_module:f'}, entries=[])" % tmp_path)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=20)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "comlab worker w0: task 'no_such_module:f' cannot be imported: ModuleNotFoundError: "
        "No module named 'no_such_module'"]


def test_a_function_must_answer_an_int():
    bound = usertask.Bound(lambda ip, command, response, wait: "yes", [("1.2.3.4", "c", 7)])
    with pytest.raises(TypeError, match="returned 'yes'"):
        bound(0, 0.0)
    none = usertask.Bound(lambda *a: None, [("1.2.3.4", "c", 7)])
    assert none(0, 0.0) == 7  # None: the map's response
    with pytest.raises(IndexError):
        none(-1, 0.0)


def test_a_task_never_runs_on_remote_workers():
    with pytest.raises(ValueError, match="local workers only"):
        comlab.run_experiment(remote_workers=1, workers_url="tcp://127.0.0.1:5999",
                              task="comlab.tasks:spin", progress=False)
