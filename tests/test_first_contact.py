"""A new user's mistakes and surprises (issue 19): every CLI mistake is one line on stderr,
exit 2, naming the argument or file, found before any process starts; run_experiment's
arguments are checked by type; unknown / failed tasks are said; lock files and notebook
folders do not pile up. Nothing here starts a process."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from comlab import cli
from comlab.lab import experiment, results, session, stability


@pytest.fixture
def no_processes(monkeypatch):
    """Any attempt to start a process or a lab session fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError("a process was started for a user's mistake")
    monkeypatch.setattr(subprocess, "Popen", refuse)
    from comlab.system import server
    monkeypatch.setattr(server.Server, "prepare", refuse)  # an in-process pool (`server`)
    monkeypatch.setattr(session.Session, "__init__", refuse)
    monkeypatch.setattr(experiment, "Session", refuse)


def _cli(argv) -> int:
    try:
        return cli.main(argv)
    except SystemExit as exc:
        return exc.code


def _files(tmp: Path) -> dict:
    """Small files for the table's cases, keyed by the name the table uses."""
    (tmp / "a_file").write_text("x")
    (tmp / "huge_wait.txt").write_text("192.168.1.1:foo:1:1e12\n")
    (tmp / "ipv6.txt").write_text("::1:foo:1:0.1\n")
    (tmp / "big_response.txt").write_text(f"192.168.1.1:foo:{2 ** 63}:0.1\n")
    (tmp / "tasks.txt").write_text("192.168.1.1:foo\n")
    (tmp / "hosts_bad.txt").write_text("local workers=1\nssh://h2 workers=many\n")
    bad_meta = tmp / "bad_meta"
    bad_meta.mkdir()
    (bad_meta / "meta.json").write_text("{not json")
    bad_parquet = tmp / "bad_parquet"
    bad_parquet.mkdir()
    (bad_parquet / "meta.json").write_text(json.dumps({"format_version": 2, "runs": [],
                                                       "params": {}, "complete": True}))
    (bad_parquet / "records.parquet").write_bytes(b"not parquet")
    foreign = tmp / "foreign"  # another tool's folder with a meta.json of its own
    foreign.mkdir()
    (foreign / "meta.json").write_text(json.dumps({"tool": "other", "version": 3}))
    newer = tmp / "newer"
    newer.mkdir()
    (newer / "meta.json").write_text(json.dumps({"format_version": 99, "runs": [],
                                                 "params": {}}))
    ro = tmp / "read_only"
    ro.mkdir()
    ro.chmod(0o500)
    return {}


def _seed(name: str) -> str:
    from comlab import data
    return str(data.seed_path(name))


