"""KCOV: the kernel code a program's device calls ran, as coverage feedback for the fuzzer.

The facts come from include/uapi/linux/kcov.h and Documentation/dev-tools/kcov.rst
(Linux 6.12): open ``/sys/kernel/debug/kcov``, ``KCOV_INIT_TRACE`` with the area's
size in words, mmap it (``size * 8`` bytes, shared), ``KCOV_ENABLE`` with
``KCOV_TRACE_PC`` or ``KCOV_TRACE_CMP`` for the calling thread. Word 0 of the area
counts what the kernel wrote after it: PCs, or 4-word comparison records
(:data:`kcov_cmp_record`). Python's ``mmap`` refuses the file (its size reads as 0),
so the area is mapped with libc's ``mmap``.

:class:`Kcov` is enabled once, for the thread that opened the target (the fuzzing
loop's), and stays enabled: around each device call the watchdog's guard zeroes
word 0 before the call and folds what the call covered after it
(:meth:`KernelCoverage.start`/:meth:`KernelCoverage.stop`), so a device call costs no
extra system call. Calls from other threads are not traced.

:class:`KernelCoverage` is what the fuzzing engine reads: per program the set of
kernel PCs covered (or, for one program in :data:`CMP_EVERY`, chosen by the
program's bytes so an input always gets the same mode, the comparisons the kernel
made), folded at the end of the program (:meth:`KernelCoverage.end_program`) into
counters of a range the engine reserved and bound (:meth:`KernelCoverage.bind`):
one counter per distinct PC, one per (comparison site, operand distance), the way
libFuzzer's value profile does. It also counts the distinct PCs seen so far, split
into VFIO core and driver code by module address ranges (``/proc/modules``) or, for
a built-in VFIO core, by symbol (``/proc/kallsyms``).
"""
from __future__ import annotations

import bisect
import collections
import ctypes
import fcntl
import os
import platform
import threading
import zlib
from collections.abc import Callable

from construct import Int64ul, Struct

from harness.uapi import IOC_ARCH, ioc_none

KCOV_PATH = "/sys/kernel/debug/kcov"
KCOV_TYPE = ord("c")
KCOV_TRACE_PC, KCOV_TRACE_CMP = 0, 1
_IOC_READ = 2  # the same value in the generic and the 3-bit-direction _IOC layouts


def ioc_read(type_: int, nr: int, size: int, arch: str = "generic") -> int:
    """The kernel's _IOR(type, nr, size) for an architecture's _IOC layout."""
    nrbits, typebits, sizebits, _dirbits, _none = IOC_ARCH[arch]
    return (_IOC_READ << (nrbits + typebits + sizebits)) | (size << (nrbits + typebits)) | (type_ << nrbits) | nr


KCOV_INIT_TRACE = ioc_read(KCOV_TYPE, 1, 8)   # _IOR('c', 1, unsigned long)
KCOV_ENABLE = ioc_none(KCOV_TYPE, 100)        # _IO('c', 100)
KCOV_DISABLE = ioc_none(KCOV_TYPE, 101)       # _IO('c', 101)

# One comparison in KCOV_TRACE_CMP mode (kcov.rst: "type, arg1, arg2, ip").
kcov_cmp_record = Struct("type" / Int64ul, "arg1" / Int64ul, "arg2" / Int64ul, "ip" / Int64ul)
CMP_RECORD_WORDS = kcov_cmp_record.sizeof() // 8

AREA_WORDS = 1 << 16      # 512 KiB: a device call covers a few hundred PCs
CMP_EVERY = 4             # one program in this many traces comparisons instead of PCs
CMP_MEMO = 1 << 18        # comparison records whose counter is remembered
# Modules of the VFIO core (anything else a device's driver may call is "other kernel").
VFIO_CORE_MODULES = frozenset({"vfio", "vfio_iommu_type1", "vfio_iommu_spapr_tce", "mdev", "vfio_pci_core",
                               "vfio_pci", "iommufd"})
