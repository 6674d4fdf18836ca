#!/usr/bin/env bash
# The ABI check of the C API (ctest abi_check).
#
# include/msa.abi records what a program compiled against include/msa.h
# depends on: every function's prototype (parameter types, not names), every
# struct's size, alignment and fields (type, offset, size), every enum's size
# and values, and the version they were recorded at. This script derives the
# same record from the header -- names from its text, numbers from the C
# compiler (a small C program that includes msa.h and prints sizeof,
# _Alignof, offsetof and the enum values) -- and compares:
#
#   - no difference: OK (whatever the version says);
#   - only additions (a new function, struct, enum or enum value, or a field
#     placed in a struct's existing padding or reserved space so that its size
#     is unchanged): MSA_VERSION_MINOR must have gone up;
#   - anything else (a prototype, size, offset, type or value changed, or
#     something removed): MSA_VERSION_MAJOR must have gone up. A struct that
#     grows is such a change: programs built against the old header allocate
#     the old size (msa_store_stats writes the struct, msa_attend_default_params
#     returns it by value). Add a new struct and function instead (sqlite's
#     _v2), or bump the major version.
#
# When the version went up as required, the check still fails until the new
# ABI is recorded:
#
#   bash tools/check_abi.sh --update      # rewrite include/msa.abi; commit it with the header
#
# --update refuses what the rules refuse. Options:
#   --library PATH   also check that the shared library exports exactly the
#                    header's functions (nm -D)
#   --header PATH    another msa.h (default include/msa.h)
#   --abi PATH       another record (default include/msa.abi)
# Needs a C compiler (CC, default cc) and python3. Exit 0 OK, 1 a failed check.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
header=$root/include/msa.h
abi=$root/include/msa.abi
library=""
update=0
while (($#)); do
  case $1 in
    --update) update=1 ;;
    --library) library=$2; shift ;;
    --header) header=$2; shift ;;
    --abi) abi=$2; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "check_abi: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
