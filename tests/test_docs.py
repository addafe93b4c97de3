"""The docs site (docs/, mkdocs.yml) builds strictly, and what its pages state holds in the code.

Generated blocks (the CLI's help, the record schema, the defaults, the notebooks) come from the
code at build time (docs/hooks.py). The prose facts that are typed by hand (numbers, verbs,
flags, strategy and dispatch names) are checked here against the modules that define them.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.rglob("*.md"))

# docs/hooks.py: the generators (it imports mkdocs only when mkdocs runs it)
_spec = importlib.util.spec_from_file_location("comlab_docs_hooks", DOCS / "hooks.py")
hooks = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(hooks)

NUMBER_WORDS = {w: n for n, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve".split())}
DOCS_PACKAGES = ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python")


def _missing_docs_packages() -> list[str]:
    return [m for m in DOCS_PACKAGES if importlib.util.find_spec(m.split(".")[0]) is None
            or importlib.util.find_spec(m) is None]


def text(page: Path) -> str:
    return page.read_text(encoding="utf-8")


def code_lines(page: Path) -> list[str]:
    """Command lines shown on a page: indented or fenced code, continuation lines joined."""
    out, fenced = [], False
    for line in text(page).replace("\\\n", " ").splitlines():
        if line.startswith("```"):
            fenced = not fenced
            continue
        if fenced or line.startswith("    "):
            out.append(line.strip())
    return out


def test_the_site_builds_strictly(tmp_path):
    missing = _missing_docs_packages()
    if missing:
        pytest.skip(f"docs packages not installed ({', '.join(missing)}): "
                    f"pip install -e '.[docs]'")
    site = tmp_path / "site"
    build = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q",
                            "-f", str(ROOT / "mkdocs.yml"), "-d", str(site)],
                           capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert build.returncode == 0, build.stdout + build.stderr
    cli_page = (site / "reference" / "cli" / "index.html").read_text()
    for verb in hooks.verbs():
        assert f"usage: comlab {verb}" in cli_page, verb
    api = (site / "reference" / "api" / "index.html").read_text()
    assert "run_experiment" in api and "Run every combination of the swept axes" in api
    assert (site / "img" / "example" / "efficiency_heatmap.png").is_file()


# -- generated blocks --------------------------------------------------------------------------
def test_every_marker_names_a_generator():
    for page in PAGES:
        hooks.expand(text(page), str(page))  # raises on an unknown name
    with pytest.raises(ValueError, match="unknown generated block 'nope'"):
        hooks.expand("<!-- gen: nope -->", "x.md")


def test_the_cli_reference_is_every_verbs_help():
    generated = hooks.gen_cli()
    for verb, parser in hooks.verbs().items():
        assert f"## comlab {verb}\n" in generated
        assert parser.description and parser.description in " ".join(generated.split())
    assert "<!-- gen: cli -->" in text(DOCS / "reference" / "cli.md")


def test_the_schema_page_is_the_schemas():
    from comlab import schema
    assert hooks.gen_schema() == schema.markdown_table()
    assert "<!-- gen: schema -->" in text(DOCS / "reference" / "schema.md")


def test_the_defaults_table_is_the_parsers_and_the_apis():
    from comlab import cli
    table = hooks.defaults()
    assert table["batch sizes"]["run"] == cli.RUN_DEFAULTS["batch_sizes"]
    assert list(table["batch sizes"]["api"]) == cli.RUN_DEFAULTS["batch_sizes"]
    assert table["repeats"] == {"run": 2, "sweep": 2, "api": 2}
    assert "0.01 for the shipped seed map" in hooks.gen_defaults()


def test_the_notebooks_listed_are_the_notebooks():
    names = [name for name, _ in hooks.notebooks()]
    assert names == sorted(p.name for p in (ROOT / "notebooks").glob("*.ipynb"))
    assert f"The {len(names)} notebooks" in hooks.gen_notebooks()


# -- facts typed by hand -----------------------------------------------------------------------
def test_a_notebook_count_in_prose_is_the_count():
    count = len(list((ROOT / "notebooks").glob("*.ipynb")))
    for page in PAGES:
        for word in re.findall(r"\b([a-z]+) notebooks\b", text(page).lower()):
            if word in NUMBER_WORDS:
                assert NUMBER_WORDS[word] == count, f"{page.name}: '{word} notebooks'"


def test_every_verb_named_is_a_verb_and_every_verb_is_explained():
    verbs = set(hooks.verbs())
    named = set()
    for page in PAGES:
        for code in re.findall(r"`([^`\n]+)`", text(page)) + code_lines(page):
            named |= set(re.findall(r"(?:^|[\s$(])(?<!from )comlab ([a-z][a-z-]*)", code))
    assert named - verbs == set(), "docs name verbs comlab does not have"
    generated_only = verbs - named
    assert not generated_only, f"verbs only in the generated reference: {generated_only}"


def test_every_flag_shown_on_a_command_line_exists():
    parsers = hooks.verbs()
    shown = 0
    for page in PAGES:
        for line in code_lines(page):
            m = re.match(r"(?:\w+\$ )?(?:comlab ([a-z-]+)|python -m comlab\.run_(server|client))"
                         r"\b(.*)", line)
            if not m:
                continue
            verb = m.group(1) or m.group(2)
            known = {s for a in parsers[verb]._actions for s in a.option_strings}
            for flag in re.findall(r"(?<![\w-])(--?[a-z][a-z-]*)", m.group(3).split("#")[0]):
                assert flag in known, f"{page.name}: comlab {verb} has no {flag}: {line}"
                shown += 1
    assert shown > 40  # the pages do show command lines


def _first_column(page: Path, header: str) -> list[str]:
    lines = text(page).splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {header} |"))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append(re.match(r"\| `([^`]+)`", line).group(1))
    return rows


def test_the_strategy_table_names_every_strategy():
    from comlab.system import strategies
    assert _first_column(DOCS / "explanation" / "pipeline.md", "strategy") == list(
        strategies.STRATEGIES)
    assert "| `thread-per-task` | the default" in text(DOCS / "explanation" / "pipeline.md")
    assert strategies.DEFAULT == "thread-per-task"


def test_the_dispatch_table_names_every_design():
    from comlab.system import dispatch
    names = _first_column(DOCS / "explanation" / "dispatch.md", "design")
    for name in names:
        dispatch.check(name.replace(":K", ":0"))
    assert {n.partition(":")[0] for n in names} == set(dispatch.DESIGNS)
    assert names[0] == dispatch.DEFAULT
    assert f"| `{dispatch.DEFAULT}` (default) |" in text(DOCS / "explanation" / "dispatch.md")


def _facts():
    from comlab.lab import compare, experiment, records, stability
    from comlab.system import gang, protocol
    from comlab import data
    return [  # (page, a pattern with one number, what the code says)
        ("how-to/sweeps.md", r"needs (\d+) a side", compare.repeats_to_confirm()),
        ("how-to/compare.md", r"`U test` \((\d+)\+ repeats a side", compare.repeats_to_confirm()),
        ("how-to/compare.md", r"beyond ([\d.]+)x", compare.FACTOR),
        ("how-to/compare.md", r"both give p < ([\d.]+)", compare.ALPHA),
        ("how-to/compare.md", r"the change exceeds (\d+) %", compare.NOISE * 100),
        ("how-to/sweeps.md", r"ideal time alone exceeds (\d+) minutes",
         experiment.LONG_SWEEP_S / 60),
        ("how-to/sweeps.md", r"makespans differ by more than (\d+) %",
         stability.SPREAD_LIMIT * 100),
        ("how-to/sweeps.md", r"1 s waits become (\d+) ms", experiment.SEED_WAIT_SCALE * 1000),
        ("how-to/sweeps.md", r"more than (\d+) % of its batches", stability.LATE_SHARE_LIMIT * 100),
        ("how-to/sweeps.md", r"`late_share` above (\d+) %", stability.LATE_SHARE_LIMIT * 100),
        ("how-to/sweeps.md", r"sent more than (\d+) ms late", records.LATE_S * 1000),
        ("reference/summary.md", r"above ([\d.]+) a stability warning",
         stability.LATE_SHARE_LIMIT),
        ("explanation/security.md", r"\((\d+) MiB, `MAX_MESSAGE_BYTES`\)",
         protocol.MAX_MESSAGE_BYTES / 2 ** 20),
        ("explanation/security.md", r"its share, ([\d,]+) at most", gang.MAX_THREADS),
        ("how-to/own-data.md", r"at most a day \((\d+) s\)", data.MAX_WAIT_S),
    ]


def test_numbers_stated_in_prose_are_the_codes():
    for page, pattern, value in _facts():
        found = re.findall(pattern, " ".join(text(DOCS / page).split()))
        assert found, f"{page}: no '{pattern}'"
        for number in found:
            assert float(number.replace(",", "")) == pytest.approx(value), (page, pattern)


def test_dated_measurement_pages_say_their_date_and_command():
    pages = sorted((DOCS / "measurements").glob("*.md"))
    assert len(pages) >= 5
    for page in pages:
        body = text(page)
        assert re.search(r"^# .*\(\d{4}-\d{2}-\d{2}", body, re.MULTILINE), page.name
        assert re.search(r"Measured on \d{4}-\d{2}-\d{2}", body), page.name
        assert re.search(r"(python -m bench|comlab \w+|python tests/)", body), page.name


def test_the_nav_lists_every_page():
    listed = set(re.findall(r"^\s+- (?:[^:\n]+: )?(\S+\.md)$",
                            (ROOT / "mkdocs.yml").read_text(), re.MULTILINE))
    assert listed == {str(p.relative_to(DOCS)) for p in PAGES}


def test_readme_is_short_and_points_at_what_exists():
    """The README: under 150 lines, its two commands the ones CI runs, every link resolves."""
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 150
    assert "    pip install -e . && comlab run\n" in readme
    test_command = "pip install -e '.[dev,docs]' && python -m pytest"
    assert f"    {test_command}\n" in readme
    ci = (ROOT / ".ci" / "run").read_text()
    install, run = test_command.split(" && ")
    assert f"python -m {install}" in ci.replace("-q ", "") and run in ci.splitlines()
    for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", readme):
        assert (ROOT / target).exists(), target
