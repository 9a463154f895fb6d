"""harness/uapi.py against include/uapi/linux/vfio.h (current, and 5.8-5.17 for the v1 region).

Every expected number below is transcribed from the kernel header (or measured
with sizeof() against the 6.12 header), not computed from the code under test.
"""
from __future__ import annotations

import struct

import construct
import pytest

from harness import uapi

# ---------------------------------------------------------------------------
# Layouts: struct name -> (size, [(field, offset, size, signed)])
# Nested fields are dotted ("header.id"); padding is listed with signed=None.
# ---------------------------------------------------------------------------

LAYOUTS = {
    # 5.8-5.17 header (32 bytes)
    "vfio_device_migration_info": (32, [
        ("device_state", 0, 4, False), ("reserved", 4, 4, False), ("pending_bytes", 8, 8, False),
        ("data_offset", 16, 8, False), ("data_size", 24, 8, False)]),
    # vfio.h (32 bytes)
    "vfio_region_info": (32, [
        ("argsz", 0, 4, False), ("flags", 4, 4, False), ("index", 8, 4, False), ("cap_offset", 12, 4, False),
        ("size", 16, 8, False), ("offset", 24, 8, False)]),
    # vfio.h: capability header {id u16 @0, version u16 @2, next u32 @4}
    "vfio_info_cap_header": (8, [("id", 0, 2, False), ("version", 2, 2, False), ("next", 4, 4, False)]),
    # vfio.h (16 bytes)
    "vfio_region_info_cap_type": (16, [
        ("header.id", 0, 2, False), ("header.version", 2, 2, False), ("header.next", 4, 4, False),
        ("type", 8, 4, False), ("subtype", 12, 4, False)]),
    # include/uapi/linux/vfio.h: struct vfio_region_sparse_mmap_area {__u64 offset; __u64 size;}
    "vfio_region_sparse_mmap_area": (16, [("offset", 0, 8, False), ("size", 8, 8, False)]),
    # vfio.h: struct vfio_region_info_cap_sparse_mmap {header; __u32 nr_areas; __u32 reserved; areas[]}
    "vfio_region_info_cap_sparse_mmap": (16, [
        ("header.id", 0, 2, False), ("header.version", 2, 2, False), ("header.next", 4, 4, False),
        ("nr_areas", 8, 4, False), ("reserved", 12, 4, False)]),
    # sizeof() on the 6.12 header: 24 bytes; vfio.h: argsz, flags, num_regions, num_irqs, cap_offset, pad
    "vfio_device_info": (24, [
        ("argsz", 0, 4, False), ("flags", 4, 4, False), ("num_regions", 8, 4, False), ("num_irqs", 12, 4, False),
        ("cap_offset", 16, 4, False), ("pad", 20, 4, None)]),
    # vfio.h: struct vfio_group_status {argsz; flags}
    "vfio_group_status": (8, [("argsz", 0, 4, False), ("flags", 4, 4, False)]),
    # vfio.h header (8 bytes; payload at @8)
    "vfio_device_feature": (8, [("argsz", 0, 4, False), ("flags", 4, 4, False)]),
    # vfio.h: the VFIO_DEVICE_FEATURE payloads
    "vfio_device_feature_migration": (8, [("flags", 0, 8, False)]),
    "vfio_device_feature_mig_state": (8, [("device_state", 0, 4, False), ("data_fd", 4, 4, True)]),
    "vfio_device_feature_mig_data_size": (8, [("stop_copy_length", 0, 8, False)]),
    "vfio_device_feature_dma_logging_control": (24, [
        ("page_size", 0, 8, False), ("num_ranges", 8, 4, False), ("reserved", 12, 4, False),
        ("ranges", 16, 8, False)]),
    "vfio_device_feature_dma_logging_range": (16, [("iova", 0, 8, False), ("length", 8, 8, False)]),
    "vfio_device_feature_dma_logging_report": (32, [
        ("iova", 0, 8, False), ("length", 8, 8, False), ("page_size", 16, 8, False), ("bitmap", 24, 8, False)]),
    "vfio_precopy_info": (24, [
        ("argsz", 0, 4, False), ("flags", 4, 4, False), ("initial_bytes", 8, 8, False),
        ("dirty_bytes", 16, 8, False)]),
    # vfio.h (6.6 layout): struct vfio_device_bind_iommufd {argsz; flags; __s32 iommufd; __u32 out_devid}
    "vfio_device_bind_iommufd": (16, [
        ("argsz", 0, 4, False), ("flags", 4, 4, False), ("iommufd", 8, 4, True), ("out_devid", 12, 4, False)]),
    # vfio.h (6.6 layout): struct vfio_device_attach_iommufd_pt {argsz; flags; pt_id}
    "vfio_device_attach_iommufd_pt": (12, [("argsz", 0, 4, False), ("flags", 4, 4, False), ("pt_id", 8, 4, False)]),
}

