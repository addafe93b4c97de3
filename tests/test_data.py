"""Tests for comlab.data: parsing rules, error reporting, seed files and generation."""

import logging
import math
import pickle
from pathlib import Path

import pytest

from comlab.data import (
    Commands,
    DataError,
    ServerMap,
    generate,
    read_commands,
    read_server_map,
    scale_waits,
    seed_path,
)

REPO = Path(__file__).resolve().parents[1]


def write(tmp_path, text, name="x.txt"):
    path = tmp_path / name
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


# --- DataError ---------------------------------------------------------------

def test_data_error_message_and_attributes():
    e = DataError("data/x.txt", 7, "bad IPv4 address '300.1.1.1'")
    assert str(e) == "data/x.txt:7: bad IPv4 address '300.1.1.1'"
    assert (e.source, e.line, e.reason) == ("data/x.txt", 7, "bad IPv4 address '300.1.1.1'")
    assert isinstance(e, ValueError)
    assert str(DataError("<dict>", None, "no server entries")) == "<dict>: no server entries"


def test_data_error_pickles():
    e = pickle.loads(pickle.dumps(DataError("f.txt", 3, "why")))
    assert (e.source, e.line, e.reason, str(e)) == ("f.txt", 3, "why", "f.txt:3: why")


# --- commands: good input ----------------------------------------------------

def test_commands_file_with_comments_blanks_whitespace_and_crlf(tmp_path):
    path = write(tmp_path, b"# tasks\r\n\r\n  1.2.3.4:foo  \r\n   # indented comment\r\n"
                           b"1.2.3.4:foo\r\n\t10.0.0.1:bar\r\n")
    tasks = read_commands(path)
    assert isinstance(tasks, Commands)
    assert tasks == [("1.2.3.4", "foo"), ("1.2.3.4", "foo"), ("10.0.0.1", "bar")]
    assert tasks.source == str(path)
    assert tasks.skipped == []


def test_commands_file_with_utf8_bom_and_no_final_newline(tmp_path):
    path = write(tmp_path, b"\xef\xbb\xbf1.2.3.4:foo\n1.2.3.5:caf\xc3\xa9")
    assert read_commands(str(path)) == [("1.2.3.4", "foo"), ("1.2.3.5", "café")]


def test_commands_from_list_count_lines_from_one():
    tasks = read_commands(["# c", "1.2.3.4:foo\n", "1.2.3.4:bar"])
    assert tasks == [("1.2.3.4", "foo"), ("1.2.3.4", "bar")]
    assert tasks.source == "<list>"
    with pytest.raises(DataError) as info:
        read_commands(["1.2.3.4:foo", "", "1.2.3:foo"])
    assert (info.value.source, info.value.line) == ("<list>", 3)


# --- commands: bad lines -----------------------------------------------------

@pytest.mark.parametrize("ip", ["300.1.1.1", "01.1.1.1", "1.2.3", "1.2.3.4.5", "abc", "",
                                "1.2.3.-4", " 1.2.3.4x"])
def test_bad_ip_is_rejected(tmp_path, ip):
    path = write(tmp_path, f"1.1.1.1:foo\n{ip}:foo\n")
    with pytest.raises(DataError) as info:
        read_commands(path)
    assert info.value.line == 2
    assert info.value.reason == f"bad IPv4 address {ip.strip()!r}"
    assert str(info.value) == f"{path}:2: bad IPv4 address {ip.strip()!r}"


@pytest.mark.parametrize("line, reason", [
    ("1.2.3.4:", "empty command"),
    ("1.2.3.4:foo bar", "command 'foo bar' contains whitespace"),
    ("1.2.3.4:foo:bar", "expected 2 fields (ip:command), found 3"),
    ("1.2.3.4", "expected 2 fields (ip:command), found 1"),
    ("::1:foo", "IPv6 addresses are not supported: IPv4 only"),
])
def test_bad_command_line_is_rejected(line, reason):
    with pytest.raises(DataError) as info:
        read_commands(["1.1.1.1:foo", line])
    assert (info.value.line, info.value.reason) == (2, reason)


def test_non_string_item_is_rejected():
    with pytest.raises(DataError, match=r"<list>:1: expected a string, found bytes"):
        read_commands([b"1.2.3.4:foo"])


