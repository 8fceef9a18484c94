#!/usr/bin/env bash
# Ctrl-C, as an operator meets it (README "Checkpoints, stops and resumes", the launcher table):
#   a. one process: the first SIGINT is acknowledged at once on stderr ("stopping after step N, about
#      S s ... a second Ctrl-C aborts without a checkpoint"), then exit 75 with a checkpoint;
#   b. one interrupt delivered twice (two kills 10 ms apart, as a forwarding shell; `timeout -s INT`,
#      which signals the process and then its group) is not a second Ctrl-C: exit 75, a checkpoint;
#   c. a second SIGINT 1.2 s after the acknowledgement aborts: 130, no checkpoint;
#   d. `dam_dist launch mpirun -n 2 ...` started in a session of its own (as a terminal would) and
#      given SIGINT to its whole process group (Ctrl-C at the terminal): 75, a checkpoint, a resume
#      line that starts with `dam_dist launch mpirun -n 2`; the same interrupt doubled likewise;
#      a second Ctrl-C 1.2 s later: 130.
# The ranks' steps are the small toy's (0.1 s), or 24 micro-batches of it (about 3 s a step) where a
# stop must still be running a second later. The last case's step must outlast more: the second
# Ctrl-C comes 1.2 s after the acknowledgement, and then mpirun ends the ranks with SIGTERM, which a
# rank already stopping does not act on, and SIGKILL about 1 s later (2 s measured); a step that ends
# in that time still writes its checkpoint. It runs 64 micro-batches under pp=2 (about 12 s a step
# here: about 8 s to spare), so that only an abort that does not end the job can leave a checkpoint.
# About 40 s on 2 cores.
set -u
BIN=$(realpath "${DAM_BIN:-./dam_dist}")
export ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OPENBLAS_NUM_THREADS=1
export OMPI_MCA_rmaps_base_oversubscribe=1
T=$(mktemp -d /tmp/dam_ctrl_c.XXXXXX)
trap 'rm -rf "$T"' EXIT
cd "$T" || exit 1
fails=0
ok()  { echo "OK      $*"; }
bad() { echo "NOT OK  $*"; fails=$((fails + 1)); }

timeout 120 "$BIN" toy --out toy --size small --models 2 --seed 5 > /dev/null || { bad toy; exit 1; }
# long: 0.1 s steps, never reaching the end; slow: about 3 s steps; slower: about 12 s steps under
# pp=2 (slower2); *2: pp=2 for mpirun -n 2
sed 's/"steps": 40/"steps": 100000/' toy/config.json > toy/long.json
sed 's/"micro_batches": 1/"micro_batches": 24/' toy/long.json > toy/slow.json
sed 's/"micro_batches": 1/"micro_batches": 64/' toy/long.json > toy/slower.json
for c in long slower; do sed 's/"seed": 1}/"seed": 1}, "parallel": {"dp": 1, "pp": 2, "tp": 1}/' toy/$c.json > toy/${c}2.json; done

# start LOG CMD...: in a new session (setsid: its own process group, as a terminal's job), output to
# LOG; pid and pgid of it, and a watchdog that kills the group after 120 s
start() {
  local log=$1; shift
  rm -rf out out.ckpt out.metrics.jsonl
  setsid "$@" --out out > "$log" 2>&1 < /dev/null &
  pid=$!
  ( sleep 120; kill -KILL -- "-$pid" ) > /dev/null 2>&1 &
  watchdog=$!
}
finish() { wait $pid; rc=$?; kill $watchdog 2> /dev/null; wait $watchdog 2> /dev/null; }
# wait_for LOG REGEX: until the log has a matching line (bounded: 60 s; not after the run ended)
wait_for() {
  for _ in $(seq 1 1200); do
    grep -Eq -- "$2" "$1" 2>/dev/null && return 0
    kill -0 $pid 2> /dev/null || return 1
    sleep 0.05
  done
  return 1
}
ACK='SIGINT: stopping after step [0-9]+, about [0-9]+\.[0-9] s, then a checkpoint; a second Ctrl-C aborts without a checkpoint'
checkpointed() { [ $rc -eq 75 ] && [ -f out.ckpt/latest ] && grep -q "stopped by SIG" "$1"; }

