"""Compile the per-span hot paths to C extensions with mypyc, in place (`make compile`; docs/adr/0005).

    python build_compiled.py build_ext --inplace

Each package's modules share a runtime library built inside that package (``processors._hot__mypyc``,
``receiver._hot__mypyc``), so that they import from wherever the packages do (a script run from bench/ included), and
importing ``receiver`` never imports ``processors`` (receiver -> processors is the one direction; a shared library of
both made a process that imported ``receiver`` first, as a spawned decode worker does, fail on the cycle).
"""

from __future__ import annotations

HOT = {
    "processors": ["processors/_attribution.py", "processors/_dialects.py", "processors/_columns.py"],
    "receiver": ["receiver/_otlp.py"],
}

MODULES = tuple(path[:-3].replace("/", ".") for paths in HOT.values() for path in paths)
"""The compiled modules' import names (tests/processors/test_compiled.py)."""

if __name__ == "__main__":
    from mypyc.build import mypycify
    from setuptools import setup

    extensions = [ext for pkg, paths in HOT.items()
                  for ext in mypycify(paths, opt_level="3", group_name=f"{pkg}._hot")]
    setup(name="tenantledger-hot", packages=[], py_modules=[], ext_modules=extensions)
