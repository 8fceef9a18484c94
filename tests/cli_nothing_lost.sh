#!/usr/bin/env bash
# Nothing lost: checkpoints, outputs and stops that an operator can trust.
#   - keep: 6 saves with keep 2 leave exactly steps 5 and 6, and --resume works from them;
#   - output.dir: a user's directory, a source, a directory holding a source, a path inside a source,
#     a foreign <out>.tmp / <out>.old are refused (one line, exit 1, nothing touched); a complete
#     earlier output is replaced; --force replaces a user's directory but never a source; toy alike;
#   - stops: SIGINT and SIGTERM on one process, SIGUSR1 to mpirun: exit 75, a checkpoint (also with
#     checkpoint.every 0), and a printed resume command that, run literally, finishes the run with the
#     coefficients of an uninterrupted one (a second SIGINT and Ctrl-C under mpirun: cli_ctrl_c.sh);
#   - --resume auto; --eval-rows checked before the first step; the eval/training overlap warning;
#     settings changed on --resume refused naming the keys; tokenizers compared on a canonical hash;
#   - metrics: parents created, a resume leaves each step once;
#   - a full disk (a small tmpfs) during a checkpoint, on 1 rank and under mpirun -n 2, and during
#     the output: exit 1, one line, the previous checkpoint and `latest` intact, then resumable.
# The work folder has a space in its name, so that the printed resume command's quoting is tested.
set -u
BIN=$(realpath "${DAM_BIN:-./dam_dist}")
BUILD=$(realpath "${BUILD:-build}")
CMP="$BUILD/tests/tool_compare_coefs"
FIX=$(realpath tests/fixtures)
export ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OPENBLAS_NUM_THREADS=1
export OMPI_MCA_rmaps_base_oversubscribe=1
BASE=$(mktemp -d /tmp/dam_nothing_lost.XXXXXX)
T="$BASE/work dir"
mkdir -p "$T"
MNT="$BASE/mnt"
cleanup() { mountpoint -q "$MNT" 2>/dev/null && umount "$MNT"; rm -rf "$BASE"; }
trap cleanup EXIT
fails=0
ok()  { echo "OK      $*"; }
bad() { echo "NOT OK  $*"; fails=$((fails + 1)); }
run() { timeout 120 "$BIN" "$@"; }
steps_of() { grep '"step"' "$1" | sed 's/.*"step":\([0-9]*\),.*/\1/' | tr '\n' ' '; }
same_coefs() { "$CMP" "$1/dam_coefficients.safetensors" "$2/dam_coefficients.safetensors" "${3:-0}" > /dev/null; }
# one_error NAME WANT RC-FILE ERR-FILE: exit 1, exactly one stderr line, containing WANT
one_error() {
  local rc; rc=$(cat "$3")
  if [ "$rc" -eq 1 ] && [ "$(wc -l < "$4")" -eq 1 ] && grep -q "error:" "$4" && grep -qF -- "$2" "$4"; then
    ok "$1: $(cat "$4")"
  else bad "$1: rc=$rc stderr: $(head -3 "$4")"; fi
}
# expect_refused NAME WANT ARGS...: the run is refused before its first step
expect_refused() {
  local name=$1 want=$2; shift 2
  run "$@" > "$T/r.out" 2> "$T/r.err"; echo $? > "$T/r.rc"
  one_error "$name" "$want" "$T/r.rc" "$T/r.err"
  grep -q '^step' "$T/r.out" && bad "$name: steps ran before the refusal"
}

cd "$T" || exit 1
run toy --out toy --size small --models 2 --seed 5 > /dev/null || { bad toy; exit 1; }
run toy --out tiny --size tiny --models 2 --seed 3 > /dev/null || { bad "toy tiny"; exit 1; }
sed 's/"steps": 40/"steps": 8/' toy/config.json > toy/short.json      # 8 steps of the small toy
run --config toy/short.json --out ref > ref.log 2>&1 || bad "reference run: $(tail -2 ref.log)"

# ---------------------------------------------------------------- 1. keep
sed 's/"steps": 12/"steps": 6/; s/"output": {/"checkpoint": {"every": 1, "keep": 2}, "output": {/' tiny/config.json > tiny/keep.json
for i in 1 2 3; do # the old defect left a different wrong pair on each run
  rm -rf keep keep.ckpt keep.metrics.jsonl
  run --config tiny/keep.json --out keep > /dev/null 2>&1
  got=$(cd keep.ckpt && ls step_* | tr '\n' ' ')
  [ "$got" = "step_00000005.h5 step_00000006.h5 " ] && [ "$(cat keep.ckpt/latest)" = step_00000006.h5 ] \
    || { bad "keep 2 of 6 saves, run $i: left '$got', latest $(cat keep.ckpt/latest)"; continue; }
  [ $i -eq 3 ] && ok "keep 2 of 6 saves (3 runs): exactly step 5 and step 6, latest names step 6"
