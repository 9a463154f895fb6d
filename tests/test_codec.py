"""Known-answer vectors for the binary program form (fuzz/codec.py).

Every byte string below is written by hand from the documented layout, not produced
by the code under test::

    byte 0          number of op records N (taken modulo MAX_OPS + 1)
    N x 8 bytes     records: code u8, dev u8, a u16, b u32 (little endian)
    the rest        payload; a write op's b is a reference  offset | length << 16

Both directions are checked (decode of hand bytes, encode to hand bytes), so a codec that
switched every record to big-endian (or any other layout) in both directions fails here even
though it would still round-trip.
"""
from __future__ import annotations

import pytest

from fuzz import codec
from fuzz.program import MAX_OPS, MAX_PAYLOAD, OPCODES, OPS, Op, Program, parse_program

V2 = OPCODES["v2"]
V1 = OPCODES["v1"]


def h(text: str) -> bytes:
    """Hex with spaces and line breaks for readability."""
    return bytes.fromhex("".join(text.split()))


def test_opcode_numbers_used_below():
    # the op tables' order is the wire format's code numbering
    assert [V2[n] for n in ("reset", "activity", "fault", "mangle", "transfer", "set", "get", "read", "drain",
                            "write", "close", "seek", "precopy", "datasize", "feature")] == list(range(15))
    assert [V1[n] for n in ("set", "get", "rd", "wr", "save", "drain", "rdwin", "wrwin")] == list(range(5, 13))
    assert codec.RECORD.size == 8


# -- a v2 vector ------------------------------------------------------------------

V2_TEXT = """migfuzz-program 1 v2
set 1 state=PRE_COPY
read 0 fd=2 n=300
write 1 fd=1 data=deadbeef
feature 0 argsz=4660 flags=0x40002
write 0 fd=0 data=beef
transfer 0 dst=1 seg=1100
fault 1 nth=3 kind=hwerror
"""
V2_BYTES = h("""
    07
    05 01 0000 06000000
    07 00 0200 2c010000
    09 01 0100 00000400
    0e 00 3412 02000400
    09 00 0000 02000200
    04 00 0100 4c040000
    02 01 0300 01000000
    deadbeef
""")
# set: a unused; read: a=fd 2, b=n 300 (0x12c); write: payload offset 0, length 4;
# feature: a=argsz 0x1234, b=flags 0x00040002; the second write reuses payload bytes 2..3 ("beef");
# transfer: a=dst 1, b=seg 1100 (0x44c); fault: a=nth 3, b=kind 1 (hwerror)


def test_v2_vector_decodes():
    assert codec.decode(V2_BYTES, "v2") == parse_program(V2_TEXT)


def test_v2_vector_encodes():
    assert codec.encode(parse_program(V2_TEXT)) == V2_BYTES


def test_v2_vector_fields():
    ops = codec.decode(V2_BYTES, "v2").ops
    assert ops[0] == Op(V2["set"], 1, 0, 6)
    assert ops[1] == Op(V2["read"], 0, 2, 300)
    assert ops[2] == Op(V2["write"], 1, 1, 0, b"\xde\xad\xbe\xef")
    assert ops[3] == Op(V2["feature"], 0, 0x1234, 0x40002)
    assert ops[4] == Op(V2["write"], 0, 0, 0, b"\xbe\xef")
    assert ops[5] == Op(V2["transfer"], 0, 1, 1100)
    assert ops[6] == Op(V2["fault"], 1, 3, 1)


# -- a v1 vector ------------------------------------------------------------------

V1_TEXT = """migfuzz-program 1 v1
wr 1 field=data_size value=0xdeadbeef
wrwin 0 data=0102
rdwin 0 n=64
set 0 value=0x80000003
rd 1 field=pending_bytes
"""
V1_BYTES = h("""
    05
    08 01 0400 efbeadde
    0c 00 0000 00000200
    0b 00 0000 40000000
    05 00 0000 03000080
    07 01 0200 00000000
    0102
""")


def test_v1_vector_both_directions():
    prog = parse_program(V1_TEXT)
    assert codec.decode(V1_BYTES, "v1") == prog
    assert codec.encode(prog) == V1_BYTES


# -- a mangle that sets a field: the kind in a's low 3 bits, width index at bit 3, fix at bit 5,
#    at in the high byte; the offset in b's low 15 bits, the value (17-bit two's complement) above

MANGLE_TEXT = """migfuzz-program 1 v2
mangle 0 kind=set off=227 width=1 value=0x30 fix=crc32 at=4
mangle 1 kind=add off=5 width=4 value=-1 fix=none
mangle 0 kind=flip arg=65535
"""
MANGLE_BYTES = h("""
    03
    03 00 2604 e3001800
    03 01 1700 0580ffff
    03 00 0200 ffff0000
""")
# set = 6: a = 6 | 0 << 3 (width 1) | 1 << 5 (crc32) | 4 << 8 = 0x0426; b = 227 | 0x30 << 15 = 0x001800e3
# add = 7: a = 7 | 2 << 3 (width 4) = 0x17; b = 5 | 0x1ffff << 15 = 0xffff8005; flip = 2: b = arg


