#!/bin/bash
# Proves the Slurm path on a real single-node Slurm, end to end, as a cluster
# user would use it. Outside the test suite: it installs and starts system
# daemons. On a Debian 12 machine (or container) as root, from the repository
# root, with the .venv of the README:
#
#   sudo bash tests/slurm/prove.sh [WORK]      # WORK: a scratch folder (default /tmp/slurm_proof)
#
# It installs slurmctld, slurmd, slurm-client and munge with apt-get, writes a
# one-node slurm.conf (this machine is controller and compute node, cgroup-free
# plugins so it works in a container), starts munged, slurmctld and slurmd, and
# then:
#   1. `report` on a root without finished cells exits non-zero;
#   2. `run --emit-slurm` writes a 4-cell job array, which `sbatch` takes
#      unedited, from another folder; every experiment's script passes
#      `sbatch --test-only`;
#   3. while a cell runs, a second runner skips it as running and a
#      `research.main` on its workdir exits 2 with one error line naming the job;
#   4. `scancel --signal=TERM` preempts that cell after its first checkpoint; the
#      task is resubmitted (`sbatch --array=K`) and the cell finishes from its saved step;
#   5. the `report` line the script suggests collects the 4 finished cells;
#   6. `srun -n 2` trains one workdir with two processes: process 0 reports,
#      process 1 stays quiet, one set of files is written, and a one-process
#      evaluation of the checkpoint gives process 0's figures.
# It stops the daemons it started, by their PIDs, and prints PASS or the first failure.
set -euo pipefail

REPO=$(pwd)
WORK=${1:-/tmp/slurm_proof}
PY=$REPO/.venv/bin/python
[[ -x $PY ]] || { echo "run from the repository root, with .venv made (README)"; exit 2; }
[[ $(id -u) == 0 ]] || { echo "run as root (it installs and starts Slurm)"; exit 2; }
NODE=$(hostname -s)
STARTED=()

