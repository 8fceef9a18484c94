#!/usr/bin/env bash
# prepare_carry.sh — run HERE (the development machine, which has MPI, HDF5, cJSON and OpenBLAS), not
# on the GPU machine: builds dam_dist with CUDA=1 and packs it with the shared libraries the GPU
# machine lacks into build/cudacarry/ (build/ is ignored by git; name it in the device tool's `carry`), so that
# tests/cuda/run.sh can run the toy DAM on GPU against CPU there. CUDA's own libraries (cudart,
# cuBLAS, NCCL) are NOT packed: the GPU machine has them in Python's nvidia-* packages.
#   bash tests/cuda/prepare_carry.sh        -> build/cudacarry/dam_carry.tar.xz (+ MANIFEST)
# Open MPI's plugins, help files, mpirun and orted are packed too; run.sh unpacks them in a temporary
# directory and points Open MPI there (OPAL_PREFIX, the component path; singletons without orted).
#
# glibc is the GPU machine's own (its version may be older than this machine's, e.g. 2.35):
#   - none of glibc's libraries is packed (libc, libm, libresolv, libnss_*, ...: by name, by the
#     package that owns them where dpkg knows, and any library that needs GLIBC_PRIVATE);
#   - every packed file may need at most GLIBC_MAX (default 2.35; tests/cuda/glibc_versions.py reads
#     the version needs). A need above it whose symbols tests/cuda/glibc_compat.c provides (today:
#     libevent's arc4random, GLIBC_2.36) is marked weak and lib/libdam_glibc_compat.so is packed, for
#     run.sh to preload; any other need above GLIBC_MAX refuses the carry, naming file and symbol.
set -euo pipefail
cd "$(dirname "$0")/../.."
CARRY=build/cudacarry
BUILD_DIR=${BUILD_DIR:-build/cuda-dist} # under build/: ignored, so it never travels by accident
LIMIT_MIB=${LIMIT_MIB:-48}
GLIBC_MAX=${GLIBC_MAX:-2.35}
TOOLS=tests/cuda
make -j"$(nproc)" CUDA=1 BUILD="$BUILD_DIR" "$BUILD_DIR/dam_dist" >/dev/null
rm -rf "$CARRY" && mkdir -p "$CARRY/root/bin" "$CARRY/root/lib"
WORKC=$(mktemp -d /tmp/dam_carry.XXXXXX)
trap 'rm -rf "$WORKC"' EXIT
cp "$BUILD_DIR/dam_dist" "$CARRY/root/bin/"
OMPI_PKGLIB=$(ompi_info --path pkglibdir --parsable 2>/dev/null | sed 's/.*://' || true)
OMPI_PKGLIB=${OMPI_PKGLIB:-/usr/lib/x86_64-linux-gnu/openmpi/lib/openmpi3}
OMPI_DATA=$(ompi_info --path pkgdatadir --parsable 2>/dev/null | sed 's/.*://' || true)
OMPI_DATA=${OMPI_DATA:-/usr/share/openmpi}
# glibc's libraries (the GPU machine's own must be used), the compiler's runtime every Linux has, and
# CUDA's (found on the GPU machine): not packed
glibc='^(libc|libm|libmvec|libdl|librt|libpthread|libresolv|libanl|libutil|libnsl|libBrokenLocale|libthread_db|libcidn|libnss_[a-z0-9_]+|libmemusage|libpcprofile|libc_malloc_debug|ld-linux-x86-64|ld-linux|linux-vdso)\.so'
skip='^(libgcc_s|libstdc\+\+|libcudart|libcublas|libcublasLt|libnccl|libcuda|libnvidia-[a-z-]+)\.so'
deps() { ldd "$@" 2>/dev/null | awk '/=> \//{print $3}' | sort -u; }
from_libc6() { # FILE: owned by glibc's Debian/Ubuntu package (libc6, libc6-*)
  command -v dpkg > /dev/null || return 1
  dpkg -S "$1" "$(readlink -f "$1")" 2> /dev/null | grep -q '^libc6[a-z0-9-]*[:,]'
}
MPIRUN=$(readlink -f "$(command -v mpirun)")
ORTED=$(readlink -f "$(command -v orted)")
skipped=()
for f in $(deps "$BUILD_DIR/dam_dist" "$OMPI_PKGLIB"/*.so "$MPIRUN" "$ORTED"); do
  b=$(basename "$f")
  [[ $b =~ $skip ]] && continue
  if [[ $b =~ $glibc ]] || from_libc6 "$f" || objdump -T "$f" 2> /dev/null | grep -q GLIBC_PRIVATE; then
    skipped+=("$b")
    continue
  fi
  cp -L "$f" "$CARRY/root/lib/$b"
done
echo "prepare_carry: glibc's own, not packed (the GPU machine's are used): ${skipped[*]:-none}"
mkdir -p "$CARRY/root/ompi/lib/openmpi3" "$CARRY/root/ompi/share/openmpi" "$CARRY/root/ompi/bin"
cp "$MPIRUN" "$CARRY/root/ompi/bin/mpirun" # mpirun, and the daemon it starts (found under OPAL_PREFIX)
cp "$ORTED" "$CARRY/root/ompi/bin/orted"
cp -L "$OMPI_PKGLIB"/*.so "$CARRY/root/ompi/lib/openmpi3/" 2>/dev/null || true
cp -rL "$OMPI_DATA"/. "$CARRY/root/ompi/share/openmpi/" 2>/dev/null || true

# what glibc the packed files need: at most GLIBC_MAX, or weakened for glibc_compat.c, or refused
gcc -O2 -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -fPIC -shared -Wl,--version-script=$TOOLS/glibc_compat.map \
  -o "$WORKC/libdam_glibc_compat.so" $TOOLS/glibc_compat.c
compat=$(nm -D --defined-only "$WORKC/libdam_glibc_compat.so" | awk '{print $3}')
mapfile -t files < <(cd "$CARRY/root" && find . -type f | sort)
refused=0 weakened=()
while read -r path rest; do
  case $rest in *error=*) continue ;; esac
  if [[ $rest != *private=0* ]]; then
    echo "prepare_carry: REFUSED: $path needs GLIBC_PRIVATE (glibc's own library: the GPU machine's must be used)"
    refused=1
  fi
  newer=${rest##*newer=}
  [ "$newer" = - ] && continue
  for need in ${newer//,/ }; do
    need=${need%(weak)}
    if ! grep -qxF "${need/@/@@}" <<< "$compat"; then
      echo "prepare_carry: REFUSED: $path needs $need, newer than GLIBC_MAX=$GLIBC_MAX (the GPU machine's glibc may be that old), and tests/cuda/glibc_compat.c does not provide it"
      refused=1
    fi
  done
  if [ $refused -eq 0 ]; then
    python3 $TOOLS/glibc_versions.py weaken "$GLIBC_MAX" "$CARRY/root/$path" > /dev/null
    weakened+=("$(basename "$path") ($newer)")
  fi
done < <(cd "$CARRY/root" && python3 "$OLDPWD/$TOOLS/glibc_versions.py" report "$GLIBC_MAX" "${files[@]}")
if [ $refused -ne 0 ]; then
  echo "prepare_carry: refused (GLIBC_MAX=$GLIBC_MAX; set it to the GPU machine's glibc, \`ldd --version\` there, if newer)"
  exit 1
fi
if [ ${#weakened[@]} -gt 0 ]; then
  cp "$WORKC/libdam_glibc_compat.so" "$CARRY/root/lib/"
  echo "prepare_carry: needs above GLIBC_$GLIBC_MAX made weak, served by lib/libdam_glibc_compat.so (run.sh preloads it): ${weakened[*]}"
fi
echo "prepare_carry: every packed file needs at most GLIBC_$GLIBC_MAX (but for the weak needs above)"
(cd "$CARRY/root" && find . -type f | sort > ../MANIFEST)
XZ_OPT=${XZ_OPT:--T0 -6} tar -C "$CARRY/root" -cJf "$CARRY/dam_carry.tar.xz" . # xz on every core
rm -rf "$CARRY/root"
size=$(du -m "$CARRY/dam_carry.tar.xz" | cut -f1)
echo "prepare_carry: $CARRY/dam_carry.tar.xz, ${size} MiB, $(wc -l < "$CARRY/MANIFEST") files"
if [ "$size" -gt "$LIMIT_MIB" ]; then echo "prepare_carry: over ${LIMIT_MIB} MiB (the device tool carries 64 MiB in all)"; exit 1; fi
