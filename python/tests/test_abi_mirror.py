"""The ctypes structures of msa._lib mirror include/msa.h: their sizes and
field offsets must equal those in include/msa.abi, which tools/check_abi.sh
generates from the header with the C compiler (ctest abi_check keeps it
current)."""
import ctypes
import re

import pytest

from conftest import REPO
from msa import _lib

ABI = REPO / "include" / "msa.abi"


def recorded_structs():
    structs, current = {}, None
    for line in ABI.read_text().splitlines():
        m = re.match(r"^struct (\w+) size (\d+) align (\d+)$", line)
        if m:
            current = structs[m.group(1)] = {"size": int(m.group(2)), "fields": {}}
            continue
        m = re.match(r"^  field .* (\w+) offset (\d+) size (\d+)$", line)
        if m and current is not None:
            current["fields"][m.group(1)] = (int(m.group(2)), int(m.group(3)))
        elif not line.startswith("  "):
            current = None
    return structs


@pytest.mark.skipif(not ABI.exists(), reason="include/msa.abi is not in this checkout")
def test_ctypes_structs_match_the_recorded_abi():
    structs = recorded_structs()
    assert set(_lib.STRUCTS) == set(structs), "a struct of msa.h has no ctypes mirror, or vice versa"
    for name, mirror in _lib.STRUCTS.items():
        assert ctypes.sizeof(mirror) == structs[name]["size"], name
        fields = {f: (getattr(mirror, f).offset, getattr(mirror, f).size) for f, _ in mirror._fields_}
        assert fields == structs[name]["fields"], name


@pytest.mark.skipif(not ABI.exists(), reason="include/msa.abi is not in this checkout")
def test_every_function_is_declared():
    functions = re.findall(r"^function .*?\b(msa_\w+)\(", ABI.read_text(), re.M)
    for name in functions:
        assert getattr(_lib.lib, name).argtypes is not None, f"{name} has no ctypes prototype"