def test_non_utf8_line_is_reported_with_its_number(tmp_path):
    path = write(tmp_path, b"1.2.3.4:foo\n1.2.3.4:bar\n1.2.3.4:b\xffz\n1.2.3.4:baz\n")
    with pytest.raises(DataError) as info:
        read_commands(path)
    assert info.value.line == 3
    assert "not valid UTF-8" in info.value.reason and "0xff" in info.value.reason
    tasks = read_commands(path, lenient=True)
    assert tasks == [("1.2.3.4", "foo"), ("1.2.3.4", "bar"), ("1.2.3.4", "baz")]
    assert [e.line for e in tasks.skipped] == [3]


def test_missing_file():
    with pytest.raises(DataError) as info:
        read_commands("no/such/file.txt")
    assert (info.value.source, info.value.line, info.value.reason) == (
        "no/such/file.txt", None, "no such file")
    assert str(info.value) == "no/such/file.txt: no such file"


def test_directory_is_not_a_data_file(tmp_path):
    with pytest.raises(DataError) as info:
        read_commands(tmp_path)
    assert info.value.line is None


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n  \n"])
def test_file_without_tasks_is_an_error(tmp_path, text):
    path = write(tmp_path, text)
    with pytest.raises(DataError) as info:
        read_commands(path, lenient=True)
    assert info.value.line is None
    assert info.value.reason.startswith("no tasks")


def test_lenient_with_only_bad_lines_is_still_an_error(caplog):
    with pytest.raises(DataError, match=r"^<list>: no tasks \(2 bad line\(s\) skipped\)"):
        read_commands(["bad", "1.2.3.4:"], lenient=True)


# --- lenient mode --------------------------------------------------------------

def test_lenient_skips_reports_and_warns_once(tmp_path, caplog):
    path = write(tmp_path, "# header\n1.2.3.4:foo\n300.1.1.1:foo\n1.2.3.4:\n1.2.3.5:bar\n")
    with caplog.at_level(logging.WARNING, logger="comlab.data"):
        tasks = read_commands(path, lenient=True)
    assert tasks == [("1.2.3.4", "foo"), ("1.2.3.5", "bar")]
    assert [(e.line, e.reason) for e in tasks.skipped] == [
        (3, "bad IPv4 address '300.1.1.1'"), (4, "empty command")]
    records = [r for r in caplog.records if r.name == "comlab.data"]
    assert len(records) == 1
    message = records[0].getMessage()
    assert "skipped 2 bad line(s): 3, 4" in message and str(path) in message


def test_strict_mode_does_not_warn(caplog):
    with caplog.at_level(logging.WARNING, logger="comlab.data"):
        read_commands(["1.2.3.4:foo"])
    assert not caplog.records


# --- server map: good input ----------------------------------------------------

def test_server_map_file(tmp_path):
    path = write(tmp_path, "# map\r\n1.2.3.4:foo:1:0.5\r\n1.2.3.4:bar:-2:0\r\n"
                           " 10.0.0.1:foo:+3:1e-3 \r\n")
    server_map = read_server_map(path)
    assert isinstance(server_map, ServerMap)
    assert server_map == {"1.2.3.4": {"foo": (1, 0.5), "bar": (-2, 0.0)},
                          "10.0.0.1": {"foo": (3, 0.001)}}
    assert server_map.source == str(path) and server_map.skipped == []
    assert server_map.flat() == {"1.2.3.4:foo": (1, 0.5), "1.2.3.4:bar": (-2, 0.0),
                                 "10.0.0.1:foo": (3, 0.001)}
    assert all(type(r) is int and type(w) is float for r, w in server_map.flat().values())


def test_server_map_from_list():
    server_map = read_server_map(["1.2.3.4:foo:1:2"])
    assert server_map == {"1.2.3.4": {"foo": (1, 2.0)}} and server_map.source == "<list>"


# --- server map: bad lines -----------------------------------------------------