done
run --config tiny/keep.json --out keep --resume > keep2.log 2>&1 && grep -q "resumed from .*step_00000006.h5" keep2.log \
  && ok "--resume after pruning: from step 6" || bad "resume after pruning: $(tail -2 keep2.log)"

# ---------------------------------------------------------------- 2. output directories
mkdir -p user && echo "my notes" > user/notes.txt
expect_refused "a user's directory" "is not a complete dam_dist output" --config tiny/config.json --out user
[ "$(cat user/notes.txt)" = "my notes" ] && ok "the user's notes.txt is intact" || bad "notes.txt lost"
src_sum=$(cat tiny/m0/* | md5sum)
expect_refused "output.dir = a source" "is the input" --config tiny/config.json --out tiny/m0 --force
expect_refused "output.dir = a source by another path" "is the input" --config tiny/config.json --out "$T/tiny/../tiny/m0/"
expect_refused "output.dir holding a source (--force)" "contains the input" --config tiny/config.json --out tiny --force
expect_refused "output.dir inside a source (--force)" "lies inside the input" --config tiny/config.json --out tiny/m1/merged --force
ln -s tiny/m0 link_m0
expect_refused "output.dir a symlink to a source" "is the input" --config tiny/config.json --out link_m0 --force
sed 's/"output": {/"checkpoint": {"dir": "m0"}, "output": {/' tiny/config.json > tiny/ckptsrc.json
expect_refused "checkpoint.dir = a source" "checkpoint.dir" --config tiny/ckptsrc.json --out fresh --force
[ "$(cat tiny/m0/* | md5sum)" = "$src_sum" ] && [ ! -e fresh ] && ok "the source is byte-identical after every refusal" \
  || bad "a source changed"
mkdir -p out2.tmp && echo x > out2.tmp/mine.txt
expect_refused "a foreign <out>.tmp" "out2.tmp exists and was not made by dam_dist" --config tiny/config.json --out out2
mkdir -p out3.old && echo x > out3.old/mine.txt
expect_refused "a foreign <out>.old" "out3.old exists and was not made by dam_dist" --config tiny/config.json --out out3
[ -f out2.tmp/mine.txt ] && [ -f out3.old/mine.txt ] && ok "foreign .tmp/.old left intact" || bad ".tmp/.old removed"
run --config tiny/config.json --out done1 --max-steps 1 > /dev/null 2>&1 \
  && run --config tiny/config.json --out done1 --max-steps 2 > /dev/null 2>&1 \
  && grep -q '"steps":	2' done1/dam_report.json && [ ! -e done1.old ] && [ ! -e done1.tmp ] \
  && ok "a complete earlier output is replaced without --force" || bad "replacing a complete output"
mkdir -p empty
run --config tiny/config.json --out empty --max-steps 1 > /dev/null 2>&1 && [ -f empty/dam_report.json ] \
  && ok "an empty directory is used" || bad "empty output dir"
run --config tiny/config.json --out user --force --max-steps 1 > /dev/null 2>&1 && [ -f user/dam_report.json ] \
  && [ ! -e user/notes.txt ] && ok "--force replaces a user's directory" || bad "--force"
mkdir -p user2 && echo n > user2/n.txt
expect_refused "toy --out a user's directory" "is not a complete dam_dist output (no dam_toy.json" toy --out user2 --size tiny
run toy --out tiny2 --size tiny > /dev/null && run toy --out tiny2 --size tiny --seed 9 > /dev/null && [ -f tiny2/dam_toy.json ] \
  && ok "toy replaces its own earlier output" || bad "toy over toy"

# ---------------------------------------------------------------- 3. stops
# start LOG LAUNCH...: in the background, signalled directly (no `timeout` in between, which would
# take the signal itself); a watchdog kills it after 120 s so that nothing hangs
start() {
  local log=$1; shift
  "$@" > "$log" 2>&1 &
  pid=$!
  ( sleep 120; kill -KILL $pid 2> /dev/null ) > /dev/null 2>&1 &
  watchdog=$!
}
finish() { wait $pid; rc=$?; kill $watchdog 2> /dev/null; wait $watchdog 2> /dev/null; }
# wait_step LOG N: until the log shows step N (bounded)
wait_step() { for _ in $(seq 1 300); do grep -q "^step *$2/" "$1" 2>/dev/null && return 0; sleep 0.05; done; return 1; }
# resume_line LOG: the printed command, run literally by a shell
resume_line() { grep -o 'resume with: .*' "$1" | sed 's/^resume with: //'; }
stop_and_resume() { # NAME SIGNAL CONFIG TOLERANCE LAUNCH...: stop after step 2, then run the printed line
  local name=$1 sig=$2 cfg=$3 tol=$4; shift 4
  rm -rf s s.ckpt s.metrics.jsonl
  start s.log "$@" --config "$cfg" --out s
  wait_step s.log 2 || bad "$name: no step 2 in time"
  kill "-$sig" $pid; finish
  local line; line=$(resume_line s.log)
  if [ $rc -eq 75 ] && [ -f s.ckpt/latest ] && [ -n "$line" ]; then
    ok "$name: exit 75 after step $(grep -c '^step' s.log), checkpoint $(cat s.ckpt/latest), printed: $line"
  else bad "$name: rc=$rc $(tail -2 s.log)"; return; fi
  (cd / && timeout 120 bash -c "$line") > s2.log 2>&1
  if same_coefs s ref "$tol"; then
    ok "$name: the printed command, run from /, ends with the uninterrupted run's coefficients (tolerance $tol)"
  else bad "$name: resumed run: $(tail -2 s2.log)"; fi
  [ "$(steps_of s.metrics.jsonl)" = "1 2 3 4 5 6 7 8 " ] && ok "$name: metrics hold steps 1..8 once each" \
    || bad "$name: metrics steps $(steps_of s.metrics.jsonl)"
}
stop_and_resume "SIGINT, 1 process (checkpoint.every 0)" INT toy/short.json 0 "$BIN"
stop_and_resume "SIGTERM, 1 process" TERM toy/short.json 0 "$BIN"
sed 's/"seed": 1}/"seed": 1}, "parallel": {"dp": 1, "pp": 2, "tp": 1}/' toy/short.json > toy/pp2.json
stop_and_resume "SIGUSR1 to mpirun -n 2 (pp=2)" USR1 toy/pp2.json 1e-5 mpirun -n 2 "$BIN"
grep -q "resume with: cd .* && mpirun -n 2 " s.log && ok "the mpirun resume line names the launcher and its ranks" \
  || bad "mpirun resume line: $(resume_line s.log)"
# a signal that reaches one rank only (rank 1, not mpirun): the ranks agree, all stop, 75
rm -rf s s.ckpt
start s.log mpirun -n 2 "$BIN" --config toy/pp2.json --out s
wait_step s.log 2
rank1=$(pgrep -f "dam_dist --config toy/pp2.json --out s" | sort -n | tail -1)
kill -USR1 "$rank1"; finish
[ $rc -eq 75 ] && [ -f s.ckpt/latest ] && grep -q "stopped by SIGUSR1" s.log && ok "SIGUSR1 to rank 1 alone: all ranks stop, exit 75" \
  || bad "SIGUSR1 to one rank: rc=$rc $(tail -2 s.log)"

# a second SIGINT (only 1 s or more after the first), a doubled one and Ctrl-C under mpirun:
# tests/cli_ctrl_c.sh

# --resume auto: fresh without a checkpoint, resumes with one
rm -rf a a.ckpt
run --config tiny/config.json --out a --resume auto > a1.log 2>&1 && grep -q "no checkpoint in .*; starting fresh" a1.log \
  && ok "--resume auto without a checkpoint starts fresh" || bad "--resume auto fresh: $(tail -2 a1.log)"
run --config tiny/config.json --out a --resume auto > a2.log 2>&1 && grep -q "resumed from .*step_00000012.h5" a2.log \
  && ok "--resume auto with a checkpoint resumes" || bad "--resume auto resume: $(tail -2 a2.log)"

# ---------------------------------------------------------------- 4. checks before the first step
expect_refused "--eval-rows larger than a dataset" "--eval-rows 49: needs at least batch_size (2) and at most the 48 rows" \
  --config tiny/config.json --out e --eval-rows 49
[ ! -e e ] && [ ! -e e.ckpt ] && ok "no output or checkpoint after the refusal" || bad "--eval-rows left files"
expect_refused "--max-steps not a number" "--max-steps: expected a whole number" --config tiny/config.json --out e --max-steps 3x
run --config tiny/config.json --out ov --eval-rows 30 > ov.out 2> ov.err
grep -q "warning: training reads 24 rows of .*m0.h5 (steps 12 x batch_size 2 x micro_batches 1) but only 18 precede its last 30" ov.err \
  && ok "overlap warned: $(head -1 ov.err)" || bad "overlap warning: $(cat ov.err)"
run --config tiny/config.json --out ov --eval-rows 24 > ov.out 2> ov.err
grep -q "overlaps" ov.err && bad "overlap warned for disjoint rows" || ok "no overlap warning for 24 + 24 of 48 rows"

# settings changed on --resume
run --config tiny/config.json --out cf --max-steps 3 > /dev/null 2>&1
sed 's/"lr": 0.02/"lr": 0.03/; s/"temperature": 2.0/"temperature": 1.0/; s/"seed": 1}/"seed": 1}, "parallel": {"pp": 1}/' tiny/config.json > tiny/changed.json
expect_refused "--resume with other settings" "loss.temperature (2 -> 1), train.lr (0.02 -> 0.03)" --config tiny/changed.json --out cf --resume
run --config tiny/changed.json --out cf --resume --allow-config-change > cf.log 2>&1 && grep -q "resuming with changed settings" cf.log \
  && ok "--allow-config-change goes on, with a note" || bad "--allow-config-change: $(tail -2 cf.log)"

# tokenizers: datasets prepared with the sources' own tokenizer (the toy's) pass; another is refused
run prepare --tokenizer toy/m0 --input "$FIX/prepare_corpus.jsonl" --out tk_same.h5 --seq-len 32 --field text --pack > /dev/null
run prepare --tokenizer "$FIX/tokenizers/bytelevel_llama3" --input "$FIX/prepare_corpus.jsonl" --out tk_other.h5 --seq-len 32 --field text --pack > /dev/null
sed "s|data/m0.h5|$T/tk_same.h5|; s|data/m1.h5|$T/tk_same.h5|; s/\"seq_len\": 128/\"seq_len\": 32/; s/\"steps\": 40/\"steps\": 2/" toy/config.json > toy/tk_ok.json
sed "s|data/m0.h5|$T/tk_same.h5|; s|data/m1.h5|$T/tk_other.h5|; s/\"seq_len\": 128/\"seq_len\": 32/; s/\"steps\": 40/\"steps\": 2/" toy/config.json > toy/tk_bad.json
run --config toy/tk_ok.json --out tk > tk.log 2>&1 && ! grep -q "not compared" tk.log \
  && ok "datasets prepared with the sources' tokenizer: compared, accepted" || bad "same tokenizer: $(tail -2 tk.log)"
expect_refused "a dataset prepared with another tokenizer" "tk_other.h5 was prepared with another tokenizer" --config toy/tk_bad.json --out tk
run --config toy/tk_bad.json --out tk --allow-tokenizer-mismatch > tk.log 2>&1 && grep -q "tokenizer differs" tk.log \
  && ok "--allow-tokenizer-mismatch goes on, with a note" || bad "--allow-tokenizer-mismatch: $(tail -2 tk.log)"

# metrics beside an output whose parents do not exist yet; a resume after a crash keeps each step once
run --config tiny/config.json --out new/deeper/out > /dev/null 2>&1
[ "$(steps_of new/deeper/out.metrics.jsonl)" = "1 2 3 4 5 6 7 8 9 10 11 12 " ] && ok "metrics written under new parent directories" \
  || bad "metrics under new parents: $(ls new/deeper 2>&1)"
sed 's/"output": {/"checkpoint": {"every": 4, "keep": 3}, "output": {/' tiny/config.json > tiny/every4.json
run --config tiny/every4.json --out cr > cr1.log 2>&1
echo step_00000008.h5 > cr.ckpt/latest && rm cr.ckpt/step_00000012.h5   # as if it died after step 11
run --config tiny/every4.json --out cr --resume > cr2.log 2>&1
[ "$(steps_of cr.metrics.jsonl)" = "1 2 3 4 5 6 7 8 9 10 11 12 " ] && ok "resumed at 8 after a crash: metrics hold steps 1..12 once each" \
  || bad "metrics after resume: $(steps_of cr.metrics.jsonl)"
[ "$(grep '^step' cr1.log | tail -4 | sed 's/ | [0-9]* tok.*//')" = "$(grep '^step' cr2.log | sed 's/ | [0-9]* tok.*//')" ] \
  && ok "steps 9..12 after the resume repeat the first run's losses exactly" || bad "resumed steps differ"

# ---------------------------------------------------------------- 5. a full disk
mkdir -p "$MNT"
if ! mount -t tmpfs -o size=3M tmpfs "$MNT" 2> mount.err; then
  if [ -n "${CI:-}" ]; then bad "full disk: cannot mount a tmpfs: $(cat mount.err)"; else echo "SKIP    full disk (mounting a tmpfs needs root)"; fi
  echo "cli_nothing_lost: $fails failure(s)"; [ $fails -eq 0 ]; exit
fi
fill() { # fill the tmpfs, leaving $1 KiB
  rm -f "$MNT/filler"; local free_kb; free_kb=$(df -k --output=avail "$MNT" | tail -1)
  [ "$free_kb" -gt "$1" ] && dd if=/dev/zero of="$MNT/filler" bs=1k count=$((free_kb - $1)) 2> /dev/null
}
full_disk_ckpt() { # NAME LEAVE-KiB CONFIG WANT LAUNCH...: a checkpoint save at step 3 meets a full disk
  local name=$1 leave=$2 cfg=$3 want=$4; shift 4
  rm -rf "$MNT"/* fd fd.ckpt
  "$@" --config "$cfg" --out fd --max-steps 2 > /dev/null 2>&1 || { bad "$name: first run"; return; }
  fill "$leave"
  "$@" --config "$cfg" --out fd --resume --max-steps 4 > fd.out 2> fd.err; local rc=$?
  local err; err=$(grep "error:" fd.err | head -1)
  if [ $rc -eq 1 ] && [ "$(grep -c "error:" fd.err)" -eq 1 ] && echo "$err" | grep -qF -- "$want" \
     && echo "$err" | grep -q "No space left on device.*the previous checkpoint .*step_00000002.h5 and 'latest' are intact" \
     && [ "$(cat "$MNT/ck/latest")" = step_00000002.h5 ] && h5ls "$MNT/ck/step_00000002.h5" > /dev/null; then
    ok "$name: exit $rc, '$err'"
  else bad "$name: rc=$rc $(head -3 fd.err)"; return; fi
  rm -f "$MNT/filler"
  "$@" --config "$cfg" --out fd --resume --max-steps 8 > /dev/null 2>&1 && same_coefs fd ref 1e-5 \
    && ok "$name: after freeing space, --resume finishes with the uninterrupted run's coefficients" || bad "$name: resume after freeing"
}
sed "s|\"output\": {|\"checkpoint\": {\"dir\": \"$MNT/ck\", \"every\": 1}, \"output\": {|" toy/short.json > toy/fd.json
full_disk_ckpt "full disk when a checkpoint file is created" 0 toy/fd.json H5Fcreate timeout 120 "$BIN"
full_disk_ckpt "full disk while a checkpoint is written" 96 toy/fd.json "dam_dist: error" timeout 120 "$BIN"
sed 's/"seed": 1}/"seed": 1}, "parallel": {"dp": 1, "pp": 2, "tp": 1}/' toy/fd.json > toy/fdpp2.json
# stage 0 (rank 0) writes its half of the file first, then stage 1 (rank 1) adds the rest: with
# 96 KiB left rank 0 meets the full disk, with 160 KiB rank 1 does, while rank 0 waits at a barrier
full_disk_ckpt "full disk on rank 0 under mpirun -n 2 (pp=2)" 96 toy/fdpp2.json "[rank 0]" timeout 120 mpirun -n 2 "$BIN"
full_disk_ckpt "full disk on rank 1 under mpirun -n 2 (pp=2)" 160 toy/fdpp2.json "[rank 1]" timeout 120 mpirun -n 2 "$BIN"

# the output: nothing that looks complete, the checkpoint is, and --resume writes the output later
rm -rf "$MNT"/*
run --config toy/short.json --out "$MNT/out" > fo.out 2> fo.err; rc=$?
if [ $rc -eq 1 ] && [ "$(wc -l < fo.err)" -eq 1 ] && grep -q "No space left on device.*the checkpoint of step 8 .* is complete: rerun with --resume" fo.err \
   && [ ! -e "$MNT/out" ]; then ok "full disk during the output: no $MNT/out, '$(cat fo.err)'"
else bad "full disk output: rc=$rc $(cat fo.err) $(ls "$MNT")"; fi
mount -o remount,size=64M "$MNT" # room again, contents kept
run --config toy/short.json --out "$MNT/out" --resume > fo2.log 2>&1 && same_coefs "$MNT/out" ref 0 && [ ! -e "$MNT/out.tmp" ] \
  && cmp -s "$MNT/out/model.safetensors" ref/model.safetensors \
  && ok "then --resume writes the output: the uninterrupted run's model, byte for byte" || bad "output after remount: $(tail -2 fo2.log)"
echo "cli_nothing_lost: $fails failure(s)"
[ $fails -eq 0 ]
