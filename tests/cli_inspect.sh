#!/usr/bin/env bash
# dam_dist inspect --coefficients: the per-tensor mean of each source row, on a coefficients file
# written byte by byte here (values chosen so that the means are exact in binary).
set -euo pipefail
BIN=${DAM_BIN:-./dam_dist}
W=$(mktemp -d); trap 'rm -rf "$W"' EXIT
fail() { echo "NOT OK: $*"; exit 1; }
f32() { for v in "$@"; do case $v in  # little-endian IEEE-754 bytes of a few exact values
  1) printf '\x00\x00\x80\x3f' ;; 2) printf '\x00\x00\x00\x40' ;; 0.5) printf '\x00\x00\x00\x3f' ;;
  0) printf '\x00\x00\x00\x00' ;; 3) printf '\x00\x00\x40\x40' ;; esac; done; }
write_st() { # FILE HEADER-JSON then data on stdin
  local h=$2; while [ $(( ${#h} % 8 )) -ne 0 ]; do h="$h "; done
  { printf "$(printf '\\x%02x' $(( ${#h} & 255 )) $(( ${#h} >> 8 & 255 )))\\x00\\x00\\x00\\x00\\x00\\x00"
    printf '%s' "$h"; cat; } >"$1"; }
hdr='{"model.embed_tokens.weight":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]},'
hdr+='"model.layers.3.mlp.up_proj.weight":{"dtype":"F32","shape":[2,3],"data_offsets":[16,40]},'
hdr+='"model.layers.0.self_attn.q_proj.bias":{"dtype":"F32","shape":[2,1],"data_offsets":[40,48]}}'
{ f32 1 2 0.5 0.5; f32 1 2 3 0 0 3; f32 3 0.5; } | write_st "$W/c.safetensors" "$hdr"
out=$("$BIN" inspect --coefficients "$W/c.safetensors")
echo "$out"
grep -qx -- '-1 embed_tokens 1.500000 0.500000' <<<"$out" || fail "embedding means"
grep -qx -- '3 up_proj 2.000000 1.000000' <<<"$out" || fail "layer 3 up_proj means"
grep -qx -- '0 q_proj_bias 3.000000 0.500000' <<<"$out" || fail "bias means"
grep -qx -- '# layer kind source0 source1' <<<"$out" || fail "a file without row names: sources not source0 source1"
# the sources' names from __metadata__ "coefficient_rows" (what the DAM run writes)
hdr='{"__metadata__":{"format":"pt","coefficient_rows":"[\"math\",\"code\"]"},'"${hdr#\{}"
{ f32 1 2 0.5 0.5; f32 1 2 3 0 0 3; f32 3 0.5; } | write_st "$W/named.safetensors" "$hdr"
out=$("$BIN" inspect --coefficients "$W/named.safetensors")
grep -qx -- '# layer kind math code' <<<"$out" || fail "row names from the metadata: $(head -2 <<<"$out")"
grep -qx -- '3 up_proj 2.000000 1.000000' <<<"$out" || fail "layer 3 up_proj means with metadata"
# a DAM run's file names its sources, also when pipeline stages wrote it in parts
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OPENBLAS_NUM_THREADS=1
"$BIN" toy --size tiny --models 2 --out "$W/toy" >/dev/null
sed 's/"steps": 12/"steps": 1/; s/"seed": 1}/"seed": 1}, "parallel": {"pp": 2}/' "$W/toy/config.json" >"$W/toy/pp2.json"
for run in "1 config.json" "2 pp2.json"; do
  set -- $run
  mpirun -q -n "$1" "$BIN" --config "$W/toy/$2" --out "$W/out$1" >"$W/run.log" 2>&1 || fail "DAM run on $1 rank(s): $(tail -2 "$W/run.log")"
  head=$("$BIN" inspect --coefficients "$W/out$1/dam_coefficients.safetensors" | sed -n 2p)
  [ "$head" = "# layer kind m0 m1" ] || fail "DAM run on $1 rank(s): header '$head', not the sources m0 m1"
done
echo "ok: inspect --coefficients names the sources of a DAM run's file (1 rank, and 2 pipeline stages)"
# rows that disagree between tensors, and a model file instead of coefficients: one line, exit 1
hdr='{"a.weight":{"dtype":"F32","shape":[2,1],"data_offsets":[0,8]},"b.weight":{"dtype":"F32","shape":[1,2],"data_offsets":[8,16]}}'
f32 1 2 1 2 | write_st "$W/bad.safetensors" "$hdr"
if err=$("$BIN" inspect --coefficients "$W/bad.safetensors" 2>&1); then fail "mismatched rows accepted"; fi
grep -q "b.weight' has 1 source rows" <<<"$err" || fail "message: $err"
[ "$(wc -l <<<"$err")" -eq 1 ] || fail "more than one line: $err"
if "$BIN" inspect --coefficients "$W/c.safetensors" --model "$W" 2>/dev/null; then fail "both flags accepted"; fi
echo OK
