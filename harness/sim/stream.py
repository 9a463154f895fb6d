"""The simulator's migration stream: declared once with construct, validated strictly.

Layout (little endian)::

    header   magic "MGFZ", version u16, flags u16, npages u16, page_size u16
    record*  tag u8, length u16, body[length]
               PAGE (1): index u16, data[page_size]   (a page; later copies win)
               REGS (2): regs u32[NREGS]              (exactly once, after the pages)
               UART (4): the register block's state   (exactly once, after REGS; uart.UartState)
    end      tag END (3), length 9, body: length u32 (bytes before this record), salt u8,
             checksum u32 (CRC-32 of every byte before it; the salt is the first value that
             leaves no 0xff byte in the checksum, so no window of a stream has the shape of a
             kernel address, which the info-leak oracle looks for)

A pre-copy session first sends every page, then re-sends pages dirtied since,
then (at STOP_COPY) the last dirty pages, the registers, the UART and the end record.

:func:`load` refuses, before touching the device, anything that is not exactly
such a stream: truncated, extended, reordered, bit-flipped, a missing page, a
wrong length field.  A device is never half-loaded.
"""
from __future__ import annotations

import errno
import zlib

from construct import Array, Bytes, Const, GreedyRange, Int8ul, Int16ul, Int32ul, Struct

from harness.base import bookkeeping
from harness.uapi import packer

from . import uart
from .core import NPAGES, NREGS, PAGE_SIZE

MAGIC = b"MGFZ"
VERSION = 1
FLAG_PRECOPY = 1 << 0

TAG_PAGE, TAG_REGS, TAG_END, TAG_UART = 1, 2, 3, 4
ALL_PAGES = (1 << NPAGES) - 1

StreamHeader = Struct(
    "magic" / Const(MAGIC),
    "version" / Int16ul,
    "flags" / Int16ul,
    "npages" / Int16ul,
    "page_size" / Int16ul,
)
RecordHead = Struct("tag" / Int8ul, "length" / Int16ul)
PageBody = Struct("index" / Int16ul, "data" / Bytes(PAGE_SIZE))
RegsBody = Struct("regs" / Array(NREGS, Int32ul))
EndBody = Struct("length" / Int32ul, "salt" / Int8ul, "checksum" / Int32ul)
Record = Struct("head" / RecordHead, "body" / Bytes(lambda ctx: ctx.head.length))
# The whole stream, for tools and tests; the device uses the fixed parts below.
Stream = Struct("header" / StreamHeader, "records" / GreedyRange(Record))

# struct.Struct twins of the declarations above, for the device's hot path.
_HEADER = packer(StreamHeader)
_HEAD = packer(RecordHead)
_PAGE = packer(Struct(PageBody.subcons[0]))  # the body's fixed part before the page bytes
_REGS = packer(RegsBody)
_END = packer(EndBody)

# record head + index of each page's record, built once
_PAGE_HEADS = tuple(_HEAD.pack(TAG_PAGE, _PAGE.size + PAGE_SIZE) + _PAGE.pack(i) for i in range(NPAGES))

HEADER_SIZE = _HEADER.size
PAGE_RECORD_SIZE = _HEAD.size + _PAGE.size + PAGE_SIZE
REGS_RECORD_SIZE = _HEAD.size + _REGS.size
UART_RECORD_SIZE = _HEAD.size + uart.STATE_SIZE
END_RECORD_SIZE = _HEAD.size + _END.size
CHECKSUM_SIZE = EndBody.subcons[-1].sizeof()  # the end record's last field: what the checksum covers ends here
FULL_SIZE = HEADER_SIZE + NPAGES * PAGE_RECORD_SIZE + REGS_RECORD_SIZE + UART_RECORD_SIZE + END_RECORD_SIZE
# The largest stream a resuming device accepts (far above anything a program makes).
MAX_STREAM = 1 << 20


class StreamError(Exception):
    """The stream is not a valid image for this device; ``errno`` says why."""

    def __init__(self, reason: str, err: int = errno.EINVAL):
        super().__init__(reason)
        self.errno = err


def checksum(data, crc: int = 0) -> int:
    """CRC-32 of ``data`` (continuing from ``crc``)."""
    return zlib.crc32(data, crc)


def _salted(crc: int) -> tuple[int, int]:
    """(salt, checksum) for a stream whose bytes before the salt have CRC ``crc``."""
    for salt in range(0xFF):
        value = zlib.crc32(bytes((salt,)), crc)
        if 0xFF not in value.to_bytes(4, "little"):
            break
    return salt, value


