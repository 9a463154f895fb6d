"""Splat recognition on console and /dev/kmsg text, and splats as reports (runs anywhere)."""
from pathlib import Path

from harness.kernel.kmsg import KernelReport, find_splats, first_fatal, is_splat, kernel_reports

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


# ---------------------------------------------------------------------------- whole reports

DATA = Path(__file__).parent / "data"


def reports_of(name: str) -> list[KernelReport]:
    return kernel_reports((DATA / name).read_text().splitlines())


def test_a_kasan_report_has_its_title_top_frames_and_whole_text():
    reports = reports_of("lockdep-then-kasan.console")
    kasan = reports[first_fatal(reports)]
    assert kasan.title == "BUG: KASAN: slab-out-of-bounds in mtty_resume_write [mtty]"
    assert kasan.frames == ("mtty_resume_write", "vfs_write", "ksys_write")  # below kasan/asan, no "?" frames
    assert "Allocated by task 231:" in kasan.text and "kmalloc-128" in kasan.text
    assert kasan.cause == f"{kasan.title}|mtty_resume_write,vfs_write,ksys_write"
    assert kasan.headline.startswith("BUG: KASAN:") and "[   57" not in kasan.text  # printk prefixes dropped


def test_lockdep_reports_are_titled_and_do_not_take_the_blame_for_a_panic():
    reports = reports_of("lockdep-then-kasan.console")
    lockdep = reports[0]
    assert lockdep.title == "WARNING: possible circular locking dependency detected"
    assert lockdep.frames == ("mtty_set_state", "vfio_ioctl_device_feature_mig_device_state",
                              "vfio_device_fops_unl_ioctl")  # the lock machinery skipped
    assert reports[first_fatal(reports)].title.startswith("BUG: KASAN:")
    assert reports[-1].title.startswith("Kernel panic")
    assert first_fatal(reports[:1]) == 0  # nothing fatal: the first report


def test_ubsan_and_warn_titles_drop_what_varies_between_builds():
    ubsan, warn = reports_of("ubsan-warn.console")  # the UBSAN report: mtty on the debug kernel, as logged
    assert ubsan.title == "UBSAN: array-index-out-of-bounds in samples/vfio-mdev/mtty.c"  # no build path, line
    assert ubsan.frames == ("mdev_access", "mtty_read", "vfio_device_fops_read")
    assert "index 2 is out of range for type 'serial_port [2]'" in ubsan.text
    assert warn.title == "WARNING in mtty_step_state"
    assert warn.frames == ("mtty_set_state", "vfio_ioctl_device_feature_mig_device_state", "vfio_device_fops_unl_ioctl")


def test_one_defect_has_one_cause_wherever_it_was_loaded():
    text = (DATA / "lockdep-then-kasan.console").read_text()
    moved = text.replace("0x3b1/0x4c0", "0x3c9/0x4d8").replace("ffff888004a3e460", "ffff888005b1c0e0")
    first, second = (r[first_fatal(r)] for r in (kernel_reports(text.splitlines()), kernel_reports(moved.splitlines())))
    assert first.cause == second.cause
    other = text.replace("  mtty_resume_write+0x3b1/0x4c0 [mtty]\n", "  mtty_load_state+0x10/0x80 [mtty]\n", 1)
    assert kernel_reports(other.splitlines())[first_fatal(kernel_reports(other.splitlines()))].cause != first.cause


def test_the_self_checks_kasan_report_as_the_debug_kernel_logs_it():
    reports = reports_of("kasan-lkdtm.console")
    kasan = reports[first_fatal(reports)]
    assert kasan.title == "BUG: KASAN: slab-out-of-bounds in lkdtm_SLAB_LINEAR_OVERFLOW [lkdtm]"
    assert kasan.frames == ("lkdtm_SLAB_LINEAR_OVERFLOW", "lkdtm_do_action", "direct_entry")
    assert "Write of size 4" in kasan.text and "kmalloc-1k" in kasan.text
    assert reports[-1].title == "Kernel panic - not syncing: KASAN: panic_on_warn set ..."


def test_without_panic_on_warn_the_oops_that_ended_the_guest_takes_the_blame():
    # A debug-kernel boot with panic_on_warn=0 kasan_multi_shot (after a first panic): mtty's UBSAN
    # reports let it run on, then a KASAN null-ptr-deref oops in mtty_set_state() ended it. As logged.
    reports = reports_of("ubsan-then-oops.console")
    assert reports[0].title.startswith("UBSAN:") and reports[-1].title.startswith("Kernel panic")
    fatal = reports[first_fatal(reports, warnings_panic=False)]
    assert fatal.title.startswith("Oops: general protection fault") and fatal.frames[0] == "mtty_set_state"
    assert reports[first_fatal(reports)].title.startswith("UBSAN:")  # with panic_on_warn, the first
    ubsan_only = [r for r in reports if r.title.startswith(("UBSAN", "Kernel panic"))]
    assert first_fatal(ubsan_only, warnings_panic=False) == 0  # no oops: as before


def test_an_oops_is_titled_by_its_bug_line():
    # mtty_set_state()'s NULL dereference on the stock kernel, as logged: "BUG: kernel NULL pointer
    # dereference" then "Oops: Oops: 0000 [#1]" are one oops; the BUG line names it
    reports = reports_of("null-deref-oops.console")
    for warnings_panic in (True, False):
        fatal = reports[first_fatal(reports, warnings_panic=warnings_panic)]
        assert fatal.title.startswith("BUG: kernel NULL pointer dereference"), fatal.title
        assert fatal.frames == ("mtty_set_state", "vfio_device_fops_unl_ioctl", "__x64_sys_ioctl")
    assert len(reports) == 2 and reports[1].title.startswith("Kernel panic")