@pytest.mark.parametrize("line, reason", [
    ("300.1.1.1:foo:1:1", "bad IPv4 address '300.1.1.1'"),
    ("1.2.3.4::1:1", "empty command"),
    ("1.2.3.4:f o:1:1", "command 'f o' contains whitespace"),
    ("1.2.3.4:foo:x:1", "bad response 'x' (expected an integer)"),
    ("1.2.3.4:foo:1.5:1", "bad response '1.5' (expected an integer)"),
    ("1.2.3.4:foo::1", "bad response '' (expected an integer)"),
    ("1.2.3.4:foo:1:-1", "bad wait '-1' (expected a finite number >= 0)"),
    ("1.2.3.4:foo:1:nan", "bad wait 'nan' (expected a finite number >= 0)"),
    ("1.2.3.4:foo:1:inf", "bad wait 'inf' (expected a finite number >= 0)"),
    ("1.2.3.4:foo:1:-inf", "bad wait '-inf' (expected a finite number >= 0)"),
    ("1.2.3.4:foo:1:soon", "bad wait 'soon' (expected a number of seconds)"),
    ("1.2.3.4:foo:1", "expected 4 fields (ip:command:response:wait), found 3"),
    ("1.2.3.4:foo:bar:1:1", "expected 4 fields (ip:command:response:wait), found 5"),
])
def test_bad_server_line_is_rejected(tmp_path, line, reason):
    path = write(tmp_path, f"# map\n1.1.1.1:foo:1:1\n{line}\n")
    with pytest.raises(DataError) as info:
        read_server_map(path)
    assert (info.value.source, info.value.line, info.value.reason) == (str(path), 3, reason)


def test_server_map_duplicate_strict_names_both_lines(tmp_path):
    path = write(tmp_path, "1.2.3.4:foo:1:1\n1.2.3.4:bar:1:1\n\n1.2.3.4:foo:2:2\n")
    with pytest.raises(DataError) as info:
        read_server_map(path)
    assert info.value.line == 4
    assert info.value.reason == "duplicate key 1.2.3.4:foo (first on line 1)"


def test_server_map_duplicate_lenient_keeps_first(caplog):
    with caplog.at_level(logging.WARNING, logger="comlab.data"):
        server_map = read_server_map(["1.2.3.4:foo:1:1", "1.2.3.4:foo:2:2"], lenient=True)
    assert server_map == {"1.2.3.4": {"foo": (1, 1.0)}}
    assert [e.line for e in server_map.skipped] == [2]
    assert len(caplog.records) == 1


def test_duplicate_commands_are_separate_tasks():
    assert read_commands(["1.2.3.4:foo"] * 3) == [("1.2.3.4", "foo")] * 3


def test_empty_server_map_is_an_error(tmp_path):
    with pytest.raises(DataError, match="no server entries"):
        read_server_map(write(tmp_path, "# nothing\n"))
    with pytest.raises(DataError, match="no server entries"):
        read_server_map(["1.2.3.4:foo:1:nan"], lenient=True)
    with pytest.raises(DataError, match=r"^<dict>: no server entries"):
        read_server_map({})


# --- server map: dict input ----------------------------------------------------

def test_server_map_from_dict():
    server_map = read_server_map({"1.2.3.4": {"foo": (1, 2), "bar": [0, 0.5]}})
    assert server_map == {"1.2.3.4": {"foo": (1, 2.0), "bar": (0, 0.5)}}
    assert server_map.source == "<dict>"


