"""The record schema, in one place: every column of the per-task records, with its dtype, unit,
meaning and, for stamps, the process and function that takes it.

The client's columns (comlab.system.client.ClientRun.columns), ``records.build``,
``results.restore_dtypes`` and the README's column table derive from ``COLUMNS`` or are checked
against it by tests/test_schema.py. Plain data, no pandas: the system imports it too.

Stamps are integer ``time.monotonic_ns()`` where they are taken, and float seconds since the
run's start (the client's clock start, after the handshake) in the records, converted to the
client's clock for other hosts (comlab.lab.clocks). NaN where a stage never happened (a lost
task).
"""

from __future__ import annotations

from typing import NamedTuple


class Column(NamedTuple):
    name: str
    dtype: str          # a pandas dtype name
    unit: str           # "" for none
    meaning: str
    taken_by: str = ""  # stamps: process and function that takes it
    optional: str = ""  # when the column is present only sometimes


COLUMNS = (
    Column("experiment", "category", "", "the experiment's name (its results folder)"),
    Column("run", "int64", "", "run number within the experiment (a run: one client run)"),
    Column("repeat", "int64", "", "repeat number of the run's configuration"),
    Column("batch_size", "int64", "tasks", "tasks per batch"),
    Column("workers", "int64", "processes", "worker processes (local + remote)"),
    Column("strategy", "category", "", "how workers ran a batch (comlab.system.strategies)"),
    Column("transport", "category", "", "tcp or ipc"),
    Column("dispatch", "category", "", "how the server handed batches to workers "
                                       "(comlab.system.dispatch)"),
    Column("remote_workers", "int64", "processes", "of which on worker hosts",
           optional="runs with remote workers"),
    Column("rate", "float64", "tasks/s", "open-loop send rate", optional="open-loop runs"),
    Column("task_id", "int64", "", "the task's index in the commands, 0.."),
    Column("batch_id", "int64", "", "the batch's index in sending order, 0.."),
    Column("ip", "category", "", "the task's address"),
    Column("command", "category", "", "the task's command"),
    Column("response", "Int64", "", "the answer (NA unless ok)"),
    Column("wait_s", "float64", "s", "the task's emulated length, from the server map"),
    Column("status", "category", "", "ok, unknown, unreachable, failed or lost (never sent "
                                     "back within the run's timeout)"),
    Column("attempt", "int8", "", "0; 1 when its batch was retried after a lost worker"),
    Column("worker", "category", "", "the worker that ran it; 'server' for answers of the "
                                     "server itself"),
    Column("host", "category", "", "the host that ran it"),
    Column("t_intended", "float64", "s", "when the open-loop schedule meant to send its batch",
           "client, Client.send_and_collect (t0 + batch * size / rate)", "open-loop runs"),
    Column("t_sent", "float64", "s", "its batch was handed to the client's PUSH socket",
           "client, Client.send_and_collect (just before push.send)"),
    Column("t_server_in", "float64", "s", "the server read its batch",
           "server, Intake.on_client_frame (on receipt, before decoding)"),
    Column("t_enqueued", "float64", "s", "the server made its work item (after the look-up)",
           "server, Intake.on_batch (before the ledger hands it out)"),
    Column("t_started", "float64", "s", "the task began on its worker",
           "worker, Strategy.timed (in the thread that runs the task)"),
    Column("t_finished", "float64", "s", "the task ended on its worker",
           "worker, Strategy.timed (in the thread that runs the task)"),
    Column("t_received", "float64", "s", "the client read the result message",
           "client, Client.send_and_collect (right after recv)"),
    Column("latency_s", "float64", "s", "t_received - t_sent (open loop: - t_intended)"),
    Column("overhead_s", "float64", "s", "latency_s - wait_s: what the system added"),
    Column("error", "object", "", "why it failed (None unless failed)"),
)

BY_NAME = {c.name: c for c in COLUMNS}
STAMPS = tuple(c.name for c in COLUMNS if c.taken_by and c.name != "t_intended")
CATEGORIES = tuple(c.name for c in COLUMNS if c.dtype == "category")


def markdown_table() -> str:
    """The README's column table."""
    rows = ["| column | dtype | unit | meaning | taken by |", "| --- | --- | --- | --- | --- |"]
    for c in COLUMNS:
        meaning = c.meaning + (f" ({c.optional} only)" if c.optional else "")
        rows.append(f"| `{c.name}` | {c.dtype} | {c.unit} | {meaning} | {c.taken_by} |")
    return "\n".join(rows)