# Symbol prefixes of a built-in VFIO core.
VFIO_CORE_SYMBOLS = ("vfio_", "mdev_", "iommufd_", "__vfio", "vfio_pci_")
# Where a device's sysfs node is, by the name the target knows it by.
SYSFS_DEVICES = ("/sys/bus/mdev/devices/{}", "/sys/bus/pci/devices/{}", "/sys/class/vfio-dev/{}/device")
START_KERNEL = 0xFFFFFFFF81000000  # x86-64 __START_KERNEL: _text without KASLR
AREAS = ("vfio", "driver")

_PROT_READ, _PROT_WRITE, _MAP_SHARED = 1, 2, 1
_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long)
_libc.munmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
_MAP_FAILED = ctypes.c_void_p(-1).value
_get_ident = threading.get_ident
_drain = collections.deque(maxlen=0).extend  # runs an iterator to its end, in C


class Kcov:
    """One KCOV handle and its mapped area (``words``: a memoryview of unsigned 64-bit words)."""

    def __init__(self, path: str = KCOV_PATH, size: int = AREA_WORDS) -> None:
        self.size = size
        self.mode: int | None = None
        self.fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        try:
            fcntl.ioctl(self.fd, KCOV_INIT_TRACE, size)
            addr = _libc.mmap(None, size * 8, _PROT_READ | _PROT_WRITE, _MAP_SHARED, self.fd, 0)
            if addr in (None, _MAP_FAILED):
                err = ctypes.get_errno()
                raise OSError(err, f"mmap of {path}: {os.strerror(err)}")
        except BaseException:
            os.close(self.fd)
            raise
        self._addr = addr
        self.words = memoryview((ctypes.c_uint64 * size).from_address(addr)).cast("B").cast("Q")

    def enable(self, mode: int) -> None:
        """Trace the calling thread in ``mode`` (KCOV_TRACE_PC or KCOV_TRACE_CMP)."""
        if self.mode is not None:
            fcntl.ioctl(self.fd, KCOV_DISABLE, 0)
            self.mode = None
        fcntl.ioctl(self.fd, KCOV_ENABLE, mode)
        self.mode = mode

    def close(self) -> None:
        if self.fd < 0:
            return
        if self.mode is not None:
            try:
                fcntl.ioctl(self.fd, KCOV_DISABLE, 0)
            except OSError:
                pass  # closing on another thread than the enabling one: the kernel disables on close
        self.words.release()
        _libc.munmap(self._addr, self.size * 8)
        os.close(self.fd)
        self.fd = -1


# ---------------------------------------------------------------------------- where a PC is


def driver_modules(names: list[str], patterns: tuple = SYSFS_DEVICES) -> set[str]:
    """The kernel modules of the drivers bound to the devices `names` (mdev UUID, PCI address, vfioN)."""
    out = set()
    for name in names:
        for pattern in patterns:
            link = os.path.join(pattern.format(name), "driver", "module")
            if os.path.islink(link):
                out.add(os.path.basename(os.readlink(link)))
                break
    return out


def kaslr_offset(kallsyms: str = "/proc/kallsyms") -> int:
    """What KCOV subtracts from every PC (``kaslr_offset()``, x86-64): _text's address minus its
    link-time address; 0 elsewhere or when the symbol cannot be read."""
    if platform.machine() != "x86_64":
        return 0
    try:
        with open(kallsyms) as f:
            for line in f:
                addr, _, name = line.split()[:3]
                if name == "_text":
                    value = int(addr, 16)
                    return value - START_KERNEL if value >= START_KERNEL else 0
    except (OSError, ValueError):
        pass
    return 0


