#!/usr/bin/env bash
# dry_run.sh — `make cuda-dry-run`: tests/cuda/run.sh here, without a GPU, in a setting like the GPU
# machine's, so that the GPU run's own script is known to get going before a GPU is lent:
#   1. link   make CUDA=1 cuda-test links check_kernels, check_nccl and bench_gpu;
#   2. carry  tests/cuda/prepare_carry.sh (skipped when the carry is newer than dam_dist's build):
#             no glibc library in it (by name, none needing GLIBC_PRIVATE), no need above GLIBC_MAX
#             that is not weak; with only the carry's lib/ (and CUDA's) on the library path, every
#             library of dam_dist, mpirun, orted and Open MPI's plugins resolves into the carry or is
#             glibc's, the compiler runtime's or CUDA's (ldd);
#   3. run    run.sh under `env -i` (nothing of this shell's environment) with a PATH that has no ssh
#             or rsh, from a foreign working directory, DRY_RUN=1: every stage that needs no GPU
#             passes (build, harness, the toy stage's CPU runs and its two-rank runs through the
#             carried mpirun), every GPU stage says "no GPU" in one line, the summary line comes.
#             Where `unshare -m` is allowed, the system's Open MPI, HDF5, OpenBLAS and cJSON are also
#             hidden (their files bind-mounted over with empty ones) while run.sh runs.
# Prints OK / NOT OK lines and ends with "cuda-dry-run: N passed, N failed"; exit status 1 on a failure.
# Variables: BUILD (the test programs, default build/cuda-gpu), BUILD_DIR (prepare_carry.sh's dam_dist
# build, default build/cuda-dist), CUDA_HOME, GLIBC_MAX.
set -u
REPO=$(cd "$(dirname "$0")/../.." && pwd)
cd "$REPO"
BUILD=${BUILD:-build/cuda-gpu}
export BUILD_DIR=${BUILD_DIR:-build/cuda-dist}
CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
GLIBC_MAX=${GLIBC_MAX:-2.35}
T=$(mktemp -d /tmp/dam_cuda_dry.XXXXXX)
trap 'rm -rf "$T"' EXIT
pass=0 fail=0
ok() { echo "OK      $*"; pass=$((pass + 1)); }
bad() { echo "NOT OK  $*"; fail=$((fail + 1)); }
t0=$(date +%s)

# ---- 1. link
if make -j"$(nproc)" CUDA=1 BUILD="$BUILD" cuda-test > "$T/link.log" 2>&1; then
  ok "link: make CUDA=1 cuda-test built $BUILD/cuda/{check_kernels,check_nccl,bench_gpu}"
else
  bad "link: make CUDA=1 cuda-test: $(grep -m3 -E 'undefined reference|error' "$T/link.log" | tr '\n' ' ' | cut -c1-300)"
fi

# ---- 2. carry
CARRY=build/cudacarry/dam_carry.tar.xz
newest=$(find src mpi cuda Makefile tests/cuda/prepare_carry.sh tests/cuda/glibc_* -newer "$CARRY" -type f 2> /dev/null | head -1)
if [ ! -f "$CARRY" ] || [ -n "$newest" ]; then
  if bash tests/cuda/prepare_carry.sh > "$T/carry.log" 2>&1; then
    ok "carry: prepare_carry.sh: $(tail -1 "$T/carry.log")"
  else
    bad "carry: prepare_carry.sh failed: $(grep -m2 -E 'REFUSED|error' "$T/carry.log" | tr '\n' ' ' | cut -c1-300)"
  fi
else
  ok "carry: $CARRY is newer than the sources (not rebuilt)"
fi
C=$T/carry
mkdir -p "$C" && tar -C "$C" -xJf "$CARRY" 2> /dev/null
glibc_names='^(libc|libm|libmvec|libdl|librt|libpthread|libresolv|libanl|libutil|libnsl|libBrokenLocale|libthread_db|libnss_[a-z0-9_]+|ld-linux(-x86-64)?)\.so'
mapfile -t elves < <(cd "$C" && find . -type f \( -name '*.so*' -o -path './bin/*' -o -path './ompi/bin/*' \) | sort)
own=$(for f in "${elves[@]}"; do [[ $(basename "$f") =~ $glibc_names ]] && echo "$f"; done)
private=$(cd "$C" && python3 "$REPO/tests/cuda/glibc_versions.py" report "$GLIBC_MAX" "${elves[@]}" | grep -v ' private=0 ')
newer=$(cd "$C" && python3 "$REPO/tests/cuda/glibc_versions.py" report "$GLIBC_MAX" "${elves[@]}" |
  sed -n 's/^\([^ ]*\) .*newer=\(.*\)$/\1 \2/p' | grep -v ' -$' | tr ',' '\n' | grep -v '(weak)$')
if [ ! -f "$C/bin/dam_dist" ]; then
  bad "carry: no bin/dam_dist in $CARRY"
elif [ -z "$own$private" ]; then
  ok "carry: none of glibc's libraries, none needing GLIBC_PRIVATE (${#elves[@]} ELF files)"
else
  bad "carry: glibc's own libraries packed: $(echo $own $private | cut -c1-300)"
fi
if [ -z "$newer" ]; then
  ok "carry: no file needs more than GLIBC_$GLIBC_MAX (but for weak needs served by lib/libdam_glibc_compat.so)"
else
  bad "carry: needs above GLIBC_$GLIBC_MAX: $(echo $newer | cut -c1-300)"