# Sizes measured with sizeof() against the 6.12 header (x86-64).
RIG_SIZES = {
    "vfio_device_feature": 8, "vfio_device_feature_mig_state": 8, "vfio_precopy_info": 24,
    "vfio_region_info": 32, "vfio_device_info": 24, "vfio_region_info_cap_type": 16,
    "vfio_device_migration_info": 32,
}


def _sample(index: int, size: int, signed: bool | None) -> int:
    """A value whose every byte is distinct and tied to the field (so misplacement shows)."""
    if signed:
        return -(0x0102 + index)  # negative: also checks signedness
    raw = bytes(((index + 1) * 0x10 + j + 1) & 0xFF for j in range(size))
    return int.from_bytes(raw, "little")


def _nested(fields: list) -> dict:
    out: dict = {}
    for i, (name, _off, size, signed) in enumerate(fields):
        if signed is None:
            continue
        node = out
        *parents, leaf = name.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = _sample(i, size, signed)
    return out


def _flat(fields: list) -> list:
    return [_sample(i, size, signed) for i, (_n, _o, size, signed) in enumerate(fields) if signed is not None]


def test_every_construct_layout_is_checked():
    declared = {name for name, v in vars(uapi).items() if isinstance(v, construct.Struct)}
    assert declared == set(LAYOUTS), "a layout was added or removed; add its kernel facts to LAYOUTS"


def test_layout_table_is_self_consistent():
    # The expected tables cover every byte exactly once (catches typos in the transcription).
    for name, (size, fields) in LAYOUTS.items():
        covered = []
        for _f, off, fsize, _s in fields:
            covered.extend(range(off, off + fsize))
        assert sorted(covered) == list(range(size)), name


@pytest.mark.parametrize("name", sorted(RIG_SIZES))
def test_rig_sizes(name):
    assert getattr(uapi, name).sizeof() == RIG_SIZES[name]


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_layout_size_and_field_offsets(name):
    con = getattr(uapi, name)
    size, fields = LAYOUTS[name]
    assert con.sizeof() == size
    built = con.build(_nested(fields))
    assert len(built) == size
    for i, (field, off, fsize, signed) in enumerate(fields):
        chunk = built[off:off + fsize]
        if signed is None:
            assert chunk == bytes(fsize), f"{name}.{field}: padding must build as zeros"
            continue
        want = _sample(i, fsize, signed).to_bytes(fsize, "little", signed=signed)
        assert chunk == want, f"{name}.{field} is not at offset {off} (width {fsize}, little endian)"
    # and parsing reads every field back from its offset
    parsed = con.parse(built)
    for i, (field, _off, fsize, signed) in enumerate(fields):
        if signed is None:
            continue
        node = parsed
        for part in field.split("."):
            node = node[part]
        assert node == _sample(i, fsize, signed), f"{name}.{field}"


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_packer_matches_construct(name):
    con = getattr(uapi, name)
    _size, fields = LAYOUTS[name]
    packed = uapi.packer(con)
    assert isinstance(packed, struct.Struct)
    assert packed.size == con.sizeof()
    assert packed.format.startswith("<"), "the uAPI is little endian on the targets migfuzz supports"
    values = _flat(fields)
    built = con.build(_nested(fields))
    assert packed.pack(*values) == built
    assert list(packed.unpack(built)) == values
    # extremes of every field too
    lows = [-(1 << (8 * s - 1)) if sg else 0 for (_n, _o, s, sg) in fields if sg is not None]
    highs = [(1 << (8 * s - 1)) - 1 if sg else (1 << (8 * s)) - 1 for (_n, _o, s, sg) in fields if sg is not None]
    for vals in (lows, highs):
        assert packed.pack(*vals) == con.build(_rebuild(fields, vals))