class PcAreas:
    """Which part of the kernel a (KCOV) PC belongs to: "vfio" (the VFIO core), "driver" (the
    device's driver) or "" (the rest)."""

    def __init__(self, drivers: set[str], modules: str = "/proc/modules", kallsyms: str = "/proc/kallsyms") -> None:
        self.drivers = drivers
        offset = kaslr_offset(kallsyms)
        ranges = []
        loaded = set()
        try:
            with open(modules) as f:
                for line in f:
                    fields = line.split()
                    name, size, addr = fields[0], int(fields[1]), int(fields[-1], 16)
                    loaded.add(name)
                    area = "driver" if name in drivers else "vfio" if name in VFIO_CORE_MODULES else ""
                    if area and addr:  # 0: addresses hidden from this user
                        ranges.append((addr - offset, addr - offset + size, area))
        except (OSError, ValueError, IndexError):
            pass
        ranges.sort()
        self.starts = [r[0] for r in ranges]
        self.ranges = ranges
        # A VFIO core built into the kernel: its functions by name.
        self.symbols: list[int] = []
        self.symbol_areas: list[str] = []
        if "vfio" not in loaded and os.path.isdir("/sys/module/vfio"):
            self._load_symbols(kallsyms, offset)

    def _load_symbols(self, kallsyms: str, offset: int) -> None:
        try:
            with open(kallsyms) as f:
                rows = []
                for line in f:
                    fields = line.split()
                    if len(fields) == 3 and fields[1] in "tT":
                        rows.append((int(fields[0], 16) - offset, "vfio" if fields[2].startswith(VFIO_CORE_SYMBOLS)
                                     else ""))
        except (OSError, ValueError):
            return
        rows.sort()
        self.symbols = [r[0] for r in rows]
        self.symbol_areas = [r[1] for r in rows]

    def area(self, pc: int) -> str:
        i = bisect.bisect_right(self.starts, pc) - 1
        if i >= 0 and pc < self.ranges[i][1]:
            return self.ranges[i][2]
        j = bisect.bisect_right(self.symbols, pc) - 1
        return self.symbol_areas[j] if j >= 0 else ""


# ---------------------------------------------------------------------------- coverage of programs


