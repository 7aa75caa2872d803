"""The engine as a child process: framed msgpack commands on stdin, acknowledgements on stdout.

Each frame is a little-endian u32 length and a msgpack body. A request body is one exchange
command (`engine.commands.ExchangeCommand`); each reply is a `Released` (the command's
sequence number, timestamp and events), written only once the command is durable in the
journal, or a `RequestError` for a body that is not a valid command. Replies come in request
order. When stdin has been quiet for a group-commit window, pending commands are synced and
acknowledged at once, so a caller waiting for its acknowledgement never waits longer.
"""

from __future__ import annotations

import logging
import os
import selectors
import struct
import sys
from collections.abc import Iterator

import msgspec

from engine.commands import ExchangeCommand
from engine.sequencer import Released, Sequencer

log = logging.getLogger(__name__)

_LENGTH = struct.Struct("<I")
MAX_FRAME = 1 << 20


class RequestError(msgspec.Struct, frozen=True, tag="request_error"):
    """A request that could not be decoded; nothing was sequenced for it."""

    message: str


Reply = Released | RequestError

_command_decoder = msgspec.msgpack.Decoder(ExchangeCommand)
_reply_encoder = msgspec.msgpack.Encoder()
_reply_decoder = msgspec.msgpack.Decoder(Reply)


def frame(body: bytes) -> bytes:
    """One length-prefixed frame."""
    return _LENGTH.pack(len(body)) + body


def encode_command(command: ExchangeCommand) -> bytes:
    """A request frame for ``command``."""
    return frame(_reply_encoder.encode(command))


def decode_reply(body: bytes) -> Reply:
    """A reply from its frame body."""
    return _reply_decoder.decode(body)


class FrameTooLargeError(ValueError):
    """A length prefix beyond `MAX_FRAME`: the stream's framing cannot be trusted after it."""


def split_frames(buffer: bytearray) -> Iterator[bytes]:
    """Take every whole frame off the front of ``buffer`` (what is left stays).

    Raises `FrameTooLargeError` at an oversized length prefix, after yielding the frames before it.
    """
    offset = 0
    try:
        while len(buffer) - offset >= _LENGTH.size:
            (size,) = _LENGTH.unpack_from(buffer, offset)
            if size > MAX_FRAME:
                raise FrameTooLargeError(f"frame of {size} bytes exceeds {MAX_FRAME}")
            end = offset + _LENGTH.size + size
            if end > len(buffer):
                break
            yield bytes(buffer[offset + _LENGTH.size:end])
            offset = end
    finally:
        del buffer[:offset]


def serve(sequencer: Sequencer, stdin: int, stdout: int, quiet_s: float) -> None:
    """Run until stdin closes: sequence each request, write each reply once it is durable."""
    selector = selectors.DefaultSelector()
    selector.register(stdin, selectors.EVENT_READ)
    buffer = bytearray()
    out = bytearray()
    open_input = True
    while open_input:
        ready = selector.select(quiet_s)
        if ready:
            chunk = os.read(stdin, 1 << 16)
            if not chunk:
                open_input = False
            buffer += chunk
            try:
                for body in split_frames(buffer):
                    try:
                        command = _command_decoder.decode(body)
                    except msgspec.DecodeError as exc:
                        _refuse(sequencer, out, str(exc))
                        continue
                    sequencer.submit(command)
            except FrameTooLargeError as exc:
                _refuse(sequencer, out, str(exc))  # the framing is lost: stop reading
                open_input = False
                buffer.clear()
            released = sequencer.release()
        else:
            released = sequencer.sync()
        for reply in released:
            out += frame(_reply_encoder.encode(reply))
        if out:
            _write_all(stdout, out)
            out.clear()
    if buffer:
        log.warning("input ended inside a frame; %d bytes discarded", len(buffer))
    for reply in sequencer.sync():
        out += frame(_reply_encoder.encode(reply))
    _write_all(stdout, out)


def _refuse(sequencer: Sequencer, out: bytearray, message: str) -> None:
    """Queue a `RequestError`; replies keep request order, so what came before goes first."""
    for reply in sequencer.sync():
        out += frame(_reply_encoder.encode(reply))
    out += frame(_reply_encoder.encode(RequestError(message)))


def _write_all(fd: int, data: bytes | bytearray) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def main(sequencer: Sequencer, quiet_ms: int) -> int:
    """Serve on the process's stdin and stdout."""
    serve(sequencer, sys.stdin.fileno(), sys.stdout.fileno(), quiet_ms / 1000)
    return 0
