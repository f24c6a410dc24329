"""`python -m research.experiments run|report|status experiments/NAME [flags]`.

run: runs the spec's cells that are not finished (resuming interrupted ones),
then writes RESULTS.md, results.csv and the plots into the experiment folder.
report: only writes the table and plots from the cells' workdirs.
status: prints each cell's state; runs and writes nothing.
"""

import collections
import os
import sys

from absl import app
from absl import flags

from research import cli
from research.experiments import cell_results
from research.experiments import report
from research.experiments import runner
from research.experiments import slurm
from research.experiments import spec as spec_lib
from research.experiments import tuning

_PARALLEL = flags.DEFINE_integer('parallel', 1, 'Cells run at once (each is its own process).')
_DRY_RUN = flags.DEFINE_boolean(
  'dry-run', False, 'Print the cells and their commands; run nothing.'
)
_EMIT_SLURM = flags.DEFINE_string(
  'emit-slurm',
  None,
  'Write a Slurm job-array script of the selected cells to this file; run nothing.',
)
_SLURM_GPUS = flags.DEFINE_integer(
  'slurm_gpus_per_task', 0, '--emit-slurm: GPUs per cell (0: no GPU line).', lower_bound=0
)
_SLURM_CPUS = flags.DEFINE_integer(
  'slurm_cpus_per_task',
  0,
  "--emit-slurm: CPUs per cell (0: a whole node's, as sinfo lists them, or a share of them "
  'in proportion to the GPUs asked for).',
  lower_bound=0,
)
_SLURM_PARTITION = flags.DEFINE_string(
  'slurm_partition', '', "--emit-slurm: partition ('' : the cluster's default)."
)
_SLURM_TIME = flags.DEFINE_string(
  'slurm_time',
  '',
  "--emit-slurm: time limit per cell (MINUTES, HH:MM:SS, D-HH:MM:SS; '' : the partition's); "
  'a cell is told to save and stop 2 minutes before it.',
)
_SLURM_EXTRA = flags.DEFINE_multi_string(
  'slurm_extra', [], '--emit-slurm: a further #SBATCH option, e.g. --account=lm (repeatable).'
)
_CELLS = flags.DEFINE_string(
  'cells',
  '',
  'Comma-separated cell names or rows, shell wildcards allowed '
  '(small, small-s0, *-s1); empty: every cell.',
)
_FORCE = flags.DEFINE_boolean(
  'force',
  False,
  'Rewrite the table even where it would drop results of '
  'cells whose workdirs are not under --root; run: also re-run diverged cells (resuming '
  'from their last checkpoint); with --emit-slurm, emit the finished, diverged and '
  'running cells too.',
)
_KEEP_RECORDED = flags.DEFINE_boolean(
  'keep_recorded',
  False,
  'A cell without a result under --root keeps the figures the experiment '
  "folder's results.csv holds for it (workdirs lost or on another machine): new rows and "
  're-run cells join a page without re-running the rest. Marked on the page; no curves.',
)
_ROOT = flags.DEFINE_string(
  'root',
  'workdirs',
  'Cell workdirs go to ROOT/EXPERIMENT/ROW-sSEED; RESULTS.md gives ROOT relative '
  'to the current folder (the repository root), never as an absolute path.',
)
_DATA_PATH = flags.DEFINE_string(
  'data_path',
  '',
  'Where the data lies on this machine, given to every '
  "cell as --config.data.path ('' = the config's default: the package or a "
  'download); or ROWS=PATH,ROWS=PATH,... for experiments whose rows read '
  'different data: each cell takes the PATH of the first ROWS (a row or cell '
  "name, shell wildcards) that matches it, none where none does. Not part of a cell's "
  'identity.',
)
_TFDS_DIR = flags.DEFINE_string(
  'tfds_dir',
  '',
  "Given to every cell as --config.data.tfds_dir ('' = "
  "TFDS's default). Not part of a cell's identity.",
)

_USAGE = (
  'usage: python -m research.experiments run|report|status experiments/NAME '
  '[--parallel=N] [--dry-run] [--emit-slurm=FILE [--slurm_*=...]] [--cells=...] [--force] '
  '[--keep_recorded] [--root=...] [--data_path=...] [--tfds_dir=...]'
)
_STATES = ('finished', 'diverged', 'failed', 'running', 'interrupted', 'not run')


