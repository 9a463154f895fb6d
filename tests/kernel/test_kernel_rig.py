"""The real mtty driver (samples/vfio-mdev/mtty.c) in the rig guest, against the uAPI rules.

Boots the guest once per module and runs ``harness.kernel.selfcheck`` in it;
the tests assert on the JSON it writes. Skipped unless MIGFUZZ_RIG=1 (a cold
cache first downloads and builds the rig, see harness/kernel/rig.py).
"""
import json
import os

import pytest

from harness.kernel import rig
from harness.uapi import MigState as S

pytestmark = [pytest.mark.rig,
              pytest.mark.skipif(os.environ.get("MIGFUZZ_RIG") != "1", reason="set MIGFUZZ_RIG=1 to boot the rig")]

FLAGS = 0x7  # STOP_COPY | P2P | PRE_COPY
STREAM_BYTES = 96  # mtty-2: 24-byte header + 2 ports x 36 bytes

# vfio_mig_get_next_state() paths (drivers/vfio/vfio_main.c), flags 0x7: hops after `cur` for SET `new`; None = EINVAL.
PATHS = {
    (1, 2): [5, 2], (1, 3): [3], (1, 4): [4], (1, 5): [5], (1, 6): [5, 2, 6], (1, 7): [5, 7],
    (2, 1): [5, 1], (2, 3): [5, 1, 3], (2, 4): [5, 1, 4], (2, 5): [5], (2, 6): [6], (2, 7): [5, 7],
    (3, 1): [1], (3, 2): [1, 5, 2], (3, 4): [1, 4], (3, 5): [1, 5], (3, 6): None, (3, 7): None,
    (4, 1): [1], (4, 2): [1, 5, 2], (4, 3): [1, 3], (4, 5): [1, 5], (4, 6): [1, 5, 2, 6], (4, 7): [1, 5, 7],
    (5, 1): [1], (5, 2): [2], (5, 3): [1, 3], (5, 4): [1, 4], (5, 6): [2, 6], (5, 7): [7],
    (6, 1): [2, 5, 1], (6, 2): [2], (6, 3): [7, 3], (6, 4): [2, 5, 1, 4], (6, 5): [2, 5], (6, 7): [7],
    (7, 1): [5, 1], (7, 2): [5, 2], (7, 3): [3], (7, 4): [5, 1, 4], (7, 5): [5], (7, 6): [6],
}
# Hops that open a data session and so return a new data_fd (enum vfio_device_mig_state).
OPENS_FD = {(S.RUNNING, S.PRE_COPY), (S.RUNNING_P2P, S.PRE_COPY_P2P), (S.STOP, S.STOP_COPY), (S.STOP, S.RESUMING)}


def expected(cur: int, new: int) -> tuple[str, bool, int]:
    """(errno name, data_fd returned, state read back) for SET new from cur."""
    if cur == new:
        return "OK", False, cur
    hops = PATHS[cur, new]
    if hops is None:
        return "EINVAL", False, cur
    last = (hops[-2] if len(hops) > 1 else cur, hops[-1])
    return "OK", last in OPENS_FD, new


@pytest.fixture(scope="module")
def guest():
    result = rig.run_guest("$MIGFUZZ_PYTHON -m harness.kernel.selfcheck", timeout=240)
    print(f"\n[rig] accel={result.accel} setup={result.setup_seconds}s boot={result.boot_seconds}s "
          f"command={result.command_seconds}s results={result.results_dir}")
    return result


@pytest.fixture(scope="module")
def report(guest):
    path = guest.results_dir / "selfcheck.json"
    assert path.exists(), f"selfcheck wrote no report\n{guest.output}\n{guest.console[-3000:]}"
    return json.loads(path.read_text())


def test_guest_ran_the_selfcheck_cleanly(guest, report):
    assert guest.setup_failure is None, guest.console[-3000:]
    assert not guest.timed_out
    assert guest.splats == [], guest.splats
    assert "hang" not in report
    assert guest.exit_status == 0, guest.output
    assert len(guest.mtty) == 2 and all(group >= 0 for _, group in guest.mtty)


def test_migration_feature(report):
    assert report["protocol"] == 2
    assert report["flags"] == FLAGS
    assert report["data_size"] == [0, STREAM_BYTES]
    assert report["initial_state"] == [0, S.RUNNING]


def test_transition_matrix_matches_the_kernel_path_table(report):
    assert len(report["matrix"]) == 49
    wrong = []
    for row in report["matrix"]:
        cur, new = row["cur"], row["new"]
        observed = (row["err"], row["fd"], row["state_after"])
        if row["setup"] != "OK" or observed != expected(cur, new):
            wrong.append(f"{S(cur).name}->{S(new).name}: setup {row['setup']}, got {observed}, "
                         f"want {expected(cur, new)}")
    assert wrong == []