fi
allowed='^(libc|libm|libmvec|libdl|librt|libpthread|libresolv|libanl|libutil|libnsl|libnss_[a-z0-9_]+|ld-linux-x86-64|linux-vdso|libgcc_s|libstdc\+\+|libcudart|libcublas|libcublasLt|libnccl|libcuda)\.so'
unresolved=
for f in bin/dam_dist ompi/bin/mpirun ompi/bin/orted lib/*.so* ompi/lib/openmpi3/*.so; do
  [ -f "$C/$f" ] || continue
  while read -r name path; do
    [[ $path == "$C/lib/"* ]] && continue
    [[ $name =~ $allowed ]] && continue
    unresolved+=" $f:$name=>$path"
  done < <(env -i LD_LIBRARY_PATH="$C/lib:$CUDA_HOME/lib64" ldd "$C/$f" 2> /dev/null |
    awk '/=>/{print $1, ($3 == "not" ? "NOT-FOUND" : $3)}')
done
if [ -z "$unresolved" ]; then
  ok "carry: with only the carry's lib/ on the path, every library resolves into it or is glibc's, gcc's or CUDA's (ldd)"
else
  bad "carry: libraries from outside the carry:$(echo "$unresolved" | cut -c1-400)"
fi

# ---- 3. run.sh: env -i, no ssh or rsh on PATH, a foreign working directory, the system's MPI hidden
mkdir -p "$T/bin" "$T/elsewhere"
for d in "$CUDA_HOME/bin" /usr/local/bin /usr/bin /bin; do
  for x in "$d"/*; do
    b=$(basename "$x")
    case $b in ssh | ssh-* | slogin | rsh | rlogin | remsh | *.rsh) continue ;; esac
    [ -e "$T/bin/$b" ] || ln -s "$x" "$T/bin/$b"
  done
done
if PATH=$T/bin command -v ssh > /dev/null || PATH=$T/bin command -v rsh > /dev/null; then
  bad "run.sh: could not make a PATH without ssh and rsh"
fi
hide=()
if unshare -m --propagation private true 2> /dev/null; then
  : > "$T/empty"
  mkdir -p "$T/emptydir"
  while read -r f; do hide+=("$f"); done < <(ls -d /usr/lib/x86_64-linux-gnu/{libmpi,libopen-pal,libopen-rte,libhdf5,libopenblas,libblas,libcjson,libevent,libpmix}*.so* \
    /usr/lib/x86_64-linux-gnu/openblas-pthread/*.so* /usr/lib/x86_64-linux-gnu/openmpi/lib/*.so* 2> /dev/null)
  how="under unshare -m with the system's Open MPI, HDF5, OpenBLAS and cJSON hidden (${#hide[@]} files, /usr/lib/x86_64-linux-gnu/openmpi and /etc/openmpi)"
  cat > "$T/hide.sh" << EOF
set -e
for f in ${hide[*]}; do [ -f "\$f" ] && mount --bind "$T/empty" "\$f"; done
for d in /usr/lib/x86_64-linux-gnu/openmpi /usr/share/openmpi /etc/openmpi; do [ -d "\$d" ] && mount --bind "$T/emptydir" "\$d"; done
exec "\$@"
EOF
  wrap=(unshare -m --propagation private bash "$T/hide.sh")
else
  how="(unshare -m not allowed here: the system's libraries stay, the ldd check above stands for it)"
  wrap=()
fi
(cd "$T/elsewhere" && env -i PATH="$T/bin" HOME="$T" LANG=C OUT=out DRY_RUN=1 BUILD="$BUILD" CUDA_HOME="$CUDA_HOME" \
  "${wrap[@]}" bash "$REPO/tests/cuda/run.sh") > "$T/run.log" 2>&1
rc=$?
sed 's/^/        | /' "$T/run.log"
S=$T/elsewhere/out/summary.txt
last=$(tail -1 "$S" 2> /dev/null)
if [[ $last =~ ^run\.sh:\ [0-9]+\ passed,\ 0\ failed ]] && [ $rc -eq 0 ]; then
  ok "run.sh $how: $last"
else
  bad "run.sh $how: rc $rc, last line '$last'"
fi
for s in build harness toy; do
  grep -Eq "^$s +PASS " "$S" 2> /dev/null && ok "run.sh: $s passes without a GPU" || bad "run.sh: $s: $(grep -E "^$s " "$S" 2> /dev/null | cut -c1-200)"
done
for s in nvidia-smi kernels nccl bench sanitizer; do
  n=$(grep -Ec "^$s +SKIP +no GPU" "$S" 2> /dev/null)
  [ "$n" = 1 ] && ok "run.sh: $s says 'no GPU' in one line" || bad "run.sh: $s: $(grep -E "^$s " "$S" 2> /dev/null | cut -c1-200)"
done
if grep -q 'OK      toy tiny pp2 (2 ranks on cpu' "$T/elsewhere/out/toy.log" 2> /dev/null &&
  grep -q 'OK      toy tiny tp2 (2 ranks on cpu' "$T/elsewhere/out/toy.log"; then
  ok "run.sh: the carried mpirun ran pp2 and tp2 with two ranks, no ssh or rsh on PATH"
else
  bad "run.sh: the carried mpirun's two-rank runs: $(grep -m2 -E 'NOT OK|plm_rsh_agent' "$T/elsewhere/out/toy.log" 2> /dev/null | tr '\n' ' ' | cut -c1-300)"
fi
echo "cuda-dry-run: $pass passed, $fail failed ($(($(date +%s) - t0)) s)"
[ $fail -eq 0 ]
