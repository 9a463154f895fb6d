"""The simulated device's register block: a small 16550-like UART, modelled on mtty's.

What a program reaches with ``rdreg``/``wrreg`` (region 0, one byte per register), and part
of the device's migration state (the stream's UART record): the eight registers, a 16-byte
loop-back FIFO with its head/tail/count indices, the divisor latch and the overrun flag.
Region 7 is a small read-only config space (identity bytes).

Register semantics (offset: read / write), as mtty's ``handle_bar_read/handle_bar_write``:

* 0 RX/TX: pop the FIFO (the idle value 0 when empty) / push into it (overrun when full);
  with LCR.DLAB set, the divisor latch's low byte instead;
* 1 IER (low nibble) / divisor high byte with DLAB; 2 IIR / FCR (bits 1-2 clear the FIFO);
* 3 LCR (bit 7: DLAB); 4 MCR; 5 LSR (DR, OE, THRE|TEMT from the FIFO); 6 MSR; 7 SCR.

Everything here is bounded: indices are masked, a loaded state is validated
(:func:`parse_state`). The bug zoo removes exactly one of these guards.
"""
from __future__ import annotations

from construct import Bytes, Int8ul, Int16ul, Struct

from harness.base import bookkeeping
from harness.uapi import packer

FIFO_SIZE = 16
NREGS = 8
RX, IER, IIR, LCR, MCR, LSR, MSR, SCR = range(NREGS)
LCR_DLAB = 0x80
FCR_CLEAR = 0x06
LSR_DR, LSR_OE, LSR_THRE_TEMT = 0x01, 0x02, 0x60
IIR_NO_INT = 0xC1
MSR_VALUE = 0xB0  # DCD, DSR, CTS: the line is up
IDLE = 0x00  # RX with an empty FIFO
UART_REGION, CONFIG_REGION = 0, 7
CONFIG_SPACE = bytes.fromhex("4348533210000002" "01000000000000000700") + bytes(38)  # ids, class, BAR0 I/O
FLAG_DLAB, FLAG_OVERRUN = 1, 2

UartState = Struct(
    "regs" / Bytes(NREGS),
    "fifo" / Bytes(FIFO_SIZE),
    "head" / Int8ul,
    "tail" / Int8ul,
    "count" / Int8ul,
    "flags" / Int8ul,
    "divisor" / Int16ul,
)
_STATE = packer(UartState)
STATE_SIZE = _STATE.size


class BadUartState(ValueError):
    """A UART state whose indices do not describe a FIFO (a loader must refuse it)."""


def parse_state(raw) -> tuple:
    """Fields of a saved UART state, validated: indices inside the FIFO and consistent."""
    regs, fifo, head, tail, count, flags, divisor = _STATE.unpack_from(raw)
    if head >= FIFO_SIZE or tail >= FIFO_SIZE or count > FIFO_SIZE or (head - tail) % FIFO_SIZE != count % FIFO_SIZE:
        raise BadUartState(f"FIFO indices out of range (head {head}, tail {tail}, count {count})")
    if flags & ~(FLAG_DLAB | FLAG_OVERRUN):
        raise BadUartState(f"unknown UART flags {flags:#x}")
    return regs, fifo, head, tail, count, flags, divisor


class Uart:
    """The register block's state and its register accesses (one byte each).

    Every method that changes a field sets ``packed`` to None (a subclass's too): the device's
    digest packs the state on every SET, and most programs never touch the UART."""

    __slots__ = ("regs", "fifo", "head", "tail", "count", "dlab", "overrun", "divisor", "packed", "_initial")

    def __init__(self, seed: int):
        self.regs = bytearray(NREGS)
        self.regs[SCR] = seed & 0x7F  # each device starts distinguishable (no byte of device state is >= 0x80)
        self.fifo = bytearray(FIFO_SIZE)
        self.head = self.tail = self.count = 0
        self.dlab = self.overrun = False
        self.divisor = 0
        self.packed: bytes | None = None  # what state() returns, until a field changes
        self._initial = self.state()

    @bookkeeping  # its branch depends on the program before: no coverage of this one
    def restore_initial(self) -> None:
        if self.packed is not self._initial:  # changed since power-on
            self.restore(self._initial)
            self.packed = self._initial

    @bookkeeping
    def state(self) -> bytes:
        if self.packed is None:
            self.packed = _STATE.pack(bytes(self.regs), bytes(self.fifo), self.head, self.tail, self.count,
                                      FLAG_DLAB * self.dlab | FLAG_OVERRUN * self.overrun, self.divisor)
        return self.packed

    @bookkeeping
    def restore(self, raw) -> None:
        """Take a saved state as it is (validation is the loader's job: :func:`parse_state`)."""
        self.packed = None
        regs, fifo, self.head, self.tail, self.count, flags, self.divisor = _STATE.unpack_from(raw)
        self.regs[:] = regs
        self.fifo[:] = fifo
        self.dlab = bool(flags & FLAG_DLAB)
        self.overrun = bool(flags & FLAG_OVERRUN)

    def fifo_byte(self, index: int) -> int:
        return self.fifo[index & (FIFO_SIZE - 1)]

    def read(self, off: int) -> int:
        if off == RX:
            if self.dlab:
                return self.divisor & 0xFF
            if not self.count:
                return self.empty_read()
            self.packed = None
            value = self.fifo_byte(self.tail)
            self.tail = (self.tail + 1) & (FIFO_SIZE - 1)
            self.count -= 1
            return value
        if off == IER:
            return self.divisor >> 8 if self.dlab else self.regs[IER] & 0x0F
        if off == IIR:
            return IIR_NO_INT
        if off == LSR:
            return (LSR_DR if self.count else LSR_THRE_TEMT) | (LSR_OE if self.overrun else 0)
        if off == MSR:
            return MSR_VALUE
        return self.regs[off]

    def empty_read(self) -> int:
        return IDLE

    def write(self, off: int, value: int) -> None:
        self.packed = None
        if off == RX:
            if self.dlab:
                self.divisor = (self.divisor & 0xFF00) | value
            elif self.count < FIFO_SIZE:
                self.fifo[self.head & (FIFO_SIZE - 1)] = value
                self.head = (self.head + 1) & (FIFO_SIZE - 1)
                self.count += 1
                self.overrun = False
            else:
                self.overrun = True
        elif off == IER:
            if self.dlab:
                self.divisor = (self.divisor & 0xFF) | value << 8
            else:
                self.regs[IER] = value
        elif off == IIR:  # FCR
            self.regs[IIR] = value
            if value & FCR_CLEAR:
                self.head = self.tail = self.count = 0
        elif off == LCR:
            self.dlab = bool(value & LCR_DLAB)
            self.regs[LCR] = value
        elif off in (MCR, SCR):
            self.regs[off] = value
        # LSR and MSR are read-only: writes are ignored
