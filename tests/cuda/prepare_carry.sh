#!/usr/bin/env bash
# prepare_carry.sh — run HERE (the development machine, which has MPI, HDF5, cJSON and OpenBLAS), not
# on the GPU machine: builds dam_dist with CUDA=1 and packs it with the shared libraries the GPU
# machine lacks into build/cudacarry/ (build/ is ignored by git; name it in the device tool's `carry`), so that
# tests/cuda/run.sh can run the toy DAM on GPU against CPU there. CUDA's own libraries (cudart,
# cuBLAS, NCCL) are NOT packed: the GPU machine has them in Python's nvidia-* packages.
#   bash tests/cuda/prepare_carry.sh        -> build/cudacarry/dam_carry.tar.xz (+ MANIFEST)
# Open MPI's plugins, help files, mpirun and orted are packed too; run.sh unpacks them in a temporary
# directory and points Open MPI there (OPAL_PREFIX, the component path; singletons without orted).
set -euo pipefail
cd "$(dirname "$0")/../.."
CARRY=build/cudacarry
BUILD_DIR=${BUILD_DIR:-build/cuda-dist} # under build/: ignored, so it never travels by accident
LIMIT_MIB=${LIMIT_MIB:-48}
make -j"$(nproc)" CUDA=1 BUILD="$BUILD_DIR" "$BUILD_DIR/dam_dist" >/dev/null
rm -rf "$CARRY" && mkdir -p "$CARRY/root/bin" "$CARRY/root/lib"
cp "$BUILD_DIR/dam_dist" "$CARRY/root/bin/"
OMPI_PKGLIB=$(ompi_info --path pkglibdir --parsable 2>/dev/null | sed 's/.*://' || true)
OMPI_PKGLIB=${OMPI_PKGLIB:-/usr/lib/x86_64-linux-gnu/openmpi/lib/openmpi3}
OMPI_DATA=$(ompi_info --path pkgdatadir --parsable 2>/dev/null | sed 's/.*://' || true)
OMPI_DATA=${OMPI_DATA:-/usr/share/openmpi}
# libraries every Linux has, and CUDA's (found on the GPU machine): not packed
skip='^(libc|libm|libdl|librt|libpthread|libgcc_s|libstdc\+\+|ld-linux-x86-64|linux-vdso|libcudart|libcublas|libcublasLt|libnccl|libcuda)\.so'
deps() { ldd "$@" 2>/dev/null | awk '/=> \//{print $3}' | sort -u; }
MPIRUN=$(readlink -f "$(command -v mpirun)")
ORTED=$(readlink -f "$(command -v orted)")
for f in $(deps "$BUILD_DIR/dam_dist" "$OMPI_PKGLIB"/*.so "$MPIRUN" "$ORTED"); do
  b=$(basename "$f")
  [[ $b =~ $skip ]] && continue
  cp -L "$f" "$CARRY/root/lib/$b"
done
mkdir -p "$CARRY/root/ompi/lib/openmpi3" "$CARRY/root/ompi/share/openmpi" "$CARRY/root/ompi/bin"
cp "$MPIRUN" "$CARRY/root/ompi/bin/mpirun" # mpirun, and the daemon it starts (found under OPAL_PREFIX)
cp "$ORTED" "$CARRY/root/ompi/bin/orted"
cp -L "$OMPI_PKGLIB"/*.so "$CARRY/root/ompi/lib/openmpi3/" 2>/dev/null || true
cp -rL "$OMPI_DATA"/. "$CARRY/root/ompi/share/openmpi/" 2>/dev/null || true
(cd "$CARRY/root" && find . -type f | sort > ../MANIFEST)
tar -C "$CARRY/root" -cJf "$CARRY/dam_carry.tar.xz" .
rm -rf "$CARRY/root"
size=$(du -m "$CARRY/dam_carry.tar.xz" | cut -f1)
echo "prepare_carry: $CARRY/dam_carry.tar.xz, ${size} MiB, $(wc -l < "$CARRY/MANIFEST") files"
if [ "$size" -gt "$LIMIT_MIB" ]; then echo "prepare_carry: over ${LIMIT_MIB} MiB (the device tool carries 64 MiB in all)"; exit 1; fi
