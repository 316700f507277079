"""The agents' TCP protocol: length-prefixed JSON frames.

A frame is a 4-byte big-endian length followed by that many bytes of UTF-8 JSON
holding one object (``{"t": "hello", ...}``). Nothing is ever unpickled: a peer
can send us only data. The length is checked against :data:`MAX_FRAME` *before*
anything is allocated, so a hostile or confused peer cannot make an agent
reserve gigabytes with four bytes.

This module is only the codec; :mod:`clusterlab.agent` decides what the
messages mean.
"""

from __future__ import annotations

import json
import struct

#: bumped whenever a message changes meaning; agents of different versions refuse each other
PROTOCOL_VERSION = 1
#: the largest frame an agent accepts (all_gather_object payloads travel in frames)
MAX_FRAME = 16 * 1024 * 1024
_HEADER = struct.Struct(">I")


class ProtocolError(Exception):
    """The peer sent something that is not a valid frame."""


def encode(message: dict) -> bytes:
    body = json.dumps(message, separators=(",", ":")).encode()
    if len(body) > MAX_FRAME:
        raise ProtocolError(f"frame of {len(body)} bytes exceeds the {MAX_FRAME}-byte limit")
    return _HEADER.pack(len(body)) + body


class FrameDecoder:
    """Incremental decoder: feed it bytes as they arrive, get whole messages back."""

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        self._buf = bytearray()
        self._max = max_frame

    @property
    def pending(self) -> int:
        """Bytes received that do not yet form a whole frame."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[dict]:
        self._buf += data
        out: list[dict] = []
        while len(self._buf) >= _HEADER.size:
            (length,) = _HEADER.unpack_from(self._buf)
            if length > self._max:
                raise ProtocolError(f"frame length {length} exceeds the {self._max}-byte limit")
            end = _HEADER.size + length
            if len(self._buf) < end:
                break
            body = bytes(self._buf[_HEADER.size:end])
            del self._buf[:end]
            try:
                message = json.loads(body)
            except (UnicodeDecodeError, ValueError) as exc:
                raise ProtocolError(f"frame is not UTF-8 JSON: {exc}") from None
            except RecursionError:  # a few KiB of '[[[[...' exhaust the parser's stack
                raise ProtocolError("frame nests JSON too deeply") from None
            if not isinstance(message, dict) or not isinstance(message.get("t"), str):
                raise ProtocolError("frame is not a JSON object with a string 't' field")
            out.append(message)
        return out
