"""The Python side of harness/runtime.c built with -DMF_SHIM: a simulated kernel for the C reproducer.

The C runtime's device calls (``mf_sys_open``, ``ioctl``, ``read``, ``write``, ``pread``,
``pwrite``, ``close``, ``lseek``) arrive here over a socketpair (a second one for a race's second
thread) as fixed binary messages
(the layouts are ``struct mf_shim_req``/``mf_shim_rep`` in runtime.c) and are answered the
way the kernel's VFIO layer would answer them for simulated devices (``harness.sim``):
``/dev/vfio/vfio``, ``/dev/vfio/<group>``, ``/dev/vfio/devices/vfioN`` and ``/dev/iommu``
open; GET_REGION_INFO answers carry a capability chain for the v1 migration region;
VFIO_DEVICE_FEATURE, data_fd reads and writes and region accesses go to the device (the v1
migration region to ``region_read/region_write``, the register block in region 0 and the config
space in region 7 to ``reg_read/reg_write``); errors come back as errno values. Closing a
device's last fd and getting one again (GET_DEVICE_FD, or a cdev's BIND_IOMMUFD) is the device's
``reopen()``. The runtime's ``activity`` (a byte to the scratch register, then that byte ^ 0x5a to
the transmit register of BAR0) is the simulator's ``activity(byte)``, so both reproducers make a
device work the way the fuzzer does. A race (``mf_sys_race_begin``) pairs the next call of each
thread on its device and runs the two through the simulator's ``race`` at the race's schedule, as
the fuzzer's executor does. A call during which the device hangs (``DeviceHang``) is
never answered, as a hung kernel call never returns; one during which it raises is answered
with EIO and the ``raised`` flag.

Also here: :class:`ReproDevice`, a simulated device as the stand-alone Python reproducer
sees a real one (a hang blocks; faults can be armed, which only a simulator can do).
"""
from __future__ import annotations

import errno
import os
import socket
import struct
import subprocess
import tempfile
import threading
import time

from harness import uapi
from harness.base import DeviceHang
from harness.runtime import RACE_CALLS, Abi
from harness.sim import uart

REQ = struct.Struct("=IiQQII")  # call, fd, a, b, len, pad
REP = struct.Struct("=qiIII")   # ret, err, raised, len, pad
OPEN, IOCTL, IOCTL_VAL, READ, WRITE, PREAD, PWRITE, CLOSE, LSEEK, RACE, RACE_DONE = range(1, 12)

REGION_SHIFT = 40                         # vfio-pci: VFIO_PCI_INDEX_TO_OFFSET(index) = index << 40
MIGRATION_INDEX = uapi.VFIO_PCI_NUM_REGIONS  # the v1 migration region: the first device-specific index
REGION_SIZES = {uart.UART_REGION: uart.NREGS,  # BAR0: the 16550-like register block (what activity writes)
                uart.CONFIG_REGION: 0x100}     # the config space as a PCI function has it
ACTIVITY_XOR = 0x5A                       # the runtime's activity: SCR := v, then TX := v ^ 0x5a
GROUP = 7                                 # the IOMMU group the simulated devices are in
DEVICE_FLAGS = 0x3                        # VFIO_DEVICE_FLAGS_RESET | VFIO_DEVICE_FLAGS_PCI
U32 = struct.Struct("<I")

ABI = Abi(uapi.runtime_abi())
IOCTLS = {number: name for name, number in ABI.ioctl.items()}
_INFO = uapi.packer(uapi.vfio_region_info)
_CAP_TYPE = uapi.packer(uapi.vfio_region_info_cap_type)
_DEVICE_INFO = uapi.packer(uapi.vfio_device_info)
_GROUP_STATUS = uapi.packer(uapi.vfio_group_status)
_PRECOPY = uapi.packer(uapi.vfio_precopy_info)
_MIG_STATE = uapi.packer(uapi.vfio_device_feature_mig_state)
_HEADER = uapi.packer(uapi.vfio_device_feature)


class Hang(Exception):
    """The device did not return from this call: the kernel never answers it."""