cc=${CC:-cc}
python=$(command -v python3 || true)
[ -n "$python" ] || { echo "check_abi: needs python3" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# 1. The header as the compiler sees it from C, after the system headers it
#    includes, with MSA_EXPORT empty.
cat > "$work/pre.c" <<EOF
#include <stddef.h>
#include <stdint.h>
msa_abi_marker;
#include "$header"
EOF
"$cc" -E -P -DMSA_EXPORT= "$work/pre.c" > "$work/pre.i"

# 2. Parse it; write the C program that prints the layouts; 3. compile, run,
#    assemble the record; 4. compare with the recorded one.
"$python" - "$work" "$header" "$abi" "$update" "$cc" "$library" <<'PY'
import os
import re
import subprocess
import sys

work, header, abi_path, update, cc, library = sys.argv[1:7]
update = update == "1"
text = open(os.path.join(work, "pre.i")).read()
text = text.split("msa_abi_marker;", 1)[1]
text = re.sub(r"\s+", " ", text)


def fail(message):
    print("check_abi: " + message, file=sys.stderr)
    sys.exit(1)


def norm_type(t):
    t = re.sub(r"\s*\*\s*", "*", t.strip())
    t = re.sub(r"\*(?=[A-Za-z_])", "* ", t)
    return re.sub(r"\s+", " ", t)


def split_type_name(decl, where):
    """'const char* name' -> ('const char*', 'name'); arrays keep [N] on the type."""
    m = re.match(r"^(.*?)([A-Za-z_]\w*)\s*((?:\[[^\]]*\])*)$", decl.strip())
    if not m or not m.group(1).strip():
        fail(f"cannot read the declaration '{decl}' in {where} (every parameter needs a name)")
    return norm_type(m.group(1) + m.group(3)), m.group(2)


# Top-level statements: split on ';' outside braces.
statements, depth, cur = [], 0, ""
for ch in text:
    if ch == "{":
        depth += 1
    elif ch == "}":
        depth -= 1
    if ch == ";" and depth == 0:
        statements.append(cur.strip())
        cur = ""
    else:
        cur += ch

functions, structs, enums = [], [], []
for st in statements:
    m = re.match(r"^typedef struct (msa_\w+) \{(.*)\} (msa_\w+)$", st)
    if m:
        fields = []
        for decl in filter(None, (d.strip() for d in m.group(2).split(";"))):
            if "," in decl or "(" in decl:
                fail(f"struct {m.group(1)}: write one plain field per declaration ('{decl}')")
            fields.append(split_type_name(decl, m.group(1)))
        structs.append((m.group(3), fields))
        continue
    m = re.match(r"^typedef enum (msa_\w+) \{(.*)\} (msa_\w+)$", st)
    if m:
        names = [e.split("=")[0].strip() for e in m.group(2).split(",") if e.strip()]
        enums.append((m.group(3), names))
        continue
    if st.startswith("typedef"):
        continue  # opaque handles: typedef struct msa_store_t msa_store_t
    m = re.match(r"^(.*?)\b(msa_\w+) ?\((.*)\)$", st)
    if m:
        if "(" in m.group(3):
            fail(f"{m.group(2)}: function-pointer parameters are not understood here")
        params = [p.strip() for p in m.group(3).split(",")]
        types = ["void"] if params == ["void"] else [split_type_name(p, m.group(2))[0] for p in params]
        functions.append(f"function {norm_type(m.group(1))} {m.group(2)}({', '.join(types)})")
if not functions:
    fail(f"no msa_ functions found in {header}")

# The numbers come from the compiler.
prog = ["#include <stddef.h>", "#include <stdio.h>", f'#include "{header}"', "int main(void) {",
        'printf("version %d.%d.%d\\n", MSA_VERSION_MAJOR, MSA_VERSION_MINOR, MSA_VERSION_PATCH);']
for name, fields in structs:
    prog.append(f'printf("struct {name} size %zu align %zu\\n", sizeof({name}), _Alignof({name}));')
    for ftype, fname in fields:
        prog.append(f'printf("  field {ftype} {fname} offset %zu size %zu\\n", '
                    f'offsetof({name}, {fname}), sizeof((({name}*)0)->{fname}));')
for name, values in enums:
    prog.append(f'printf("enum {name} size %zu\\n", sizeof({name}));')
    for v in values:
        prog.append(f'printf("  {v} = %lld\\n", (long long){v});')
prog += ["return 0;", "}"]
with open(os.path.join(work, "layout.c"), "w") as f:
    f.write("\n".join(prog) + "\n")
exe = os.path.join(work, "layout")
subprocess.run([cc, "-std=c11", "-o", exe, os.path.join(work, "layout.c")], check=True)
layout = subprocess.run([exe], check=True, capture_output=True, text=True).stdout.splitlines()
version_line, layout = layout[0], layout[1:]
current = [version_line] + functions + layout


def parse(lines):
    """version tuple and {key: value}: one key per function, struct, field,
    enum and enum value; plus the struct sizes to tell growth apart."""
    version, entries, container = None, {}, None
    for line in lines:
        if not line.strip() or line.startswith("#"):
            continue
        if line.startswith("version "):
            version = tuple(int(x) for x in line.split()[1].split("."))
        elif line.startswith("function "):
            name = re.search(r"\b(msa_\w+)\(", line).group(1)
            entries[("function", name)] = line
        elif line.startswith("struct "):
            container = line.split()[1]
            entries[("struct", container)] = line
        elif line.startswith("enum "):
            container = line.split()[1]
            entries[("enum", container)] = line
        elif line.startswith("  field "):
            entries[("field", container, line.split()[-5])] = line
        elif line.startswith("  "):
            entries[("value", container, line.split()[0])] = line
    return version, entries


header_text = "\n".join([
    "# The ABI of include/msa.h: generated by tools/check_abi.sh --update, which",
    "# the ctest abi_check compares with the header; do not edit by hand.",
    "# See tools/check_abi.sh for the rules (additions: minor version, changes: major).",
])
new_version, new = parse(current)

if library:
    nm = subprocess.run(["nm", "-D", "--defined-only", library], check=True, capture_output=True,
                        text=True).stdout.split("\n")
    exported = {l.split()[-1] for l in nm if l.strip() and l.split()[-2] in "TtWi"}
    declared = {k[1] for k in new if k[0] == "function"}
    if exported != declared:
        fail(f"{library} exports {sorted(exported - declared) or 'nothing extra'} beyond "
             f"include/msa.h's functions and lacks {sorted(declared - exported) or 'none'}")
    print(f"check_abi: {library} exports exactly the {len(declared)} functions of msa.h")

if not os.path.exists(abi_path):
    if not update:
        fail(f"{abi_path} is missing: run tools/check_abi.sh --update and commit it")
    old_version, old = None, {}
else:
    old_version, old = parse(open(abi_path).read().splitlines())


def fmt(v):
    return ".".join(map(str, v))


added = sorted(k for k in new if k not in old)
removed = sorted(k for k in old if k not in new)
changed = sorted(k for k in old if k in new and old[k] != new[k])


def field_place(entry):
    """(offset, size) of a field line: '  field TYPE NAME offset O size S'."""
    words = entry.split()
    return words[-3], words[-1]


# A field added to a struct whose size did not change lies in existing
# padding or reserved space: compatible. A grown struct shows as changed.
# A reserved field taken into use (gone, with an added field of the same
# struct at its offset and size: a caller that zeroed it asks for the new
# field's default) is such an addition, not a removal.
taken = [k for k in removed if k[0] == "field" and k[2].startswith("reserved") and
         any(a[0] == "field" and a[1] == k[1] and field_place(new[a]) == field_place(old[k]) for a in added)]
removed = [k for k in removed if k not in taken]
breaking = removed + changed
describe = [f"  - {old[k].strip()} (reserved, taken into use)" for k in taken] + \
           [f"  - {old[k].strip()}" for k in removed] + \
           [f"  ~ {old[k].strip()}\n    -> {new[k].strip()}" for k in changed] + \
           [f"  + {new[k].strip()}" for k in added]

if not added and not breaking:
    if update and old_version != new_version:
        open(abi_path, "w").write(header_text + "\n" + "\n".join(current) + "\n")
        print(f"check_abi: recorded version {fmt(new_version)} (no ABI change)")
    else:
        print(f"check_abi: OK, {len([k for k in new if k[0] == 'function'])} functions and "
              f"{len([k for k in new if k[0] == 'struct'])} structs as recorded at "
              f"{fmt(old_version or new_version)}")
    sys.exit(0)

report = "\n".join(describe)
if old_version is not None:
    if new_version < old_version:
        fail(f"msa.h says version {fmt(new_version)}, older than the recorded {fmt(old_version)}")
    if breaking and new_version[0] == old_version[0]:
        fail(f"incompatible ABI change at version {fmt(new_version)} (recorded {fmt(old_version)}): "
             f"bump MSA_VERSION_MAJOR, or keep the old declarations and add new ones "
             f"(a _v2 function or struct):\n{report}")
    if new_version[:2] == old_version[:2]:
        fail(f"ABI additions at version {fmt(new_version)} without a MSA_VERSION_MINOR bump:\n"
             f"{report}")
if not update:
    fail(f"the ABI changed with the version bump to {fmt(new_version)}; record it with "
         f"`bash tools/check_abi.sh --update` and commit include/msa.abi:\n{report}")
open(abi_path, "w").write(header_text + "\n" + "\n".join(current) + "\n")
print(f"check_abi: recorded the ABI of version {fmt(new_version)} in {abi_path}" +
      (f":\n{report}" if old else ""))
PY
