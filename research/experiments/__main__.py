"""`python -m research.experiments run|report experiments/NAME [flags]`.

run: runs the spec's cells that are not finished (resuming interrupted ones),
then writes RESULTS.md, results.csv and the plots into the experiment folder.
report: only writes the table and plots from the cells' workdirs.
"""

import os
import shlex
import sys

from absl import app
from absl import flags

from research import cli
from research.experiments import report
from research.experiments import runner
from research.experiments import spec as spec_lib

_PARALLEL = flags.DEFINE_integer('parallel', 1, 'Cells run at once (each is its own process).')
_DRY_RUN = flags.DEFINE_boolean(
  'dry-run', False, 'Print the cells and their commands; run nothing.'
)
_EMIT_SLURM = flags.DEFINE_string(
  'emit-slurm',
  None,
  'Write a Slurm job-array script of the selected cells to this file; run nothing.',
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
  'cells whose workdirs are not under --root.',
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
  'usage: python -m research.experiments run|report experiments/NAME '
  '[--parallel=N] [--dry-run] [--emit-slurm=FILE] [--cells=...] [--force] '
  '[--data_path=...] [--tfds_dir=...]'
)


def main(argv):
  if len(argv) != 3 or argv[1] not in ('run', 'report'):
    cli.fail(f'expected run|report and an experiment folder, got {argv[1:]}; ' + _USAGE)
  try:
    return _main(argv)
  except (ValueError, FileNotFoundError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2


def _main(argv):
  directory = argv[2].rstrip('/')
  experiment = spec_lib.load(directory)
  cells = runner.select(spec_lib.cells(experiment), _CELLS.value)
  root = _ROOT.value
  locations = {'data.path': _DATA_PATH.value, 'data.tfds_dir': _TFDS_DIR.value}
  if _DRY_RUN.value or _EMIT_SLURM.value:
    if _DRY_RUN.value:
      for cell in cells:
        path = runner.workdir(root, experiment, cell)
        print(
          f'{cell.name} [{runner.state(path).status}]\n  '
          f'{shlex.join(runner.command(root, experiment, cell, locations=locations))}'
        )
    if _EMIT_SLURM.value:
      with open(_EMIT_SLURM.value, 'w') as f:
        f.write(runner.slurm_script(root, experiment, cells, os.getcwd(), locations))
      print(f'Wrote {_EMIT_SLURM.value}: a job array of {len(cells)} cells.')
    return 0
  if argv[1] == 'run':
    if not _FORCE.value:  # Before hours of runs, not after.
      report.check_nothing_dropped(
        directory,
        root,
        experiment,
        report.finished_cells(root, experiment) | {c.name for c in cells},
      )
    outcome = runner.run(root, experiment, cells, parallel=_PARALLEL.value, locations=locations)
  written = report.write(directory, root, experiment, force=_FORCE.value)
  print('Wrote ' + ', '.join(written))
  if argv[1] == 'run':
    failed = [n for n, s in outcome.items() if s.status != 'finished']
    if failed:
      print(f'Not finished: {failed} (see RESULTS.md).', file=sys.stderr)
      return 1
  return 0


if __name__ == '__main__':
  app.run(main, flags_parser=cli.flags_parser(None, positional=True))
