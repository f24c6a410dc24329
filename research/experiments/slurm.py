"""The Slurm job array of an experiment's cells (`run ... --emit-slurm=FILE`).

The script submits unedited (`sbatch FILE`) on a CPU-only cluster and on a
GPU one: every path in it is absolute (the repository, the interpreter, the
cells' workdirs, the data), its `--output` folder exists once it is written,
and the resources are the runner's flags (`Resources`), with no GPU line
unless GPUs are asked for. Each array task runs one cell's command under
`srun`, so `scancel --signal=TERM` reaches it and it saves and stops
(`faults.Preempted`); submitting the task again resumes the cell. The cell's
workdir lock (research.workdir_lock) keeps a second process, from Slurm or
from a runner on the login node, off a running cell.
"""

import dataclasses
import os
import re
import shlex
import shutil
import subprocess
import sys
import time

from research.experiments import locations as locations_lib
from research.experiments import runner
from research.experiments import spec as spec_lib


@dataclasses.dataclass(frozen=True)
class Resources:
  """What each array task asks for (0 or '': left to `default_resources` or
  the cluster's defaults)."""

  gpus_per_task: int = 0
  cpus_per_task: int = 0
  partition: str = ''
  time: str = ''  # Slurm's format: MINUTES, HH:MM:SS or DAYS-HH:MM:SS.
  extra: tuple[str, ...] = ()  # Further #SBATCH options, e.g. '--account=lm' or '--mem=16G'.


def _node_counts(partition: str) -> tuple[int, int] | None:
  """(CPUs, GPUs) of the smallest node `sinfo` lists (in `partition`), or None
  without sinfo."""
  sinfo = shutil.which('sinfo')
  if not sinfo:
    return None
  argv = [sinfo, '-h', '-o', '%c %G'] + (['-p', partition] if partition else [])
  try:
    out = subprocess.run(argv, capture_output=True, text=True, timeout=30)
  except (OSError, subprocess.TimeoutExpired):
    return None
  nodes = []
  for line in out.stdout.splitlines():
    cpus, _, gres = line.strip().partition(' ')
    if cpus.rstrip('+').isdigit():
      gpus = sum(int(m) for m in re.findall(r'gpu(?::[^:,(]+)?:(\d+)', gres))
      nodes.append((int(cpus.rstrip('+')), gpus))
  return min(nodes) if nodes else None