def main(argv):
  if len(argv) != 3 or argv[1] not in ('run', 'report', 'status'):
    cli.fail(f'expected run|report|status and an experiment folder, got {argv[1:]}; ' + _USAGE)
  try:
    return _main(argv)
  except (ValueError, FileNotFoundError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2


def _main(argv):
  directory = argv[2].rstrip('/')
  experiment = spec_lib.load(directory)
  cells = spec_lib.select(spec_lib.cells(experiment), _CELLS.value)
  root = _ROOT.value
  locations = {'data.path': _DATA_PATH.value, 'data.tfds_dir': _TFDS_DIR.value}
  if argv[1] == 'status':
    _print_status(root, experiment, cells)
    return 0
  if _DRY_RUN.value:
    for cell in cells:
      path = runner.workdir(root, experiment, cell)
      print(
        f'{cell.name} [{runner.state(path).describe()}]\n  '
        f'{runner.shown_command(root, experiment, cell, locations=locations)}'
      )
  if _EMIT_SLURM.value:
    _emit_slurm(directory, root, experiment, cells, locations)
  if _DRY_RUN.value or _EMIT_SLURM.value:
    return 0
  recorded = (
    set(cell_results.read_recorded(directory, root, experiment)) if _KEEP_RECORDED.value else set()
  )
  if argv[1] == 'report' and not report.finished_cells(root, experiment) | recorded:
    raise ValueError(
      f'No finished cell of {experiment.name} under --root={root} (looked in '
      f'{os.path.join(root, experiment.name)}/CELL); nothing is written. Point --root at the '
      'folder the cells ran in.'
    )
  if argv[1] == 'run':
    if not _FORCE.value:  # Before hours of runs, not after.
      report.check_nothing_dropped(
        directory,
        root,
        experiment,
        report.finished_cells(root, experiment) | {c.name for c in cells} | recorded,
      )
    outcome = runner.run(
      root,
      experiment,
      cells,
      parallel=_PARALLEL.value,
      locations=locations,
      rerun_diverged=_FORCE.value,
    )
  written = report.write(
    directory, root, experiment, force=_FORCE.value, keep_recorded=_KEEP_RECORDED.value
  )
  print('Wrote ' + ', '.join(written))
  if argv[1] == 'run':
    # A diverged cell is a result (its divergence), not a cell left to run.
    failed = [n for n, s in outcome.items() if s.status not in runner.RESULTS]
    if failed:
      print(f'Not finished: {failed} (see RESULTS.md).', file=sys.stderr)
      return 1
  return 0


def _print_status(root, experiment, cells) -> None:
  """One line per cell with its state (runner.state), then the count per state."""
  states = {c.name: runner.state(runner.workdir(root, experiment, c)) for c in cells}
  width = max(len(n) for n in states)
  print(f'{"cell":<{width}}  state')
  for name, state in states.items():
    print(f'{name:<{width}}  {state.describe()}')
  counts = collections.Counter(s.status for s in states.values())
  shown = ', '.join(f'{counts[s]} {s}' for s in _STATES if counts[s])
  print(f'{len(cells)} cells under {os.path.join(root, experiment.name)}: {shown}')


def _emit_slurm(directory, root, experiment, cells, locations) -> None:
  """Writes the job array of the cells not finished (all with --force)."""
  if not _FORCE.value:
    states = {c.name: runner.state(runner.workdir(root, experiment, c)) for c in cells}
    for cell in cells:
      if runner.skipped(states[cell.name]):
        print(f'{cell.name}: {states[cell.name].describe()}, left out (--force keeps it)')
    cells = [c for c in cells if not runner.skipped(states[c.name])]
  for cell in [c for c in cells if c.row.tuned_from]:
    try:
      runner.tuned(root, experiment, cell.row)
    except tuning.NotTuned as e:  # Its command is not known until then.
      print(f'{cell.name}: left out: {e}; emit again once they have')
      cells.remove(cell)
  if not cells:
    print(f'No cell to run: nothing written to {_EMIT_SLURM.value}.')
    return
  asked = slurm.Resources(
    gpus_per_task=_SLURM_GPUS.value,
    cpus_per_task=_SLURM_CPUS.value,
    partition=_SLURM_PARTITION.value,
    time=_SLURM_TIME.value,
    extra=tuple(_SLURM_EXTRA.value),
  )
  resources, chosen = slurm.default_resources(asked)
  text = slurm.script(directory, root, experiment, cells, os.getcwd(), locations, resources, chosen)
  slurm.write(_EMIT_SLURM.value, text, root, experiment)
  print(
    f'Wrote {_EMIT_SLURM.value}: a job array of {len(cells)} cells, '
    f'{resources.cpus_per_task} CPUs and {resources.gpus_per_task} GPUs each. '
    f'Submit it with: sbatch {os.path.abspath(_EMIT_SLURM.value)}'
  )


if __name__ == '__main__':
  app.run(main, flags_parser=cli.flags_parser(None, positional=True))
