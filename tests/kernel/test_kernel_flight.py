"""The flight recorder's ring, as the guest writes it and the host reads it (runs anywhere)."""
import mmap

from fuzz.executor import Executor
from fuzz.program import parse_program
from harness.kernel import flight
from harness.kernel.flight import FlightRecorder, read_flight
from harness.sim import SimTarget


def test_newest_program_first_and_state(tmp_path):
    path = tmp_path / flight.FILE_NAME
    path.write_bytes(bytes(flight.SIZE))
    assert read_flight(path) is None  # never written
    rec = FlightRecorder.open("v2", "mtty", str(path))
    assert read_flight(path).seq == 0 and read_flight(path).last is None
    rec.record(b"first")
    rec.record(b"second program")
    got = read_flight(path)
    assert (got.seq, got.state, got.proto, got.target) == (2, flight.RUNNING, "v2", "mtty")
    assert got.programs == [(2, b"second program"), (1, b"first")]
    assert got.last == b"second program"
    rec.close()
    assert read_flight(path).state == flight.CLOSED


def test_the_ring_keeps_the_last_slots_programs(tmp_path):
    buf = bytearray(flight.SIZE)
    name = "kernel:dev=a,dev2=b,some-very-long-name-that-is-cut"
    rec = FlightRecorder(buf, "v2", name)
    for i in range(1, 101):
        rec.record(i.to_bytes(2, "little") * i)
    path = tmp_path / "f"
    path.write_bytes(bytes(buf))
    got = read_flight(path)
    assert got.seq == 100 and len(got.programs) == flight.SLOTS
    assert [n for n, _ in got.programs] == list(range(100, 100 - flight.SLOTS, -1))
    assert got.programs[0][1] == (100).to_bytes(2, "little") * 100
    assert got.target == name[:32]  # the header keeps 32 bytes of the name


def test_a_half_written_slot_is_not_taken_for_the_newest(tmp_path):
    """The slot is written before the header names it: a header still naming the previous
    program means the ring ends there."""
    path = tmp_path / "f"
    path.write_bytes(bytes(flight.SIZE))
    with open(path, "r+b") as f:
        buf = mmap.mmap(f.fileno(), flight.SIZE)
        rec = FlightRecorder(buf, "v2", "mtty")
        rec.record(b"a")
        rec.record(b"b")
        # a writer interrupted after the slot of program 3 but before the header
        at = flight.HEADER_SIZE + 3 * flight.SLOT_SIZE
        buf[at:at + 16] = (3).to_bytes(8, "little") + (1).to_bytes(4, "little") + bytes(4)
        buf.flush()
        buf.close()
    assert read_flight(path).programs == [(2, b"b"), (1, b"a")]


def test_open_outside_the_rig_gives_none(monkeypatch, tmp_path):
    monkeypatch.delenv(flight.ENV, raising=False)
    assert FlightRecorder.open("v2", "mtty") is None
    assert FlightRecorder.open("v2", "mtty", str(tmp_path / "missing")) is None
    assert read_flight(tmp_path / "missing") is None


def test_a_panic_in_the_resets_between_programs_blames_the_program_before(tmp_path):
    # mtty #8: a TX byte the previous program stored over resuming_migf oopses the next
    # VFIO_DEVICE_RESET; the recorder must still name that previous program while the resets run
    from harness.kernel.target import KernelTargetSet

    path = tmp_path / flight.FILE_NAME
    path.write_bytes(bytes(flight.SIZE))
    seen = []

    class Device:
        def close_data_fds(self):
            pass

        def reset(self):
            seen.append(read_flight(path).last)  # what the host reads if the kernel dies here

        def reg_write(self, region, off, data):
            return 0, len(data)

    targets = KernelTargetSet("kernel", "mtty")
    targets.devices = [Device(), Device()]
    targets.flight = FlightRecorder.open("v2", "mtty", str(path))
    program = [b"first"]
    targets.current_input = lambda: program[0]
    targets.fresh()
    program[0] = b"second"
    targets.fresh()
    assert seen == [None, None, b"first", b"first"]
    assert read_flight(path).last == b"second"  # and the program itself runs named


def test_the_op_a_program_had_begun_is_read_back(tmp_path):
    path = tmp_path / flight.FILE_NAME
    path.write_bytes(bytes(flight.SIZE))
    rec = FlightRecorder.open("v2", "mtty", str(path))
    rec.record(b"first")
    assert read_flight(path).last_step is None  # its resets run: no op has begun
    rec.op_started(0)
    rec.op_started(3)
    assert read_flight(path).last_step == 3
    rec.record(b"second")  # the next program starts from none again
    assert read_flight(path).last_step is None and read_flight(path).last == b"second"
    rec.op_started(1)
    assert read_flight(path).last_step == 1


def test_the_executor_names_each_op_as_it_begins():
    target = SimTarget("v2")
    begun = []
    target.op_started = begun.append  # what a kernel target in the rig installs (its flight recorder's)
    Executor(target).run(parse_program("migfuzz-program 1 v2\nset 0 state=STOP\nget 0\nreset 1\n"))
    assert begun == [0, 1, 2]