# a. the first SIGINT is acknowledged at once
start a.log "$BIN" --config toy/long.json
wait_for a.log '^step +2/' || bad "a: no step 2"
t0=$(date +%s%N); kill -INT $pid
wait_for a.log "$ACK"; t_ack=$((($(date +%s%N) - t0) / 1000000))
finish
if grep -Eq "$ACK" a.log && checkpointed a.log && [ $t_ack -lt 1000 ] \
   && [ "$(grep -En "$ACK|stopped by" a.log | head -1 | grep -c 'about')" = 1 ]; then
  ok "a. first SIGINT acknowledged within ${t_ack} ms, before the stop: '$(grep -Eo "$ACK" a.log)'; exit 75, checkpoint $(cat out.ckpt/latest)"
else bad "a. first SIGINT: rc=$rc ack after ${t_ack} ms: $(grep -v '^step' a.log | tail -3)"; fi

# b. one interrupt delivered twice
for try in 1 2 3; do
  start b.log "$BIN" --config toy/long.json
  wait_for b.log '^step +2/' || bad "b: no step 2"
  kill -INT $pid; sleep 0.01; kill -INT $pid; finish
  checkpointed b.log || break
done
checkpointed b.log && ok "b. SIGINT twice, 10 ms apart (3 tries): exit 75, checkpoint $(cat out.ckpt/latest)" \
  || bad "b. doubled SIGINT (try $try): rc=$rc $(grep -v '^step' b.log | tail -2)"
rm -rf out out.ckpt
timeout -s INT 2 "$BIN" --config toy/long.json --out out > bt.log 2>&1; rc=$?
[ $rc -eq 124 ] && [ -f out.ckpt/latest ] && grep -q "stopped by SIGINT" bt.log && ! grep -q "second SIGINT" bt.log \
  && ok "b. timeout -s INT 2 (process, then its group): checkpoint $(cat out.ckpt/latest), 'stopped by SIGINT'" \
  || bad "b. timeout -s INT: rc=$rc $(grep -v '^step' bt.log | tail -2)"

# c. a second SIGINT a second after the acknowledgement aborts
start c.log "$BIN" --config toy/slow.json
wait_for c.log '^step +1/' || bad "c: no step 1"
kill -INT $pid; wait_for c.log "$ACK"; sleep 1.2; kill -INT $pid; finish
[ $rc -eq 130 ] && grep -q "second SIGINT: ending now, without a checkpoint" c.log && [ ! -e out.ckpt ] \
  && ok "c. second SIGINT 1.2 s after the acknowledgement: exit 130, no checkpoint" \
  || bad "c. second SIGINT: rc=$rc $(grep -v '^step' c.log | tail -2)"

# d. Ctrl-C at the terminal under mpirun -n 2, through dam_dist launch
start d.log "$BIN" launch mpirun -n 2 "$BIN" --config toy/long2.json
wait_for d.log '^step +2/' || bad "d: no step 2"
kill -INT -- -$pid; finish
# (the resume line names the binary that ran: under make test-asan $BIN is a wrapper that execs it)
if checkpointed d.log && grep -Eq "resume with: cd .* && [^ ]*dam_dist[^ ]* launch mpirun -n 2 " d.log \
   && grep -q "dam_dist: SIGUSR1: stopping after step" d.log; then
  ok "d. SIGINT to the process group of 'dam_dist launch mpirun -n 2': exit 75, checkpoint $(cat out.ckpt/latest), resume line names the wrapper"
else bad "d. launch mpirun, SIGINT to the group: rc=$rc $(grep -v '^step' d.log | grep -v '^ *$' | tail -4)"; fi
start d2.log "$BIN" launch mpirun -n 2 "$BIN" --config toy/long2.json
wait_for d2.log '^step +2/' || bad "d2: no step 2"
kill -INT -- -$pid; kill -INT -- -$pid; finish
checkpointed d2.log && ok "d. the same, the group's SIGINT sent twice back to back: exit 75, checkpoint $(cat out.ckpt/latest)" \
  || bad "d. launch mpirun, doubled SIGINT: rc=$rc $(grep -v '^step' d2.log | grep -v '^ *$' | tail -3)"
start d3.log "$BIN" launch mpirun -n 2 "$BIN" --config toy/slower2.json
wait_for d3.log '^step +1/' || bad "d3: no step 1"
kill -INT -- -$pid; wait_for d3.log "SIGUSR1: stopping after step"; sleep 1.2; kill -INT -- -$pid; finish
[ $rc -eq 130 ] && grep -q "dam_dist launch: second SIGINT" d3.log && [ ! -e out.ckpt ] \
  && ok "d. a second Ctrl-C 1.2 s later: exit 130, no checkpoint" \
  || bad "d. launch mpirun, second Ctrl-C: rc=$rc $(grep -v '^step' d3.log | grep -v '^ *$' | tail -3)"

echo "cli_ctrl_c: $fails failure(s)"
[ $fails -eq 0 ]
