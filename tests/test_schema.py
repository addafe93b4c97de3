"""comlab.schema is the one description of the records: everything else agrees with it."""

from __future__ import annotations

from array import array

from pathlib import Path

import numpy as np

from comlab import schema
from comlab.lab import records, results
from comlab.system.client import ClientRun

ROOT = Path(__file__).resolve().parents[1]


def test_records_have_the_schema_columns_and_dtypes():
    df = results.load_results(ROOT / "results" / "example")
    names = [c for c in df.columns if c in schema.BY_NAME]
    assert names == [c.name for c in schema.COLUMNS if c.name in df]  # schema order
    required = [c.name for c in schema.COLUMNS if not c.optional]
    assert set(required) <= set(df.columns)
    for name in names:
        assert str(df[name].dtype) == schema.BY_NAME[name].dtype, name


def test_freshly_built_records_follow_the_schema():
    run = ClientRun(2, 1, "tcp://x:1")
    run.t_start, run.t_sent, run.t_intended = 1, array("q", [1, 2]), np.array([1, 2])
    info = {"experiment": "e", "run": 0, "repeat": 0, "batch_size": 1, "workers": 1,
            "strategy": "sequential", "transport": "tcp", "dispatch": "broker", "rate": 10.0,
            "arrivals": "constant"}
    df = records.build(run.columns(), 1, keys=["10.0.0.1:a", "10.0.0.2:b"], waits=np.zeros(2), run_info=info,
                       open_loop=True, accepted=0)
    assert list(df.columns) == [c.name for c in schema.COLUMNS if c.name != "remote_workers"]
    for c in schema.COLUMNS:
        if c.name in df:
            assert str(df[c.name].dtype) == c.dtype, c.name


def test_client_columns_are_schema_columns():
    run = ClientRun(1, 1, "tcp://x:1")
    run.t_sent, run.t_intended = array("q", [1]), np.array([1])
    helpers = {"has_response"}  # turned into the response column's NA
    assert set(run.columns()) - helpers <= set(schema.BY_NAME)


def test_every_stamp_says_where_it_is_taken_and_is_taken_there():
    sources = {"client": ["system/client.py"],
               "server": ["system/server.py", "system/intake.py"],
               "worker": ["system/strategies.py"]}
    for c in schema.COLUMNS:
        if c.name.startswith("t_"):
            process, _, where = c.taken_by.partition(", ")
            function = where.split(" ")[0].split(".")[-1]
            text = "".join((ROOT / "comlab" / f).read_text() for f in sources[process])
            assert f"def {function}(" in text, c
            if c.name != "t_intended":
                assert f"{c.name} = now()" in text or f"{c.name}_ = now()" in text, c


def test_docs_column_table_is_the_schemas():
    """The docs' schema page has no table of its own: the site build writes the schema's."""
    page = (ROOT / "docs" / "reference" / "schema.md").read_text()
    assert "<!-- gen: schema -->" in page and "| --- |" not in page
    import importlib.util
    spec = importlib.util.spec_from_file_location("docs_hooks", ROOT / "docs" / "hooks.py")
    hooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hooks)
    assert hooks.gen_schema() == schema.markdown_table()
