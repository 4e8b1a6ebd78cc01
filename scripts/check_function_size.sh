#!/usr/bin/env bash
# Lists the functions in library code (common/ model/ data/ checkpoints/ trainer/, not
# tests/ or bench/) longer than LINES lines (default 80), by clang-tidy's
# readability-function-size check, and exits 1 when there is any (0 when none, 2 on a
# setup error). Functions defined in library headers count too, once each.
# Usage: scripts/check_function_size.sh [BUILD_DIR] [LINES] [FILE.cpp...]
#   FILE.cpp: check only these translation units (default: every library .cpp)
#   BUILD_DIR: a CMake build configured with -DCMAKE_EXPORT_COMPILE_COMMANDS=ON (default build)
#   CLANG_TIDY (environment): the clang-tidy to run (default clang-tidy); JOBS: how many at once
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD="$(cd "${1:-$ROOT/build}" 2>/dev/null && pwd)" || {
  echo "no build folder ${1:-$ROOT/build}" >&2
  exit 2
}
LINES="${2:-80}"
shift $(($# < 2 ? $# : 2))
ONLY=()
for f in "$@"; do ONLY+=("$(realpath "$f")"); done
CLANG_TIDY="${CLANG_TIDY:-clang-tidy}"
JOBS="${JOBS:-$(nproc)}"
if [[ ! -f "$BUILD/compile_commands.json" ]]; then
  echo "$BUILD/compile_commands.json missing: configure with -DCMAKE_EXPORT_COMPILE_COMMANDS=ON" >&2
  exit 2
fi

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

# The build uses a GCC precompiled header that clang cannot read: give clang the
# headers the PCH stands for instead, and keep only the library's translation units.
python3 - "$BUILD/compile_commands.json" "$WORK/compile_commands.json" "$ROOT" "${ONLY[@]}" <<'EOF' || exit 2
import json, os, re, shlex, sys
src, dst, root = sys.argv[1:4]
only = set(sys.argv[4:])
library = ("common/", "model/", "data/", "checkpoints/", "trainer/")
out = []
for entry in json.load(open(src)):
    rel = os.path.relpath(entry["file"], root)
    if not rel.startswith(library) or (only and os.path.realpath(entry["file"]) not in only):
        continue
    args = entry.get("arguments") or shlex.split(entry["command"])
    kept, i = [], 0
    while i < len(args):
        a = args[i]
        if a == "-include" and i + 1 < len(args) and "cmake_pch" in args[i + 1]:
            pch = args[i + 1]
            headers = re.findall(r"#include\s*[<\"]([^>\"]+)[>\"]", open(pch).read()) if os.path.exists(pch) else []
            for h in headers:
                kept += ["-include", h]
            i += 2
            continue
        if a == "-Winvalid-pch" or "cmake_pch" in a:
            i += 1
            continue
        kept.append(a)
        i += 1
    entry.pop("command", None)
    entry["arguments"] = kept
    out.append(entry)
json.dump(out, open(dst, "w"), indent=1)
with open(os.path.join(os.path.dirname(dst), "files.txt"), "w") as files:
    for e in out:
        print(e["file"], file=files)
if not out:
    sys.exit("no library translation units to check")
EOF

HEADER_FILTER="^$ROOT/(common|model|data|checkpoints|trainer)/"
CONFIG="{CheckOptions: [{key: readability-function-size.LineThreshold, value: $LINES}]}"
# One clang-tidy per file; its output goes to a file per translation unit.
xargs -a "$WORK/files.txt" -P "$JOBS" -I{} sh -c \
  '"$0" -p "$1" --quiet --checks="-*,readability-function-size" --config="$2" \
     --header-filter="$3" "$4" >"$1/$(echo "$4" | tr / _).log" 2>&1 || true' \
  "$CLANG_TIDY" "$WORK" "$CONFIG" "$HEADER_FILTER" {}

if grep -h -E 'error:' "$WORK"/*.log | grep -v 'exceeds recommended' | head -5 | grep -q .; then
  echo "clang-tidy reported errors (first ones):" >&2
  grep -h -E 'error:' "$WORK"/*.log | head -5 >&2
  exit 2
fi

# warning: function 'f' exceeds recommended size/complexity thresholds, then
# note: N lines including whitespace and comments (threshold 80)
python3 - "$ROOT" "$WORK" <<'EOF'
import glob, os, re, sys
root, work = sys.argv[1:3]
warn = re.compile(r"^(.*?):(\d+):\d+: warning: function '(.*)' exceeds recommended size")
note = re.compile(r": note: (\d+) lines including whitespace")
found = {}
for log in glob.glob(os.path.join(work, "*.log")):
    current = None
    for line in open(log, errors="replace"):
        m = warn.match(line)
        if m:
            current = (os.path.relpath(m.group(1), root), int(m.group(2)), m.group(3))
            continue
        n = note.search(line)
        if n and current:
            found[current] = int(n.group(1))
            current = None
for (path, line, name), count in sorted(found.items()):
    print(f"{path}:{line}: {name}: {count} lines")
print(f"{len(found)} function(s) over the threshold", file=sys.stderr)
sys.exit(1 if found else 0)
EOF