def _rebuild(fields, vals):
    out: dict = {}
    it = iter(vals)
    for name, _off, _size, signed in fields:
        if signed is None:
            continue
        node = out
        *parents, leaf = name.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = next(it)
    return out


def test_packer_refuses_variable_layouts():
    with pytest.raises(TypeError):
        uapi.packer(construct.Struct("n" / construct.Int8ul, "data" / construct.Bytes(lambda ctx: ctx.n)))
    with pytest.raises(TypeError):
        uapi.packer(construct.Struct("items" / construct.GreedyRange(construct.Int32ul)))


def test_packer_handles_arrays_consts_and_nesting():
    con = construct.Struct("magic" / construct.Const(b"AB"), "a" / construct.Array(3, construct.Int16ul),
                           "inner" / construct.Struct("x" / construct.Int8ul, "y" / construct.Int64sl))
    packed = uapi.packer(con)
    assert packed.pack(b"AB", 1, 2, 3, 7, -5) == con.build({"a": [1, 2, 3], "inner": {"x": 7, "y": -5}})


def test_v1_field_table_matches_region_header():
    # struct vfio_device_migration_info: name -> (offset, native width)
    assert uapi.V1_FIELDS == {
        "device_state": (0, 4), "reserved": (4, 4), "pending_bytes": (8, 8),
        "data_offset": (16, 8), "data_size": (24, 8),
    }
    assert uapi.V1_FIELD_NAMES == ("device_state", "reserved", "pending_bytes", "data_offset", "data_size")
    # the construct declaration agrees with the field table
    con = uapi.vfio_device_migration_info
    offset = 0
    for sub in con.subcons:
        assert uapi.V1_FIELDS[sub.name] == (offset, sub.sizeof())
        offset += sub.sizeof()


# ---------------------------------------------------------------------------
# ioctl numbers (_IO(VFIO_TYPE, VFIO_BASE + n) in vfio.h)
# ---------------------------------------------------------------------------

# n, generic value, powerpc/mips/sparc value, names
IOCTL_TABLE = [
    (100, 0x3b64, 0x20003b64, ("VFIO_GET_API_VERSION",)),
    (101, 0x3b65, 0x20003b65, ("VFIO_CHECK_EXTENSION",)),
    (102, 0x3b66, 0x20003b66, ("VFIO_SET_IOMMU",)),
    (103, 0x3b67, 0x20003b67, ("VFIO_GROUP_GET_STATUS",)),
    (104, 0x3b68, 0x20003b68, ("VFIO_GROUP_SET_CONTAINER",)),
    (105, 0x3b69, 0x20003b69, ("VFIO_GROUP_UNSET_CONTAINER",)),
    (106, 0x3b6a, 0x20003b6a, ("VFIO_GROUP_GET_DEVICE_FD",)),
    (107, 0x3b6b, 0x20003b6b, ("VFIO_DEVICE_GET_INFO",)),
    (108, 0x3b6c, 0x20003b6c, ("VFIO_DEVICE_GET_REGION_INFO",)),
    (109, 0x3b6d, 0x20003b6d, ("VFIO_DEVICE_GET_IRQ_INFO",)),
    (110, 0x3b6e, 0x20003b6e, ("VFIO_DEVICE_SET_IRQS",)),
    (111, 0x3b6f, 0x20003b6f, ("VFIO_DEVICE_RESET",)),
    (112, 0x3b70, 0x20003b70, ("VFIO_DEVICE_GET_PCI_HOT_RESET_INFO", "VFIO_IOMMU_GET_INFO")),
    (113, 0x3b71, 0x20003b71, ("VFIO_DEVICE_PCI_HOT_RESET", "VFIO_IOMMU_MAP_DMA")),
    (114, 0x3b72, 0x20003b72, ("VFIO_DEVICE_QUERY_GFX_PLANE", "VFIO_IOMMU_UNMAP_DMA")),
    (115, 0x3b73, 0x20003b73, ("VFIO_DEVICE_GET_GFX_DMABUF", "VFIO_IOMMU_ENABLE")),
    (116, 0x3b74, 0x20003b74, ("VFIO_DEVICE_IOEVENTFD", "VFIO_IOMMU_DISABLE")),
    (117, 0x3b75, 0x20003b75, ("VFIO_DEVICE_FEATURE", "VFIO_IOMMU_DIRTY_PAGES")),
    (118, 0x3b76, 0x20003b76, ("VFIO_DEVICE_BIND_IOMMUFD",)),
    (119, 0x3b77, 0x20003b77, ("VFIO_DEVICE_ATTACH_IOMMUFD_PT",)),
    (120, 0x3b78, 0x20003b78, ("VFIO_DEVICE_DETACH_IOMMUFD_PT",)),
    (121, 0x3b79, 0x20003b79, ("VFIO_MIG_GET_PRECOPY_INFO",)),
]
GENERIC_ARCHES = ("generic", "x86_64", "aarch64", "riscv64", "s390x")
THREE_BIT_DIR_ARCHES = ("powerpc", "ppc64le", "mips", "sparc", "alpha")


