"""The agents' TCP protocol: length-prefixed JSON frames.

A frame is a 4-byte big-endian length followed by that many bytes of UTF-8 JSON
holding one object (``{"t": "hello", ...}``). Nothing is ever unpickled: a peer
can send us only data. The length is checked against :data:`MAX_FRAME` *before*
anything is allocated, so a hostile or confused peer cannot make an agent
reserve gigabytes with four bytes.

This module is only the codec; :mod:`clusterlab.protocol` spells the messages
and :mod:`clusterlab.agent` routes them.
"""

from __future__ import annotations

import json
import json.encoder
import json.scanner
import struct

#: the largest frame an agent accepts (all_gather_object payloads travel in frames)
MAX_FRAME = 16 * 1024 * 1024
_HEADER = struct.Struct(">I")


class ProtocolError(Exception):
    """The peer sent something that is not a valid frame."""


# The json module's C scanner and encoder, called directly. ``json.loads``/``json.dumps``
# wrap them in about ten Python calls each (encoding detection, a new encoder per call),
# and an agent decodes or encodes five messages per barrier: on a busy 2-core machine
# those wrappers cost more than the system calls that carry the bytes.
_scan = json.scanner.make_scanner(json.JSONDecoder())  # type: ignore[arg-type]  # (typeshed: a class)
_c_make_encoder = getattr(json.encoder, "c_make_encoder", None)  # None where the C accelerator is missing
_encoder = _c_make_encoder(
    None, json.JSONEncoder().default, json.encoder.encode_basestring_ascii, None, ":", ",", False, False, True,
) if _c_make_encoder else None


def dumps(obj: object) -> bytes:
    """``json.dumps(obj, separators=(",", ":")).encode()``, faster."""
    if _encoder is None or not isinstance(obj, (dict, list)):
        return json.dumps(obj, separators=(",", ":")).encode()
    return "".join(_encoder(obj, 0)).encode()


def loads(data: bytes | str) -> object:
    """``json.loads(data)``, faster for the usual compact, whitespace-free text."""
    text = data.decode() if isinstance(data, bytes) else data
    try:
        obj, end = _scan(text, 0)
    except StopIteration:
        return json.loads(text)  # raises the usual JSONDecodeError (or accepts leading whitespace)
    if end != len(text) and text[end:] != "\n":
        return json.loads(text)  # trailing data: the usual error (or whitespace json.loads allows)
    return obj


def encode(message: dict) -> bytes:
    """One message as a frame."""
    return frame(dumps(message))


def frame(body: bytes) -> bytes:
    """A frame around ``body``, a message spelled as JSON."""
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
        if not self._buf and len(data) > _HEADER.size and _HEADER.unpack_from(data)[0] == len(data) - _HEADER.size:
            return [self._message(data[_HEADER.size:])]  # the usual case: exactly one whole frame
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
            out.append(self._message(body))
        return out

    def _message(self, body: bytes) -> dict:
        if len(body) > self._max:
            raise ProtocolError(f"frame length {len(body)} exceeds the {self._max}-byte limit")
        try:
            message = loads(body)
        except (UnicodeDecodeError, ValueError) as exc:
            raise ProtocolError(f"frame is not UTF-8 JSON: {exc}") from None
        except RecursionError:  # a few KiB of '[[[[...' exhaust the parser's stack
            raise ProtocolError("frame nests JSON too deeply") from None
        if not isinstance(message, dict) or not isinstance(message.get("t"), str):
            raise ProtocolError("frame is not a JSON object with a string 't' field")
        return message
