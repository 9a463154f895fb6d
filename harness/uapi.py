"""Every VFIO migration uAPI layout and constant, declared once.

Source of the facts: include/uapi/linux/vfio.h (v2, Linux 5.18+) and the
5.8-5.17 header for the v1 migration region (``struct vfio_device_migration_info``
and the comment above it).

Layouts are construct ``Struct`` objects (used for building and parsing and
checked by the tests against the kernel's sizes and offsets).  Where a hot path
needs speed, :func:`packer` derives an equivalent ``struct.Struct`` from the
same declaration instead of declaring the layout a second time.
"""
from __future__ import annotations

import enum
import struct

from construct import (
    FormatField,
    Int16ul,
    Int32sl,
    Int32ul,
    Int64ul,
    Padding,
    Struct,
)

# --------------------------------------------------------------------------
# v1: the migration region (Linux 5.8 - 5.17)
# --------------------------------------------------------------------------

V1_STOP = 0
V1_RUNNING = 1 << 0
V1_SAVING = 1 << 1
V1_RESUMING = 1 << 2
V1_MASK = V1_RUNNING | V1_SAVING | V1_RESUMING
V1_ERROR = V1_SAVING | V1_RESUMING  # 110b: reported by the driver only

V1_STATE_NAMES = {
    0: "STOP", 1: "RUNNING", 2: "SAVING", 3: "SAVING|RUNNING", 4: "RESUMING",
    5: "RESUMING|RUNNING", 6: "ERROR", 7: "RESUMING|SAVING|RUNNING",
}
# States by what the device does in them (the comment above struct vfio_device_migration_info, 5.8-5.17).
V1_SAVING_STATES = frozenset({V1_SAVING, V1_SAVING | V1_RUNNING})
V1_STOPPED_STATES = frozenset({V1_STOP, V1_SAVING, V1_RESUMING, V1_ERROR})

# struct vfio_device_migration_info, at offset 0 of the region (32 bytes)
vfio_device_migration_info = Struct(
    "device_state" / Int32ul,
    "reserved" / Int32ul,
    "pending_bytes" / Int64ul,
    "data_offset" / Int64ul,
    "data_size" / Int64ul,
)

# Field name -> (offset, native width); fields may only be accessed this way.
V1_FIELDS = {
    "device_state": (0, 4),
    "reserved": (4, 4),
    "pending_bytes": (8, 8),
    "data_offset": (16, 8),
    "data_size": (24, 8),
}
V1_FIELD_NAMES = tuple(V1_FIELDS)
V1_HEADER_SIZE = vfio_device_migration_info.sizeof()

VFIO_REGION_TYPE_MIGRATION = 3  # renamed _DEPRECATED in 5.18
VFIO_REGION_SUBTYPE_MIGRATION = 1
VFIO_PCI_NUM_REGIONS = 9

VFIO_REGION_INFO_FLAG_READ = 1 << 0
VFIO_REGION_INFO_FLAG_WRITE = 1 << 1
VFIO_REGION_INFO_FLAG_MMAP = 1 << 2
VFIO_REGION_INFO_FLAG_CAPS = 1 << 3

VFIO_REGION_INFO_CAP_SPARSE_MMAP = 1
VFIO_REGION_INFO_CAP_TYPE = 2

vfio_region_info = Struct(
    "argsz" / Int32ul,
    "flags" / Int32ul,
    "index" / Int32ul,
    "cap_offset" / Int32ul,
    "size" / Int64ul,
    "offset" / Int64ul,
)

vfio_info_cap_header = Struct(
    "id" / Int16ul,
    "version" / Int16ul,
    "next" / Int32ul,
)

vfio_region_info_cap_type = Struct(
    "header" / vfio_info_cap_header,
    "type" / Int32ul,
    "subtype" / Int32ul,
)

vfio_region_sparse_mmap_area = Struct(
    "offset" / Int64ul,
    "size" / Int64ul,
)

# Followed by nr_areas vfio_region_sparse_mmap_area records.
vfio_region_info_cap_sparse_mmap = Struct(
    "header" / vfio_info_cap_header,
    "nr_areas" / Int32ul,
    "reserved" / Int32ul,
)

vfio_device_info = Struct(
    "argsz" / Int32ul,
    "flags" / Int32ul,
    "num_regions" / Int32ul,
    "num_irqs" / Int32ul,
    "cap_offset" / Int32ul,
    "pad" / Padding(4),
)

vfio_group_status = Struct(
    "argsz" / Int32ul,
    "flags" / Int32ul,
)
VFIO_GROUP_FLAGS_VIABLE = 1 << 0
VFIO_GROUP_FLAGS_CONTAINER_SET = 1 << 1

