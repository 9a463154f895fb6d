"""Splat recognition on console and /dev/kmsg text (runs anywhere)."""
from harness.kernel.kmsg import find_splats, is_splat

# Lines a clean boot of the rig guest prints (TCG, -cpu max) that merely look alarming.
CLEAN_BOOT_LINES = [
    "[    0.894073] PCI: Using host bridge windows from ACPI; if necessary, use \"pci=nocrs\" and report a bug",
    "[    0.120000] RETBleed: WARNING: Spectre v2 mitigation leaves CPU vulnerable to RETBleed attacks, "
    "data leak possible!",
    "[    3.196211] mtty: loading out-of-tree module taints kernel.",
    "[    3.196551] mtty: module verification failed: signature and/or required key missing - tainting kernel",
    "[    4.992920] reboot: Power down",
]

SPLAT_LINES = [
    "[   12.345678] WARNING: CPU: 0 PID: 231 at drivers/vfio/vfio_main.c:1012 "
    "vfio_mig_get_next_state+0x1e/0x2a0 [vfio]",
    "[   22.000000] watchdog: BUG: soft lockup - CPU#0 stuck for 22s! [python3:231]",
    "[    5.000000] BUG: kernel NULL pointer dereference, address: 0000000000000008",
    "[    5.000001] Oops: 0000 [#1] PREEMPT SMP NOPTI",
    "[    5.000002] BUG: sleeping function called from invalid context at kernel/locking/mutex.c:580",
    "[    7.000000] WARNING: possible circular locking dependency detected",
    "[    7.000000] WARNING: inconsistent lock state",
    "[    9.000000] kernel BUG at mm/slub.c:435!",
    "[    9.100000] general protection fault, probably for non-canonical address 0xdead000000000100: 0000 [#1]",
    "[    9.200000] Kernel panic - not syncing: panic_on_warn set ...",
    "[  130.000000] INFO: task python3:231 blocked for more than 120 seconds.",
    "WARNING: CPU: 0 PID: 5 at lib/foo.c:1 bar+0x1/0x2",  # /dev/kmsg message text has no timestamp
    "[    9.300000] [    T231] BUG: KASAN: slab-use-after-free in mtty_save_read+0x10/0x20",  # caller id
]


def test_clean_boot_lines_are_not_splats():
    assert [line for line in CLEAN_BOOT_LINES if is_splat(line)] == []


def test_splat_lines_are_recognised():
    assert [line for line in SPLAT_LINES if not is_splat(line)] == []


def test_find_splats_keeps_order_and_strips_carriage_returns():
    log = "\r\n".join(CLEAN_BOOT_LINES[:2] + SPLAT_LINES[:2] + CLEAN_BOOT_LINES[2:]) + "\r\n"
    assert find_splats(log) == SPLAT_LINES[:2]