# argument list (FILE/ is the test's temp dir), substring the one line must contain
CASES = [
    (["run", "--rate", "0"], "--rate"),
    (["run", "--rate", "nan"], "--rate"),
    (["run", "--strategy", ""], "--strategy"),
    (["run", "--strategy", "bogus"], "--strategy"),
    (["run", "--strategy", "thread-pool:0"], "--strategy"),
    (["run", "--dispatch", ""], "--dispatch"),
    (["run", "--dispatch", "broker:x"], "--dispatch"),
    (["run", "--transport", "udp"], "--transport"),
    (["run", "--results-dir", "FILE/a_file"], "--results-dir"),
    (["run", "--results-dir", "FILE/a_file/sub"], "--results-dir"),
    (["run", "--repeats", "0"], "--repeats"),
    (["run", "--repeats", "2.5"], "--repeats"),
    (["run", "--batch-sizes", "0"], "--batch-sizes"),
    (["run", "--batch-sizes", "1.5"], "--batch-sizes"),
    (["run", "--batch-sizes", ","], "--batch-sizes"),
    (["run", "--workers", "0"], "workers"),
    (["run", "--workers", "-1"], "--workers"),
    (["run", "--timeout", "nan"], "--timeout"),
    (["run", "--timeout", "1e10"], "--timeout"),
    (["run", "--timeout", "-1"], "--timeout"),
    (["run", "--timeout", "0"], "--timeout"),
    (["run", "--wait-scale", "-1"], "--wait-scale"),
    (["sweep", "--wait-scale", "inf"], "--wait-scale"),
    (["run", "--name", "a/b"], "--name"),
    (["run", "--map", "FILE/huge_wait.txt"], "huge_wait.txt:1"),
    (["run", "--map", "FILE/ipv6.txt"], "IPv6"),
    (["run", "--map", "FILE/big_response.txt"], "signed 64-bit"),
    (["run", "--map", "FILE/missing.txt"], "missing.txt"),
    (["sweep", "--hosts", "ssh://"], "ssh://"),
    (["sweep", "--hosts", "local workers=0"], "workers must be an integer"),
    (["sweep", "--hosts", "local,local"], "two hosts are named 'local'"),
    (["sweep", "--hosts", "ssh://far-away"], "far-away cannot reach server_address"),
    (["sweep", "--hosts-file", "FILE/hosts_bad.txt"], "hosts_bad.txt:2"),
    (["sweep", "--hosts-file", "FILE/missing.txt"], "missing.txt"),
    (["sweep", "--hosts", "local", "--transport", "ipc"], "transport ipc"),
    (["sweep", "--on-host-loss", "maybe"], "--on-host-loss"),
    (["gen-data", "FILE/out", "--hosts", "300"], "--hosts"),
    (["gen-data", "FILE/out", "--hosts", "0"], "--hosts"),
    (["gen-data", "FILE/out", "--wait-mean", "-1"], "--wait-mean"),
    (["gen-data", "FILE/out", "--network", "10.0.0.0/33"], "--network"),
    (["gen-data", "FILE/a_file"], "out_dir"),
    (["show", "FILE/bad_meta"], "meta.json"),
    (["show", "FILE/bad_parquet"], "bad_parquet"),
    (["report", "FILE/bad_meta"], "meta.json"),
    (["compare", "FILE/bad_meta", "FILE/bad_meta"], "meta.json"),
    (["plot", "FILE/bad_meta"], "bad_meta"),
    (["client", "FILE/tasks.txt", "1", "tcp://127.0.0.1:1", "tcp://127.0.0.1:2",
      "--timeout", "nan"], "--timeout"),
    (["client", "FILE/tasks.txt", "1", "tcp://127.0.0.1:1", "tcp://127.0.0.1:2",
      "--timeout", "1e10"], "--timeout"),
    (["client", "FILE/tasks.txt", "1", "tcp://127.0.0.1:1", "tcp://127.0.0.1:2",
      "--timeout", "-1"], "--timeout"),
    (["client", "FILE/tasks.txt", "0", "tcp://127.0.0.1:1", "tcp://127.0.0.1:2"],
     "TASKS_PER_BATCH"),
    (["client", "FILE/tasks.txt", "1", "tcp://127.0.0.1:1", "foo"], "REMOTE_URL"),
    (["server", "SEED/server_data.txt", "tcp://127.0.0.1:1", "foo", "2"], "REMOTE_URL"),
    (["server", "SEED/server_data.txt", "tcp://127.0.0.1:1", "tcp://127.0.0.1:2", "-1"],
     "MAX_WORKERS"),
    (["server", "FILE/big_response.txt", "tcp://127.0.0.1:1", "tcp://127.0.0.1:2", "1"],
     "signed 64-bit"),
    (["server", "SEED/server_data.txt", "tcp://127.0.0.1:1", "tcp://127.0.0.1:2", "1",
      "--strategy", ""], "strategy"),
    # issue 25: more workers than the machine's processes/threads or memory take
    (["sweep", "--workers", "5000"], "workers 5000"),
    (["run", "--workers", "400", "--batch-sizes", "512"], "at most"),
    (["server", "SEED/server_data.txt", "tcp://127.0.0.1:1", "", "5000"], "MAX_WORKERS 5000"),
    # issue 25: addresses, names, ports, outputs, foreign and newer folders
    (["sweep", "--server-address", "999.1.1.1"], "--server-address"),
    (["sweep", "--server-address", "::1"], "IPv6"),
    (["sweep", "--server-address", "8.8.8.8"], "not an address of this machine"),
    (["sweep", "--client-address", "8.8.8.8"], "--client-address"),
    (["run", "--name", "n" * 300], "--name"),
    (["sweep", "--workers-url", "tcp://127.0.0.1:99999"], "--workers-url"),
    (["server", "SEED/server_data.txt", "tcp://127.0.0.1:99999", "", "1"], "BIND_URL"),
    (["server", "SEED/server_data.txt", "tcp://127.0.0.1:1", "", "1", "--workers-url",
      "tcp://127.0.0.1:0"], "--workers-url"),
    (["client", "FILE/tasks.txt", "1", "tcp://127.0.0.1:70000", "tcp://127.0.0.1:2"],
     "BIND_URL"),
    (["client", "FILE/tasks.txt", "1", "tcp://127.0.0.1:1", "tcp://127.0.0.1:65536"],
     "REMOTE_URL"),
    (["worker-host", "tcp://127.0.0.1:99999"], "SERVER_URL"),
    (["predict", "FILE/bad_meta", "--csv", "FILE"], "--csv"),
    (["compare", "FILE/bad_meta", "FILE/bad_meta", "--csv", "FILE/missing/x.csv"], "--csv"),
    (["report", "FILE/bad_meta", "-o", "FILE"], "--output"),
    (["show", "FILE/foreign"], "foreign: not a saved comlab result"),
    (["plot", "FILE/foreign"], "foreign: not a saved comlab result"),
    (["report", "FILE/foreign"], "foreign: not a saved comlab result"),
    (["compare", "FILE/foreign", "FILE/foreign"], "foreign: not a saved comlab result"),
    (["predict", "FILE/foreign"], "foreign: not a saved comlab result"),
    (["show", "FILE/newer"], "format_version 99"),
    (["predict", "FILE/newer"], "format_version 99"),
]


