"""Read the scalars back from tensorboardX event files (TFRecord framing), without TensorFlow."""

from __future__ import annotations

import struct
from pathlib import Path


def tb_scalars(tb_dir: str | Path) -> list[tuple[int, dict[str, float]]]:
    """``(step, {tag: value})`` for each summary event of every event file in ``tb_dir``, in file
    and record order. Each record is ``length (u64) | crc (u32) | Event proto | crc (u32)``."""
    from tensorboardX.proto.event_pb2 import Event

    out = []
    for f in sorted(Path(tb_dir).iterdir()):
        data, pos = f.read_bytes(), 0
        while pos < len(data):
            (n,) = struct.unpack("<Q", data[pos : pos + 8])
            event = Event.FromString(data[pos + 12 : pos + 12 + n])
            pos += 12 + n + 4
            if event.HasField("summary"):
                out.append((event.step, {v.tag: v.simple_value for v in event.summary.value}))
    return out