class KernelCoverage:
    """Kernel coverage of the programs a target runs (see the module doc)."""

    def __init__(self, kcov: Kcov, areas: PcAreas, cmp_every: int = CMP_EVERY) -> None:
        self.kcov = kcov
        self.words = kcov.words
        self.areas = areas
        self.cmp_every = cmp_every
        self.owner = threading.get_ident()
        self.pcs: set[int] = set()          # this program's PCs
        self.cmps: set[tuple] = set()       # this program's comparison records
        self.slot: dict[int, int] = {}      # every PC seen -> its counter
        self.cmp_slot: dict[tuple, int] = {}  # comparison records seen (at most CMP_MEMO) -> their counter
        self.cmp_features: set[int] = set()
        self.seen = dict.fromkeys(AREAS, 0)
        self.programs = 0
        self._cmp_mode = False
        self._trace: Callable[[int], None] | None = None
        self._pc_base = self._pc_size = self._cmp_base = self._cmp_size = 0
        kcov.enable(KCOV_TRACE_PC)

    @classmethod
    def open(cls, device_names: list[str], path: str = KCOV_PATH) -> tuple[KernelCoverage | None, str]:
        """(coverage, description), or (None, why not) when this kernel has no usable KCOV."""
        if not os.path.exists(path):
            why = "this kernel has no KCOV" if os.path.ismount(os.path.dirname(path)) else \
                "debugfs is not mounted there, or this kernel has no KCOV"
            return None, f"{path} missing: {why}"
        try:
            kcov = Kcov(path)
        except OSError as e:
            return None, f"{path}: {e.strerror or e}"
        drivers = driver_modules(device_names)
        try:
            coverage = cls(kcov, PcAreas(drivers))
        except OSError as e:
            kcov.close()
            return None, f"{path}: KCOV_ENABLE: {e.strerror or e}"
        areas = coverage.areas
        split = "by module" if areas.ranges else "by symbol" if areas.symbols else "unknown"
        return coverage, f"KCOV on: driver {', '.join(sorted(drivers)) or 'unknown'}, VFIO core {split}"

    def bind(self, trace: Callable[[int], None], pc_base: int, pc_size: int, cmp_base: int, cmp_size: int) -> None:
        """Feed program coverage to ``trace(counter)``: PCs into [pc_base, pc_base + pc_size),
        comparison features into [cmp_base, cmp_base + cmp_size) (sizes: powers of two)."""
        self._trace = trace
        self._pc_base, self._pc_size, self._cmp_base, self._cmp_size = pc_base, pc_size, cmp_base, cmp_size
        self.slot = {pc: pc_base + (i & (pc_size - 1)) for i, pc in enumerate(self.slot)}
        self.cmp_slot.clear()

    # -- the hot path: around every device call (harness.kernel.vfio's guard)

    def start(self) -> None:
        if _get_ident() == self.owner:
            self.words[0] = 0

    def stop(self) -> None:
        if _get_ident() == self.owner:
            words = self.words
            n = words[0]
            if not n:
                return
            if self._cmp_mode:
                records = iter(words[1:1 + n * CMP_RECORD_WORDS])
                self.cmps.update(zip(records, records, records, records, strict=True))
            else:
                self.pcs.update(words[1:1 + n])

    # -- per program

    def begin_program(self, data: bytes | None) -> None:
        """A program starts (after its resets): forget what came before; trace comparisons for one
        program in ``cmp_every``, chosen by its bytes (``data``; None: PCs)."""
        self.pcs.clear()
        self.cmps.clear()
        cmp = data is not None and self.cmp_every > 0 and zlib.crc32(data) % self.cmp_every == 0
        mode = KCOV_TRACE_CMP if cmp else KCOV_TRACE_PC
        if mode != self.kcov.mode:
            self.kcov.enable(mode)
            self._cmp_mode = cmp

    def end_program(self) -> None:
        """Fold the program's coverage into the bound counters and the totals. Python code runs
        only for PCs and comparisons never seen before; the rest is iteration in C (under TCG a
        Python loop over a program's ~1000 PCs costs more than the program's device calls)."""
        self.programs += 1
        pcs, slot = self.pcs, self.slot
        new = pcs.difference(slot)
        if new:
            self._new_pcs(new)
        trace = self._trace
        if trace is None:
            return
        _drain(map(trace, map(slot.__getitem__, pcs)))
        cmps = self.cmps
        if cmps:
            fresh = cmps.difference(self.cmp_slot)
            if fresh:
                self._new_cmps(fresh)
            _drain(map(trace, map(self.cmp_slot.__getitem__, cmps)))

    def _new_pcs(self, pcs: set) -> None:
        slot, area_of, seen = self.slot, self.areas.area, self.seen
        mask = self._pc_size - 1  # -1 (no wrapping) while unbound
        for pc in pcs:
            slot[pc] = self._pc_base + (len(slot) & mask)
            area = area_of(pc)
            if area:
                seen[area] += 1

    def _new_cmps(self, records: set) -> None:
        """The counter of each new comparison record: its site and how many bits its operands differ
        in (libFuzzer's value profile), hashed into the comparison range."""
        cmp_slot = self.cmp_slot
        if len(cmp_slot) + len(records) > CMP_MEMO:  # operands vary without end: forget, recompute
            cmp_slot.clear()
            records = self.cmps
        mask = self._cmp_size - 1
        for record in records:
            _kind, arg1, arg2, ip = record
            feature = hash((ip, (arg1 ^ arg2).bit_count())) & mask
            cmp_slot[record] = self._cmp_base + feature
            self.cmp_features.add(feature)

    def stats(self) -> dict:
        """Distinct kernel PCs covered so far, and those of the VFIO core and of the driver."""
        return {"kernel_pcs": len(self.slot), "kernel_pcs_vfio": self.seen["vfio"],
                "kernel_pcs_driver": self.seen["driver"]}

    def close(self) -> None:
        self.kcov.close()