@pytest.mark.parametrize("mapping, reason", [
    ({"300.1.1.1": {"foo": (1, 1)}}, "entry 300.1.1.1:foo: bad IPv4 address '300.1.1.1'"),
    ({"::1": {"foo": (1, 1)}}, "entry ::1:foo: bad IPv4 address '::1'"),
    ({"1.2.3.4": {"": (1, 1)}}, "entry 1.2.3.4:: empty command"),
    ({"1.2.3.4": {"a:b": (1, 1)}}, "entry 1.2.3.4:a:b: command 'a:b' contains ':'"),
    ({"1.2.3.4": {"foo": (1.5, 1)}}, "entry 1.2.3.4:foo: bad response '1.5' (expected an integer)"),
    ({"1.2.3.4": {"foo": (True, 1)}}, "entry 1.2.3.4:foo: bad response 'True' (expected an integer)"),
    ({"1.2.3.4": {"foo": (1, math.nan)}},
     "entry 1.2.3.4:foo: bad wait 'nan' (expected a finite number >= 0)"),
    ({"1.2.3.4": {"foo": (1, -0.5)}},
     "entry 1.2.3.4:foo: bad wait '-0.5' (expected a finite number >= 0)"),
    ({"1.2.3.4": {"foo": 1}}, "entry 1.2.3.4:foo: expected (response, wait), found 1"),
    ({"1.2.3.4": {"foo": (1, 2, 3)}},
     "entry 1.2.3.4:foo: expected (response, wait), found (1, 2, 3)"),
    ({"1.2.3.4": [("foo", 1, 1)]},
     "entry 1.2.3.4: expected a dict command -> (response, wait), found list"),
])
def test_bad_dict_entry_is_rejected(mapping, reason):
    with pytest.raises(DataError) as info:
        read_server_map(mapping)
    assert (info.value.source, info.value.line, info.value.reason) == ("<dict>", None, reason)


def test_bad_dict_entry_lenient():
    server_map = read_server_map({"1.2.3.4": {"foo": (1, 1), "bar": (1, math.inf)}},
                                 lenient=True)
    assert server_map == {"1.2.3.4": {"foo": (1, 1.0)}}
    assert [(e.line, e.reason) for e in server_map.skipped] == [
        (None, "entry 1.2.3.4:bar: bad wait 'inf' (expected a finite number >= 0)")]


# --- scale_waits ---------------------------------------------------------------

def test_scale_waits_returns_a_new_map():
    original = read_server_map(["1.2.3.4:foo:1:2", "1.2.3.4:bar:3:0.5"])
    scaled = scale_waits(original, 0.1)
    assert isinstance(scaled, ServerMap) and scaled.source == original.source
    assert scaled["1.2.3.4"]["foo"] == (1, pytest.approx(0.2))
    assert scaled["1.2.3.4"]["bar"] == (3, pytest.approx(0.05))
    assert original == {"1.2.3.4": {"foo": (1, 2.0), "bar": (3, 0.5)}}
    assert scale_waits(original, 0).flat() == {"1.2.3.4:foo": (1, 0.0), "1.2.3.4:bar": (3, 0.0)}


@pytest.mark.parametrize("factor", [-1, math.nan, math.inf])
def test_scale_waits_rejects_bad_factor(factor):
    with pytest.raises(ValueError):
        scale_waits(read_server_map(["1.2.3.4:foo:1:2"]), factor)


# --- shipped seed files --------------------------------------------------------

def test_seed_files():
    client, server = seed_path("client_data.txt"), seed_path("server_data.txt")
    for path in (client, server):
        lines = path.read_text(encoding="utf-8").splitlines()
        assert lines[0].startswith("# ") and len(lines) == 513
    tasks = read_commands(client)
    assert len(tasks) == 512 and len({ip for ip, _ in tasks}) == 256
    assert tasks[:3] == [("192.168.1.0", "foo"), ("192.168.1.0", "bar"), ("192.168.1.1", "foo")]
    assert tasks[-1] == ("192.168.1.255", "bar")
    table = read_server_map(server).flat()
    assert len(table) == 512
    assert all(f"{ip}:{command}" in table for ip, command in tasks)
    assert set(table.values()) == {(1, 1.0)}


def test_seed_path():
    path = seed_path("server_data.txt")
    assert isinstance(path, Path) and path.is_file() and path.name == "server_data.txt"
    assert path.parent.name == "seed" and path.parent.parent.name == "comlab"
    with pytest.raises(ValueError):
        seed_path("other.txt")


@pytest.mark.parametrize("name", ["client_data.txt", "server_data.txt"])
def test_repo_data_dir_links_to_the_seed_files(name):
    link = REPO / "data" / name
    if not link.exists():
        pytest.skip("not running from a repository checkout")
    assert link.is_symlink() and not Path(link.readlink()).is_absolute()
    assert link.resolve() == seed_path(name).resolve()


def test_generate_defaults_reproduce_the_seed_files(tmp_path):
    client, server = generate(tmp_path / "out")
    assert (client, server) == (tmp_path / "out" / "client_data.txt",
                                tmp_path / "out" / "server_data.txt")
    assert client.read_bytes() == seed_path("client_data.txt").read_bytes()
    assert server.read_bytes() == seed_path("server_data.txt").read_bytes()