class SimKernel:
    """Answers the C runtime's system calls for simulated devices (``names[i]`` is device i)."""

    def __init__(self, devices, names=("sim-dev0", "sim-dev1")):
        self.devices = list(devices)
        self.names = list(names)
        # fd -> ("container",) ("group",) ("cdev", i) ("iommu",) ("device", i) ("data", i, sim fd)
        self.fds: dict[int, tuple] = {}
        self.next_fd = 100
        self.calls = 0
        self.closed: set[int] = set()  # devices whose every fd was closed: getting one again reopens them
        self.scr = None  # (fd, old SCR value, value) of the last call if it was a 1-byte write to BAR0's SCR
        # Two connections (the C runtime's main thread and a race's second thread) served at once: one
        # call at a time, except the two calls of a race (see race_call).
        self.lock = threading.Condition()
        self.race: dict | None = None

    def new_fd(self, what: tuple) -> int:
        fd = self.next_fd
        self.next_fd += 1
        self.fds[fd] = what
        return fd

    # -- one call -> (ret, errno, bytes back)

    def call(self, call: int, fd: int, a: int, b: int, data: bytes, channel: int = 0) -> tuple[int, int, bytes]:
        with self.lock:
            if call == RACE:
                self.race = {"device": self.fds[fd][1], "sched": a, "kinds": (b & 0xFF, b >> 8 & 0xFF),
                             "parked": {}, "answers": {}, "done": set(), "closes": []}
                return 0, 0, b""
            if call == RACE_DONE:
                return self.race_done(channel)
            race = self.race
            if race is not None and channel not in race["done"] and channel not in race["parked"]:
                reopen = RACE_CALLS[race["kinds"][channel]] == "reopen"
                if reopen and call == CLOSE:  # a reopen's closes happen as it runs, in the race; the
                    race["closes"].append((fd, self.fds.get(fd)))  # other side is in its call by then
                    while 1 - channel not in race["parked"] and 1 - channel not in race["done"]:
                        self.lock.wait()
                    return 0, 0, b""
                if self.races_on(race, channel, call, fd, a):
                    what = self.fds.get(fd)
                    if reopen:
                        return self.race_call(channel, lambda: self.reopen_call(race, call, fd, a, b, data, what))
                    return self.race_call(channel, lambda: self.dispatch(call, fd, a, b, data, what))
            return self.dispatch(call, fd, a, b, data)

    def reopen_call(self, race: dict, call: int, fd: int, a: int, b: int, data: bytes, what):
        """A racing reopen: the closes the C runtime made before it, then getting the device fd again."""
        for closed, was in race["closes"]:
            if was is not None and closed in self.fds:
                self.close(closed, was, 0, 0, b"")
        return self.dispatch(call, fd, a, b, data, what)

    def races_on(self, race: dict, channel: int, call: int, fd: int, request: int) -> bool:
        """Whether this is the call of ``channel``'s side the race pairs: for a reopen (several system
        calls), getting the device fd again (the simulator's reopen); else its first on the device."""
        if RACE_CALLS[race["kinds"][channel]] == "reopen":
            return call == IOCTL and IOCTLS.get(request) in ("VFIO_GROUP_GET_DEVICE_FD", "VFIO_DEVICE_BIND_IOMMUFD")
        what = self.fds.get(fd)
        return what is not None and len(what) > 1 and what[1] == race["device"]

    def race_call(self, channel: int, thunk):
        """The call of one side of a race: parked until the other side's comes (then the device runs
        both at the race's schedule: the main thread's is call x, the other's y) or that side says it
        is done without one (then it runs alone)."""
        race = self.race
        race["parked"][channel] = thunk
        self.lock.notify_all()
        parked, answers = race["parked"], race["answers"]
        if len(parked) == 2:
            dev = self.devices[race["device"]]
            try:
                answers[0], answers[1] = dev.race(parked[0], parked[1], race["sched"])
            except Exception as e:  # noqa: BLE001 - both sides get it
                answers[0] = answers[1] = e
            self.lock.notify_all()
        elif 1 - channel in race["done"]:
            answers[channel] = thunk()
        while channel not in answers:
            self.lock.wait()
        answer = answers[channel]
        if isinstance(answer, Exception):
            raise answer
        return answer

    def race_done(self, channel: int):
        race = self.race
        if race is not None:
            race["done"].add(channel)
            self.lock.notify_all()
            other = 1 - channel
            if other in race["parked"] and other not in race["answers"]:  # its partner made no call
                race["answers"][other] = race["parked"][other]()
                self.lock.notify_all()
            if len(race["done"]) == 2:
                self.race = None
        return 0, 0, b""

    def dispatch(self, call: int, fd: int, a: int, b: int, data: bytes, what: tuple | None = None):
        """One call; ``what``: the file its fd named when the call was made (a racing call may run
        after the other thread closed it, as a real one holds its file)."""
        self.calls += 1
        scr, self.scr = self.scr, None
        if scr is not None and call == PWRITE and self.activity(scr, fd, b, data):
            return len(data), 0, b""
        if call == OPEN:
            return self.open(data.rstrip(b"\0").decode())
        what = what or self.fds.get(fd)
        if what is None:
            return -1, errno.EBADF, b""
        handler = {IOCTL: self.ioctl, IOCTL_VAL: self.ioctl_val, READ: self.read, WRITE: self.write,
                   PREAD: self.pread, PWRITE: self.pwrite, CLOSE: self.close, LSEEK: self.lseek}[call]
        return handler(fd, what, a, b, data)

    def activity(self, scr: tuple, fd: int, offset: int, data: bytes) -> bool:
        """Whether this write (right after a 1-byte write to SCR) completes the runtime's activity: then
        the SCR write is undone and the simulator's activity runs instead."""
        scr_fd, old, value = scr
        tx = uart.UART_REGION << REGION_SHIFT | uart.RX
        if fd != scr_fd or offset != tx or data != bytes([value ^ ACTIVITY_XOR]):
            return False
        dev = self.devices[self.fds[fd][1]]
        dev.reg_write(uart.UART_REGION, uart.SCR, old)
        dev.activity(value)  # the device works while it runs
        return True

    def get_device(self, index: int):
        """A device fd is got (GET_DEVICE_FD, BIND_IOMMUFD): a device closed before is opened again."""
        if index in self.closed:
            err = self.devices[index].reopen()  # first: a racing reopen may block (harness.sim.core.Blocked)
            self.closed.discard(index)
            if err:
                return -1, err, b""
        return 0, 0, b""

    def open(self, path: str):
        if path == "/dev/vfio/vfio":
            return self.new_fd(("container",)), 0, b""
        if path == "/dev/iommu":
            return self.new_fd(("iommu",)), 0, b""
        if path == f"/dev/vfio/{GROUP}":
            return self.new_fd(("group",)), 0, b""
        prefix = "/dev/vfio/devices/vfio"
        if path.startswith(prefix) and path[len(prefix):].isdigit() and int(path[len(prefix):]) < len(self.devices):
            return self.new_fd(("cdev", int(path[len(prefix):]))), 0, b""
        return -1, errno.ENOENT, b""

    def ioctl_val(self, fd, what, request, value, data):
        name = IOCTLS.get(request)
        if what[0] == "container" and name == "VFIO_GET_API_VERSION":
            return uapi.VFIO_API_VERSION, 0, b""
        if what[0] == "container" and name == "VFIO_SET_IOMMU":
            return (0, 0, b"") if value in (uapi.VFIO_TYPE1_IOMMU, uapi.VFIO_TYPE1v2_IOMMU) else (-1, errno.EINVAL, b"")
        if what[0] == "device" and name == "VFIO_DEVICE_RESET":
            return self.answer(self.devices[what[1]].reset(), 0)
        return -1, errno.ENOTTY, b""

    def ioctl(self, fd, what, request, _b, buf):
        name = IOCTLS.get(request)
        kind = what[0]
        if kind == "group" and name == "VFIO_GROUP_GET_STATUS":
            return 0, 0, _GROUP_STATUS.pack(len(buf), uapi.VFIO_GROUP_FLAGS_VIABLE)
        if kind == "group" and name == "VFIO_GROUP_SET_CONTAINER":
            ok = self.fds.get(struct.unpack_from("<i", buf)[0]) == ("container",)
            return (0, 0, buf) if ok else (-1, errno.EBADF, b"")
        if kind == "group" and name == "VFIO_GROUP_GET_DEVICE_FD":
            name = buf.split(b"\0", 1)[0].decode()
            if name not in self.names:
                return -1, errno.ENODEV, b""
            index = self.names.index(name)
            got = self.get_device(index)
            return (self.new_fd(("device", index)), 0, buf) if got[0] == 0 else got
        if kind == "cdev" and name == "VFIO_DEVICE_BIND_IOMMUFD":
            _argsz, _flags, iommufd, _devid = struct.unpack_from("<IIiI", buf)
            if self.fds.get(iommufd) != ("iommu",):
                return -1, errno.EBADF, b""
            got = self.get_device(what[1])
            if got[0] == 0:
                self.fds[fd] = ("device", what[1])
                return 0, 0, buf
            return got
        if kind == "device":
            dev = self.devices[what[1]]
            if name == "VFIO_DEVICE_GET_INFO":
                regions = MIGRATION_INDEX + 1 if hasattr(dev, "region_read") else MIGRATION_INDEX
                return 0, 0, _DEVICE_INFO.pack(len(buf), DEVICE_FLAGS, regions, 0, 0).ljust(len(buf), b"\0")
            if name == "VFIO_DEVICE_GET_REGION_INFO":
                return self.region_info(dev, buf)
            if name == "VFIO_DEVICE_FEATURE":
                return self.feature(what[1], dev, buf)
        if kind == "data" and name == "VFIO_MIG_GET_PRECOPY_INFO":
            err, initial, dirty = self.devices[what[1]].precopy_info(what[2])
            if err:
                return -1, err, b""
            return 0, 0, _PRECOPY.pack(len(buf), 0, initial, dirty)
        return -1, errno.ENOTTY, b""

    def region_info(self, dev, buf):
        argsz, _flags, index = struct.unpack_from("<III", buf)
        if argsz < _INFO.size:
            return -1, errno.EINVAL, b""
        regions = MIGRATION_INDEX + 1 if hasattr(dev, "region_read") else MIGRATION_INDEX
        if index >= regions:
            return -1, errno.EINVAL, b""
        rw = uapi.VFIO_REGION_INFO_FLAG_READ | uapi.VFIO_REGION_INFO_FLAG_WRITE
        offset = index << REGION_SHIFT
        if index != MIGRATION_INDEX:
            size = REGION_SIZES.get(index, 0)
            return 0, 0, _INFO.pack(argsz, rw if size else 0, index, 0, size, offset).ljust(len(buf), b"\0")
        # the migration region: a capability chain with its type, as vfio_info_add_capability builds it
        needed = _INFO.size + _CAP_TYPE.size
        flags = rw | uapi.VFIO_REGION_INFO_FLAG_CAPS
        if argsz < needed:  # the kernel says how much room the chain needs and leaves cap_offset 0
            return 0, 0, _INFO.pack(needed, flags, index, 0, dev.region_size, offset).ljust(len(buf), b"\0")
        cap = _CAP_TYPE.pack(uapi.VFIO_REGION_INFO_CAP_TYPE, 1, 0, uapi.VFIO_REGION_TYPE_MIGRATION,
                             uapi.VFIO_REGION_SUBTYPE_MIGRATION)
        out = _INFO.pack(argsz, flags, index, _INFO.size, dev.region_size, offset) + cap
        return 0, 0, out.ljust(len(buf), b"\0")

    def feature(self, index, dev, buf):
        if not hasattr(dev, "feature"):
            return -1, errno.ENOTTY, b""
        argsz, flags = _HEADER.unpack_from(buf)
        err, out = dev.feature(flags, bytes(buf[_HEADER.size:]), argsz)
        if err:
            return -1, err, b""
        is_set = flags & uapi.FEATURE_SET and not flags & uapi.FEATURE_PROBE
        if is_set and flags & uapi.FEATURE_MASK == uapi.FEATURE_MIG_DEVICE_STATE and len(out) >= _MIG_STATE.size:
            state, simfd = _MIG_STATE.unpack_from(out)
            if simfd >= 0:  # the new file gets a descriptor in the caller's table
                out = _MIG_STATE.pack(state, self.new_fd(("data", index, simfd))) + out[_MIG_STATE.size:]
        room = len(buf) - _HEADER.size
        return 0, 0, buf[:_HEADER.size] + out[:room] + buf[_HEADER.size + len(out[:room]):]

    def read(self, fd, what, n, _b, _data):
        if what[0] != "data":
            return -1, errno.EINVAL, b""
        err, data = self.devices[what[1]].read(what[2], n)
        return (-1, err, b"") if err else (len(data), 0, data)

    def write(self, fd, what, _a, _b, data):
        if what[0] != "data":
            return -1, errno.EINVAL, b""
        err, n = self.devices[what[1]].write(what[2], data)
        return (-1, err, b"") if err else (n, 0, b"")

    def _region(self, what, offset):
        if what[0] != "device":
            return None, None, 0
        return self.devices[what[1]], offset >> REGION_SHIFT, offset & ((1 << REGION_SHIFT) - 1)

    def pread(self, fd, what, n, offset, _data):
        dev, index, at = self._region(what, offset)
        if dev is None:
            return -1, errno.EINVAL, b""
        if index == MIGRATION_INDEX and hasattr(dev, "region_read"):
            err, data = dev.region_read(at, n)
        elif index in REGION_SIZES:
            err, data = dev.reg_read(index, at, n)
        else:
            return -1, errno.EINVAL, b""
        return (-1, err, b"") if err else (len(data), 0, data)

    def pwrite(self, fd, what, _a, offset, data):
        dev, index, at = self._region(what, offset)
        if dev is None:
            return -1, errno.EINVAL, b""
        if index == MIGRATION_INDEX and hasattr(dev, "region_read"):
            err, n = dev.region_write(at, data)
        elif index in REGION_SIZES:
            if (index, at, len(data)) == (uart.UART_REGION, uart.SCR, 1):  # activity's first write, maybe
                self.scr = (fd, dev.reg_read(index, at, 1)[1], data[0])
            err, n = dev.reg_write(index, at, data)
        else:
            return -1, errno.EINVAL, b""
        return (-1, err, b"") if err else (n, 0, b"")

    def close(self, fd, what, _a, _b, _data):
        self.fds.pop(fd, None)  # a racing close may come after the other thread's (its file is gone)
        if what[0] == "data":
            return self.answer(self.devices[what[1]].close(what[2]), 0)
        if what[0] == "device" and ("device", what[1]) not in self.fds.values():
            self.closed.add(what[1])
        return 0, 0, b""

    def lseek(self, fd, what, _offset, _whence, _data):
        if what[0] != "data":
            return 0, 0, b""
        return self.answer(self.devices[what[1]].seek(what[2]), 0)

    @staticmethod
    def answer(err: int, ret: int):
        return (-1, err, b"") if err else (ret, 0, b"")

    # -- the connection

    def serve(self, sock: socket.socket, channel: int = 0) -> None:
        """Answer calls until the client closes its end; a hung call gets no answer."""
        hung = False
        while True:
            head = _recv(sock, REQ.size)
            if head is None:
                return
            call, fd, a, b, n, _pad = REQ.unpack(head)
            data = _recv(sock, n) if n else b""
            if data is None:
                return
            if hung:
                continue
            raised = 0
            try:
                ret, err, out = self.call(call, fd, a, b, bytes(data), channel)
            except DeviceHang:
                hung = True
                continue
            except Exception:  # noqa: BLE001 - a simulated device raising: the client is told
                ret, err, out, raised = -1, errno.EIO, b"", 1
            sock.sendall(REP.pack(ret, err, raised, len(out), 0) + out)


