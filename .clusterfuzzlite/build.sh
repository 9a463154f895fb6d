#!/bin/bash -eu
# ClusterFuzzLite / OSS-Fuzz build: one libFuzzer binary per fuzz_targets/*_fuzzer.py,
# each with a seed corpus made from corpus/seeds/<protocol>/*.txt.
cd "$SRC/migfuzz"
pip3 install .

for fuzzer in $(find "$SRC/migfuzz/fuzz_targets" -name '*_fuzzer.py'); do
  # PyInstaller follows the entry script's static imports (every migfuzz module imports at the top);
  # the seed programs are package data it must carry.
  compile_python_fuzzer "$fuzzer" \
    --paths "$SRC/migfuzz" \
    --collect-data fuzz.seeds \
    --collect-data harness
done

# Seed corpora: the text seeds in the binary form libFuzzer mutates ($OUT/<fuzzer>_seed_corpus.zip).
python3 - <<'PY'
import hashlib
import os
import zipfile
from pathlib import Path

from fuzz.codec import encode
from fuzz.engine import seed_programs

out = Path(os.environ["OUT"])
for fuzzer in Path("fuzz_targets").glob("*_fuzzer.py"):
    proto = fuzzer.stem.split("_", 1)[0]  # v1_sim_fuzzer -> v1
    seeds = seed_programs(proto)
    with zipfile.ZipFile(out / f"{fuzzer.stem}_seed_corpus.zip", "w") as z:
        for _name, prog in seeds:
            data = encode(prog)
            z.writestr(hashlib.sha1(data).hexdigest(), data)
    print(f"{fuzzer.stem}: {len(seeds)} seeds")
PY