def test_mangle_field_vector_both_directions():
    prog = parse_program(MANGLE_TEXT)
    assert codec.decode(MANGLE_BYTES, "v2") == prog
    assert codec.encode(prog) == MANGLE_BYTES
    assert prog.text() == MANGLE_TEXT


def test_unused_mangle_bits_are_dropped():
    # a flip's record with bits in the places of a field change's width, fix, at and value
    assert codec.decode(h("01 03 00 fa04 0580ffff"), "v2").ops == (Op(V2["mangle"], 0, 2, 0x8005),)
    # a set without a checksum keeps no `at`
    assert codec.decode(h("01 03 00 0604 e3001800"), "v2").ops == (Op(V2["mangle"], 0, 6, 0x1800E3),)


# -- races: x in a's bits 0-2, y in 3-5, sched in 6-9, xarg in 10-12, yarg in 13-15 (calls numbered as
#    harness.runtime.RACE_CALLS: reset 0, set 1, get 2, read 3, write 4, close 5, reopen 6, precopy 7);
#    b is the payload reference a racing write writes, as for write

RACE_TEXT = """migfuzz-program 1 v2
race 0 x=set xarg=3 y=reset yarg=0 sched=4 data=
race 1 x=write xarg=0 y=read yarg=1 sched=15 data=00ff
"""
RACE_BYTES = h("""
    02
    12 00 010d 00000000
    12 01 dc23 00000200
    00ff
""")
# race = 18 (after the 15 v2 ops and reopen, rdreg, wrreg); set | 3 << 10 | reset << 3 | 4 << 6 = 0x0d01;
# write 4 | read 3 << 3 | 15 << 6 | 0 << 10 | 1 << 13 = 0x23dc; payload offset 0, length 2
RACE_V1_TEXT = """migfuzz-program 1 v1
race 0 x=set xarg=4 y=reset yarg=0 sched=2 data=
"""
RACE_V1_BYTES = h("01  10 00 8110 00000000")  # race = 16 in v1; set | 4 << 10 | 2 << 6 = 0x1081


def test_race_vectors_both_directions():
    assert V2["race"] == 18 and V1["race"] == 16
    for text, data, proto in ((RACE_TEXT, RACE_BYTES, "v2"), (RACE_V1_TEXT, RACE_V1_BYTES, "v1")):
        prog = parse_program(text)
        assert codec.decode(data, proto) == prog
        assert codec.encode(prog) == data
        assert prog.text() == text
    ops = codec.decode(RACE_BYTES, "v2").ops
    assert ops[1] == Op(V2["race"], 1, 0x23DC, 0, b"\x00\xff")


# -- decoding rules ------------------------------------------------------------------


def test_count_byte_is_taken_modulo_max_ops_plus_one():
    assert MAX_OPS + 1 == 49
    get = "06 00 0000 00000000"
    two = h(get * 2)
    # 51 % 49 = 2 records
    assert codec.decode(h("33") + two, "v2").ops == (Op(V2["get"], 0),) * 2
    # 49 % 49 = 0: an empty program, whatever follows
    assert codec.decode(h("31") + two, "v2") == Program("v2", ())
    # 98 % 49 = 0 too; 50 % 49 = 1
    assert codec.decode(h("62") + two, "v2").ops == ()
    assert codec.decode(h("32") + two, "v2").ops == (Op(V2["get"], 0),)
    assert codec.record_count(h("33") + two) == 2


def test_count_capped_by_the_records_present():
    # the count byte asks for 48 records, only 2 are there
    assert codec.decode(h("30 06000000 00000000 06010000 00000000"), "v2").ops == (
        Op(V2["get"], 0), Op(V2["get"], 1))


def test_a_cut_record_is_dropped_and_its_bytes_are_payload():
    # 2 records announced, one whole record and 5 bytes: the op is the write only,
    # and the 5 bytes are its payload (offset 0, length 3)
    data = h("02  09 00 0000 00000300  6162636465")
    assert codec.record_count(data) == 1
    assert codec.decode(data, "v2").ops == (Op(V2["write"], 0, 0, 0, b"abc"),)
    # a record cut with no payload after it
    assert codec.decode(h("01 06 00 00"), "v2").ops == ()


def test_empty_and_count_only_inputs():
    assert codec.decode(b"", "v1") == Program("v1", ())
    assert codec.decode(h("05"), "v2") == Program("v2", ())
    assert codec.encode(Program("v2", ())) == h("00")