# --------------------------------------------------------------------------
# v2: VFIO_DEVICE_FEATURE and the migration FSM (Linux 5.18+)
# --------------------------------------------------------------------------


class MigState(enum.IntEnum):
    """enum vfio_device_mig_state."""

    ERROR = 0
    STOP = 1
    RUNNING = 2
    STOP_COPY = 3
    RESUMING = 4
    RUNNING_P2P = 5
    PRE_COPY = 6
    PRE_COPY_P2P = 7


VFIO_DEVICE_STATE_NR = 8
V2_STATE_NAMES = tuple(s.name for s in MigState)

# States by what the device does in them (enum vfio_device_mig_state comment): it runs (its
# internal state may change), or it is stopped (it must not change).
V2_RUNNING_STATES = frozenset({MigState.RUNNING, MigState.RUNNING_P2P, MigState.PRE_COPY, MigState.PRE_COPY_P2P})
V2_STOPPED_STATES = frozenset({MigState.STOP, MigState.STOP_COPY, MigState.RESUMING})


class MigFlag(enum.IntFlag):
    """VFIO_MIGRATION_* in vfio_device_feature_migration.flags."""

    STOP_COPY = 1 << 0
    P2P = 1 << 1
    PRE_COPY = 1 << 2


# The flag sets the uAPI defines (STOP_COPY is mandatory).
MIG_FLAG_SETS = (0x1, 0x3, 0x5, 0x7)

FEATURE_MASK = 0xFFFF
FEATURE_GET = 1 << 16
FEATURE_SET = 1 << 17
FEATURE_PROBE = 1 << 18

FEATURE_PCI_VF_TOKEN = 0
FEATURE_MIGRATION = 1
FEATURE_MIG_DEVICE_STATE = 2
FEATURE_LOW_POWER_ENTRY = 3
FEATURE_LOW_POWER_ENTRY_WITH_WAKEUP = 4
FEATURE_LOW_POWER_EXIT = 5
FEATURE_DMA_LOGGING_START = 6
FEATURE_DMA_LOGGING_STOP = 7
FEATURE_DMA_LOGGING_REPORT = 8
FEATURE_MIG_DATA_SIZE = 9
FEATURE_BUS_MASTER = 10
FEATURE_DMA_BUF = 11
FEATURE_MIG_PRECOPY_INFOV2 = 12

# struct vfio_device_feature header; the feature's payload follows at offset 8.
vfio_device_feature = Struct(
    "argsz" / Int32ul,
    "flags" / Int32ul,
)

vfio_device_feature_migration = Struct(
    "flags" / Int64ul,
)

vfio_device_feature_mig_state = Struct(
    "device_state" / Int32ul,
    "data_fd" / Int32sl,
)

vfio_device_feature_mig_data_size = Struct(
    "stop_copy_length" / Int64ul,
)

vfio_precopy_info = Struct(
    "argsz" / Int32ul,
    "flags" / Int32ul,
    "initial_bytes" / Int64ul,
    "dirty_bytes" / Int64ul,
)
VFIO_PRECOPY_INFO_REINIT = 1 << 0

vfio_device_feature_dma_logging_control = Struct(
    "page_size" / Int64ul,
    "num_ranges" / Int32ul,
    "reserved" / Int32ul,
    "ranges" / Int64ul,
)

vfio_device_feature_dma_logging_range = Struct(
    "iova" / Int64ul,
    "length" / Int64ul,
)

vfio_device_feature_dma_logging_report = Struct(
    "iova" / Int64ul,
    "length" / Int64ul,
    "page_size" / Int64ul,
    "bitmap" / Int64ul,
)

# iommufd cdev binding (VFIO_DEVICE_BIND_IOMMUFD)
vfio_device_bind_iommufd = Struct(
    "argsz" / Int32ul,
    "flags" / Int32ul,
    "iommufd" / Int32sl,
    "out_devid" / Int32ul,
)

vfio_device_attach_iommufd_pt = Struct(
    "argsz" / Int32ul,
    "flags" / Int32ul,
    "pt_id" / Int32ul,
)

# --------------------------------------------------------------------------
# ioctl numbers: all VFIO ioctls are _IO(';', 100 + n)
# --------------------------------------------------------------------------

VFIO_TYPE = ord(";")
VFIO_BASE = 100

# _IOC encodings: (nrbits, typebits, sizebits, dirbits, _IOC_NONE)
_IOC_GENERIC = (8, 8, 14, 2, 0)
# powerpc, mips, sparc, alpha: 13-bit size, 3-bit direction, _IOC_NONE = 1
_IOC_3BIT_DIR = (8, 8, 13, 3, 1)
IOC_ARCH = {
    "generic": _IOC_GENERIC, "x86_64": _IOC_GENERIC, "aarch64": _IOC_GENERIC,
    "riscv64": _IOC_GENERIC, "s390x": _IOC_GENERIC,
    "powerpc": _IOC_3BIT_DIR, "ppc64le": _IOC_3BIT_DIR, "mips": _IOC_3BIT_DIR,
    "sparc": _IOC_3BIT_DIR, "alpha": _IOC_3BIT_DIR,
}


