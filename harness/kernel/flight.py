"""Flight recorder: the last programs the guest started, kept where a kernel panic cannot erase them.

The rig boots with ``panic_on_warn=1 oops=panic``: a WARN or oops caused by a
fuzzed program ends QEMU on the spot, so nothing the guest would write to a
file afterwards (or even just before, through the 9p share's page cache)
survives. Writing every program to the results share before running it would
cost a 9p round trip per program.

Instead the rig gives the guest an ``ivshmem-plain`` PCI device whose memory
is a file in the host's results directory (``flight.bin``). The guest mmaps
the device's BAR 2 through sysfs and copies each program's bytes into a ring
of ``SLOTS`` slots before running it: a memcpy, no syscall. After QEMU has
exited the host reads the file and knows which program was running when the
kernel died (``read_flight``), and the few before it (for a splat from
deferred work).

Layout (little endian)::

    header  (64 bytes): magic "MIGFLT01", seq u64 (programs started), state u32
                        (0 idle, 1 running, 2 closed), slots u32, slot_size u32,
                        proto 4 bytes ("v2\\0\\0"), target name 32 bytes
    slot[i] (slot_size): seq u64, length u32, ops started u32, bytes

"ops started" is 0 while the program's resets run and n once its op n-1 has begun: the host
names the op the guest died in (``Flight.last_step``). A store per op into the mapping.

A slot is filled before the header's ``seq`` names it, so a reader never sees
a half-written slot as the newest. One writer (the fuzzing process).
"""
from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

MAGIC = b"MIGFLT01"
SIZE = 1 << 20            # ivshmem wants a power of two
SLOTS = 64
SLOT_SIZE = 4096          # a program is at most fuzz.engine.MAX_LEN (< 1 KiB) bytes
_HEADER = struct.Struct("<8sQIII4s32s")
_SLOT = struct.Struct("<QII")
_OPS_STARTED = struct.Struct("<I")  # the slot's third field ...
_OPS_OFFSET = struct.calcsize("<QI")  # ... after its seq and length
HEADER_SIZE = 64
IDLE, RUNNING, CLOSED = 0, 1, 2
ENV = "MIGFUZZ_FLIGHT"     # guest: sysfs path of the ivshmem BAR (set by the rig)
FILE_NAME = "flight.bin"   # host: the memory-backend file in the results directory

assert _HEADER.size <= HEADER_SIZE and HEADER_SIZE + SLOTS * SLOT_SIZE <= SIZE


class FlightRecorder:
    """Guest side: writes each program into the shared ring before it runs."""

    def __init__(self, buf, proto: str, target: str) -> None:
        self._buf = buf
        self._seq = 0
        self._ops_at = HEADER_SIZE + _OPS_OFFSET  # the current slot's "ops started"
        buf[:HEADER_SIZE] = bytes(HEADER_SIZE)
        self._proto = proto.encode()[:4]
        self._target = target.encode()[:32]
        self._header(IDLE)

    @classmethod
    def open(cls, proto: str, target: str, path: str | None = None) -> FlightRecorder | None:
        """The rig's recorder (``$MIGFUZZ_FLIGHT``), or None outside the rig or if it cannot be mapped."""
        path = path or os.environ.get(ENV)
        if not path:
            return None
        try:
            enable = Path(path).with_name("enable")
            if enable.exists():
                enable.write_text("1")  # memory decoding on, so the BAR reaches the host file
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
            try:
                buf = mmap.mmap(fd, SIZE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
            finally:
                os.close(fd)
        except (OSError, ValueError):
            return None
        return cls(buf, proto, target)

    def _header(self, state: int) -> None:
        _HEADER.pack_into(self._buf, 0, MAGIC, self._seq, state, SLOTS, SLOT_SIZE, self._proto, self._target)

    def record(self, data: bytes) -> None:
        """Note that the program `data` starts now."""
        seq = self._seq + 1
        at = HEADER_SIZE + (seq % SLOTS) * SLOT_SIZE
        body = data[:SLOT_SIZE - _SLOT.size]
        self._buf[at + _SLOT.size:at + _SLOT.size + len(body)] = body
        _SLOT.pack_into(self._buf, at, seq, len(data), 0)
        self._seq = seq
        self._ops_at = at + _OPS_OFFSET
        self._header(RUNNING)

    def op_started(self, step: int) -> None:
        """Note that op ``step`` (0-based) of the running program begins now."""
        _OPS_STARTED.pack_into(self._buf, self._ops_at, step + 1)

    def close(self) -> None:
        if self._buf is not None:
            self._header(CLOSED)
            self._buf = None


@dataclass
class Flight:
    """What the host reads back."""

    seq: int                 # programs started
    state: int               # IDLE / RUNNING / CLOSED
    proto: str
    target: str
    programs: list[tuple[int, bytes]] = field(default_factory=list)  # (seq, bytes), newest first
    last_step: int | None = None  # the op the newest program had begun (None: still in its resets)

    @property
    def last(self) -> bytes | None:
        return self.programs[0][1] if self.programs else None


def read_flight(path: Path) -> Flight | None:
    """Parse a flight file (None if missing or never written)."""
    try:
        raw = Path(path).read_bytes()
    except OSError:
        return None
    if len(raw) < HEADER_SIZE:
        return None
    magic, seq, state, slots, slot_size, proto, target = _HEADER.unpack_from(raw)
    if magic != MAGIC or not slots or slot_size <= _SLOT.size or HEADER_SIZE + slots * slot_size > len(raw):
        return None
    flight = Flight(seq, state, proto.rstrip(b"\0").decode(errors="replace"),
                    target.rstrip(b"\0").decode(errors="replace"))
    for n in range(seq, max(seq - slots, 0), -1):
        at = HEADER_SIZE + (n % slots) * slot_size
        slot_seq, length, started = _SLOT.unpack_from(raw, at)
        if slot_seq != n:
            break
        if n == seq and started:
            flight.last_step = started - 1
        length = min(length, slot_size - _SLOT.size)
        flight.programs.append((n, raw[at + _SLOT.size:at + _SLOT.size + length]))
    return flight