step() { echo; echo "=== $*"; }
fail() { echo "FAIL: $*"; exit 1; }
stop_daemons() {
  [[ ${#STARTED[@]} == 3 ]] && scancel --user=root 2>/dev/null  # Jobs left by a failure.
  for pid in "${STARTED[@]}"; do kill "$pid" 2>/dev/null && echo "stopped pid $pid"; done
}
trap stop_daemons EXIT

step "install: slurmctld slurmd slurm-client munge"
DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurmctld slurmd slurm-client munge >/dev/null
dpkg-query -W slurmctld slurmd munge

step "configure a one-node cluster on $NODE"
CPUS=$(nproc)
MEM=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))
mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/munge
cat > /etc/slurm/slurm.conf <<EOF
ClusterName=proof
SlurmctldHost=$NODE
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
KillWait=30
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
NodeName=$NODE CPUs=$CPUS RealMemory=$MEM State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
[[ -s /etc/munge/munge.key ]] || mungekey --create
chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge 2>/dev/null || true
chmod 0700 /etc/munge && chmod 0400 /etc/munge/munge.key

step "start munged, slurmctld, slurmd"
for pidfile in /run/munge/munged.pid /run/slurmctld.pid /run/slurmd.pid; do
  if [[ -s $pidfile ]] && kill -0 "$(cat $pidfile)" 2>/dev/null; then
    fail "a daemon already runs ($pidfile: pid $(cat $pidfile)); stop it first"
  fi
done
runuser -u munge -- /usr/sbin/munged --force
STARTED+=("$(cat /run/munge/munged.pid)")
/usr/sbin/slurmctld -c  # -c: no jobs from an earlier start
for _ in $(seq 50); do [[ -s /run/slurmctld.pid ]] && break; sleep 0.2; done
STARTED+=("$(cat /run/slurmctld.pid)")
/usr/sbin/slurmd
for _ in $(seq 50); do [[ -s /run/slurmd.pid ]] && break; sleep 0.2; done
STARTED+=("$(cat /run/slurmd.pid)")
echo "daemons: munged, slurmctld, slurmd = pids ${STARTED[*]}"
for _ in $(seq 60); do sinfo -h -o %t | grep -qx idle && break; sleep 1; done
sinfo -N -o '%N %c %m %t'
sinfo -h -o %t | grep -qx idle || fail "the node did not come up (see /var/log/slurm/)"

# Wait until none of `squeue`'s jobs is left.
wait_queue() {
  for _ in $(seq 900); do [[ -z $(squeue -h) ]] && return; sleep 1; done
  fail "jobs still queued after 15 minutes: $(squeue -h)"
}

step "an experiment of 4 cells (2 rows x 2 seeds) on tiny-shakespeare"
rm -rf "$WORK" && mkdir -p "$WORK/spec"
CORPUS=$REPO/../shared/data/tinyshakespeare/input.txt
if [[ ! -f $CORPUS ]]; then  # No tiny-shakespeare here: any English text does.
  CORPUS=$WORK/corpus.txt
  for _ in $(seq 400); do "$PY" -c "import this"; done > "$CORPUS"
fi
cat > "$WORK/spec/spec.py" <<'EOF'
from research.experiments import spec

_CPU = 'configs/shakespeare_char.py:cpu'
SPEC = spec.Experiment(
  name='slurm_proof',
  title='The Slurm proof (tests/slurm/prove.sh)',
  seeds=(0, 1),
  metric='loss',
  splits=('valid',),
  rows=(
    # Long enough to be preempted after its first checkpoint.
    spec.Row('long', _CPU, {'num_train_steps': 1200, 'checkpoint_every_steps': 100,
                            'eval_every_steps': 600, 'log_every_steps': 100}),
    spec.Row('short', _CPU, {'num_train_steps': 200, 'checkpoint_every_steps': 100,
                             'eval_every_steps': 200, 'log_every_steps': 100}),
  ),
)
EOF
ROOT_REL=$(realpath --relative-to="$REPO" "$WORK/cells")

step "1. report before any cell finished"
if "$PY" -m research.experiments report "$WORK/spec" --root="$ROOT_REL" 2> "$WORK/report0.err"; then
  fail "report exited 0 with no finished cell"
fi
cat "$WORK/report0.err"

step "2. emit the job array (root given relative: $ROOT_REL) and submit it from /"
"$PY" -m research.experiments run "$WORK/spec" --root="$ROOT_REL" --data_path="$CORPUS" \
  --emit-slurm="$WORK/array.sbatch"
grep '^#SBATCH' "$WORK/array.sbatch"
grep -q -- '--gpus' "$WORK/array.sbatch" && fail "a GPU line on a CPU-only cluster"
[[ -d $WORK/cells/slurm_proof ]] || fail "the --output folder was not created"
JOB=$(cd / && sbatch --parsable "$WORK/array.sbatch")
echo "submitted job array $JOB"

step "2b. every experiment of the repository emits a script sbatch accepts (sbatch --test-only)"
for spec in "$REPO"/experiments/*/spec.py; do
  NAME=$(basename "$(dirname "$spec")")
  "$PY" -m research.experiments run "experiments/$NAME" --root="$WORK/emitted" --force \
    --emit-slurm="$WORK/emitted/$NAME.sbatch" > /dev/null
  (cd / && sbatch --test-only "$WORK/emitted/$NAME.sbatch" 2>&1 | sed "s|^|$NAME: |") \
    || fail "sbatch refused the script of $NAME"
done

step "3. while long-s0 runs: a second runner and a second research.main"
CELL0=$WORK/cells/slurm_proof/long-s0
for _ in $(seq 300); do
  ls "$CELL0"/checkpoints/*/commit_success.txt >/dev/null 2>&1 && break; sleep 0.5
done
ls "$CELL0"/checkpoints/*/commit_success.txt >/dev/null 2>&1 || fail "no checkpoint in $CELL0"
squeue -h -o '%i %T %j'
"$PY" -m research.experiments run "$WORK/spec" --root="$ROOT_REL" --data_path="$CORPUS" \
  --cells=long-s0 > "$WORK/runner2.out" 2>&1 || true
cat "$WORK/runner2.out"
grep -q "long-s0: running (Slurm job ${JOB}_0 on host $NODE" "$WORK/runner2.out" \
  || fail "the second runner did not see long-s0 as running"
grep -q "long-s0: starting" "$WORK/runner2.out" && fail "the second runner started long-s0"
set +e
"$PY" -m research.main --config=configs/shakespeare_char.py:cpu --workdir="$CELL0" \
  --config.data.path="$CORPUS" > "$WORK/main2.out" 2> "$WORK/main2.err"
CODE=$?
set -e
cat "$WORK/main2.err"
[[ $CODE == 2 ]] || fail "a second research.main exited $CODE, not 2"
[[ $(grep -c '^error:' "$WORK/main2.err") == 1 ]] || fail "not one error line"
grep -q "in use by Slurm job ${JOB}_0" "$WORK/main2.err" || fail "the error does not name the job"

step "4. preempt long-s0 with scancel --signal=TERM, resubmit its task"
# scancel may retry after the run has already saved and stopped, and then report
# "Job/step already completing": the output file below is the judge.
scancel --signal=TERM "${JOB}_0" || echo "(scancel exited $?)"
for _ in $(seq 120); do squeue -h -j "${JOB}_0" 2>/dev/null | grep -q . || break; sleep 1; done
tail -n 3 "$WORK/cells/slurm_proof/slurm-${JOB}_0.out"
grep -q '^preempted:' "$WORK/cells/slurm_proof/slurm-${JOB}_0.out" || fail "long-s0 was not preempted"
SAVED=$(ls "$CELL0/checkpoints" | grep -E '^[0-9]+$' | sort -n | tail -1)
echo "long-s0 stopped with its checkpoint at step $SAVED"
AGAIN=$(cd / && sbatch --parsable --array=0 "$WORK/array.sbatch")
echo "resubmitted task 0 as job $AGAIN"
wait_queue
grep -q "Resuming from the checkpoint at step $SAVED" "$WORK/cells/slurm_proof/slurm-${AGAIN}_0.out" \
  || fail "long-s0 did not resume from step $SAVED"
"$PY" - "$CELL0" <<'EOF'
import json, sys
runs = [json.loads(l) for l in open(sys.argv[1] + '/runs.jsonl')]
ends = [r['status'] for r in runs if r['event'] == 'end']
print('long-s0 runs.jsonl ends:', ends)
assert ends == ['preempted', 'finished'], ends
EOF

step "5. the report line the script suggests, run as written"
LINE=$(grep -m1 'research.experiments report' "$WORK/array.sbatch" | sed 's/^#  *//')
echo "$LINE"
(cd / && bash -c "$LINE")
grep -E '^\| (long|short)-s[01] \|' "$WORK/spec/RESULTS.md" || true
[[ $(grep -cE '^\| (long|short)-s[01] \| finished \|' "$WORK/spec/RESULTS.md") == 4 ]] \
  || fail "RESULTS.md does not hold 4 finished cells"
for f in "$WORK"/cells/slurm_proof/slurm-*.out; do echo "$(basename "$f"): $(grep -m1 '^cell ' "$f")"; done

step "6. srun -n 2: two processes train one workdir"
TWO=$WORK/two_procs
(cd / && srun -l -n 2 --cpus-per-task=1 --chdir="$REPO" "$PY" -m research.main \
  --config=configs/shakespeare_char.py:cpu --workdir="$TWO" --config.data.path="$CORPUS" \
  --config.num_train_steps=200 --config.eval_every_steps=200 --config.checkpoint_every_steps=100) \
  > "$WORK/two.out" 2>&1 || fail "srun -n 2 failed: $(tail -5 "$WORK/two.out")"
grep -E '^0: (JAX devices|valid:)' "$WORK/two.out"
grep -q '^0: valid:' "$WORK/two.out" || fail "process 0 printed no results"
FOLLOWER=$(grep '^1: ' "$WORK/two.out" | grep -v '^1: \[Gloo\]' | grep -v '^1: \[process 1\]' || true)
[[ -z $FOLLOWER ]] || fail "process 1 printed more than prefixed warnings: $FOLLOWER"
echo "process 1 printed $(grep -c '^1: ' "$WORK/two.out") line(s), all Gloo's or prefixed"
"$PY" - "$TWO" <<'EOF'
import json, os, sys
workdir = sys.argv[1]
records = [json.loads(l) for l in open(os.path.join(workdir, 'metrics.jsonl'))]
keys = [(r['step'], r['split']) for r in records]
assert len(keys) == len(set(keys)), 'a metrics line written twice'
runs = [json.loads(l) for l in open(os.path.join(workdir, 'runs.jsonl'))]
assert [r['event'] for r in runs] == ['start', 'end'], runs
print(f'one set of files: {len(records)} metrics lines, each once; runs.jsonl', [r['event'] for r in runs])
print('checkpoints:', sorted(os.listdir(os.path.join(workdir, 'checkpoints'))))
EOF
ONE=$("$PY" -m research.main --workdir="$TWO" --mode=eval 2>/dev/null | grep '^valid:')
TWO_VALID=$(grep '^0: valid:' "$WORK/two.out" | sed 's/^0: //')
echo "two processes:          $TWO_VALID"
echo "one process, --mode=eval: $ONE"
[[ $ONE == "$TWO_VALID" ]] || fail "a one-process evaluation differs from process 0's figures"

echo
echo "PASS: the Slurm path works as emitted (job $JOB, resubmitted $AGAIN), in ${SECONDS} s"