def ioc_none(type_: int, nr: int, arch: str = "generic") -> int:
    """The kernel's _IO(type, nr) for an architecture's _IOC layout."""
    nrbits, typebits, sizebits, _dirbits, none = IOC_ARCH[arch]
    dirshift = nrbits + typebits + sizebits
    return (none << dirshift) | (type_ << nrbits) | nr


def vfio_ioctl(n: int, arch: str = "generic") -> int:
    """_IO(VFIO_TYPE, VFIO_BASE + n)."""
    return ioc_none(VFIO_TYPE, VFIO_BASE + n, arch)


# name -> n (VFIO_BASE offset).  Numbers are reused on different fd types.
VFIO_IOCTL_INDEX = {
    "VFIO_GET_API_VERSION": 0,
    "VFIO_CHECK_EXTENSION": 1,
    "VFIO_SET_IOMMU": 2,
    "VFIO_GROUP_GET_STATUS": 3,
    "VFIO_GROUP_SET_CONTAINER": 4,
    "VFIO_GROUP_UNSET_CONTAINER": 5,
    "VFIO_GROUP_GET_DEVICE_FD": 6,
    "VFIO_DEVICE_GET_INFO": 7,
    "VFIO_DEVICE_GET_REGION_INFO": 8,
    "VFIO_DEVICE_GET_IRQ_INFO": 9,
    "VFIO_DEVICE_SET_IRQS": 10,
    "VFIO_DEVICE_RESET": 11,
    "VFIO_DEVICE_GET_PCI_HOT_RESET_INFO": 12,
    "VFIO_IOMMU_GET_INFO": 12,
    "VFIO_DEVICE_PCI_HOT_RESET": 13,
    "VFIO_IOMMU_MAP_DMA": 13,
    "VFIO_IOMMU_UNMAP_DMA": 14,
    "VFIO_DEVICE_FEATURE": 17,
    "VFIO_IOMMU_DIRTY_PAGES": 17,
    "VFIO_DEVICE_BIND_IOMMUFD": 18,
    "VFIO_DEVICE_ATTACH_IOMMUFD_PT": 19,
    "VFIO_DEVICE_DETACH_IOMMUFD_PT": 20,
    "VFIO_MIG_GET_PRECOPY_INFO": 21,  # on the data_fd
}

VFIO_GET_API_VERSION = vfio_ioctl(0)
VFIO_CHECK_EXTENSION = vfio_ioctl(1)
VFIO_SET_IOMMU = vfio_ioctl(2)
VFIO_GROUP_GET_STATUS = vfio_ioctl(3)
VFIO_GROUP_SET_CONTAINER = vfio_ioctl(4)
VFIO_GROUP_UNSET_CONTAINER = vfio_ioctl(5)
VFIO_GROUP_GET_DEVICE_FD = vfio_ioctl(6)
VFIO_DEVICE_GET_INFO = vfio_ioctl(7)
VFIO_DEVICE_GET_REGION_INFO = vfio_ioctl(8)
VFIO_DEVICE_GET_IRQ_INFO = vfio_ioctl(9)
VFIO_DEVICE_SET_IRQS = vfio_ioctl(10)
VFIO_DEVICE_RESET = vfio_ioctl(11)
VFIO_DEVICE_FEATURE = vfio_ioctl(17)
VFIO_DEVICE_BIND_IOMMUFD = vfio_ioctl(18)
VFIO_DEVICE_ATTACH_IOMMUFD_PT = vfio_ioctl(19)
VFIO_DEVICE_DETACH_IOMMUFD_PT = vfio_ioctl(20)
VFIO_MIG_GET_PRECOPY_INFO = vfio_ioctl(21)

VFIO_API_VERSION = 0
VFIO_TYPE1_IOMMU = 1
VFIO_TYPE1v2_IOMMU = 3
VFIO_NOIOMMU_IOMMU = 8

# --------------------------------------------------------------------------
# Fast packing derived from the construct declarations
# --------------------------------------------------------------------------


def _format_of(con) -> str:
    """struct format characters equivalent to a construct Struct of fixed-size fields."""
    out = []
    for sub in con.subcons:
        out.append(_field_format(sub))
    return "".join(out)