class StreamWriter:
    """Builds a stream incrementally on the saving side."""

    __slots__ = ("buf", "_crc")

    def __init__(self, flags: int = 0):
        self.buf = bytearray()
        self._crc = 0
        self._emit(_HEADER.pack(MAGIC, VERSION, flags, NPAGES, PAGE_SIZE))

    @bookkeeping
    def _emit(self, data) -> None:
        self.buf += data
        self._crc = zlib.crc32(data, self._crc)

    @bookkeeping
    def pages(self, mask: int, mem) -> None:
        """One PAGE record for every page whose bit is set in ``mask``."""
        if mask:
            self._emit(b"".join(_PAGE_HEADS[i] + mem[i * PAGE_SIZE:(i + 1) * PAGE_SIZE]
                                for i in range(NPAGES) if mask >> i & 1))

    def regs(self, regs) -> None:
        self._emit(_HEAD.pack(TAG_REGS, _REGS.size) + _REGS.pack(*regs))

    def uart(self, state: bytes) -> None:
        self._emit(_HEAD.pack(TAG_UART, uart.STATE_SIZE) + state)

    def end(self) -> None:
        length = len(self.buf)
        record = bytearray(_HEAD.pack(TAG_END, _END.size) + _END.pack(length, 0, 0))
        salt_at = len(record) - CHECKSUM_SIZE - 1
        salt, value = _salted(zlib.crc32(record[:salt_at], self._crc))
        _END.pack_into(record, _HEAD.size, length, salt, value)
        self.buf += record


def full_stream(regs, mem, uart_state: bytes) -> bytes:
    """The stop-and-copy stream of a device whose state is (regs, mem, uart_state)."""
    w = StreamWriter()
    w.pages(ALL_PAGES, mem)
    w.regs(regs)
    w.uart(uart_state)
    w.end()
    return bytes(w.buf)


def header_ok(data) -> bool:
    magic, version, _flags, npages, page_size = _HEADER.unpack_from(data, 0)
    return magic == MAGIC and version == VERSION and npages == NPAGES and page_size == PAGE_SIZE


def load(data, check_uart=uart.parse_state, check_header: bool = True,
         check_sum: bool | None = None) -> tuple[list, bytearray, bytes]:
    """Validate ``data`` completely and return (regs, mem, uart state) to load; raise StreamError.

    ``check_uart`` validates the UART record, ``check_header`` the header, ``check_sum`` the
    checksum (by default: with the header); a loader that trusts any of them is a zoo variant."""
    n = len(data)
    if n < HEADER_SIZE + END_RECORD_SIZE:
        raise StreamError("stream too short")
    if check_header and not header_ok(data):
        raise StreamError("bad header")
    end_at = n - END_RECORD_SIZE
    tag, length = _HEAD.unpack_from(data, end_at)
    if tag != TAG_END or length != _END.size:
        raise StreamError("no end record")
    declared, _salt, digest = _END.unpack_from(data, end_at + _HEAD.size)
    if declared != end_at:
        raise StreamError("length mismatch")
    if (check_header if check_sum is None else check_sum) and checksum(memoryview(data)[:n - CHECKSUM_SIZE]) != digest:
        raise StreamError("checksum mismatch")
    mem = bytearray(NPAGES * PAGE_SIZE)
    seen = 0
    regs = uart_state = None
    pos = HEADER_SIZE
    while pos < end_at:
        if pos + _HEAD.size > end_at:
            raise StreamError("truncated record")
        tag, length = _HEAD.unpack_from(data, pos)
        pos += _HEAD.size
        if pos + length > end_at:
            raise StreamError("record overruns stream")
        if tag == TAG_PAGE and length == _PAGE.size + PAGE_SIZE and regs is None:
            (index,) = _PAGE.unpack_from(data, pos)
            if index >= NPAGES:
                raise StreamError("page index out of range")
            off = index * PAGE_SIZE
            mem[off:off + PAGE_SIZE] = data[pos + _PAGE.size:pos + length]
            seen |= 1 << index
        elif tag == TAG_REGS and length == _REGS.size and regs is None:
            regs = list(_REGS.unpack_from(data, pos))
        elif tag == TAG_UART and length == uart.STATE_SIZE and regs is not None and uart_state is None:
            uart_state = bytes(data[pos:pos + length])
            try:
                check_uart(uart_state)
            except uart.BadUartState as e:
                raise StreamError(str(e)) from None
        else:
            raise StreamError(f"unexpected record tag {tag} length {length}")
        pos += length
    if regs is None or uart_state is None or seen != ALL_PAGES:
        raise StreamError("incomplete image")
    return regs, mem, uart_state