@pytest.mark.parametrize("argv, names", CASES, ids=[" ".join(a) for a, _ in CASES])
def test_a_mistake_is_one_line_exit_2_naming_it(argv, names, tmp_path, monkeypatch, capsys,
                                                 no_processes):
    _files(tmp_path)
    monkeypatch.chdir(tmp_path)
    argv = [a.replace("FILE", str(tmp_path)).replace("SEED/server_data.txt", _seed("server_data.txt")) for a in argv]
    assert _cli(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert names in err[0]
    assert "Traceback" not in err[0]


def test_a_read_only_results_dir_is_named(tmp_path, monkeypatch, capsys, no_processes):
    if os.geteuid() == 0:
        pytest.skip("root may write into a read-only directory")
    _files(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert _cli(["run", "--results-dir", str(tmp_path / "read_only" / "r")]) == 2
    assert "--results-dir" in capsys.readouterr().err


@pytest.mark.parametrize("kwargs, error, names", [
    ({"repeats": 2.5}, TypeError, "repeats"),
    ({"repeats": 0}, ValueError, "repeats"),
    ({"batch_sizes": [1.5]}, TypeError, "batch_sizes"),
    ({"batch_sizes": []}, ValueError, "batch_sizes"),
    ({"workers": [True]}, TypeError, "workers"),
    ({"timeout": 0}, ValueError, "timeout"),
    ({"timeout": float("nan")}, ValueError, "timeout"),
    ({"timeout": 1e10}, ValueError, "timeout"),
    ({"wait_scale": -1}, ValueError, "wait_scale"),
    ({"rate": 0}, ValueError, "rate"),
    ({"strategy": []}, ValueError, "strategy"),
    ({"dispatch": ""}, ValueError, "dispatch"),
    ({"remote_workers": 1.5}, TypeError, "remote_workers"),
    ({"hosts": [3]}, TypeError, "host entry"),
    ({"hosts": "no-such-hosts-file.txt"}, ValueError, "no-such-hosts-file.txt"),
    ({"hosts": []}, ValueError, "hosts is empty"),
    ({"on_host_loss": "maybe"}, ValueError, "on_host_loss"),
    ({"server_address": "999.1.1.1"}, ValueError, "server_address"),
    ({"server_address": "::1"}, ValueError, "server_address '::1' is IPv6"),
    ({"client_address": "8.8.8.8"}, ValueError, "client_address"),
    ({"name": "n" * 300}, ValueError, "at most"),
    ({"workers_url": "tcp://127.0.0.1:99999", "remote_workers": 1}, ValueError, "workers_url"),
])
def test_run_experiment_refuses_bad_arguments_by_name(kwargs, error, names, tmp_path,
                                                      no_processes):
    with pytest.raises(error, match=names):
        experiment.run_experiment(results_dir=tmp_path, progress=False, **kwargs)
    assert not any(tmp_path.iterdir())  # nothing written


def test_run_experiment_refuses_a_file_as_results_dir(tmp_path, no_processes):
    (tmp_path / "f").write_text("")
    with pytest.raises(ValueError, match="results_dir"):
        experiment.run_experiment(results_dir=tmp_path / "f", progress=False)


def test_a_long_sweep_declined_starts_nothing(tmp_path, no_processes):
    asked = []
    with pytest.raises(experiment.SweepDeclined, match="--yes"):
        experiment.run_experiment(wait_scale=1.0, repeats=3, results_dir=tmp_path,
                                  progress=False, confirm=lambda t: asked.append(t) or False)
    assert asked and "min" in asked[0]
    assert not any(tmp_path.iterdir())


def test_a_long_sweep_without_yes_off_a_terminal_is_refused(tmp_path, monkeypatch, capsys,
                                                             no_processes):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.stdin.isatty", lambda: False, raising=False)
    assert _cli(["sweep", "--wait-scale", "1", "--repeats", "3"]) == 2
    assert "--yes" in capsys.readouterr().err


def test_defaults_agree_across_run_sweep_and_the_api():
    import inspect
    p = cli.build_parser()
    sub = next(a for a in p._actions if isinstance(a, cli.argparse._SubParsersAction))
    api = inspect.signature(experiment.run_experiment).parameters
    for verb in ("run", "sweep"):
        args = sub.choices[verb].parse_args([])
        assert args.repeats == api["repeats"].default == 2
        assert args.wait_scale is None and api["wait_scale"].default is None
    assert experiment.default_wait_scale(None) == 0.01
    assert experiment.default_wait_scale("my_map.txt") == 1.0


def test_every_verb_has_a_description_and_timeout_says_its_unit():
    p = cli.build_parser()
    sub = next(a for a in p._actions if isinstance(a, cli.argparse._SubParsersAction))
    for name, parser in sub.choices.items():
        assert parser.description and "\n" not in parser.description.strip(), name
        for action in parser._actions:
            if "--timeout" in action.option_strings:
                assert "second" in action.help, name
            if "--strategy" in action.option_strings and name in ("run", "sweep"):
                assert "thread-pool:N" in action.help
            if "--dispatch" in action.option_strings:
                assert "broker:K" in action.help, name


def _summary(statuses: dict) -> pd.DataFrame:
    row = {"experiment": "e", "run": 0, "batch_size": 1, "workers": 1,
           "strategy": "thread-per-task", "n_tasks": sum(statuses.values()),
           "makespan_s": 1.0, "throughput_tps": 1.0, "latency_p50_s": 0.1,
           "latency_p99_s": 0.1, "efficiency": 1.0, "ideal_s": 1.0, "overhead_p99_s": 0.0}
    row.update({f"n_{s}": statuses.get(s, 0) for s in ("ok", "unknown", "unreachable",
                                                        "failed", "lost")})
    return pd.DataFrame([row])


def test_unknown_answers_are_counted_and_warned():
    summary = _summary({"ok": 6, "unknown": 4})
    assert stability.summarize_configs(summary)["n_unknown"].tolist() == [4]
    found = stability.check(summary, {})
    assert any("4 of 10 tasks answered unknown" in w for w in found)
    assert "n_unknown" in cli.TABLE_COLUMNS
    assert not any("unknown" in w for w in stability.check(_summary({"ok": 10}), {}))


def test_a_run_with_failures_prints_the_reasons(capsys):
    df = pd.DataFrame({"status": ["ok", "failed", "failed", "failed"],
                       "error": [None, "ZeroDivisionError: boom", "ZeroDivisionError: boom",
                                 "KeyError: 'x'"]})
    cli._print_failures(df, _summary({"ok": 1, "failed": 3}))
    err = capsys.readouterr().err
    assert "3 tasks failed" in err and "2 x ZeroDivisionError: boom" in err
    assert "KeyError" in err


def test_a_rerun_says_nothing_was_measured_and_names_fresh(tmp_path, capsys):
    (tmp_path / "meta.json").write_text(json.dumps(
        {"resumed_runs": 4, "runs": [{}] * 4, "started": "2026-01-01T00:00:00"}))
    cli._say_if_reused(str(tmp_path))
    out = capsys.readouterr().out
    assert "4 of 4 runs reused" in out and "--fresh" in out


def test_no_lock_file_outlives_its_sweep(tmp_path):
    params = {"repeats": 1}
    with results.ResultStore(tmp_path, "r", params):
        assert (tmp_path / ".r.lock").exists()
        with pytest.raises(results.ResultLocked):
            results.ResultStore(tmp_path, "r", params)
    assert not (tmp_path / ".r.lock").exists()
    with results.ResultStore(tmp_path, "r", params):  # and it can be taken again
        pass
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r"]


def test_notebook_setup_leaves_no_temp_folder_when_it_refuses(tmp_path, monkeypatch):
    import tempfile
    from comlab import notebook
    monkeypatch.delenv("COMLAB_RESULTS_DIR", raising=False)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    with pytest.raises(FileNotFoundError):
        notebook.setup(use_example=True, start=outside, style=False, verbose=False)
    assert not list(tmp_path.glob("comlab-nb-*"))