def test_ioctl_base():
    assert uapi.VFIO_TYPE == 0x3b == ord(";")
    assert uapi.VFIO_BASE == 100


@pytest.mark.parametrize("n,generic,ppc,names", IOCTL_TABLE)
def test_ioctl_numbers(n, generic, ppc, names):
    assert generic == 0x3b64 + (n - 100)  # the table itself
    assert ppc == generic + 0x20000000
    assert uapi.vfio_ioctl(n - 100) == generic
    assert uapi.ioc_none(0x3b, n) == generic
    for arch in GENERIC_ARCHES:
        assert uapi.vfio_ioctl(n - 100, arch) == generic, arch
    for arch in THREE_BIT_DIR_ARCHES:
        assert uapi.vfio_ioctl(n - 100, arch) == ppc, arch
    for name in names:
        if name in uapi.VFIO_IOCTL_INDEX:
            assert uapi.VFIO_IOCTL_INDEX[name] == n - 100, name
        if hasattr(uapi, name):
            assert getattr(uapi, name) == generic, name


def test_ioctl_index_names_are_all_in_the_table():
    by_name = {name: n - 100 for n, _g, _p, names in IOCTL_TABLE for name in names}
    for name, idx in uapi.VFIO_IOCTL_INDEX.items():
        assert by_name.get(name) == idx, name


def test_key_ioctl_constants():
    # verified against the 6.12 header on x86-64
    assert uapi.VFIO_DEVICE_FEATURE == 0x3b75
    assert uapi.VFIO_DEVICE_RESET == 0x3b6f
    assert uapi.VFIO_MIG_GET_PRECOPY_INFO == 0x3b79
    assert uapi.VFIO_DEVICE_GET_REGION_INFO == 0x3b6c
    assert uapi.VFIO_GROUP_GET_DEVICE_FD == 0x3b6a
    assert uapi.VFIO_GROUP_SET_CONTAINER == 0x3b68
    assert uapi.VFIO_SET_IOMMU == 0x3b66
    assert uapi.VFIO_TYPE1v2_IOMMU == 3


def test_unknown_arch_refused():
    with pytest.raises(KeyError):
        uapi.vfio_ioctl(0, "vax")


# ---------------------------------------------------------------------------
# Enumerations and constants (include/uapi/linux/vfio.h)
# ---------------------------------------------------------------------------