def _recv(sock: socket.socket, n: int) -> bytes | None:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


def run_shimmed(binary, devices, args=(), names=("sim-dev0", "sim-dev1"), deadline: float = 60.0):
    """Run a C reproducer built with -DMF_SHIM against simulated devices: (exit code, output)."""
    kernel = SimKernel(devices, names)
    mine, theirs = socket.socketpair()
    mine2, theirs2 = socket.socketpair()  # a race's second thread
    with mine, mine2, tempfile.TemporaryFile() as out:
        with theirs, theirs2:
            env = dict(os.environ, MF_SHIM_FD=str(theirs.fileno()), MF_SHIM_FD2=str(theirs2.fileno()))
            proc = subprocess.Popen([str(binary), *args], stdout=out, stderr=subprocess.STDOUT,
                                    pass_fds=[theirs.fileno(), theirs2.fileno()], env=env)
        mine.settimeout(deadline)
        second = threading.Thread(target=kernel.serve, args=(mine2, 1), daemon=True)
        second.start()
        try:
            kernel.serve(mine)
            rc = proc.wait(timeout=deadline)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        second.join(deadline)
        out.seek(0)
        return rc, out.read().decode(errors="replace")


class ReproDevice:
    """A simulated device as the stand-alone Python reproducer sees a real one: a call that
    hangs blocks (the reproducer's watchdog must notice), and faults can be armed through the
    target (the executor's ``arm_fault``/``clear_fault``)."""

    def __init__(self, target, index: int):
        self._target = target
        self._index = index
        self._dev = target.devices[index]

    def arm_fault(self, nth: int, kind: str) -> None:
        self._target.clear_fault(self._index)
        self._target.arm_fault(self._index, nth, kind)

    def clear_fault(self) -> None:
        self._target.clear_fault(self._index)

    def __getattr__(self, name):
        attr = getattr(self._dev, name)
        if not callable(attr):
            return attr

        def call(*args):
            try:
                return attr(*args)
            except DeviceHang:
                time.sleep(3600)
                raise
        return call
