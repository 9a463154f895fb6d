"""The device runtime: what runs a migration program against a device, judging nothing.

Standard library only, and self-contained, because it has two users:

* migfuzz itself: the kernel backend (``harness.kernel.vfio``) is a :class:`VfioDevice`,
  and the executor, the conformance sweep, the rig's self-check and the re-save of a
  real destination call the procedures below instead of writing their own loops;
* the stand-alone Python reproducer: ``migfuzz export --python`` writes this file
  verbatim, followed by the program, the finding's claim and the layouts (generated
  from ``harness.uapi``), and a call of :func:`main`. So a reproducer opens, reads,
  cuts, damages and writes streams with the very code the fuzzer used.

``harness/runtime.c`` is the same runtime in C (the C reproducer); the tests run both
against devices that show a defect and devices that do not.

Contents, top to bottom: exit codes and limits; transport (how a stream is cut into
writes and damaged); procedures on any device of ``harness.base``; raw VFIO access
(:class:`Abi`, :class:`VfioDevice`, opening by group or cdev); the reproducer (:class:`Replay`,
:data:`CHECKS`, :func:`main`).
"""
# ruff: noqa: UP031 - printf-style formatting, line for line the formats of its C twin (harness/runtime.c)
import argparse
import errno
import fcntl
import functools
import os
import struct
import sys
import threading
import time
import traceback
import zlib
from contextlib import nullcontext

# ----------------------------------------------------------------------------- exit codes and limits

# Exit codes of every migfuzz command and of the reproducers.
EXIT_OK = 0            # nothing found / the reproducer did not see the defect
EXIT_FINDING = 1       # a finding / the reproducer saw the defect
EXIT_USAGE = 2         # usage or input error
EXIT_UNAVAILABLE = 3   # the target (device, rig) cannot be opened or prepared
EXIT_INCONCLUSIVE = 4  # a reproducer cannot judge the claim from user space, or saw a different problem
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT, what a shell reports for it)

DRAIN_LIMIT = 256      # reads (v2) or saving iterations (v1) before "the stream never ends"
DRAIN_CHUNK = 4096     # bytes asked for by each read of a drain
EINTR_RETRIES = 3      # a write interrupted this many times in a row is a failed write
MAX_READ = 1 << 20     # largest read(2) or feature buffer a program may ask for


def errname(err):
    """'EINVAL' for 22, 'success' for 0."""
    return errno.errorcode.get(err, str(err)) if err else "success"


# ----------------------------------------------------------------------------- transport

MANGLE_KINDS = ("truncate", "extend", "flip", "drop", "dup", "swap", "set", "add")
FIELD_MANGLES = ("set", "add")  # the kinds that change one field: offset, width, value, checksum fix-up
# Checksums a field change can be followed by (``fix``): CRC-32 (zlib's, IEEE 802.3) or the additive
# sum of the bytes modulo 2**bits, stored little endian, or big endian with "be".
FIX_KINDS = ("none", "crc32", "sum8", "sum16", "sum32", "crc32be", "sum16be", "sum32be")
MANGLE_CHUNK = 16        # drop/dup/swap work on chunks of this many bytes
SEG_RANDOM = 1024        # a transfer's seg >= this: random piece sizes seeded by seg
SEG_RANDOM_MAX = 64      # largest random piece


def seg_prng(seed):
    """The piece sizes of a random segmentation: xorshift32 seeded by ``seed``, 1..SEG_RANDOM_MAX.

    Written out (not ``random``) so that harness/runtime.c cuts a stream exactly the same way."""
    x = (seed * 2654435761 + 1) & 0xFFFFFFFF or 1
    while True:
        x ^= (x << 13) & 0xFFFFFFFF
        x ^= x >> 17
        x ^= (x << 5) & 0xFFFFFFFF
        yield 1 + x % SEG_RANDOM_MAX


def segments(data, seg):
    """How a transfer cuts a stream: 0 one write, < SEG_RANDOM pieces of seg bytes, else random pieces."""
    if seg == 0:
        return [data]
    if seg < SEG_RANDOM:
        return [data[i:i + seg] for i in range(0, len(data), seg)]
    out, i = [], 0
    sizes = seg_prng(seg)
    while i < len(data):
        n = next(sizes)
        out.append(data[i:i + n])
        i += n
    return out


def checksum(data, fix):
    """(value, width in bytes, big endian) of checksum ``fix`` (a FIX_KINDS name) over ``data``."""
    if fix.startswith("crc32"):
        return zlib.crc32(data) & 0xFFFFFFFF, 4, fix.endswith("be")
    bits = int(fix[3:].rstrip("be"))
    return sum(data) & ((1 << bits) - 1), bits // 8, fix.endswith("be")


def fix_checksum(cap, fix, at):
    """Recompute checksum ``fix`` in place: its field starts ``at`` bytes before the end of ``cap``
    and covers every byte before it. Nothing happens if the field does not fit."""
    pos = len(cap) - at
    if fix == "none" or pos < 0:
        return
    value, width, big = checksum(bytes(cap[:pos]), fix)
    if at >= width:
        cap[pos:pos + width] = value.to_bytes(width, "big" if big else "little")


def mangle(cap, kind, arg, width=1, value=0, fix="none", at=0):
    """Damage a captured stream (a bytearray) in place, as transport would.

    truncate/extend/flip/drop/dup/swap take one argument ``arg``. ``set`` and ``add`` change
    the little-endian field of ``width`` bytes at offset ``arg`` (modulo the length; bytes past
    the end are left out) to ``value`` or by adding ``value`` (a signed number, taken modulo
    2**(8*width)), then recompute checksum ``fix`` (:func:`fix_checksum`) so the change reaches
    a loader that checks it."""
    n = len(cap)
    if not n:
        return
    if kind in FIELD_MANGLES:
        pos = arg % n
        span = min(width, n - pos)
        mask = (1 << (8 * width)) - 1
        if kind == "add":
            value += int.from_bytes(cap[pos:pos + span], "little")
        cap[pos:pos + span] = (value & mask).to_bytes(width, "little")[:span]
        fix_checksum(cap, fix, at)
        return
    chunk = MANGLE_CHUNK
    nchunks = (n + chunk - 1) // chunk
    k = arg % nchunks
    if kind == "truncate":
        del cap[n - 1 - arg % n:]
    elif kind == "extend":
        cap += bytes((arg + i) & 0xFF for i in range(1 + arg % 16))
    elif kind == "flip":
        cap[(arg >> 3) % n] ^= 1 << (arg & 7)
    elif kind == "drop":
        del cap[k * chunk:(k + 1) * chunk]
    elif kind == "dup":
        cap[k * chunk:k * chunk] = cap[k * chunk:(k + 1) * chunk]
    elif kind == "swap" and k + 1 < nchunks:
        a, b = cap[k * chunk:(k + 1) * chunk], cap[(k + 1) * chunk:(k + 2) * chunk]
        cap[k * chunk:(k + 2) * chunk] = b + a


# ----------------------------------------------------------------------------- procedures
#
# Each works on any device with the methods of harness.base (simulated or real), returns the
# device's raw answers and judges nothing: the caller (oracle, sweep, reproducer) decides.


def read_to_end(dev, fd, on_read, chunk=DRAIN_CHUNK, limit=DRAIN_LIMIT):
    """read(2) ``chunk`` bytes at a time until ``on_read(err, data)`` returns True (the caller
    saw the end: 0 bytes, an error, ...). False if ``limit`` reads never ended the stream."""
    read = dev.read
    for _ in range(limit):
        err, data = read(fd, chunk)
        if on_read(err, data):
            return True
    return False


def read_stream(dev, fd, chunk=DRAIN_CHUNK, limit=DRAIN_LIMIT):
    """A saving data_fd read to its end: (errno of the read that ended it or 0, bytes, ended).

    EINTR is retried; ``ended`` is False when ``limit`` reads never reached the end."""
    out = bytearray()
    last = [0]

    def take(err, data):
        if err == errno.EINTR:
            return False
        last[0] = err
        out.extend(data)
        return bool(err) or not data

    ended = read_to_end(dev, fd, take, chunk, limit)
    return last[0], bytes(out), ended