def test_codes_devices_and_arguments_are_reduced():
    ncodes = len(OPS["v2"])
    data = h(f"""
        05
        {ncodes + 5:02x} ff 0500 07000000
        {ncodes * (255 // ncodes):02x} 02 ffff ffffffff
        07 03 0501 01100000
        02 00 1100 07000000
        0e 01 ffff ffffffff
    """)
    ops = codec.decode(data, "v2").ops
    # code = ncodes + 5 is set (5); dev 0xff % 2 = 1; set has no a (dropped), b kept whole
    assert ops[0] == Op(V2["set"], 1, 0, 7)
    # a multiple of ncodes is reset (0): no arguments at all
    assert ops[1] == Op(V2["reset"], 0, 0, 0)
    # read: fd = 0x0105 % 4 = 1, n = 0x1001 = 4097 % 4097 = 0
    assert ops[2] == Op(V2["read"], 1, 1, 0)
    # fault: nth = 17 % 16 = 1, kind = 7 % 5 = 2
    assert ops[3] == Op(V2["fault"], 0, 1, 2)
    # feature: argsz u16 and flags u32 are taken whole
    assert ops[4] == Op(V2["feature"], 1, 0xFFFF, 0xFFFFFFFF)
    v1 = codec.decode(h("01 07 00 0700 00000000"), "v1").ops  # rd
    assert v1 == (Op(V1["rd"], 0, 7 % 5, 0),)  # field index modulo the 5 fields


def test_payload_references():
    payload = "00112233"
    # offset beyond the payload wraps modulo its length: 6 % 4 = 2
    assert codec.decode(h(f"01 09 00 0000 06000200 {payload}"), "v2").ops[0].data == h("2233")
    # a length running past the end is cut at the end
    assert codec.decode(h(f"01 09 00 0000 03000900 {payload}"), "v2").ops[0].data == h("33")
    # length 0: no data
    assert codec.decode(h(f"01 09 00 0000 01000000 {payload}"), "v2").ops[0].data == b""
    # no payload at all: no data, whatever the reference
    assert codec.decode(h("01 09 00 0000 00000400"), "v2").ops[0] == Op(V2["write"], 0, 0, 0, b"")
    # v1 wrwin reads the same reference; its a (no field) is dropped
    assert codec.decode(h(f"01 0c 01 0900 01000200 {payload}"), "v1").ops[0] == Op(V1["wrwin"], 1, 0, 0, h("1122"))


def test_a_record_decodes_the_same_every_time_and_a_write_takes_its_own_payload():
    """decode() builds an op once per record (a campaign decodes the same records over and over):
    a record read again gives the same op, but a write's record names bytes of its input's payload,
    so the same record in another input takes that input's bytes."""
    record = "01 09 00 0000 00000200"  # write 0, 2 bytes from payload offset 0
    assert codec.decode(h(record + " aabb"), "v2").ops[0].data == h("aabb")
    assert codec.decode(h(record + " ccdd"), "v2").ops[0].data == h("ccdd")
    mangle = h("01 " + f"{V2['mangle']:02x}" + " 01 ffff ffffffff")
    assert codec.decode(mangle, "v2") == codec.decode(mangle, "v2")
    assert codec.decode(mangle, "v2").ops[0] is codec.decode(mangle, "v2").ops[0]  # built once


def test_payload_beyond_the_limit_is_ignored():
    big = bytes(range(256)) * 17  # 4352 bytes
    # offset 4095 + 4 bytes: only the first MAX_PAYLOAD bytes are payload, so the piece is cut at byte 4096
    data = h("01 09 00 0000 ff0f0400") + big
    assert MAX_PAYLOAD == 4096
    assert codec.decode(data, "v2").ops[0].data == big[4095:4096]


def test_encode_payload_sharing_and_layout():
    w = V2["write"]
    prog = Program("v2", (Op(w, 0, 0, 0, b"ab"), Op(w, 1, 3, 0, b"cd"), Op(w, 0, 0, 0, b"bc"),
                          Op(w, 0, 0, 0, b""), Op(V2["get"], 1)))
    assert codec.encode(prog) == h("""
        05
        09 00 0000 00000200
        09 01 0300 02000200
        09 00 0000 01000200
        09 00 0000 00000000
        06 01 0000 00000000
        61626364
    """)


def test_encode_limits():
    get = Op(V2["get"], 0)
    assert codec.encode(Program("v2", (get,) * MAX_OPS))[0] == MAX_OPS
    with pytest.raises(ValueError):
        codec.encode(Program("v2", (get,) * (MAX_OPS + 1)))
    w = V2["write"]
    ops = tuple(Op(w, 0, 0, 0, bytes([i]) * 1024) for i in range(4))
    assert len(codec.encode(Program("v2", ops))) == 1 + 4 * 8 + 4096
    with pytest.raises(ValueError):
        codec.encode(Program("v2", (*ops, Op(w, 0, 0, 0, b"\xff"))))


def test_a_byte_changes_one_field_of_one_op():
    # little endian: byte 3 of a record is the high byte of a, byte 7 the high byte of b
    base = bytearray(h("02 07 00 0100 10000000 07 00 0200 20000000"))
    base[1 + 8 + 4] = 0x30  # low byte of the second record's b
    ops = codec.decode(bytes(base), "v2").ops
    assert ops[0] == Op(V2["read"], 0, 1, 16)
    assert ops[1] == Op(V2["read"], 0, 2, 0x30)
    base[1 + 8 + 5] = 0x01  # second byte of b: 0x130
    assert codec.decode(bytes(base), "v2").ops[1].b == 0x130