def _field_format(sub) -> str:
    kind = type(sub).__name__
    if kind in ("Renamed", "Const"):
        return _field_format(sub.subcon)
    if isinstance(sub, FormatField):
        return sub.fmtstr[1:]
    if isinstance(sub, Struct):
        return _format_of(sub)
    if kind == "Padded":
        return f"{sub.sizeof()}x"
    if kind == "Bytes" and isinstance(sub.length, int):
        return f"{sub.length}s"
    if kind == "Array" and isinstance(sub.count, int):
        return _field_format(sub.subcon) * sub.count
    raise TypeError(f"cannot derive a struct format for {sub!r}")


def packer(con) -> struct.Struct:
    """A ``struct.Struct`` with exactly the layout of construct Struct ``con``.

    Derived, not declared again, so the two cannot drift apart; the tests
    check both agree on size and on every built byte."""
    fmt = "<" + _format_of(con)
    packed = struct.Struct(fmt)
    if packed.size != con.sizeof():
        raise TypeError(f"derived format {fmt} has size {packed.size}, construct says {con.sizeof()}")
    return packed




# --------------------------------------------------------------------------
# The layouts and constants harness/runtime.py (and the reproducers) work with
# --------------------------------------------------------------------------

# The structs the runtime packs, by their name here.
RUNTIME_STRUCTS = ("vfio_device_feature", "vfio_device_feature_migration", "vfio_device_feature_mig_state",
                   "vfio_precopy_info", "vfio_region_info", "vfio_info_cap_header", "vfio_region_info_cap_type",
                   "vfio_device_info", "vfio_group_status", "vfio_device_bind_iommufd")
RUNTIME_IOCTLS = ("VFIO_GET_API_VERSION", "VFIO_SET_IOMMU", "VFIO_GROUP_GET_STATUS", "VFIO_GROUP_SET_CONTAINER",
                  "VFIO_GROUP_GET_DEVICE_FD", "VFIO_DEVICE_GET_INFO", "VFIO_DEVICE_GET_REGION_INFO",
                  "VFIO_DEVICE_RESET", "VFIO_DEVICE_FEATURE", "VFIO_DEVICE_BIND_IOMMUFD", "VFIO_MIG_GET_PRECOPY_INFO")


def runtime_abi() -> dict:
    """Everything harness.runtime.Abi needs, as plain data (it is also written into reproducers)."""
    g = globals()
    return {
        "ioctls": {family: {name: vfio_ioctl(VFIO_IOCTL_INDEX[name], arch) for name in RUNTIME_IOCTLS}
                   for family, arch in (("generic", "generic"), ("three_bit_dir", "powerpc"))},
        "structs": {name: packer(g[name]).format for name in RUNTIME_STRUCTS},
        "consts": {
            "FEATURE_GET": FEATURE_GET, "FEATURE_SET": FEATURE_SET, "FEATURE_PROBE": FEATURE_PROBE,
            "FEATURE_MIGRATION": FEATURE_MIGRATION, "FEATURE_MIG_DEVICE_STATE": FEATURE_MIG_DEVICE_STATE,
            "FEATURE_MIG_DATA_SIZE": FEATURE_MIG_DATA_SIZE,
            "VFIO_API_VERSION": VFIO_API_VERSION, "VFIO_TYPE1_IOMMU": VFIO_TYPE1_IOMMU,
            "VFIO_TYPE1v2_IOMMU": VFIO_TYPE1v2_IOMMU, "GROUP_FLAGS_VIABLE": VFIO_GROUP_FLAGS_VIABLE,
            "REGION_INFO_FLAG_CAPS": VFIO_REGION_INFO_FLAG_CAPS, "REGION_INFO_CAP_TYPE": VFIO_REGION_INFO_CAP_TYPE,
            "REGION_TYPE_MIGRATION": VFIO_REGION_TYPE_MIGRATION,
            "REGION_SUBTYPE_MIGRATION": VFIO_REGION_SUBTYPE_MIGRATION, "PCI_NUM_REGIONS": VFIO_PCI_NUM_REGIONS,
            "V2_RUNNING": int(MigState.RUNNING), "V2_STOP_COPY": int(MigState.STOP_COPY),
            "V2_RESUMING": int(MigState.RESUMING), "V1_RUNNING": V1_RUNNING, "V1_SAVING": V1_SAVING,
            "V1_RESUMING": V1_RESUMING, "V1_HEADER_SIZE": V1_HEADER_SIZE,
            "v2_state_names": list(V2_STATE_NAMES),
            "v1_state_names": [V1_STATE_NAMES[i] for i in range(8)],
            "v2_running_states": sorted(int(s) for s in V2_RUNNING_STATES),
            "v1_saving_states": sorted(V1_SAVING_STATES),
            "v1_fields": {name: list(v) for name, v in V1_FIELDS.items()},
        },
    }