def write_all(dev, fd, data, seg=0, retries=EINTR_RETRIES):
    """Write ``data`` to a resuming data_fd in the pieces ``segments(data, seg)`` gives, each piece
    until the device took all of it (short writes continue, EINTR is retried ``retries`` times).

    Returns (errno of the first failed write or 0, bytes accepted, stalled): ``stalled`` when a
    write returned 0 bytes without an error (a writer looping on it would spin forever)."""
    write = dev.write
    done = 0
    for piece in segments(data, seg):
        while piece:
            for _ in range(retries):
                err, n = write(fd, piece)
                if err != errno.EINTR:
                    break
            if err:
                return err, done, False
            if n <= 0:
                return 0, done, True
            done += n
            piece = piece[n:]
    return 0, done, False


# The stage of a v1 saving iteration at which it stopped (the first element of its answer).
V1_DONE, V1_PENDING, V1_OFFSET, V1_SIZE, V1_DATA, V1_MORE = range(6)


def v1_save_iteration(dev, fields, saving):
    """One iteration of the v1 saving sequence (pending_bytes, data_offset, data_size, data).

    ``fields`` maps a field name to (offset, width); ``saving`` says whether the caller
    believes the device is saving (if not, only pending_bytes is read). Returns
    (stage, errno, pending, offset, size, data): stage V1_PENDING/V1_OFFSET/V1_SIZE/V1_DATA
    names the read that failed (errno set), V1_DONE a pending_bytes of 0 or a device not
    saving, V1_MORE a chunk read (data, possibly empty) with more to come."""
    err, pending = dev.field_read(*fields["pending_bytes"])
    if err:
        return V1_PENDING, err, None, None, None, b""
    if not saving or pending == 0:
        return V1_DONE, 0, pending, None, None, b""
    err, offset = dev.field_read(*fields["data_offset"])
    if err:
        return V1_OFFSET, err, pending, None, None, b""
    err, size = dev.field_read(*fields["data_size"])
    if err:
        return V1_SIZE, err, pending, offset, None, b""
    if not size:
        return V1_MORE, 0, pending, offset, 0, b""
    err, data = dev.region_read(offset, size)
    if err:
        return V1_DATA, err, pending, offset, size, b""
    return V1_MORE, 0, pending, offset, size, data


def v1_write_chunk(dev, fields, piece, header_size):
    """One v1 resuming step: read data_offset, write as much of ``piece`` as the window
    holds, then data_size. Returns (errno, data_offset, bytes taken); a data_offset outside
    [header_size, region_size) takes nothing and writes nothing (the caller judges it)."""
    err, offset = dev.field_read(*fields["data_offset"])
    if err or offset is None:
        return err or errno.EIO, offset, 0
    if offset < header_size or offset >= dev.region_size:
        return 0, offset, 0
    chunk = piece[:dev.region_size - offset]
    err, _ = dev.region_write(offset, chunk)
    if not err:
        err = dev.field_write(*fields["data_size"], len(chunk))
    return err, offset, (0 if err else len(chunk))


# Kernel virtual address ranges on x86-64 (Documentation/arch/x86/x86_64/mm.rst), 4- and 5-level
# paging: what a kernel pointer handed to user space looks like. Small negative numbers (-errno,
# -1) also start with 0xff..: they fall outside every range.
KERNEL_RANGES = (
    (0xFFFF888000000000, 0xFFFFC87FFFFFFFFF),  # direct map (4-level; KASLR moves it inside)
    (0xFFFFC90000000000, 0xFFFFE8FFFFFFFFFF),  # vmalloc, ioremap (4-level)
    (0xFFFFEA0000000000, 0xFFFFEAFFFFFFFFFF),  # vmemmap (4-level)
    (0xFF11000000000000, 0xFF90FFFFFFFFFFFF),  # direct map (5-level)
    (0xFFA0000000000000, 0xFFD1FFFFFFFFFFFF),  # vmalloc, ioremap (5-level)
    (0xFFD4000000000000, 0xFFD5FFFFFFFFFFFF),  # vmemmap (5-level)
    (0xFFFFFFFF80000000, 0xFFFFFFFF9FFFFFFF),  # kernel text
    (0xFFFFFFFFA0000000, 0xFFFFFFFFFEFFFFFF),  # modules
)


def kernel_shaped(value):
    """Whether a 64-bit value lies in a kernel address range."""
    return any(lo <= value <= hi for lo, hi in KERNEL_RANGES)


def kernel_addresses(data, entered=frozenset()):
    """(offset, value) of every 8-byte window of ``data`` (little endian, any alignment) with the
    shape of a kernel address. Every range has 0xff as its top byte, so only windows ending in one
    are decoded; if the program itself put a 0xff byte into the device (``entered``: the byte
    values it wrote), any such window could be its own doing, and none is reported. A window
    followed by another 0xff byte lies inside a run of them, as a sign-extended negative number
    does (an s64 or s32 -EINVAL after five arbitrary bytes reads as 0xffffea..., a vmemmap
    address): not reported either."""
    if 0xFF in entered:
        return []
    out = []
    at = data.find(b"\xff", 7)
    while at >= 0:
        if data[at + 1:at + 2] != b"\xff":
            value = int.from_bytes(data[at - 7:at + 1], "little")
            if kernel_shaped(value):
                out.append((at - 7, value))
        at = data.find(b"\xff", at + 1)
    return out


# ----------------------------------------------------------------------------- races
#
# A race op runs two device calls at once. Who picks the interleaving:
# * a device that interleaves calls itself (the simulator: ``dev.race(fa, fb, sched)``) runs them
#   at the interleaving ``sched`` names, the same one every time (harness/sim/core.py), so the
#   fuzzer, the minimizer and the reproducers all see the interleaving a finding was made with;
# * any other device (a real one) gets two threads released together by a barrier, and the
#   kernel's scheduler picks: best effort, ``sched`` is not used there.
# Which answers a correct device may give (those of one serial order of the two calls) is the
# model's (fuzz/model.py); the encoding of an outcome below is shared with harness/runtime.c.

RACE_CALLS = ("reset", "set", "get", "read", "write", "close", "reopen", "precopy")
RACE_FD_CALLS = ("read", "write", "close", "precopy")  # the calls on a data_fd (v2 only)
RACE_READ = 64      # bytes a racing read asks for
RACE_SCHEDS = 16    # interleavings a race op can name
# One call's result in an outcome: success, success with a new data_fd, failure, or a GET that
# read state s (RACE_GOT | s, s at most 0x7f).
RACE_OK, RACE_FD, RACE_FAILED, RACE_GOT = 0, 1, 2, 0x80


def race_call(dev, kind, arg=0, fd=-1, data=b"", state_field=None):
    """One side of a race: the device call ``kind`` (RACE_CALLS) -> (errno, value): the data_fd a
    SET returned, the state a GET read, the bytes read, the count written, PRECOPY_INFO's
    (initial, dirty); None for the others. ``arg`` is the state a SET asks for; ``state_field``
    the v1 device_state field (offset, width), whose write and read are v1's SET and GET."""
    if kind == "reset":
        return dev.reset(), None
    if kind == "reopen":
        return dev.reopen(), None
    if kind == "set":
        if state_field is not None:
            return dev.field_write(*state_field, arg), -1
        return dev.set_state(arg)
    if kind == "get":
        return dev.field_read(*state_field) if state_field is not None else dev.get_state()
    if kind == "read":
        return dev.read(fd, RACE_READ)
    if kind == "write":
        return dev.write(fd, data)
    if kind == "close":
        return dev.close(fd), None
    err, initial, dirty = dev.precopy_info(fd)
    return err, (initial, dirty)


def race_result(kind, answer, mask=-1):
    """One side's result in an outcome (RACE_OK, RACE_FD, RACE_FAILED, RACE_GOT | state, the state
    at most 0x7f); ``mask``: the bits of a GET's value that are the state (v1: 7, its reserved bits
    are the driver's)."""
    err, value = answer
    if err:
        return RACE_FAILED
    if kind == "get":
        state = value & mask if value is not None and value >= 0 else 0x7F
        return RACE_GOT | min(state, 0x7F)
    return RACE_FD if kind == "set" and value is not None and value >= 0 else RACE_OK


def race_outcome(result_a, result_b, state):
    """The outcome of a race as one number: both sides' results and the state read after both."""
    state = state if state is not None and 0 <= state < 0xFF else 0xFF
    return state | result_a << 8 | result_b << 16


