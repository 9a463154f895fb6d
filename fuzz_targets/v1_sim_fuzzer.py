#!/usr/bin/env python3
"""libFuzzer entry point: migration protocol v1 (the migration region) on the simulator.

    python3 fuzz_targets/v1_sim_fuzzer.py [libFuzzer flags] [CORPUS_DIR ...]
    MIGFUZZ_TARGET=sim:proto=v1,bug=v1-accept-101 python3 fuzz_targets/v1_sim_fuzzer.py -runs=20000

A finding raises an exception: libFuzzer saves the input as crash-<sha1>
(`migfuzz triage . --target sim:proto=v1` groups and minimizes them).
"""
import sys

import atheris  # noqa: F401  (PyInstaller: the engine)
from migfuzz_entry import EntryPoint

ENTRY = EntryPoint("sim:proto=v1")


def TestOneInput(data: bytes) -> None:  # noqa: N802 - libFuzzer's name
    ENTRY.test_one_input(data)


if __name__ == "__main__":
    ENTRY.main(sys.argv)
