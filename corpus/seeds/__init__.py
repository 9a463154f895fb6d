"""The seed programs (text form), installed as the package data ``fuzz.seeds``.

``corpus/seeds/<protocol>/*.txt`` is mapped to ``fuzz.seeds`` by pyproject.toml, so an
installed migfuzz (editable or not) loads them with ``importlib.resources``
(``fuzz.engine.seed_programs``), from any directory.
"""