class _RacePartner:
    """The second thread of every race, started once: a thread start per race cost more than the
    race's two device calls in a TCG guest (bench/rigcost.py). It waits for a call, meets the
    caller at a barrier, makes the call and hands back its answer or exception."""

    def __init__(self):
        self.barrier = threading.Barrier(2)
        self.go, self.done = threading.Semaphore(0), threading.Semaphore(0)
        self.call = None
        self.answer = self.error = None
        threading.Thread(target=self._serve, name="migfuzz-race", daemon=True).start()

    def _serve(self):
        while True:
            self.go.acquire()
            try:
                self.barrier.wait()
                self.answer = self.call()
            except BaseException as e:  # noqa: BLE001 - handed to the caller
                self.error = e
            self.done.release()

    def race(self, fa, fb):
        self.call, self.answer, self.error = fb, None, None
        self.go.release()
        raised = None
        try:
            self.barrier.wait()
            mine = fa()
        except BaseException as e:  # noqa: BLE001 - raised once both are done
            raised = e
        self.done.acquire()
        if raised is None:
            raised = self.error
        if raised is not None:
            raise raised
        return mine, self.answer


@functools.cache
def _race_partner() -> _RacePartner:
    """The one race partner, started by the first race."""
    return _RacePartner()


def race_threads(fa, fb):
    """``fa`` on this thread and ``fb`` on the race partner thread, both released by one barrier:
    (fa's answer, fb's answer). An exception raised by either is raised here once both are done.
    One race at a time (the executor's thread makes them)."""
    return _race_partner().race(fa, fb)


def run_race(dev, fa, fb, sched):
    """Run ``fa`` and ``fb`` (each one device call, no arguments) at once: (fa's answer, fb's
    answer). A device that interleaves calls itself does it at interleaving ``sched``; any other
    gets two threads (see the section's comment)."""
    interleave = getattr(dev, "race", None)
    if interleave is not None:
        return interleave(fa, fb, sched % RACE_SCHEDS)
    return race_threads(fa, fb)


# ----------------------------------------------------------------------------- raw VFIO access


class Abi:
    """Ioctl numbers, struct layouts and constants, from a plain dict (``harness.uapi.runtime_abi()``).

    The dict holds struct formats as ``struct`` strings derived from the construct declarations,
    so no layout is written twice; the ioctl numbers of both _IOC families are in it and the
    host's is picked here."""

    THREE_BIT_DIR = ("ppc", "powerpc", "mips", "sparc", "alpha")

    def __init__(self, spec, machine=None):
        machine = machine or os.uname().machine
        family = "three_bit_dir" if machine.startswith(self.THREE_BIT_DIR) else "generic"
        self.spec = spec
        self.ioctl = dict(spec["ioctls"][family])
        self.structs = {name: struct.Struct(fmt) for name, fmt in spec["structs"].items()}
        for name, value in spec["consts"].items():
            setattr(self, name, value)

    def state_name(self, proto, state):
        if state is None or state < 0:
            return "?"
        if proto == "v2":
            names = self.v2_state_names
            return names[state] if state < len(names) else str(state)
        return self.v1_state_names[state & 7] if state < 8 else hex(state)


def _ioctl(fd, request, arg=0):
    """(errno, return value) of one ioctl; a bytearray argument receives the kernel's answer."""
    try:
        return 0, fcntl.ioctl(fd, request, arg)
    except OSError as e:
        return e.errno, -1


class OpenError(Exception):
    """The named device could not be opened (setup, not a protocol answer)."""


def _checked(what, err):
    if err:
        raise OpenError("%s: %s (%s)" % (what, os.strerror(err), errno.errorcode.get(err, err)))


class RegionInfo:
    __slots__ = ("index", "flags", "size", "offset", "types")

    def __init__(self, index, flags, size, offset, types):
        self.index, self.flags, self.size, self.offset, self.types = index, flags, size, offset, tuple(types)


def parse_region_info(abi, buf):
    """Decode a VFIO_DEVICE_GET_REGION_INFO answer, walking its capability chain.

    Capability offsets count from the start of ``vfio_region_info``; the chain ends at
    next == 0. Offsets outside the buffer, backwards or already visited end the walk
    (a malformed chain must not hang or crash the harness)."""
    info, head, cap_type = (abi.structs[n] for n in ("vfio_region_info", "vfio_info_cap_header",
                                                      "vfio_region_info_cap_type"))
    _argsz, flags, index, cap_offset, size, offset = info.unpack_from(buf)
    types, seen = [], set()
    at = cap_offset if flags & abi.REGION_INFO_FLAG_CAPS else 0
    while at and at not in seen and info.size <= at <= len(buf) - head.size:
        seen.add(at)
        cap_id, _version, nxt = head.unpack_from(buf, at)
        if cap_id == abi.REGION_INFO_CAP_TYPE and at + cap_type.size <= len(buf):
            _, _, _, kind, subtype = cap_type.unpack_from(buf, at)
            types.append((kind, subtype))
        at = nxt
    return RegionInfo(index, flags, size, offset, types)


