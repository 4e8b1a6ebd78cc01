#!/usr/bin/env bash
# Gathers, from this machine's Debian packages, what building and running dms-retrofit needs
# besides PyTorch, CMake, a C++ compiler and nvcc, for a GPU machine that has exactly those
# (no Debian -dev packages, no network): headers, CMake/pkg-config files, the tools CMake
# looks for (protoc, pkg-config) and every shared library our programs load, with their own
# dependencies, down to glibc and libstdc++. Usage: scripts/gpu_bundle.sh [DIR=gpu-deps]
# DIR/usr is then a prefix (scripts/gpu_check.sh sets CMAKE_PREFIX_PATH, PKG_CONFIG_LIBDIR,
# LD_LIBRARY_PATH to it); DIR/MANIFEST lists the packages and the newest glibc symbol version
# the bundle needs. Static archives (but GoogleTest's, its only form), docs, man pages and
# Fortran/C++ HDF5 bindings are dropped; the bundle must stay <= 64 MiB.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-gpu-deps}
case "$DIR" in "" | / | /usr | /usr/*) echo "gpu_bundle.sh: refusing DIR '$DIR'" >&2; exit 2 ;; esac
ARCH_LIB=usr/lib/x86_64-linux-gnu
LIMIT_MIB=64
# What our CMake configuration and the core build need, by package.
PACKAGES=(
  libhdf5-dev libhdf5-103-1                                 # HDF5 (C)
  libsentencepiece-dev libsentencepiece0                    # SentencePiece (+ protobuf)
  libprotobuf-dev libprotobuf32 libprotobuf-lite32 protobuf-compiler libprotoc32
  libcli11-dev nlohmann-json3-dev libgtest-dev              # header-only / static
  libpcre2-dev libpcre2-8-0 libutf8proc-dev libutf8proc2    # chat templates
  libssl-dev libssl3                                        # sha256 (libcrypto)
  pkgconf-bin libpkgconf3                                   # pkg-config itself
)
# Present in any image that runs Python and PyTorch: never bundled.
BASE_LIBS='^(ld-linux-x86-64|libc|libm|libdl|libpthread|librt|libresolv|libutil|libgcc_s|libstdc\+\+)\.so'

if ! command -v apt-get >/dev/null || ! command -v dpkg-deb >/dev/null; then
  echo "gpu_bundle.sh: needs apt-get and dpkg-deb (a Debian machine)" >&2
  exit 1
fi
DEBS=$(mktemp -d /tmp/gpu_bundle_debs.XXXXXX)
trap 'rm -rf "$DEBS"' EXIT
rm -rf "$DIR"
mkdir -p "$DIR"

fetch() {  # package names -> extracted into DIR, names recorded
  (cd "$DEBS" && apt-get download -q "$@" >/dev/null 2>"$DEBS/apt.err") ||
    { cat "$DEBS/apt.err" >&2; echo "gpu_bundle.sh: apt-get download $* failed" >&2; exit 1; }
  for p in "$@"; do
    dpkg-deb -x "$DEBS/${p}"_*.deb "$DIR"
    echo "$p $(dpkg-deb -f "$DEBS/${p}"_*.deb Version)" >>"$DIR/MANIFEST.packages"
  done
  # Some packages (zlib1g, ...) still install to /lib: merge it into usr/lib like usrmerge.
  if [ -d "$DIR/lib" ]; then
    cp -a "$DIR/lib/." "$DIR/usr/lib/"
    rm -rf "${DIR:?}/lib"
  fi
}

# Libraries the bundle's shared objects and programs load that resolve outside the bundle
# and are not base libraries: the package owning each (this machine's copy).
missing_packages() {
  local f name path real
  find "$DIR/usr" -type f \( -name '*.so*' -o -path '*/bin/*' \) | while read -r f; do
    [[ "$(file -b "$f")" == ELF* ]] || continue
    LD_LIBRARY_PATH="$DIR/$ARCH_LIB" ldd "$f" 2>/dev/null | awk '$2 == "=>" && $3 ~ /^\// {print $1, $3}'
  done | sort -u | while read -r name path; do
    [[ "$name" =~ $BASE_LIBS ]] && continue
    [[ "$path" == "$PWD/$DIR/"* || "$path" == "$DIR/"* ]] && continue
    real=$(readlink -f "$path")
    # usrmerge: /lib/x86_64-linux-gnu/X is recorded as /usr/lib/... or the other way round.
    { dpkg -S "$real" || dpkg -S "/usr$real" || dpkg -S "${real#/usr}"; } 2>/dev/null | sed -n '1s/:.*//p'
  done | sort -u
}

