"""Registers the ``rig`` marker (tests that boot the QEMU guest with the real mtty driver)."""


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "rig: boots the kernel rig guest (QEMU + real mtty); skipped unless MIGFUZZ_RIG=1")
