"""The in-process simulated migratable device (v1 region or v2 data_fd).

``SimTarget`` holds two devices (a source and a destination, seeded
differently so a resume has something to change) and brings them back to
power-on state between programs; ``bug=NAME`` swaps in one behaviour from the
bug zoo (``bugs.py``) through the devices' seams; ``digest=False`` hides the
device's state digest, so it is judged only by what a real device shows (its
streams and its registers, through the ``sim`` profile).
"""
from __future__ import annotations

from harness.base import bookkeeping
from harness.profile import load_profile

from .bugs import BUGS, device_class
from .core import DeviceHang
from .v1 import REGION_SIZE

__all__ = ["BUGS", "DeviceHang", "SimTarget"]

NDEVICES = 2


class SimTarget:
    kind = "sim"
    has_digest = True
    validates_stream = True  # the stream carries lengths and a checksum
    supports_faults = True
    retains_data = False  # every program starts from freshly made devices

    def __init__(self, proto: str = "v2", flags: int = 0x7, bug: str | None = None, seed: int = 0,
                 digest: bool = True):
        cls = device_class(proto, bug)
        self.profile = load_profile("sim")
        # digest=False: judge the device only by what a real one shows (streams, registers)
        self.has_digest = digest
        self.validates_stream = cls.validates_stream  # a checksum: damage is refused, not loaded
        self.proto = proto
        self.flags = flags if proto == "v2" else 0
        self.bug = bug
        self.region_size = REGION_SIZE
        if proto == "v2":
            self.devices = [cls(flags, seed * NDEVICES + i + 1) for i in range(NDEVICES)]
        else:
            self.devices = [cls(seed * NDEVICES + i + 1) for i in range(NDEVICES)]

    @property
    def name(self) -> str:
        parts = [f"proto={self.proto}"]
        if self.proto == "v2":
            parts.append(f"flags={self.flags:#x}")
        if self.bug:
            parts.append(f"bug={self.bug}")
        if not self.has_digest:
            parts.append("digest=0")
        return "sim:" + ",".join(parts)

    @bookkeeping
    def fresh(self) -> None:
        for d in self.devices:
            d.restore_initial()

    def arm_fault(self, dev: int, nth: int, kind: str) -> None:
        self.devices[dev].counter.arm(nth, kind)

    @bookkeeping
    def fault_fired(self, dev: int) -> bool:
        """Whether an armed fault fired during the current op."""
        return self.devices[dev].counter.fired

    def clear_fault(self, dev: int) -> None:
        counter = self.devices[dev].counter
        counter.fired = counter.short = False

    def close(self) -> None:
        for d in self.devices:
            d.restore_initial()  # whatever a bug variant left behind (an error pointer as a file ...)
            d.close_device()