# --- generate ------------------------------------------------------------------

@pytest.mark.parametrize("wait", ["uniform", "exponential"])
def test_generate_is_reproducible(tmp_path, wait):
    a = generate(tmp_path / "a", hosts=50, wait=wait, seed=7)
    b = generate(tmp_path / "b", hosts=50, wait=wait, seed=7)
    c = generate(tmp_path / "c", hosts=50, wait=wait, seed=8)
    assert a[1].read_bytes() == b[1].read_bytes() != c[1].read_bytes()
    assert a[0].read_bytes() == b[0].read_bytes()


@pytest.mark.parametrize("wait", ["constant", "uniform", "exponential"])
def test_generate_wait_distribution_mean(tmp_path, wait):
    _, server = generate(tmp_path, hosts=4000, commands=["a", "b"], network="10.0.0.0/16",
                         wait=wait, wait_mean=0.2, seed=1)
    waits = [w for _, w in read_server_map(server).flat().values()]
    assert len(waits) == 8000
    assert sum(waits) / len(waits) == pytest.approx(0.2, rel=0.05)
    if wait == "constant":
        assert set(waits) == {0.2}
    elif wait == "uniform":
        assert 0 <= min(waits) and max(waits) <= 0.4


def test_generate_options(tmp_path):
    client, server = generate(tmp_path, hosts=3, commands=["x"], network="10.1.2.0/30",
                              response=-5, wait_mean=0)
    assert read_commands(client) == [("10.1.2.0", "x"), ("10.1.2.1", "x"), ("10.1.2.2", "x")]
    assert read_server_map(server).flat() == {
        "10.1.2.0:x": (-5, 0.0), "10.1.2.1:x": (-5, 0.0), "10.1.2.2:x": (-5, 0.0)}


def test_generate_unknown_tasks(tmp_path):
    client, server = generate(tmp_path, hosts=4, unknown=6)
    tasks, table = read_commands(client), read_server_map(server).flat()
    assert len(tasks) == 4 * 2 + 6
    missing = [t for t in tasks if f"{t[0]}:{t[1]}" not in table]
    assert missing == tasks[-6:]


@pytest.mark.parametrize("kwargs", [
    {"hosts": 257}, {"hosts": 5, "network": "10.0.0.0/30"}, {"hosts": 0}, {"commands": []},
    {"commands": ["a b"]}, {"commands": ["a:b"]}, {"wait": "normal"}, {"wait_mean": -1},
    {"wait_mean": math.nan}, {"unknown": -1}, {"network": "10.0.0.1/24"},
])
def test_generate_rejects_bad_arguments(tmp_path, kwargs):
    with pytest.raises(ValueError):
        generate(tmp_path, **kwargs)


def test_generate_rejects_non_integer_response(tmp_path):
    with pytest.raises(TypeError):
        generate(tmp_path, response=1.5)


def test_parse_200000_generated_lines(tmp_path):
    client, server = generate(tmp_path, hosts=10_000, commands=[f"c{i}" for i in range(20)],
                              network="10.0.0.0/16", wait="exponential")
    tasks = read_commands(client)
    assert len(tasks) == 200_000
    assert len(read_server_map(server).flat()) == 200_000


def test_response_too_large_for_64_bits_is_a_data_error(tmp_path):
    # It used to pass the check and crash the server on its first batch (msgpack overflow).
    path = tmp_path / "map.txt"
    path.write_text("192.168.1.1:foo:1\n192.168.1.2:foo:1:1\n".replace(
        "192.168.1.1:foo:1\n", f"192.168.1.1:foo:{2 ** 64}:1\n"))
    with pytest.raises(DataError, match=r"map.txt:1: .*signed 64-bit range"):
        read_server_map(path)


# --- heavy tails and popularity (comlab.distributions) -----------------------------

