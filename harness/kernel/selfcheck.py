"""Guest-side observations of the real mtty driver, for the host's rig tests.

Run inside the rig guest (``python -m harness.kernel.selfcheck``): opens the
first two mtty instances named in ``MIGFUZZ_MTTY`` through ``harness.kernel.vfio``,
records what the driver answers and writes it as JSON to
``$MIGFUZZ_RESULTS/selfcheck.json``. It only observes; the expectations live
in ``tests/kernel/test_rig.py``. Errnos are recorded by name ("EINVAL"), 0 as "OK".

With ``--senses`` (the debug kernel, ``migfuzz vm selfcheck --kernel debug``) it also
exercises what the fuzzer senses the kernel with: the KCOV coverage of a trivial
program, run :data:`TRIVIAL_RUNS` times (``kcov`` in the report), and last, after the
report is written, a deliberate out-of-bounds write by lkdtm (``SLAB_LINEAR_OVERFLOW``,
drivers/misc/lkdtm/heap.c) with an empty program in the flight recorder: KASAN
reports it and panics the guest, and the host turns the console into a
``kernel-splat`` finding the way a campaign does (``fuzz.vm``).
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from harness.kernel.flight import FlightRecorder
from harness.kernel.kcov import KernelCoverage
from harness.kernel.kmsg import KmsgWatch
from harness.kernel.vfio import Watchdog, mtty_targets
from harness.runtime import VfioDevice, errname, read_stream
from harness.uapi import MigState as S

RESULT_FILE = "selfcheck.json"
CALL_DEADLINE = 10.0          # seconds one device call may take before it counts as a hang
KMSG_PROBE = "WARNING: migfuzz selfcheck probe of the kmsg watcher"
MATRIX_STATES = [S.STOP, S.RUNNING, S.STOP_COPY, S.RESUMING, S.RUNNING_P2P, S.PRE_COPY, S.PRE_COPY_P2P]
SENSES_FLAG = "--senses"
TRIVIAL_RUNS = 3
LKDTM_DIRECT = "/sys/kernel/debug/provoke-crash/DIRECT"
LKDTM_OOB = "SLAB_LINEAR_OVERFLOW"   # kmalloc(1020), then a write at byte 1024
EMPTY_PROGRAM = b"\x00"               # the binary form of a program of no ops (fuzz.codec)


def name(err: int) -> str:
    return "OK" if err == 0 else errname(err)


def drain(dev: VfioDevice, fd: int) -> tuple[int, bytes]:
    """Read a saving fd until end of stream (read returns 0 bytes)."""
    err, data, _ended = read_stream(dev, fd)
    return err, data


def save_stop_copy(dev: VfioDevice) -> bytes:
    """Whole stream of `dev` through RUNNING -> STOP_COPY, then back to STOP."""
    err, fd = dev.set_state(S.STOP_COPY)
    assert not err and fd >= 0, f"SET STOP_COPY: {name(err)} fd {fd}"
    err, data = drain(dev, fd)
    assert not err, f"read: {name(err)}"
    dev.set_state(S.STOP)
    dev.close(fd)
    return data


def set_latency(dev: VfioDevice, rounds: int = 300) -> dict:
    """Microseconds per SET: a cheap arc pair without fds (RUNNING <-> RUNNING_P2P),
    and a session arc pair (RUNNING -> PRE_COPY creates a data_fd, -> RUNNING ends it)."""
    def timed(target: int) -> tuple[float, int]:
        start = time.perf_counter()
        _, fd = dev.set_state(target)
        return (time.perf_counter() - start) * 1e6, fd

    dev.reset()
    no_fd = [timed(S.RUNNING_P2P if i % 2 == 0 else S.RUNNING)[0] for i in range(rounds)]
    with_fd = []
    for _ in range(rounds // 2):
        open_us, fd = timed(S.PRE_COPY)
        close_us, _ = timed(S.RUNNING)
        dev.close(fd)
        with_fd += [open_us, close_us]
    dev.reset()
    return {"no_fd_median_us": round(statistics.median(no_fd), 1),
            "session_median_us": round(statistics.median(with_fd), 1),
            "max_us": round(max(no_fd + with_fd), 1), "rounds": rounds}


def transition_matrix(dev: VfioDevice, valid_stream: bytes) -> list[dict]:
    """Every (cur, new) pair from a fresh reset: reach cur, SET new, GET the result.

    RESUMING is reached with a full valid stream written, so that leaving it
    (which loads the stream) can succeed."""
    rows = []
    for cur in MATRIX_STATES:
        for new in MATRIX_STATES:
            dev.reset()
            fds = []
            setup_err, fd = dev.set_state(cur)
            if fd >= 0:
                fds.append(fd)
            if cur == S.RESUMING and fd >= 0:
                dev.write(fd, valid_stream)
            err, new_fd = dev.set_state(new)
            if new_fd >= 0:
                fds.append(new_fd)
            _, state_after = dev.get_state()
            rows.append({"cur": int(cur), "new": int(new), "setup": name(setup_err), "err": name(err),
                         "fd": new_fd >= 0, "state_after": state_after})
            for fd in fds:
                dev.close(fd)
    dev.reset()
    return rows


def round_trip(src: VfioDevice, dst: VfioDevice) -> dict:
    """Live-migration sequence from src into dst, then dst saved again."""
    out: dict = {}
    src.reset()
    dst.reset()
    out["dst_before"] = save_stop_copy(dst).hex()
    dst.reset()
    src.activity(seed=0x42)  # so the stream differs from a fresh device's

    err, fd = src.set_state(S.PRE_COPY)
    out["pre_copy"] = {"err": name(err), "fd": fd >= 0}
    err, initial, dirty = src.precopy_info(fd)
    out["precopy_info_before"] = [name(err), initial, dirty]
    err, head = src.read(fd, 4096)
    out["pre_copy_read"] = [name(err), len(head)]
    err, initial, dirty = src.precopy_info(fd)
    out["precopy_info_after"] = [name(err), initial, dirty]
    err, again = src.read(fd, 4096)
    out["pre_copy_read_at_end"] = [name(err), len(again)]
    err, p2p_fd = src.set_state(S.PRE_COPY_P2P)
    out["pre_copy_p2p"] = {"err": name(err), "fd": p2p_fd}
    err, sc_fd = src.set_state(S.STOP_COPY)
    out["stop_copy"] = {"err": name(err), "fd": sc_fd}
    err, rest = drain(src, fd)
    out["stop_copy_read"] = [name(err), len(rest)]
    out["src_stream"] = (head + rest).hex()
    out["src_stop"] = name(src.set_state(S.STOP)[0])
    src.close(fd)

    err, rfd = dst.set_state(S.RESUMING)
    out["resuming"] = {"err": name(err), "fd": rfd >= 0}
    err, written = dst.write(rfd, head + rest)
    out["resume_write"] = [name(err), written]
    out["dst_stop"] = name(dst.set_state(S.STOP)[0])
    out["dst_running"] = name(dst.set_state(S.RUNNING)[0])
    dst.close(rfd)
    out["dst_stream"] = save_stop_copy(dst).hex()
    src.reset()
    dst.reset()
    return out


def data_fd_rules(dev: VfioDevice, valid_stream: bytes) -> dict:
    """Errnos of data_fd misuse and invalid requests, as the driver answers them."""
    out: dict = {}
    dev.reset()
    err, fd = dev.set_state(S.STOP_COPY)
    out["write_saving_fd"] = name(dev.write(fd, b"x")[0])
    out["seek_saving_fd"] = name(dev.seek(fd))
    dev.set_state(S.STOP)
    out["read_after_session_end"] = name(dev.read(fd, 16)[0])
    dev.close(fd)

    dev.reset()
    err, rfd = dev.set_state(S.RESUMING)
    out["read_resume_fd"] = name(dev.read(rfd, 16)[0])
    out["write_beyond_stream"] = name(dev.write(rfd, valid_stream + b"\0")[0])
    out["write_10_bytes"] = name(dev.write(rfd, valid_stream[:10])[0])
    out["stop_with_10_bytes"] = name(dev.set_state(S.STOP)[0])
    out["state_after_short_resume"] = dev.get_state()[1]
    dev.close(rfd)

    # A resume write whose header fails mtty's validation: refused (EFAULT), yet the bytes count
    # as written (mtty_resume_write advances f_pos and filled_size before returning the error),
    # so a later valid stream overflows, and the rejected header loads if the rest follows.
    bad = bytearray(valid_stream)
    bad[0] ^= 1
    dev.reset()
    err, rfd = dev.set_state(S.RESUMING)
    out["bad_header_write"] = name(dev.write(rfd, bytes(bad[:32]))[0])
    out["valid_stream_after_bad_header"] = name(dev.write(rfd, valid_stream)[0])
    dev.close(rfd)
    dev.reset()
    err, rfd = dev.set_state(S.RESUMING)
    out["bad_header_then_rest"] = [name(dev.write(rfd, bytes(bad[:32]))[0]), name(dev.write(rfd, bytes(bad[32:]))[0])]
    out["stop_after_bad_header"] = name(dev.set_state(S.STOP)[0])
    dev.close(rfd)

    dev.reset()
    out["set_invalid"] = {str(s): [name(dev.set_state(s)[0]), dev.get_state()[1]] for s in (99, 8, 0)}
    out["unknown_feature"] = name(dev.feature(0x10000 | 0x1234, bytes(8))[0])
    out["get_and_set"] = name(dev.feature(0x30000 | 2, bytes(8))[0])
    out["set_migration"] = name(dev.feature(0x20000 | 1, bytes(8))[0])
    dev.reset()
    return out


def trivial_program(dev: VfioDevice) -> None:
    """The program whose kernel coverage the self-check compares across runs."""
    dev.get_state()
    dev.set_state(S.STOP)
    dev.set_state(S.RUNNING)


def kcov_runs(watchdog: Watchdog, dev: VfioDevice) -> dict:
    """KCOV coverage of :func:`trivial_program` in each of TRIVIAL_RUNS runs (after a reset each):
    distinct PCs per run, whether every run covered the same PCs, and the split."""
    coverage, description = KernelCoverage.open([dev.name])
    out: dict = {"available": coverage is not None, "description": description}
    if coverage is None:
        return out
    watchdog.cover(coverage)
    runs = []
    try:
        for _ in range(TRIVIAL_RUNS):
            dev.reset()
            coverage.begin_program(None)
            trivial_program(dev)
            runs.append(sorted(coverage.pcs))
            coverage.end_program()
    finally:
        watchdog.cover(None)
        coverage.close()
    covered, common = set().union(*runs), set(runs[0]).intersection(*runs)
    out.update(pcs=[len(r) for r in runs], same_in_every_run=covered == common,
               differing=[hex(pc) for pc in sorted(covered - common)], **coverage.stats())
    return out


def provoke_kasan(results: Path) -> None:
    """lkdtm's deliberate slab out-of-bounds write, with an empty program in the flight recorder.
    KASAN reports it and panic_on_warn ends the guest; if this returns, KASAN saw nothing."""
    recorder = FlightRecorder.open("v2", "selfcheck")
    if recorder is not None:
        recorder.record(EMPTY_PROGRAM)
    subprocess.run(["modprobe", "-d", os.environ.get("MIGFUZZ_MODROOT", "/"), "lkdtm"], check=True)
    os.sync()
    with open(LKDTM_DIRECT, "w") as direct:
        direct.write(LKDTM_OOB)
    (results / "kasan-not-reported").write_text(f"{LKDTM_OOB} returned\n")


def main(argv: list[str]) -> int:
    senses = SENSES_FLAG in argv
    results = Path(os.environ.get("MIGFUZZ_RESULTS", "."))
    report: dict = {}

    def on_hang(what: str, seconds: float) -> None:
        report["hang"] = {"call": what, "seconds": round(seconds, 1)}
        (results / RESULT_FILE).write_text(json.dumps(report, indent=1))
        os._exit(3)

    watchdog = Watchdog(CALL_DEADLINE, on_hang)
    targets = mtty_targets()
    with KmsgWatch() as kmsg:
        report["fds_before_open"] = sorted(os.listdir("/proc/self/fd"))
        devices = [t.open(watchdog) for t in targets[:2]]
        try:
            a, b = devices
            report["protocol"] = a.protocol
            report["flags"] = a.flags
            report["data_size"] = list(a.data_size())
            report["initial_state"] = list(a.get_state())
            valid_stream = save_stop_copy(a)
            a.reset()
            report["set_latency"] = set_latency(a)
            report["matrix"] = transition_matrix(a, valid_stream)
            report["round_trip"] = round_trip(a, b)
            report["data_fd_rules"] = data_fd_rules(a, valid_stream)
            if senses:
                report["kcov"] = kcov_runs(watchdog, a)
        finally:
            for dev in devices:
                dev.close_device()
        report["fds_after_close"] = sorted(os.listdir("/proc/self/fd"))
        report["kmsg_splats"] = kmsg.new_splats()
        # A user-space line at KERN_INFO (below the console's loglevel, so the
        # host does not count it) proves the watcher sees new records.
        with open("/dev/kmsg", "w") as log:
            log.write(f"<6>{KMSG_PROBE}\n")
        report["kmsg_probe_seen"] = KMSG_PROBE in kmsg.new_splats()
    watchdog.stop()
    (results / RESULT_FILE).write_text(json.dumps(report, indent=1))
    if senses:
        provoke_kasan(results)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
