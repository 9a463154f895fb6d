"""The debug kernel's preparation, without building one (runs anywhere)."""
from __future__ import annotations

import json

from harness.kernel import debugkernel, rig


def test_the_checked_in_fragment_asks_for_every_sense_and_what_the_rig_needs():
    wanted = debugkernel.requested_options(debugkernel.CONFIG_FRAGMENT.read_text())
    for name in debugkernel.REQUIRED + ("CONFIG_KASAN_INLINE", "CONFIG_KCOV_ENABLE_COMPARISONS", "CONFIG_PROVE_LOCKING",
                                        "CONFIG_DEBUG_ATOMIC_SLEEP", "CONFIG_UBSAN", "CONFIG_IOMMUFD",
                                        "CONFIG_VFIO_DEVICE_CDEV", "CONFIG_VFIO_CONTAINER", "CONFIG_LKDTM"):
        assert wanted.get(name) in ("y", "m"), name
    assert wanted["CONFIG_RANDOMIZE_BASE"] == "n"  # the same PCs on every boot


def test_options_a_build_dropped_are_found():
    fragment = "CONFIG_KASAN=y\nCONFIG_UBSAN=y\n# CONFIG_RANDOMIZE_BASE is not set\nCONFIG_LOCALVERSION=\"-x\"\n"
    config = "CONFIG_KASAN=y\n# CONFIG_UBSAN is not set\nCONFIG_LOCALVERSION=\"-x\"\n"
    assert debugkernel.missing_options(fragment, config) == {"CONFIG_UBSAN": ("y", "n")}
    assert debugkernel.missing_options(fragment, config + "CONFIG_UBSAN=y\nCONFIG_RANDOMIZE_BASE=y\n") == \
        {"CONFIG_RANDOMIZE_BASE": ("n", "y")}


def test_a_warm_cache_is_used_until_the_fragment_changes(tmp_path, monkeypatch):
    monkeypatch.setenv("MIGFUZZ_CACHE", str(tmp_path))
    fragment = tmp_path / "debug.config"
    fragment.write_text("CONFIG_KASAN=y\n")
    monkeypatch.setattr(debugkernel, "CONFIG_FRAGMENT", fragment)
    work = debugkernel.debug_dir()
    (work / "build").mkdir(parents=True)
    files = [work / name for name in ("vmlinuz", "initramfs.cpio.gz", "mtty.ko")]
    for f in files:
        f.write_bytes(b"x")
    built = rig.Rig("6.12.117-migfuzz-debug", "6.12.117-1~deb12u1", str(work / "root"), *map(str, files), 900.0)
    (work / "rig.json").write_text(json.dumps(built.__dict__))
    assert debugkernel.load() is None  # no record of the fragment it was built from
    (work / "build" / debugkernel.CONFIG_HASH_FILE).write_text(debugkernel.fragment_hash())
    assert debugkernel.load() == built
    fragment.write_text("CONFIG_KASAN=y\nCONFIG_UBSAN=y\n")
    assert debugkernel.load() is None  # rebuilt (incrementally) on the next prepare
    fragment.write_text("CONFIG_KASAN=y\n")
    files[2].unlink()
    assert debugkernel.load() is None