@pytest.mark.parametrize("wait", ["lognormal", "lognormal:0.5", "pareto", "pareto:3"])
def test_generate_heavy_tailed_waits_keep_their_mean(tmp_path, wait):
    _, server = generate(tmp_path, hosts=20000, commands=["a", "b"], network="10.0.0.0/16",
                         wait=wait, wait_mean=0.2, seed=3)
    waits = sorted(w for _, w in read_server_map(server).flat().values())
    mean = sum(waits) / len(waits)
    assert mean == pytest.approx(0.2, rel=0.1)
    median, p999 = waits[len(waits) // 2], waits[int(len(waits) * 0.999)]
    assert median < mean < p999 / 3  # skewed right, a long tail


def test_generate_empirical_waits_come_from_the_file(tmp_path):
    durations = tmp_path / "d.txt"
    durations.write_text("# measured\n0.010\n0.020\n\n1.5  # a slow one\n")
    _, server = generate(tmp_path / "out", hosts=200, wait=f"empirical:{durations}", seed=1)
    waits = {w for _, w in read_server_map(server).flat().values()}
    assert waits == {0.01, 0.02, 1.5}


@pytest.mark.parametrize("content,match", [
    ("0.1\nfast\n", r"d.txt:2: bad duration 'fast'"), ("-1\n", r"d.txt:1: bad duration"),
    ("# none\n", "no durations"),
])
def test_generate_empirical_bad_file_names_file_and_line(tmp_path, content, match):
    durations = tmp_path / "d.txt"
    durations.write_text(content)
    with pytest.raises(ValueError, match=match):
        generate(tmp_path / "out", hosts=4, wait=f"empirical:{durations}")


def test_generate_zipf_popularity_is_skewed_and_reproducible(tmp_path):
    client, server = generate(tmp_path / "a", hosts=100, commands=["x"], tasks=20000,
                              popularity="zipf:1.2", seed=5)
    again, _ = generate(tmp_path / "b", hosts=100, commands=["x"], tasks=20000,
                        popularity="zipf:1.2", seed=5)
    assert client.read_bytes() == again.read_bytes()
    tasks = read_commands(client)
    assert len(tasks) == 20000
    counts = {}
    for ip, _ in tasks:
        counts[ip] = counts.get(ip, 0) + 1
    top = counts["192.168.1.0"] / len(tasks)
    harmonic = sum(1 / k ** 1.2 for k in range(1, 101))
    assert top == pytest.approx(1 / harmonic, rel=0.1)  # rank 1's share
    assert counts["192.168.1.0"] > 10 * counts.get("192.168.1.50", 1)
    # the map is the same as without popularity: the keys are drawn from their own generator
    _, plain = generate(tmp_path / "c", hosts=100, commands=["x"], seed=5)
    assert server.read_bytes() == plain.read_bytes()


def test_generate_uniform_with_tasks_draws_every_key_alike(tmp_path):
    client, _ = generate(tmp_path, hosts=10, commands=["x"], tasks=10000, seed=2)
    counts = {}
    for ip, _ in read_commands(client):
        counts[ip] = counts.get(ip, 0) + 1
    assert len(counts) == 10 and max(counts.values()) < 1.15 * min(counts.values())


@pytest.mark.parametrize("kwargs", [
    {"wait": "pareto:1"}, {"wait": "lognormal:x"}, {"wait": "constant:2"}, {"wait": "empirical"},
    {"popularity": "zipf:-1"}, {"popularity": "normal"}, {"tasks": 0},
])
def test_generate_rejects_bad_distributions(tmp_path, kwargs):
    with pytest.raises(ValueError):
        generate(tmp_path, hosts=4, **kwargs)


def test_gen_data_command_takes_the_new_distributions(tmp_path):
    import subprocess
    import sys
    run = [sys.executable, "-m", "comlab", "gen-data"]
    ok = subprocess.run([*run, str(tmp_path / "o"), "--hosts", "8", "--wait", "pareto:2",
                         "--popularity", "zipf", "--tasks", "50"],
                        capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert len(read_commands(tmp_path / "o" / "client_data.txt")) == 50
    (tmp_path / "d.txt").write_text("0.1\noops\n")
    bad = subprocess.run([*run, str(tmp_path / "p"), "--wait", f"empirical:{tmp_path}/d.txt"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
    assert "d.txt:2: bad duration 'oops'" in bad.stderr
