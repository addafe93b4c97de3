"""mkdocs hook: pages say ``<!-- gen: NAME -->`` on a line of its own where a block generated
from the code goes (the CLI's help, the record schema, the defaults, the notebooks, the
strategies and dispatch designs, ARCHITECTURE.md), so the reference never drifts from the code
it describes.

An unknown NAME fails the build. tests/test_docs.py builds the site with ``--strict``.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the checkout's comlab, whatever is installed
    sys.path.insert(0, str(ROOT))

MARKER = re.compile(r"^<!-- gen: ([a-z-]+) -->$", re.MULTILINE)
HELP_WIDTH = "80"  # argparse wraps at $COLUMNS: fixed, so the page does not depend on a terminal


def verbs() -> dict[str, argparse.ArgumentParser]:
    """comlab's verbs, in the parser's order: name -> its parser."""
    from comlab import cli
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def _help(parser: argparse.ArgumentParser) -> str:
    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = HELP_WIDTH
    try:
        return parser.format_help()
    finally:
        if old is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = old


def gen_cli() -> str:
    from comlab import cli
    out = ["## comlab", "", "```text", _help(cli.build_parser()).rstrip(), "```", ""]
    for name, parser in verbs().items():
        out += [f"## comlab {name}", "", "```text", _help(parser).rstrip(), "```", ""]
    return "\n".join(out)


def gen_schema() -> str:
    from comlab import schema
    return schema.markdown_table()


def _auto() -> dict[str, str]:
    """What a default of None means, per setting, in the code's own words and constants."""
    from comlab.lab import experiment, plan
    timeout = " ".join((inspect.getdoc(plan.default_timeout) or "").split())
    return {"wait scale": f"{experiment.SEED_WAIT_SCALE:g} for the shipped seed map, 1 for a "
                          "map of your own",
            "timeout per run (s)": f"{timeout[0].lower()}{timeout[1:]}",
            "open-loop rate (tasks/s)": "none: closed loop"}


def _show(value) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value)) if value else "none"
    return str(value)


DEFAULT_ROWS = (  # (setting, the CLI flag's dest, run_experiment's parameter)
    ("batch sizes", "batch_sizes", "batch_sizes"), ("workers", "workers", "workers"),
    ("repeats", "repeats", "repeats"), ("strategy", "strategy", "strategy"),
    ("dispatch", "dispatch", "dispatch"), ("transport", "transport", "transport"),
    ("wait scale", "wait_scale", "wait_scale"), ("timeout per run (s)", "timeout", "timeout"),
    ("open-loop rate (tasks/s)", "rate", "rate"),
    ("server address", "server_address", "server_address"),
    ("client address", "client_address", "client_address"),
    ("result name", "name", "name"), ("results folder", "results_dir", "results_dir"),
)


def defaults() -> dict[str, dict[str, object]]:
    """{setting: {"run": ..., "sweep": ..., "api": ...}} from the parsers and the signature."""
    from comlab.lab.experiment import run_experiment
    parsers = verbs()
    sig = inspect.signature(run_experiment).parameters
    out = {}
    for setting, dest, param in DEFAULT_ROWS:
        row = {}
        for verb in ("run", "sweep"):
            action = next(a for a in parsers[verb]._actions if a.dest == dest)
            row[verb] = action.default
        row["api"] = sig[param].default
        out[setting] = row
    return out


def gen_defaults() -> str:
    rows = ["| setting | `comlab run` | `comlab sweep` | `run_experiment` |",
            "| --- | --- | --- | --- |"]
    auto = _auto()
    for setting, row in defaults().items():
        if setting in auto and row["run"] is row["sweep"] is row["api"] is None:
            rows.append(f"| {setting} | {auto[setting]} | same | same |")
            continue
        name = {"run": row["run"], "sweep": row["sweep"] if row["sweep"] is not None
                else "a timestamp", "api": row["api"]}
        if setting == "result name":
            name["api"] = "a timestamp" if row["api"] is None else row["api"]
            rows.append(f"| {setting} | `{_show(name['run'])}` | {name['sweep']} | "
                        f"{name['api']} |")
            continue
        rows.append(f"| {setting} | `{_show(row['run'])}` | `{_show(row['sweep'])}` | "
                    f"`{_show(row['api'])}` |")
    return "\n".join(rows)


def notebooks() -> list[tuple[str, str]]:
    """(file name, title: the first heading of its first markdown cell) per notebook."""
    out = []
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        cells = json.loads(path.read_text())["cells"]
        first = next(("".join(c["source"]) for c in cells if c["cell_type"] == "markdown"), "")
        out.append((path.name, first.splitlines()[0].lstrip("# ") if first else ""))
    return out


def gen_notebooks() -> str:
    found = notebooks()
    rows = [f"The {len(found)} notebooks in `notebooks/`, in order:", "",
            "| notebook | what it shows |", "| --- | --- |"]
    rows += [f"| `{name}` | {title} |" for name, title in found]
    return "\n".join(rows)


def gen_architecture() -> str:
    """ARCHITECTURE.md (kept at the top of the repository, beside the code), its title left to
    the page."""
    text = (ROOT / "ARCHITECTURE.md").read_text()
    return text.split("\n", 1)[1].lstrip("\n") if text.startswith("# ") else text


GENERATORS = {"cli": gen_cli, "schema": gen_schema, "defaults": gen_defaults,
              "notebooks": gen_notebooks, "architecture": gen_architecture}


def expand(markdown: str, where: str = "") -> str:
    def one(match: re.Match) -> str:
        name = match.group(1)
        if name not in GENERATORS:
            raise ValueError(f"{where}: unknown generated block {name!r}; known: "
                             f"{', '.join(GENERATORS)}")
        return GENERATORS[name]()
    return MARKER.sub(one, markdown)


def on_page_markdown(markdown, page, config, files, **kwargs):  # the mkdocs hook
    return expand(markdown, page.file.src_path)


EXAMPLE_FIGURES = ROOT / "results" / "example" / "figures"


def on_files(files, config, **kwargs):  # the committed example's figures, as img/example/*.png
    from mkdocs.structure.files import File
    for png in sorted(EXAMPLE_FIGURES.glob("*.png")):
        files.append(File.generated(config, f"img/example/{png.name}", abs_src_path=str(png)))
    return files