def test_mig_state_enum():
    assert {s.name: int(s) for s in uapi.MigState} == {
        "ERROR": 0, "STOP": 1, "RUNNING": 2, "STOP_COPY": 3, "RESUMING": 4,
        "RUNNING_P2P": 5, "PRE_COPY": 6, "PRE_COPY_P2P": 7,
    }
    assert uapi.VFIO_DEVICE_STATE_NR == 8


def test_mig_flags():
    assert int(uapi.MigFlag.STOP_COPY) == 1
    assert int(uapi.MigFlag.P2P) == 2
    assert int(uapi.MigFlag.PRE_COPY) == 4
    assert len(list(uapi.MigFlag)) == 3
    assert tuple(uapi.MIG_FLAG_SETS) == (0x1, 0x3, 0x5, 0x7)


def test_feature_constants():
    assert uapi.FEATURE_MASK == 0xFFFF
    assert uapi.FEATURE_GET == 0x10000
    assert uapi.FEATURE_SET == 0x20000
    assert uapi.FEATURE_PROBE == 0x40000
    indices = {
        "FEATURE_PCI_VF_TOKEN": 0, "FEATURE_MIGRATION": 1, "FEATURE_MIG_DEVICE_STATE": 2,
        "FEATURE_LOW_POWER_ENTRY": 3, "FEATURE_LOW_POWER_ENTRY_WITH_WAKEUP": 4, "FEATURE_LOW_POWER_EXIT": 5,
        "FEATURE_DMA_LOGGING_START": 6, "FEATURE_DMA_LOGGING_STOP": 7, "FEATURE_DMA_LOGGING_REPORT": 8,
        "FEATURE_MIG_DATA_SIZE": 9, "FEATURE_BUS_MASTER": 10, "FEATURE_DMA_BUF": 11,
        "FEATURE_MIG_PRECOPY_INFOV2": 12,
    }
    for name, value in indices.items():
        assert getattr(uapi, name) == value, name
    # a SET of VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE: flags 0x00020002
    assert uapi.FEATURE_SET | uapi.FEATURE_MIG_DEVICE_STATE == 0x00020002
    assert uapi.FEATURE_GET | uapi.FEATURE_MIGRATION == 0x10001
    assert uapi.FEATURE_GET | uapi.FEATURE_MIG_DATA_SIZE == 0x10009
    assert uapi.VFIO_PRECOPY_INFO_REINIT == 1


def test_feature_set_wire_example():
    # SET MIG_DEVICE_STATE: 16-byte buffer {argsz=16, flags=0x00020002, device_state=N, data_fd}
    hdr = uapi.packer(uapi.vfio_device_feature).pack(16, 0x00020002)
    body = uapi.packer(uapi.vfio_device_feature_mig_state).pack(6, -1)
    assert hdr + body == bytes.fromhex("10000000" "02000200" "06000000" "ffffffff")


def test_v1_constants():
    assert uapi.V1_STOP == 0
    assert uapi.V1_RUNNING == 1
    assert uapi.V1_SAVING == 2
    assert uapi.V1_RESUMING == 4
    assert uapi.V1_MASK == 7
    assert uapi.V1_ERROR == 6
    assert uapi.V1_STATE_NAMES[6] == "ERROR"
    assert set(uapi.V1_STATE_NAMES) == set(range(8))
    assert uapi.V1_STATE_NAMES[1] == "RUNNING" and uapi.V1_STATE_NAMES[0] == "STOP"


def test_region_constants():
    assert uapi.VFIO_REGION_TYPE_MIGRATION == 3
    assert uapi.VFIO_REGION_SUBTYPE_MIGRATION == 1
    assert uapi.VFIO_PCI_NUM_REGIONS == 9
    assert uapi.VFIO_REGION_INFO_CAP_TYPE == 2
    assert uapi.VFIO_REGION_INFO_CAP_SPARSE_MMAP == 1
    assert (uapi.VFIO_REGION_INFO_FLAG_READ, uapi.VFIO_REGION_INFO_FLAG_WRITE,
            uapi.VFIO_REGION_INFO_FLAG_MMAP, uapi.VFIO_REGION_INFO_FLAG_CAPS) == (1, 2, 4, 8)
