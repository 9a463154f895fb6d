#!/bin/bash -eu
# ClusterFuzzLite / OSS-Fuzz build: one libFuzzer binary per fuzz_targets/*_fuzzer.py,
# each with a seed corpus made from corpus/seeds/<protocol>/*.txt.
cd "$SRC/migfuzz"
pip3 install .

for fuzzer in $(find "$SRC/migfuzz/fuzz_targets" -name '*_fuzzer.py'); do
  # PyInstaller follows static imports; the simulator is imported inside a function (under
  # atheris instrumentation), so name the packages it must bundle explicitly.
  compile_python_fuzzer "$fuzzer" \
    --paths "$SRC/migfuzz" \
    --paths "$SRC/migfuzz/fuzz_targets" \
    --hidden-import harness.sim \
    --hidden-import fuzz.executor \
    --hidden-import fuzz.oracles \
    --hidden-import fuzz.model
done

# Seed corpora: the text seeds in the binary form libFuzzer mutates ($OUT/<fuzzer>_seed_corpus.zip).
python3 - <<'PY'
import hashlib
import os
import zipfile
from pathlib import Path

from fuzz.codec import encode
from fuzz.program import parse_program

out = Path(os.environ["OUT"])
for fuzzer in Path("fuzz_targets").glob("*_fuzzer.py"):
    proto = fuzzer.stem.split("_", 1)[0]  # v1_sim_fuzzer -> v1
    seeds = sorted(Path("corpus/seeds", proto).glob("*.txt"))
    with zipfile.ZipFile(out / f"{fuzzer.stem}_seed_corpus.zip", "w") as z:
        for seed in seeds:
            data = encode(parse_program(seed.read_text()))
            z.writestr(hashlib.sha1(data).hexdigest(), data)
    print(f"{fuzzer.stem}: {len(seeds)} seeds")
PY
