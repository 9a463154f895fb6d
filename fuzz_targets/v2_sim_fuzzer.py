#!/usr/bin/env python3
"""libFuzzer entry point: migration protocol v2 on the simulator (STOP_COPY|P2P|PRE_COPY).

    python3 fuzz_targets/v2_sim_fuzzer.py [libFuzzer flags] [CORPUS_DIR ...]
    MIGFUZZ_TARGET=sim:bug=v2-error-requestable python3 fuzz_targets/v2_sim_fuzzer.py -runs=20000

A finding raises an exception: libFuzzer saves the input as crash-<sha1>
(`migfuzz triage . --target sim` groups and minimizes them).
"""
import sys

import atheris  # noqa: F401  (PyInstaller: the engine)
from migfuzz_entry import EntryPoint

ENTRY = EntryPoint("sim:proto=v2,flags=0x7")


def TestOneInput(data: bytes) -> None:  # noqa: N802 - libFuzzer's name
    ENTRY.test_one_input(data)


if __name__ == "__main__":
    ENTRY.main(sys.argv)