class VfioDevice:
    """An open VFIO device fd (implements harness.base.V2Device, and V1Device with a v1 region).

    Every method returns errno values (0 = success) and never raises for a kernel error.
    Data-fd methods only touch fds this device handed out (a program naming any other fd gets
    EBADF without a syscall), and region methods only reach the v1 migration region, so a
    program cannot hit the fuzzer's own fds by accident; the PCI regions' registers are reached
    through ``reg_read``/``reg_write`` only (which ones a program may touch is the caller's
    profile). ``guard(what)`` returns the context every device call runs in (a watchdog, in
    migfuzz)."""

    # 16550 UART registers inside an mtty BAR (include/uapi/linux/serial_reg.h): what activity writes.
    UART_TX, UART_SCR = 0, 7
    NBARS = 6  # VFIO_PCI_BAR0..5_REGION_INDEX

    def __init__(self, abi, name, device_fd, owned_fds, guard=None, opener=None):
        self.abi = abi
        self.opener = opener or (lambda: (errno.ENODEV, -1))  # () -> (errno, a new device fd), for reopen
        self.name = name
        self._fd = device_fd
        self._owned = list(owned_fds)       # container/group/iommufd, closed after the device
        self._data_fds = set()              # data_fds handed out and not yet closed
        self._guard = guard or (lambda what: nullcontext())
        s = abi.structs
        self._feature_hdr = s["vfio_device_feature"]
        self._mig_state = s["vfio_device_feature_mig_state"]
        self._u64 = s["vfio_device_feature_migration"]
        self._precopy = s["vfio_precopy_info"]
        self._running = frozenset(abi.v2_running_states)
        self.flags = 0
        self.protocol = 0
        self.region_size = 0
        self._region_offset = 0
        self.bars = []
        self.reset()
        err, payload = self.feature(abi.FEATURE_GET | abi.FEATURE_MIGRATION, bytes(self._u64.size))
        if not err:
            self.protocol = 2
            self.flags = self._u64.unpack_from(payload)[0]
        else:
            region = self.find_migration_region()
            if region is not None:
                self.protocol = 1
                self.region_size, self._region_offset = region.size, region.offset
        # VFIO region index -> RegionInfo of every PCI region (BARs, ROM, config) REGION_INFO
        # describes, size 0 included: a region the driver does not implement must refuse access.
        self.regions = {}
        for index in range(abi.PCI_NUM_REGIONS):
            err, info = self.region_info(index)
            if not err:
                self.regions[index] = info
                if info.size and index < self.NBARS:
                    self.bars.append(info.offset)

    # -- regions

    def region_info(self, index):
        """GET_REGION_INFO for one index, re-asking with the argsz the kernel wants when the
        capability chain does not fit. -> (errno, RegionInfo)."""
        info = self.abi.structs["vfio_region_info"]
        argsz = info.size
        for _ in range(2):
            buf = bytearray(argsz)
            info.pack_into(buf, 0, argsz, 0, index, 0, 0, 0)
            err, _ = _ioctl(self._fd, self.abi.ioctl["VFIO_DEVICE_GET_REGION_INFO"], buf)
            if err:
                return err, None
            wanted = info.unpack_from(buf)[0]
            if wanted <= argsz:
                break
            argsz = wanted
        return 0, parse_region_info(self.abi, bytes(buf))

    def find_migration_region(self):
        """The v1 migration region: a device-specific region (index >= VFIO_PCI_NUM_REGIONS)
        with capability type VFIO_REGION_TYPE_MIGRATION / SUBTYPE_MIGRATION."""
        abi = self.abi
        dinfo = abi.structs["vfio_device_info"]
        buf = bytearray(dinfo.size)
        dinfo.pack_into(buf, 0, dinfo.size, 0, 0, 0, 0)
        if _ioctl(self._fd, abi.ioctl["VFIO_DEVICE_GET_INFO"], buf)[0]:
            return None
        num_regions = dinfo.unpack_from(buf)[2]
        wanted = (abi.REGION_TYPE_MIGRATION, abi.REGION_SUBTYPE_MIGRATION)
        for index in range(abi.PCI_NUM_REGIONS, num_regions):
            err, region = self.region_info(index)
            if not err and wanted in region.types:
                return region
        return None

    # -- Device

    def reset(self):
        with self._guard("reset"):
            return _ioctl(self._fd, self.abi.ioctl["VFIO_DEVICE_RESET"])[0]

    def activity(self, seed):
        """Best effort, for UART-like devices such as mtty: while the device runs, write a
        seed-derived byte to the scratch and the transmit register of every BAR (mtty keeps
        both in its migration stream). Errors are ignored: activity is stimulus, not protocol.
        Returns the transmitted bytes the device took: mtty loops them back to its receive FIFO,
        so they entered the device through the program."""
        sent = bytearray()
        if self.protocol != 2 or not self.bars:
            return sent
        err, state = self.get_state()
        if err or state not in self._running:
            return sent
        with self._guard("activity"):
            for port, bar in enumerate(self.bars):
                value = (seed + port) & 0xFF
                for register, byte in ((self.UART_SCR, value), (self.UART_TX, value ^ 0x5A)):
                    try:
                        if os.pwrite(self._fd, bytes([byte]), bar + register) == 1 and register == self.UART_TX:
                            sent.append(byte)
                    except OSError:
                        pass
        return sent

    def digest(self):
        return None  # a real device exposes no state digest

    def pci_region_size(self, region):
        """The size REGION_INFO reported for PCI region ``region`` (0: not implemented), or None."""
        info = self.regions.get(region)
        return None if info is None else info.size

    def reg_read(self, region, off, size):
        """pread ``size`` bytes at ``off`` of PCI region ``region`` (its registers). The offset is
        not bounded by the region's size here: what may be touched is the caller's profile, and
        whether the device refuses an access past the end is the oracle's question."""
        info = self.regions.get(region)
        if info is None:
            return errno.EINVAL, b""
        with self._guard("reg_read"):
            try:
                return 0, os.pread(self._fd, size, info.offset + off)
            except OSError as e:
                return e.errno, b""

    def reg_write(self, region, off, data):
        info = self.regions.get(region)
        if info is None:
            return errno.EINVAL, 0
        with self._guard("reg_write"):
            try:
                return 0, os.pwrite(self._fd, data, info.offset + off)
            except OSError as e:
                return e.errno, 0

    def reopen(self):
        """Close every data_fd and the device fd, and get the device fd again the way it was got
        (group: VFIO_GROUP_GET_DEVICE_FD; cdev: open and bind), without VFIO_DEVICE_RESET."""
        for fd in sorted(self._data_fds):
            try:
                os.close(fd)
            except OSError:
                pass
            self._data_fds.discard(fd)  # after: a racing call on it still reaches the kernel
        with self._guard("reopen"):
            try:
                os.close(self._fd)
            except OSError:
                pass
            err, fd = self.opener()
        if err:
            self._fd = -1
            return err
        self._fd = fd
        return 0

    def live_files(self):
        return None  # the driver's own references are not visible from user space

    def close_data_fds(self):
        """Close every data_fd this device handed out and the program did not close."""
        for fd in sorted(self._data_fds):
            self.close(fd)

    def close_device(self):
        """Close every data_fd, reset, close the device, then its group/container/iommufd."""
        if self._fd < 0 and not self._owned:
            return
        self.close_data_fds()
        if self._fd >= 0:
            self.reset()
        for fd in [self._fd, *reversed(self._owned)]:
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._fd = -1
        self._owned = []

    # -- V2Device

    def feature(self, flags, payload, argsz=None):
        """Raw VFIO_DEVICE_FEATURE. The buffer is large enough for both the payload and ``argsz``,
        so a large fuzzed argsz never lets the kernel read or write past it."""
        hdr = self._feature_hdr
        if argsz is None:
            argsz = hdr.size + len(payload)
        argsz &= 0xFFFFFFFF
        buf = bytearray(max(hdr.size + len(payload), min(argsz, MAX_READ)))
        hdr.pack_into(buf, 0, argsz, flags & 0xFFFFFFFF)
        buf[hdr.size:hdr.size + len(payload)] = payload
        with self._guard("feature"):
            err, _ = _ioctl(self._fd, self.abi.ioctl["VFIO_DEVICE_FEATURE"], buf)
        return err, bytes(buf[hdr.size:])

    def get_state(self):
        hdr, mig = self._feature_hdr, self._mig_state
        buf = bytearray(hdr.size + mig.size)
        hdr.pack_into(buf, 0, len(buf), self.abi.FEATURE_GET | self.abi.FEATURE_MIG_DEVICE_STATE)
        mig.pack_into(buf, hdr.size, 0, -1)
        with self._guard("get_state"):
            err, _ = _ioctl(self._fd, self.abi.ioctl["VFIO_DEVICE_FEATURE"], buf)
        return (err, -1) if err else (0, mig.unpack_from(buf, hdr.size)[0])

    def set_state(self, state):
        hdr, mig = self._feature_hdr, self._mig_state
        buf = bytearray(hdr.size + mig.size)
        hdr.pack_into(buf, 0, len(buf), self.abi.FEATURE_SET | self.abi.FEATURE_MIG_DEVICE_STATE)
        mig.pack_into(buf, hdr.size, state & 0xFFFFFFFF, -1)
        with self._guard("set_state"):
            err, _ = _ioctl(self._fd, self.abi.ioctl["VFIO_DEVICE_FEATURE"], buf)
        if err:
            return err, -1
        data_fd = mig.unpack_from(buf, hdr.size)[1]
        if data_fd >= 0:
            self._data_fds.add(data_fd)
        return 0, data_fd

    def holds_data_fd(self, fd):
        return fd in self._data_fds  # (the set, not the fd number: a reopen's new device fd may reuse it)

    def data_size(self):
        err, payload = self.feature(self.abi.FEATURE_GET | self.abi.FEATURE_MIG_DATA_SIZE, bytes(self._u64.size))
        return (err, -1) if err else (0, self._u64.unpack_from(payload)[0])

    def read(self, fd, n):
        if fd not in self._data_fds:
            return errno.EBADF, b""
        with self._guard("read"):
            try:
                return 0, os.read(fd, max(0, min(n, MAX_READ)))
            except OSError as e:
                return e.errno, b""

    def write(self, fd, data):
        if fd not in self._data_fds:
            return errno.EBADF, 0
        with self._guard("write"):
            try:
                return 0, os.write(fd, data)
            except OSError as e:
                return e.errno, 0

    def seek(self, fd):
        if fd not in self._data_fds:
            return errno.EBADF
        try:
            os.lseek(fd, 0, os.SEEK_SET)
            return 0
        except OSError as e:
            return e.errno

    def precopy_info(self, fd):
        if fd not in self._data_fds:
            return errno.EBADF, 0, 0
        info = self._precopy
        buf = bytearray(info.size)
        info.pack_into(buf, 0, info.size, 0, 0, 0)
        with self._guard("precopy_info"):
            err, _ = _ioctl(fd, self.abi.ioctl["VFIO_MIG_GET_PRECOPY_INFO"], buf)
        if err:
            return err, 0, 0
        _argsz, _flags, initial, dirty = info.unpack_from(buf)
        return 0, initial, dirty

    def close(self, fd):
        if fd not in self._data_fds:
            return errno.EBADF
        with self._guard("close"):
            try:
                os.close(fd)
                err = 0
            except OSError as e:
                err = e.errno
        self._data_fds.discard(fd)  # after: a racing call on it still reaches the kernel (EBADF there)
        return err

    # -- V1Device

    def _span_ok(self, offset, size):
        return self.protocol == 1 and 0 <= offset and 0 <= size and offset + size <= self.region_size

    def region_read(self, offset, size):
        """pread inside the v1 migration region; spans outside it -> EINVAL without a syscall."""
        if not self._span_ok(offset, size):
            return errno.EINVAL, b""
        with self._guard("region_read"):
            try:
                return 0, os.pread(self._fd, size, self._region_offset + offset)
            except OSError as e:
                return e.errno, b""

    def region_write(self, offset, data):
        """pwrite inside the v1 migration region; spans outside it -> EINVAL without a syscall."""
        if not self._span_ok(offset, len(data)):
            return errno.EINVAL, 0
        with self._guard("region_write"):
            try:
                return 0, os.pwrite(self._fd, data, self._region_offset + offset)
            except OSError as e:
                return e.errno, 0

    def field_read(self, offset, size):
        """(errno, value) of one header field read with its native width, little endian (value None
        on failure or a short read)."""
        err, raw = self.region_read(offset, size)
        return err, (int.from_bytes(raw, "little") if not err and len(raw) == size else None)

    def field_write(self, offset, size, value):
        """errno of one header field write with its native width (``value`` cut to it)."""
        return self.region_write(offset, (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little"))[0]


def open_group_device(abi, name, group, guard=None, shared=None):
    """Open ``name`` (mdev UUID or PCI address) of IOMMU group ``group`` (legacy API:
    container, group, SET_CONTAINER, SET_IOMMU type1v2 else type1, GET_DEVICE_FD).

    ``shared`` (a dict) lets two devices of one group share its container and group fds."""
    io = abi.ioctl
    fds = []
    try:
        if shared is not None and group in shared:
            container, group_fd = shared[group]
        else:
            container = os.open("/dev/vfio/vfio", os.O_RDWR | os.O_CLOEXEC)
            fds.append(container)
            err, version = _ioctl(container, io["VFIO_GET_API_VERSION"])
            _checked("VFIO_GET_API_VERSION", err)
            if version != abi.VFIO_API_VERSION:
                raise OpenError("VFIO API version %d, expected %d" % (version, abi.VFIO_API_VERSION))
            group_fd = os.open("/dev/vfio/%d" % group, os.O_RDWR | os.O_CLOEXEC)
            fds.append(group_fd)
            status = abi.structs["vfio_group_status"]
            buf = bytearray(status.size)
            status.pack_into(buf, 0, status.size, 0)
            _checked("VFIO_GROUP_GET_STATUS", _ioctl(group_fd, io["VFIO_GROUP_GET_STATUS"], buf)[0])
            if not status.unpack_from(buf)[1] & abi.GROUP_FLAGS_VIABLE:
                raise OpenError("group %d is not viable (a device in it is bound to a host driver)" % group)
            arg = bytearray(struct.pack("<i", container))
            _checked("VFIO_GROUP_SET_CONTAINER", _ioctl(group_fd, io["VFIO_GROUP_SET_CONTAINER"], arg)[0])
            # mdev groups are emulated; type1 (v2 first) backs them without a hardware IOMMU.
            err = errno.ENODEV
            for iommu in (abi.VFIO_TYPE1v2_IOMMU, abi.VFIO_TYPE1_IOMMU):
                err, _ = _ioctl(container, io["VFIO_SET_IOMMU"], iommu)
                if not err:
                    break
            _checked("VFIO_SET_IOMMU", err)
            if shared is not None:
                shared[group] = (container, group_fd)
        def opener():
            return _ioctl(group_fd, io["VFIO_GROUP_GET_DEVICE_FD"], bytearray(name.encode() + b"\0"))

        err, device_fd = opener()
        _checked("VFIO_GROUP_GET_DEVICE_FD " + name, err)
    except (OSError, OpenError) as e:
        for fd in reversed(fds):
            os.close(fd)
        if isinstance(e, OpenError):
            raise
        raise OpenError("opening %s in group %s: %s" % (name, group, e)) from e
    return VfioDevice(abi, name, device_fd, fds, guard, opener)


def open_cdev_device(abi, cdev, guard=None):
    """Open ``/dev/vfio/devices/<cdev>`` bound to a new iommufd (BIND_IOMMUFD; no IOAS is
    attached: the migration protocol does no DMA). Needs CONFIG_IOMMUFD and VFIO_DEVICE_CDEV."""
    path = cdev if cdev.startswith("/") else "/dev/vfio/devices/" + cdev
    device_fd = iommufd = -1
    try:
        device_fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        iommufd = os.open("/dev/iommu", os.O_RDWR | os.O_CLOEXEC)
        bind = abi.structs["vfio_device_bind_iommufd"]
        buf = bytearray(bind.size)
        bind.pack_into(buf, 0, bind.size, 0, iommufd, 0)
        _checked("VFIO_DEVICE_BIND_IOMMUFD " + path, _ioctl(device_fd, abi.ioctl["VFIO_DEVICE_BIND_IOMMUFD"], buf)[0])
    except (OSError, OpenError) as e:
        for fd in (device_fd, iommufd):
            if fd >= 0:
                os.close(fd)
        if isinstance(e, OpenError):
            raise
        raise OpenError("opening %s: %s" % (path, e)) from e
    def opener():
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except OSError as e:
            return e.errno, -1
        again = bytearray(bind.size)
        bind.pack_into(again, 0, bind.size, 0, iommufd, 0)
        err = _ioctl(fd, abi.ioctl["VFIO_DEVICE_BIND_IOMMUFD"], again)[0]
        if err:
            os.close(fd)
            return err, -1
        return 0, fd

    return VfioDevice(abi, os.path.basename(path), device_fd, [iommufd], guard, opener)


# ----------------------------------------------------------------------------- the reproducer
#
# A finding's claim is a check: a test evaluated on the device's answer at the finding step.
# The fuzzer's oracle attaches it to every finding it makes (fuzz.kinds); the reproducers
# (this replay and harness/runtime.c) evaluate it. An answer is a dict of what the step saw.

CHECKS = {
    "ok": "the call succeeded",
    "failed": "the call failed",
    "errno": "the call failed with this errno",
    "state_not": "the state read back is not this one",
    "state_not_in": "the call failed and left a state outside this set",
    "fd": "a data_fd was returned",
    "no_fd": "the call succeeded without returning a data_fd",
    "get_failed": "reading the state back failed",
    "longer_than": "a read returned more bytes than this",
    "value_nonzero": "the field read back non-zero",
    "stalled": "a write returned 0 bytes without an error",
    "hang": "the call never returned, or the stream never ended",
    "precopy_overrun": "more bytes were readable than PRECOPY_INFO announced",
    "initial_grew": "PRECOPY_INFO initial_bytes grew",
    "data_after_end": "data came after the end of the stream",
    "window_outside": "the v1 data window lies outside the region",
    "exception": "the call raised an exception (a simulated device only)",
    "not_entered": "a byte the device handed out never entered it through the program",
    "kernel_address": "bytes with the shape of a kernel address the program never wrote",
    "value_changed": "a read-only field changed when it was written",
    "pending_grew": "pending_bytes grew in stop-and-copy",
    "race_outcome_not_in": "two racing calls gave results, and left a state, of no serial order of the two",
    "state_unknown": "the state read back is none of the protocol's (fewer than this many)",
}


def shows(check, answer):
    """Whether ``answer`` (a dict, or None for a skipped step) shows the defect ``check`` claims."""
    test, arg = check
    if answer is None:
        return False
    err = answer.get("err", 0)
    if test == "ok":
        return err == 0
    if test == "failed":
        return bool(err)
    if test == "errno":
        return err == arg
    if test == "state_not":
        return answer.get("state") != arg
    if test == "state_unknown":
        return not answer.get("gerr") and answer.get("state") is not None and not 0 <= answer["state"] < arg
    if test == "state_not_in":
        return bool(err) and answer.get("state") not in arg
    if test == "fd":
        return answer.get("fd", -1) >= 0
    if test == "no_fd":
        return err == 0 and answer.get("fd", -1) < 0
    if test == "get_failed":
        return bool(answer.get("gerr"))
    if test == "longer_than":
        return answer.get("len", 0) > arg
    if test == "value_nonzero":
        return bool(answer.get("value"))
    if test == "not_entered":
        index, idle = arg
        data = answer.get("data", b"")
        return not err and index < len(data) and data[index] not in answer.get("entered", ()) \
            and data[index] not in idle
    if test == "race_outcome_not_in":
        return answer.get("race_outcome") is not None and answer["race_outcome"] not in arg
    if test == "kernel_address":  # in a stream read (flagged where it came) or in a register read
        return bool(answer.get("kernel_address")) or (
            not err and bool(kernel_addresses(answer.get("data", b""), answer.get("entered", frozenset()))))
    return bool(answer.get(test))


def stream_leak(view, data, r):
    """Flag in ``r`` a kernel address in stream bytes just read (with the capture's last 7 before
    them, for windows across reads), as the fuzzer's oracle looks for them. Only flagged: the
    replay goes on reading where the fuzzer (a profile without stream checks) would."""
    if 0xFF in data and kernel_addresses(bytes(view.capture[-7:]) + data, view.entered):  # (an int: faster)
        r["kernel_address"] = True


class View:
    """What the replay knows about one device: its data_fds (newest last), the captured stream."""

    def __init__(self, dev, state):
        self.dev = dev
        self.fds = []
        self.saving = {}
        self.state = state
        self.armed = False  # a fault was armed on it (a simulated device)
        self.entered = set()  # byte values the program put into the device (registers, resume data)
        self.pending_last = -1  # pending_bytes last read in v1 stop-and-copy
        self.new_capture()

    def slot(self, index):
        return self.fds[-1 - index] if index < len(self.fds) else None

    def new_capture(self):
        self.capture = bytearray()
        self.ended = False
        self.pc_expect = self.pc_initial = -1


class Replay:
    """Runs a program's ops on opened devices, one answer dict per op (None: nothing to act on).

    The op names and arguments are those of migfuzz's text form; the device calls are the
    executor's, through the procedures above.

    Injected faults (the ``fault`` op) exist only in the simulator: a device with
    ``arm_fault(nth, kind)`` gets them, and ``clear_fault()`` after every op once armed
    (what the fuzzer's executor does after an op in which a fault fired); on any other
    device the op is skipped, and says so."""

    def __init__(self, abi, proto, devices):
        self.abi = abi
        self.proto = proto
        initial = abi.V2_RUNNING if proto == "v2" else abi.V1_RUNNING
        self.views = [View(d, initial) for d in devices]
        self.fields = {name: tuple(v) for name, v in abi.v1_fields.items()}

    def name(self, state):
        return self.abi.state_name(self.proto, state)

    @staticmethod
    def files(view):
        """The device's count of migration files, asked where the fuzzer's executor asks it (after
        a reset or a SET): no syscall on a real device (None), the simulator's own bookkeeping on a
        simulated one, so a defect that breaks it shows at the same step as in the fuzzer."""
        view.dev.live_files()

    def run_op(self, name, dev, args):
        handler = getattr(self, "%s_%s" % (self.proto, name), None) or getattr(self, "op_" + name)
        try:
            return handler(self.views[dev], args)
        finally:
            for view in self.views:
                if view.armed:
                    view.dev.clear_fault()

    # -- both protocols

    def op_activity(self, view, a):
        view.entered.update(view.dev.activity(a["seed"]) or b"")
        view.pc_expect = -1
        return {"err": 0, "text": "activity seed=%d" % a["seed"]}

    def op_fault(self, view, a):
        arm = getattr(view.dev, "arm_fault", None)
        if arm is None:
            return {"err": 0, "text": "fault injection needs the simulator: skipped"}
        arm(a["nth"], a["kind"])
        view.armed = hasattr(view.dev, "clear_fault")
        return {"err": 0, "text": "armed %s at internal step %d" % (a["kind"], a["nth"])}

    def op_mangle(self, view, a):
        if a["kind"] in FIELD_MANGLES:
            mangle(view.capture, a["kind"], a["off"], a["width"], a["value"], a["fix"], a.get("at", 0))
        else:
            mangle(view.capture, a["kind"], a["arg"])
        return {"err": 0, "text": "capture now %d bytes" % len(view.capture)}

    def op_reopen(self, view, a):
        err = view.dev.reopen()
        if self.proto == "v2":
            gerr, got = view.dev.get_state()
            view.state = self.abi.V2_RUNNING
        else:
            gerr, got = self._field(view.dev, "device_state")
            view.state = self.abi.V1_RUNNING
        self.files(view)
        view.fds = []
        view.saving = {}
        view.pending_last = view.pc_expect = view.pc_initial = -1
        return {"err": err, "gerr": gerr, "state": got,
                "text": "reopen -> %s; state %s" % (errname(err), self.name(got))}

    def op_rdreg(self, view, a):
        err, data = view.dev.reg_read(a["region"], a["off"], a["size"])
        return {"err": err, "data": data, "len": len(data), "entered": frozenset(view.entered),
                "text": "region %d +%#x: read %d -> %s %s" % (a["region"], a["off"], a["size"], errname(err),
                                                              data.hex())}

    def op_wrreg(self, view, a):
        data = (a["value"] & ((1 << (8 * a["size"])) - 1)).to_bytes(a["size"], "little")
        err, n = view.dev.reg_write(a["region"], a["off"], data)
        if not err:
            view.entered.update(data)
        return {"err": err, "len": n,
                "text": "region %d +%#x: write %s -> %s" % (a["region"], a["off"], data.hex(), errname(err))}

    def op_race(self, view, a):
        """Two calls at once (``run_race``); the answer carries the outcome the claim is judged on.
        The books (data_fds, capture, state) are kept as the calls' answers say, whatever their
        order was, except where the state read afterwards tells it: a SET whose state that is came
        last (its new data_fd is the newest, and outlives a racing reopen)."""
        v2 = self.proto == "v2"
        sides = []
        for kind, arg in ((a["x"], a["xarg"]), (a["y"], a["yarg"])):
            fd = -1
            if kind in RACE_FD_CALLS:
                fd = view.slot(arg) if v2 else None
                if fd is None:
                    return None
            sides.append((kind, arg, fd))
        dev, field, mask = view.dev, None if v2 else self.fields["device_state"], -1 if v2 else 7
        fa, fb = ((lambda k=k, g=g, f=f: race_call(dev, k, g, f, a["data"], field)) for k, g, f in sides)
        answers = run_race(dev, fa, fb, a["sched"])
        gerr, got = dev.get_state() if v2 else self._field(dev, "device_state")
        self.files(view)
        state = None if gerr or got is None or got < 0 else got & mask
        reopened = "reopen" in (sides[0][0], sides[1][0])
        if reopened:
            view.fds, view.saving = [], {}
        last = 0 if sides[0][0] == "set" and sides[0][1] == state else 1
        for i in (1 - last, last):
            kind, arg, fd = sides[i]
            err, value = answers[i]
            if kind == "close" and fd in view.fds:
                view.fds.remove(fd)
            elif kind == "set" and v2 and not err and value >= 0 and not (reopened and state != arg):
                view.fds.append(value)
                view.saving[value] = arg != self.abi.V2_RESUMING
                if view.saving[value]:
                    view.new_capture()
            elif kind == "read" and not err and value:
                view.capture += value
            elif kind == "write" and not err:
                view.entered.update(a["data"][:value])
        texts = [self._race_text(*sides[i], *answers[i], mask) for i in (0, 1)]
        view.pc_expect = -1
        if state is not None:
            view.state = state
        code = race_outcome(race_result(sides[0][0], answers[0], mask), race_result(sides[1][0], answers[1], mask),
                            state)
        return {"err": 0, "gerr": gerr, "state": state, "race_outcome": code,
                "text": "race: %s | %s; GET %s" % (texts[0], texts[1], self.name(state))}

    def _race_text(self, kind, arg, fd, err, value, mask):
        if kind == "set":
            return "SET %s -> %s, data_fd %d" % (self.name(arg), errname(err), value if value is not None else -1)
        if kind == "get":
            return "GET -> %s %s" % (errname(err), self.name(None if err or value is None else value & mask))
        if kind == "read":
            return "read fd %d -> %s, %d bytes" % (fd, errname(err), len(value))
        if kind == "write":
            return "write fd %d -> %s, %d" % (fd, errname(err), value)
        if kind in ("close", "precopy"):
            return "%s fd %d -> %s" % ("close" if kind == "close" else "PRECOPY_INFO", fd, errname(err))
        return "%s -> %s" % (kind, errname(err))

    # -- v2

    def v2_reset(self, view, a):
        err = view.dev.reset()
        gerr, got = view.dev.get_state()
        self.files(view)
        view.state = got if not gerr else view.state
        view.pc_expect = view.pc_initial = -1
        return {"err": err, "gerr": gerr, "state": got,
                "text": "reset -> %s; state %s" % (errname(err), self.name(got))}

    def v2_set(self, view, a):
        new = a["state"]
        err, fd = view.dev.set_state(new)
        gerr, got = view.dev.get_state()
        if err or fd >= 0 or got != view.state:
            self.files(view)
        if fd >= 0:
            view.fds.append(fd)
            view.saving[fd] = new != self.abi.V2_RESUMING
            if view.saving[fd]:
                view.new_capture()
        if not err or (not gerr and got != view.state):
            view.pc_expect = -1  # a SET that succeeds (or moves the device) ends what PRECOPY_INFO announced
        if not gerr:
            view.state = got
        return {"err": err, "fd": fd, "gerr": gerr, "state": got,
                "text": "SET %s -> %s, data_fd %d; GET %s" % (self.name(new), errname(err), fd, self.name(got))}

    def v2_get(self, view, a):
        err, got = view.dev.get_state()
        return {"err": err, "gerr": err, "state": got, "text": "GET -> %s %s" % (errname(err), self.name(got))}

    def _take(self, view, r, n, err, data):
        """Book one read's answer; True when it ends a drain (an error, the end, a defect seen)."""
        r["err"], r["len"] = err, len(data)
        r["total"] = r.get("total", 0) + len(data)
        if err:
            return err != errno.EINTR
        if data:
            if view.ended:
                r["data_after_end"] = True
                return True
            stream_leak(view, data, r)
            view.capture += data
            if view.pc_expect >= 0:
                view.pc_expect -= len(data)
                if view.pc_expect < 0:
                    r["precopy_overrun"] = True
                    return True
            return False
        if view.state == self.abi.V2_STOP_COPY and n > 0:
            view.ended = True  # read(fd, buf, 0) returning 0 is not the end of the stream
        return n > 0

    def v2_read(self, view, a):
        fd = view.slot(a["fd"])
        if fd is None:
            return None
        r = {}
        err, data = view.dev.read(fd, a["n"])
        self._take(view, r, a["n"], err, data)
        r["text"] = "read fd %d n=%d -> %s, %d bytes" % (fd, a["n"], errname(r["err"]), r["len"])
        return r

    def v2_drain(self, view, a):
        fd = view.slot(a["fd"])
        if fd is None:
            return None
        r = {"err": 0, "len": 0}
        if not read_to_end(view.dev, fd, lambda err, data: self._take(view, r, DRAIN_CHUNK, err, data)):
            r["hang"] = True
        r["text"] = "drain fd %d -> %d bytes, then %s%s" % (
            fd, r.get("total", 0), errname(r["err"]) if r["err"] else "end",
            " (the stream never ended)" if r.get("hang") else "")
        return r

    def v2_write(self, view, a):
        fd = view.slot(a["fd"])
        if fd is None:
            return None
        err, n = view.dev.write(fd, a["data"])
        if not err:
            view.entered.update(a["data"][:n])
        return {"err": err, "len": n, "text": "write fd %d %d bytes -> %s, %d" % (fd, len(a["data"]), errname(err), n)}

    def v2_close(self, view, a):
        fd = view.slot(a["fd"])
        if fd is None:
            return None
        err = view.dev.close(fd)
        view.fds.remove(fd)
        return {"err": err, "text": "close fd %d -> %s" % (fd, errname(err))}

    def v2_seek(self, view, a):
        fd = view.slot(a["fd"])
        if fd is None:
            return None
        err = view.dev.seek(fd)
        return {"err": err, "text": "lseek fd %d -> %s" % (fd, errname(err))}

    def v2_precopy(self, view, a):
        fd = view.slot(a["fd"])
        if fd is None:
            return None
        err, initial, dirty = view.dev.precopy_info(fd)
        r = {"err": err, "text": "PRECOPY_INFO fd %d -> %s, initial %d, dirty %d" % (fd, errname(err), initial, dirty)}
        if not err:
            if 0 <= view.pc_initial < initial:
                r["initial_grew"] = True
            view.pc_initial = initial
            view.pc_expect = initial + dirty
        return r

    def v2_datasize(self, view, a):
        err, size = view.dev.data_size()
        return {"err": err, "text": "MIG_DATA_SIZE -> %s, %d" % (errname(err), size)}

    def v2_feature(self, view, a):
        payload = self.abi.structs["vfio_device_feature_mig_state"].pack(max(view.state, 0) & 0xFFFFFFFF, -1)
        err, _ = view.dev.feature(a["flags"], payload, a["argsz"])
        return {"err": err, "text": "FEATURE flags %#x argsz %d -> %s" % (a["flags"], a["argsz"], errname(err))}

    def v2_transfer(self, view, a):
        dst = self.views[a["dst"]]
        fd = dst.slot(0)
        data = bytes(view.capture)
        if fd is None or dst.saving.get(fd) or dst.state != self.abi.V2_RESUMING or not data:
            return None
        err, done, stalled = write_all(dst.dev, fd, data, a["seg"])
        dst.entered.update(data[:done])
        r = {"err": err, "len": done, "stalled": stalled}
        r["text"] = "transfer of %d bytes -> %s after %d bytes%s" % (
            len(data), errname(err), done, " (a write made no progress)" if stalled else "")
        return r

    # -- v1

    def _field(self, dev, name):
        return dev.field_read(*self.fields[name])

    def v1_reset(self, view, a):
        err = view.dev.reset()
        gerr, got = self._field(view.dev, "device_state")
        self.files(view)
        view.state = self.abi.V1_RUNNING
        view.new_capture()
        return {"err": err, "gerr": gerr, "state": got,
                "text": "reset -> %s; device_state %s" % (errname(err), self.name(got))}

    def v1_set(self, view, a):
        value = a["value"] & 0xFFFFFFFF
        cur = view.state
        err = view.dev.field_write(*self.fields["device_state"], value)
        gerr, got = self._field(view.dev, "device_state")
        self.files(view)
        if not err:
            new = value & 7
            saving = self.abi.v1_saving_states
            if new in saving and (cur not in saving or (new & self.abi.V1_RUNNING and not cur & self.abi.V1_RUNNING)):
                view.new_capture()
        if got is not None:
            if got & 7 != view.state:
                view.pending_last = -1
            view.state = got & 7
        return {"err": err, "gerr": gerr if gerr else (errno.EIO if got is None else 0),
                "state": None if got is None else got & 7,
                "text": "device_state := %#x -> %s; reads %s" % (value, errname(err), self.name(got))}

    def v1_get(self, view, a):
        err, got = self._field(view.dev, "device_state")
        return {"err": err, "gerr": err, "state": got, "text": "device_state -> %s %s" % (errname(err), self.name(got))}

    def v1_rd(self, view, a):
        name = a["field"]
        if name == "device_state":
            return self.v1_get(view, a)
        err, value = self._field(view.dev, name)
        r = {"err": err, "value": value, "text": "%s -> %s %s" % (name, errname(err), value)}
        if name == "data_offset" and not err and value is not None and (
                value < self.abi.V1_HEADER_SIZE or value > view.dev.region_size):
            r["window_outside"] = True
        if name == "pending_bytes" and not err:
            self._pending(view, value, r)
        return r

    def v1_wr(self, view, a):
        name = a["field"]
        if name == "device_state":
            return self.v1_set(view, {"value": a["value"]})
        read_only = name in ("pending_bytes", "data_offset") or (
            name == "data_size" and view.state in self.abi.v1_saving_states)
        before = self._field(view.dev, name)[1] if read_only else None
        err = view.dev.field_write(*self.fields[name], a["value"])
        r = {"err": err, "text": "%s := %#x -> %s" % (name, a["value"], errname(err))}
        if name == "reserved":
            rerr, value = self._field(view.dev, "reserved")
            r["value"] = value if not rerr else 0
        elif read_only:
            _, after = self._field(view.dev, name)
            r["value_changed"] = not err and None not in (before, after) and after != before
        return r

    def _pending(self, view, pending, r):
        """Book a pending_bytes read (in a saving iteration or bare); True when it grew in stop-and-copy."""
        if pending is None or view.state != self.abi.V1_SAVING:
            return False
        if 0 <= view.pending_last < pending:
            r["pending_grew"] = True
            return True
        view.pending_last = pending
        return False

    def _iteration(self, view, r):
        """One saving iteration; True when it ends the drain."""
        stage, err, pending, offset, size, data = v1_save_iteration(
            view.dev, self.fields, view.state in self.abi.v1_saving_states)
        r["err"] = err
        if self._pending(view, pending, r):
            return True
        if stage == V1_DONE:
            if pending == 0 and view.state == self.abi.V1_SAVING:
                view.ended = True
            return True
        if stage not in (V1_MORE, V1_DATA):
            return True
        if offset < self.abi.V1_HEADER_SIZE or offset + size > view.dev.region_size:
            r["window_outside"] = True
            return True
        if stage == V1_DATA:
            return True
        if data and view.ended:
            r["data_after_end"] = True
            return True
        stream_leak(view, data, r)
        view.capture += data
        return False

    def v1_save(self, view, a):
        r = {}
        self._iteration(view, r)
        r["text"] = "save iteration -> %s: captured %d bytes" % (errname(r["err"]), len(view.capture))
        return r

    def v1_drain(self, view, a):
        r = {}
        for _ in range(DRAIN_LIMIT):
            if self._iteration(view, r):
                break
        else:
            r["hang"] = True
        r["text"] = "drain -> %s: captured %d bytes%s" % (errname(r["err"]), len(view.capture),
                                                         " (pending_bytes never reached 0)" if r.get("hang") else "")
        return r

    def v1_rdwin(self, view, a):
        err, offset = self._field(view.dev, "data_offset")
        if err or offset is None:
            return {"err": err or errno.EIO, "text": "data_offset -> %s" % errname(err)}
        err, data = view.dev.region_read(offset, a["n"])
        return {"err": err, "len": len(data), "text": "window read %d bytes -> %s" % (a["n"], errname(err))}

    def v1_wrwin(self, view, a):
        err, offset = self._field(view.dev, "data_offset")
        if err or offset is None:
            return {"err": err or errno.EIO, "text": "data_offset -> %s" % errname(err)}
        err, _ = view.dev.region_write(offset, a["data"])
        if not err:
            err = view.dev.field_write(*self.fields["data_size"], len(a["data"]))
        if not err:
            view.entered.update(a["data"])
        return {"err": err, "text": "window write %d bytes + data_size -> %s" % (len(a["data"]), errname(err))}

    def v1_transfer(self, view, a):
        dst = self.views[a["dst"]]
        data = bytes(view.capture)
        if dst.state != self.abi.V1_RESUMING or not data:
            return None
        for piece in segments(data, a["seg"]):
            while piece:
                err, offset, taken = v1_write_chunk(dst.dev, self.fields, piece, self.abi.V1_HEADER_SIZE)
                if err == errno.EINTR:
                    continue
                if err:
                    return {"err": err, "text": "transfer chunk -> %s" % errname(err)}
                if not taken:
                    return {"err": 0, "window_outside": True, "text": "data_offset %#x outside the region" % offset}
                dst.entered.update(piece[:taken])
                piece = piece[taken:]
        return {"err": 0, "text": "transferred %d bytes" % len(data)}


def replay(abi, program, claim, devices, out=print, timeout=10.0):
    """Replay ``program`` on opened ``devices`` up to the claim's step; the exit code says
    whether the claimed defect showed up (EXIT_FINDING), did not (EXIT_OK) or cannot be told
    (EXIT_INCONCLUSIVE: the claim needs the simulator, or a different problem happened)."""
    rep = Replay(abi, program["proto"], devices)
    step_now = [None, 0.0]
    stop = threading.Event()
    check = tuple(claim["check"]) if claim.get("check") and claim["check"][0] is not None else None
    hang_claimed = check is not None and check[0] == "hang"

    def watchdog():
        while not stop.wait(0.05):
            step, since = step_now
            if step is not None and time.monotonic() - since > timeout:
                mine = step == claim["step"] and hang_claimed
                out("       no return after %g s: the call hangs" % timeout)
                out("REPRODUCED: %s at step %d" % (claim["kind"], step) if mine
                    else "a different problem: a hang at step %d" % step)
                sys.stdout.flush()
                os._exit(EXIT_FINDING if mine else EXIT_INCONCLUSIVE)

    threading.Thread(target=watchdog, daemon=True).start()
    answer = None
    try:
        for step, (name, dev, args, text) in enumerate(program["ops"]):
            out("[%2d] %s" % (step, text))
            step_now[:] = [step, time.monotonic()]
            try:
                answer = rep.run_op(name, dev, args)
            except Exception:  # noqa: BLE001 - a device answers with errno values; anything else is news
                step_now[0] = None
                out("       exception:\n" + traceback.format_exc().rstrip())
                if step == claim["step"] and check is not None and check[0] == "exception":
                    out("REPRODUCED: %s at step %d" % (claim["kind"], step))
                    return EXIT_FINDING
                out("a different problem: an exception at step %d" % step)
                return EXIT_INCONCLUSIVE
            step_now[0] = None
            out("       " + (answer["text"] if answer is not None else "skipped (nothing to act on)"))
            if step == claim["step"]:
                break
    finally:
        stop.set()
    if check is None:
        out("the recorded finding (%s: expected %s; observed %s) cannot be judged from user space;"
            " compare the output above with it" % (claim["kind"], claim["expected"], claim["observed"]))
        return EXIT_INCONCLUSIVE
    if shows(check, answer):
        out("REPRODUCED: %s at step %d (%s): %s; expected %s, recorded %s"
            % (claim["kind"], claim["step"], claim["op"], CHECKS.get(check[0], check[0]), claim["expected"],
               claim["observed"]))
        return EXIT_FINDING
    out("not reproduced: step %d behaved as the protocol requires (expected %s)" % (claim["step"], claim["expected"]))
    return EXIT_OK


def main(abi_spec, program, claim, argv=None, devices=None):
    """The stand-alone reproducer's command line: open the devices named, replay, exit code."""
    parser = argparse.ArgumentParser(description=sys.modules["__main__"].__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("devices", nargs="*", metavar="GROUP DEVICE",
                        help="IOMMU group number and device name (mdev UUID or PCI address), once per device")
    parser.add_argument("--cdev", action="append", default=[], metavar="vfioN",
                        help="use an iommufd cdev (/dev/vfio/devices/vfioN) instead; once per device")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds before a call counts as hung")
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        return EXIT_USAGE if e.code else EXIT_OK
    abi = Abi(abi_spec)
    proto = program["proto"]
    if devices is None:
        pairs = args.devices
        if len(pairs) % 2:
            print("give a GROUP and a DEVICE for every device", file=sys.stderr)
            return EXIT_USAGE
        have = len(pairs) // 2 + len(args.cdev)
        if have < program["devices"]:
            print("the program uses %d device(s); %d given" % (program["devices"], have), file=sys.stderr)
            return EXIT_USAGE
        devices = []
        shared = {}
        try:
            for i in range(0, len(pairs), 2):
                devices.append(open_group_device(abi, pairs[i + 1], int(pairs[i]), shared=shared))
            for cdev in args.cdev:
                devices.append(open_cdev_device(abi, cdev))
        except (OSError, OpenError, ValueError) as e:
            print("cannot open the device: %s" % e, file=sys.stderr)
            for d in devices:
                d.close_device()
            return EXIT_UNAVAILABLE
        for d in devices:
            if d.protocol != (2 if proto == "v2" else 1):
                print("%s does not speak migration protocol %s" % (d.name, proto), file=sys.stderr)
                for dd in devices:
                    dd.close_device()
                return EXIT_UNAVAILABLE
    try:
        return replay(abi, program, claim, devices, timeout=args.timeout)
    finally:
        for d in devices:
            close = getattr(d, "close_device", None)
            if close is not None:
                try:
                    close()
                except Exception:  # noqa: BLE001 - best effort cleanup
                    pass