def test_transition_matrix_matches_the_fuzzer_model(report):
    model = pytest.importorskip("fuzz.model")
    wrong = []
    for row in report["matrix"]:
        cur, new = row["cur"], row["new"]
        accepted = model.path(FLAGS, cur, new) is not None
        if (row["err"] == "OK") != accepted or row["fd"] != model.opens_fd(FLAGS, cur, new):
            wrong.append(f"{S(cur).name}->{S(new).name}: kernel {row['err']} fd={row['fd']}, "
                         f"model path {model.path(FLAGS, cur, new)} opens_fd={model.opens_fd(FLAGS, cur, new)}")
    assert wrong == []


def test_save_resume_round_trip(report):
    trip = report["round_trip"]
    assert trip["pre_copy"] == {"err": "OK", "fd": True}
    assert trip["precopy_info_before"] == ["OK", 24, 0]
    assert trip["pre_copy_read"] == ["OK", 24]
    assert trip["precopy_info_after"] == ["OK", 0, 0]
    assert trip["pre_copy_read_at_end"] == ["OK", 0]  # mtty: 0, not ENOMSG
    assert trip["pre_copy_p2p"] == {"err": "OK", "fd": -1}
    assert trip["stop_copy"] == {"err": "OK", "fd": -1}  # the same fd carries on
    assert trip["stop_copy_read"] == ["OK", STREAM_BYTES - 24]
    assert trip["src_stop"] == "OK"
    assert trip["resuming"] == {"err": "OK", "fd": True}
    assert trip["resume_write"] == ["OK", STREAM_BYTES]
    assert trip["dst_stop"] == "OK" and trip["dst_running"] == "OK"
    src, dst = bytes.fromhex(trip["src_stream"]), bytes.fromhex(trip["dst_stream"])
    assert len(src) == STREAM_BYTES
    assert src[:8] == (0x7E9D09898C3E2C4E).to_bytes(8, "little")
    assert dst == src
    # activity() changed the source's UART state, so the resume carried real state.
    assert bytes.fromhex(trip["dst_before"]) != src


def test_data_fd_rules(report):
    rules = report["data_fd_rules"]
    assert rules["read_after_session_end"] == "ENODEV"
    assert rules["write_saving_fd"] == "EBADF"
    assert rules["seek_saving_fd"] == "ESPIPE"
    assert rules["read_resume_fd"] == "EBADF"
    assert rules["write_beyond_stream"] == "ENOMEM"
    assert rules["write_10_bytes"] == "OK"
    assert rules["stop_with_10_bytes"] == "EINVAL"
    assert rules["state_after_short_resume"] == S.RESUMING
    assert rules["set_invalid"] == {"99": ["EINVAL", S.RUNNING], "8": ["EINVAL", S.RUNNING],
                                    "0": ["EINVAL", S.RUNNING]}
    assert rules["unknown_feature"] == "ENOTTY"
    assert rules["get_and_set"] == "EINVAL"
    assert rules["set_migration"] == "EINVAL"


def test_a_resume_write_with_a_bad_header(report):
    """mtty refuses the header; whether the refused bytes still count as written (a driver
    defect migfuzz found: the write fails with EFAULT but f_pos has moved) is reported, not
    asserted, so a fixed kernel does not fail CI."""
    rules = report["data_fd_rules"]
    assert rules["bad_header_write"] in ("EFAULT", "EINVAL")
    consumed = rules["valid_stream_after_bad_header"] == "ENOMEM"
    effect = "still consumed its bytes" if consumed else "had no effect"
    print(f"\n[rig] mtty: a refused resume write (bad header) {effect}:"
          f" valid stream after it -> {rules['valid_stream_after_bad_header']}; bad header + rest -> "
          f"{rules['bad_header_then_rest']}, RESUMING -> STOP {rules['stop_after_bad_header']}")


def test_no_fd_outlives_the_devices(report):
    assert report["fds_after_close"] == report["fds_before_open"]


def test_kmsg_watch(report):
    assert report["kmsg_splats"] == []
    assert report["kmsg_probe_seen"] is True


def test_set_latency_is_sub_millisecond(report):
    latency = report["set_latency"]
    print(f"\n[rig] SET latency in the guest: {latency}")
    assert latency["no_fd_median_us"] < 1000 and latency["session_median_us"] < 1000


def test_kernel_panic_ends_the_guest_and_is_reported():
    result = rig.run_guest("echo c > /proc/sysrq-trigger", timeout=60, instances=1)
    assert not result.timed_out
    assert result.exit_status is None
    assert any("sysrq triggered crash" in line for line in result.splats), result.console[-2000:]


def test_a_command_past_the_timeout_is_stopped():
    result = rig.run_guest("sleep 600", timeout=20, instances=1)
    assert result.timed_out
    assert result.exit_status is None and result.boot_seconds is not None
