"""The lab <-> client-agent pipe protocol."""

import io

import numpy as np

from comlab.lab import agent


class Dribble(io.RawIOBase):
    """A raw stream that takes at most 7 bytes per write, as a pipe under load may."""

    def __init__(self):
        self.buf = bytearray()

    def writable(self):
        return True

    def write(self, b):
        n = min(len(b), 7)
        self.buf += bytes(b[:n])
        return n


def test_frames_survive_partial_writes():
    out = Dribble()
    frame = {"columns": {"ids": np.arange(1000), "worker": np.array(["w0", None], dtype=object)},
             "ok": True}
    agent.write_frame(out, frame)
    agent.write_frame(out, {"second": 2})
    stream = io.BytesIO(bytes(out.buf))
    back = agent.read_frame(stream)
    assert (back["columns"]["ids"] == np.arange(1000)).all()
    assert back["columns"]["worker"] == ["w0", None]
    assert agent.read_frame(stream) == {"second": 2}
    assert agent.read_frame(stream) is None


def test_truncated_stream_reads_as_end():
    out = io.BytesIO()
    agent.write_frame(out, {"x": 1})
    assert agent.read_frame(io.BytesIO(out.getvalue()[:-1])) is None
