"""The comlab command: help on every flag, version, show / compare / report, run --fresh."""

import argparse
import base64
import re
import subprocess
import sys
from pathlib import Path

import pytest

import comlab
from comlab import cli
from comlab.lab import report

EXAMPLE = Path(__file__).resolve().parents[1] / "results" / "example"


def _actions(parser: argparse.ArgumentParser, path=()):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _actions(sub, path + (name,))
        elif not isinstance(action, argparse._HelpAction):
            yield path, action


def test_every_flag_of_every_subcommand_has_help():
    found = list(_actions(cli.build_parser()))
    assert len(found) > 60
    missing = [(" ".join(path), action.dest) for path, action in found if not action.help]
    assert not missing, f"no help text: {missing}"
    commands = {path[0] for path, _ in found if path}
    assert {"run", "sweep", "plot", "show", "compare", "report", "server", "client"} <= commands


def _comlab(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "comlab", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.timeout(60)
def test_python_dash_m_comlab_and_version():
    proc = _comlab("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"comlab {comlab.__version__}"
    proc = _comlab("--help")
    assert proc.returncode == 0 and "compare" in proc.stdout and "report" in proc.stdout


@pytest.mark.parametrize("command", ["plot", "show", "report"])
def test_a_missing_result_is_one_line_and_exit_2(tmp_path, command, capsys):
    assert cli.main([command, str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err == f"error: {tmp_path / 'nope'}: not a saved comlab result (no such directory)\n"
    assert cli.main([command, str(tmp_path)]) == 2
    assert capsys.readouterr().err == (f"error: {tmp_path}: not a saved comlab result "
                                       f"(no meta.json in it)\n")


def test_show_prints_parameters_environment_warnings_summary(capsys):
    assert cli.main(["show", str(EXAMPLE)]) == 0
    out = capsys.readouterr().out
    for heading in ("parameters:", "environment:", "warnings", "summary"):
        assert heading in out
    assert "batch_sizes: [1, 4, 16, 64]" in out and "hostname: vm" in out
    assert len(re.findall(r"thread-per-task\s+tcp\s+broker\s+2\s", out)) == 16  # a row per configuration


def test_compare_command_on_a_result_and_itself(tmp_path, capsys):
    csv = tmp_path / "cmp.csv"
    assert cli.main(["compare", str(EXAMPLE), str(EXAMPLE), "--csv", str(csv)]) == 0
    out = capsys.readouterr().out
    assert len(re.findall(r"^ +same +factor ", out, re.M)) == 16  # 2 repeats a side
    assert "1.000 [0.965, 1.037]" in out  # b=1 w=1: its repeats' spread, Welch's t
    assert "makespan_s_ratio_lo" in csv.read_text().splitlines()[0]


def test_load_displays_itself():
    result = comlab.load(EXAMPLE)
    assert len(result.records) == 512 * 32 and len(result.summary) == 32
    assert len(result.configs) == 16
    page = result._repr_html_()
    for text in ("batch_sizes", "pyzmq", "makespan_s", "Warnings", "data:image/png;base64,"):
        assert text in page
    assert page.count("<img") == len(result.figures) > 0


def test_report_from_a_saved_result_is_self_contained(tmp_path):
    out = tmp_path / "report.html"
    assert cli.main(["report", str(EXAMPLE), "--compare", str(EXAMPLE), "-o", str(out)]) == 0
    page = out.read_text()
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    images = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", page)
    assert len(images) == len(list((EXAMPLE / "figures").glob("*.png"))) + 1  # + the comparison
    assert all(base64.b64decode(i)[:8] == b"\x89PNG\r\n\x1a\n" for i in images)
    assert not re.search(r"""src=['"](?!data:)""", page), "a figure is not embedded"
    for text in ("Parameters", "Environment", "Warnings", "Summary per configuration",
                 "Compared with", "too few repeats", "git_commit"):
        assert text in page
    assert not (EXAMPLE / "report.html").exists()


# -- comlab run / sweep: resume, refusal, --fresh ------------------------------------------------
@pytest.mark.timeout(120)
def test_sweep_resumes_refuses_and_starts_fresh(tmp_path):
    commands, smap = tmp_path / "c.txt", tmp_path / "m.txt"
    commands.write_text("".join(f"10.0.0.{i}:foo\n" for i in range(16)))
    smap.write_text("".join(f"10.0.0.{i}:foo:1:0.001\n" for i in range(16)))
    base = ["sweep", "--batch-sizes", "4", "--workers", "1", "--commands", commands, "--map",
            smap, "--results-dir", tmp_path / "r", "--name", "x", "--no-plots", "--no-progress"]
    first = _comlab(*base, "--repeats", "1", "--wait-scale", "0.5")
    assert first.returncode == 0, first.stderr
    assert "task waits scaled by 0.5" in first.stdout
    again = _comlab(*base, "--repeats", "1", "--wait-scale", "0.5")
    assert again.returncode == 0, again.stderr
    assert "1 of 1 runs were measured by an earlier session" in again.stderr
    refused = _comlab(*base, "--repeats", "2", "--wait-scale", "0.5")
    assert refused.returncode == 2
    assert refused.stderr.count("\n") == 1 and "repeats: 1 -> 2" in refused.stderr
    assert "--fresh" in refused.stderr and "Traceback" not in refused.stderr
    fresh = _comlab(*base, "--repeats", "2", "--wait-scale", "0.5", "--fresh")
    assert fresh.returncode == 0, fresh.stderr
    assert "moved to" in fresh.stderr
    aside = [p for p in (tmp_path / "r").iterdir() if p.name.startswith("x.")]
    assert len(aside) == 1 and len(comlab.load_meta(aside[0])["runs"]) == 1
    meta = comlab.load_meta(tmp_path / "r" / "x")
    assert len(meta["runs"]) == 2 and meta["complete"] is True
    assert meta["params"]["commands"] == str(commands)
    run = meta["runs"][0]
    assert run["timeout_s"] > 0 and len(run["loadavg_start"]) == 3
    assert run["server"]["tasks"] == 16 and run["server"]["batches"] == 4
    assert run["server"]["retried"] == 0 and "workers" not in run["server"]
    bad_name = _comlab(*base[:-4], "--name", "../y", "--no-plots", "--no-progress")
    assert bad_name.returncode == 2 and "plain name" in bad_name.stderr


def test_the_cli_and_the_api_take_their_defaults_from_one_place(monkeypatch):
    """comlab.lab.defaults.DEFAULTS is the only copy: run_experiment's signature is it, and a
    change there is what `comlab run` and `comlab sweep` parse to."""
    import inspect

    from comlab.lab import defaults
    from comlab.lab.experiment import run_experiment
    api = inspect.signature(run_experiment).parameters
    assert {k: api[k].default for k in defaults.DEFAULTS} == defaults.DEFAULTS
    monkeypatch.setitem(defaults.DEFAULTS, "repeats", 5)
    monkeypatch.setitem(defaults.DEFAULTS, "transport", "ipc")
    sub = next(a for a in cli.build_parser()._actions
               if isinstance(a, cli.argparse._SubParsersAction))
    for verb in ("run", "sweep"):
        args = sub.choices[verb].parse_args([])
        assert (args.repeats, args.transport) == (5, ["ipc"]), verb
    assert sub.choices["sweep"].parse_args([]).batch_sizes == list(
        defaults.VERBS["sweep"]["batch_sizes"])


@pytest.mark.parametrize("argv, says", [
    (["sweep", "--wait-scale", "x"], "argument --wait-scale: expected a number, got 'x'"),
    (["client", "f", "1", "tcp://127.0.0.1:1", "tcp://127.0.0.1:2", "--timeout", "x"],
     "argument --timeout: expected a number, got 'x'"),
    (["run", "--timeout", "0"], "argument --timeout: must be a finite number > 0, not 0.0"),
    (["run", "--repeats", "0"], "argument --repeats: must be at least 1, not 0"),
    (["predict", "r", "--workers", "-1"], "argument --workers: must be at least 0, not -1"),
])
def test_a_flag_is_checked_as_the_api_checks_its_argument(argv, says, capsys):
    """One set of checks (comlab.lab.checks): the command line's message is the API's, with
    the flag named by argparse instead of the parameter."""
    from comlab.lab import checks
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert says in err and err.count("\n") == 1, err
    with pytest.raises(ValueError, match="^timeout must be a finite number > 0, not 0.0$"):
        checks.seconds(0.0, "timeout")