def default_resources(asked: Resources) -> tuple[Resources, str]:
  """`asked` with its CPUs per task filled in, and how they were chosen.

  A cell is one process whose XLA computation uses every core it is given, so
  a CPU cell takes a whole node's CPUs (the smallest node sinfo lists, or this
  machine's count without sinfo); a GPU cell takes the node's CPUs in
  proportion to its GPUs.
  """
  if asked.cpus_per_task:
    return asked, 'as asked'
  counts = _node_counts(asked.partition)
  if counts is None:
    cpus, how = os.cpu_count() or 1, "this machine's CPU count (no sinfo here)"
  elif asked.gpus_per_task and counts[1]:
    cpus = max(1, counts[0] * asked.gpus_per_task // counts[1])
    how = f"the node's {counts[0]} CPUs in proportion to its {counts[1]} GPUs (sinfo)"
  else:
    cpus, how = counts[0], f"a whole node's CPUs (sinfo: {counts[0]})"
  return dataclasses.replace(asked, cpus_per_task=cpus), how


def _absolute(path: str) -> str:
  return path if not path or '://' in path else os.path.abspath(path)


def absolute_locations(locations: dict[str, str]) -> dict[str, str]:
  """`locations` with every local path absolute (ROWS=PATH pairs too;
  gs:// and other URLs as given)."""
  out = {}
  for key, value in locations.items():
    pairs = locations_lib.row_paths(value)
    if pairs is None:
      out[key] = _absolute(value)
    else:
      out[key] = ','.join(f'{rows}={_absolute(path)}' for rows, path in pairs)
  return out


def report_command(directory: str, root: str, locations: dict[str, str]) -> list[str]:
  """The `report` command that collects the cells' table from `root`."""
  argv = [sys.executable, '-m', 'research.experiments', 'report', directory, f'--root={root}']
  names = {'data.path': 'data_path', 'data.tfds_dir': 'tfds_dir'}
  return argv + [f'--{names[k]}={v}' for k, v in sorted(locations.items()) if v]


def script(
  directory: str,
  root: str,
  experiment: spec_lib.Experiment,
  cells: list[spec_lib.Cell],
  repo: str,
  locations: dict[str, str] | None = None,
  resources: Resources = Resources(),
  chosen: str = '',
) -> str:
  """A job-array script running each of `cells` as one task.

  Args:
    directory: the experiment folder (as the report command takes it).
    root: where the cells' workdirs go.
    experiment: the spec.
    cells: the cells, one array task each, in order.
    repo: the repository the commands run in.
    locations: see `runner.command`.
    resources: each task's; `cpus_per_task` must be set (`default_resources`).
    chosen: how the CPUs were chosen, for the script's comment.
  """
  repo, root, directory = os.path.abspath(repo), os.path.abspath(root), os.path.abspath(directory)
  locations = absolute_locations(locations or {})
  output = os.path.join(root, experiment.name)
  report = shlex.join(report_command(directory, root, locations))
  lines = [
    '#!/bin/bash',
    f'# {experiment.name}: {len(cells)} cells as a Slurm job array, one task each. Generated',
    f'# {time.strftime("%Y-%m-%d %H:%M")} by `python -m research.experiments run '
    f'{os.path.relpath(directory, repo)} --emit-slurm=FILE`.',
    '# Submit with `sbatch FILE`. Each task resumes its cell from its latest checkpoint: after',
    '# a preemption or a failure, submit the task again (`sbatch --array=K FILE`) or emit anew',
    '# (finished cells are left out). A running cell holds its workdir lock (lock.json), so',
    '# a second process on it, from Slurm or a runner, stops at once. Collect the table with',
    f'#   cd {shlex.quote(repo)} && {report}',
    f'# CPUs per task: {chosen or "as asked"}.',
    f'#SBATCH --job-name={experiment.name}',
    f'#SBATCH --array=0-{len(cells) - 1}',
    '#SBATCH --nodes=1',
    '#SBATCH --ntasks=1',
    f'#SBATCH --cpus-per-task={resources.cpus_per_task}',
  ]
  if resources.gpus_per_task:
    lines.append(f'#SBATCH --gpus-per-task={resources.gpus_per_task}')
  if resources.partition:
    lines.append(f'#SBATCH --partition={resources.partition}')
  if resources.time:
    lines.append(f'#SBATCH --time={resources.time}')
    # Two minutes' notice before the limit: the run saves a checkpoint and stops.
    lines.append('#SBATCH --signal=TERM@120')
  lines += [f'#SBATCH {e if e.startswith("-") else "--" + e}' for e in resources.extra]
  lines += [
    f'#SBATCH --output={output}/slurm-%A_%a.out',
    'set -euo pipefail',
    f'cd {shlex.quote(repo)}',
    'case "$SLURM_ARRAY_TASK_ID" in',
  ]
  for i, cell in enumerate(cells):
    argv = runner.command(root, experiment, cell, python=sys.executable, locations=locations)
    workdir = runner.workdir(root, experiment, cell)
    lines.append(
      f'  {i}) CELL={cell.name} WORKDIR={shlex.quote(workdir)}; set -- {shlex.join(argv)} ;;'
    )
  lines += [
    '  *) echo "no cell for array task $SLURM_ARRAY_TASK_ID" >&2; exit 2 ;;',
    'esac',
    'echo "cell $CELL on $(hostname), job ${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}: $WORKDIR"',
    '# srun: a job step, which scancel --signal and the time limit signal.',
    f'exec srun --ntasks=1 --cpus-per-task={resources.cpus_per_task} "$@"',
    '',
  ]
  return '\n'.join(lines)


def write(path: str, text: str, root: str, experiment: spec_lib.Experiment) -> None:
  """Writes the script (executable) and creates its `--output` folder,
  ROOT/EXPERIMENT, which Slurm does not create: without it every task fails
  before printing a line."""
  os.makedirs(os.path.join(os.path.abspath(root), experiment.name), exist_ok=True)
  with open(path, 'w') as f:
    f.write(text)
  os.chmod(path, 0o755)
