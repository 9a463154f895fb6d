#!/usr/bin/env python3
"""libFuzzer entry point: migration protocol v1 (the migration region) on the simulator.

    python3 fuzz_targets/v1_sim_fuzzer.py [libFuzzer flags] [CORPUS_DIR ...]
    MIGFUZZ_TARGET=sim:proto=v1,bug=v1-accept-101 python3 fuzz_targets/v1_sim_fuzzer.py -runs=20000

A finding raises an exception: libFuzzer saves the input as crash-<sha1>
(`migfuzz triage . --target sim:proto=v1` groups and minimizes them).
"""
import sys
from pathlib import Path

if not getattr(sys, "frozen", False):  # run from a checkout: use that checkout's migfuzz
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fuzz.engine import EntryPoint  # noqa: E402  (the engine `migfuzz fuzz` runs, in libFuzzer entry mode)

ENTRY = EntryPoint("sim:proto=v1")


def TestOneInput(data: bytes) -> None:  # noqa: N802 - libFuzzer's name
    ENTRY.test_one_input(data)


if __name__ == "__main__":
    ENTRY.main(sys.argv)