fetch "${PACKAGES[@]}"
for _ in 1 2 3 4 5 6; do  # until closed (each round adds the dependencies' dependencies)
  mapfile -t more < <(missing_packages)
  [ ${#more[@]} -eq 0 ] && break
  echo "gpu_bundle.sh: adding dependencies: ${more[*]}"
  fetch "${more[@]}"
done
left=$(missing_packages)
[ -z "$left" ] || { echo "gpu_bundle.sh: still unresolved after 6 rounds: $left" >&2; exit 1; }

# Slim down: static archives (GoogleTest's are its only form), docs, HDF5's Fortran/C++/HL
# libraries and tools we do not use.
find "$DIR" -name '*.a' ! -name 'libgtest*.a' ! -name 'libgmock*.a' -delete
rm -rf "${DIR:?}/etc" "$DIR/usr/share/doc" "$DIR/usr/share/man" "$DIR/usr/share/lintian" "$DIR/usr/share/bug" \
  "$DIR/usr/share/info" "$DIR/usr/share/pkgconfig/protobuf"*
find "$DIR" \( -name 'libhdf5_serial_fortran*' -o -name 'libhdf5_serialhl_fortran*' \
  -o -name 'libhdf5_serial_cpp*' -o -name 'libhdf5_serial_hl_cpp*' -o -name '*.mod' \) -delete
find "$DIR" -xtype l -delete  # links to what was just dropped
# pkg-config files name /usr: make them relative to where they lie.
find "$DIR" -name '*.pc' | while read -r pc; do
  rel=$(realpath --relative-to="$(dirname "$pc")" "$DIR/usr")
  sed -i "s|^prefix=/usr\$|prefix=\${pcfiledir}/$rel|" "$pc"
done
# Absolute symlinks (Debian's lib*.so -> /lib/...): point them inside the bundle.
find "$DIR" -type l | while read -r l; do
  t=$(readlink "$l")
  [[ "$t" == /* ]] || continue
  ln -sfn "$(realpath --relative-to="$(dirname "$l")" -m "$DIR$t")" "$l"
done

# (objdump fails on the few non-ELF files: linker scripts, shell wrappers.)
glibc_needed=$({ find "$DIR/usr" -type f \( -name '*.so*' -o -path '*/bin/*' \) \
  -exec objdump -T {} + 2>/dev/null || true; } | grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -1)
{
  echo "# scripts/gpu_bundle.sh on $(. /etc/os-release && echo "$PRETTY_NAME"), $(date -u +%F)"
  echo "glibc_needed ${glibc_needed#GLIBC_}"
  sort "$DIR/MANIFEST.packages"
} >"$DIR/MANIFEST"
rm "$DIR/MANIFEST.packages"
size_mib=$(( $(du -sb "$DIR" | cut -f1) / 1048576 ))
echo "gpu_bundle.sh: $DIR: $(grep -vc '^#\|^glibc' "$DIR/MANIFEST") packages, ${size_mib} MiB, needs glibc >= ${glibc_needed#GLIBC_}"
if [ "$size_mib" -gt "$LIMIT_MIB" ]; then
  echo "gpu_bundle.sh: $DIR is ${size_mib} MiB, over the ${LIMIT_MIB} MiB limit" >&2
  exit 1
fi
