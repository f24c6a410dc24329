"""Runs the cells of an experiment as separate `research.main` processes.

A cell's workdir is `ROOT/EXPERIMENT/CELL` (CELL is `row-sSEED`). It holds what
`research.main` writes (config.json, metrics.jsonl, runs.jsonl with the code
revision and hardware, checkpoints, TensorBoard) plus the runner's `cell.json`
(the command, and the reason of the last failure) and `log.txt` (the
process's output); a compression or audit row's cell runs research.compress or
research.audit (audit_rows.py) instead, which write runs.jsonl there too. A
cell's state is read from those files, so cells launched by hand or by Slurm
with the printed commands count the same:

- finished: the last line of runs.jsonl is a finished end;
- running: its workdir lock (research.workdir_lock) names a holder not known
  to be gone (a live pid on this host, a Slurm job squeue still lists, a
  process on another host), or cell.json names a live process on this host
  that has not taken the lock yet;
- diverged: the last attempt stopped on a non-finite loss or gradient norm
  (research.main's exit status 3, faults.EXIT_NONFINITE, recorded in cell.json;
  or runs.jsonl ending with status 'diverged'): a result, which a re-run would
  only repeat from the same checkpoint, so `run` skips it unless told to
  re-run diverged cells;
- failed: the last attempt exited non-zero otherwise (cell.json holds the reason);
- interrupted: started, neither finished nor failed (re-running resumes it
  from its latest checkpoint);
- not run: nothing there yet.
"""

import collections
import dataclasses
import json
import os
import platform
import shlex
import signal
import subprocess
import sys
import time

from research import faults
from research import provenance
from research import workdir_lock
from research.experiments import audit_rows
from research.experiments import locations as locations_lib
from research.experiments import spec as spec_lib
from research.experiments import tuning

CELL_FILE = 'cell.json'
LOG_FILE = 'log.txt'


def python_command() -> str:
  """The interpreter as the user can type it: relative when it lives under
  the working directory (a repository's .venv), else absolute."""
  exe = sys.executable
  rel = os.path.relpath(exe)
  return rel if not rel.startswith('..') else exe


def _format_value(value) -> str:
  if isinstance(value, bool):
    return 'true' if value else 'false'
  if isinstance(value, (tuple, list)):
    return '(' + ','.join(_format_value(v) for v in value) + (',)' if len(value) == 1 else ')')
  return str(value)


def workdir(root: str, experiment: spec_lib.Experiment, cell: spec_lib.Cell) -> str:
  return os.path.join(root, experiment.name, cell.name)


def command(
  root: str,
  experiment: spec_lib.Experiment,
  cell: spec_lib.Cell,
  python: str | None = None,
  locations: dict[str, str] | None = None,
) -> list[str]:
  """The `python -m research.main ...` argv that runs `cell`.

  `locations` maps `spec_lib.LOCATION_KEYS` to where the data lies on this
  machine (the runner's --data_path and --tfds_dir; '' is left out).
  """
  if cell.row.audit:
    return _audit_command(root, experiment, cell, python, locations)
  locations = locations_lib.for_cell(locations or {}, cell)
  if cell.row.compress:
    return _compress_command(root, experiment, cell, python, locations)
  argv = [
    python or python_command(),
    '-m',
    'research.main',
    f'--config={cell.row.config}',
    f'--workdir={workdir(root, experiment, cell)}',
    f'--config.seed={cell.seed}',
  ]
  overrides = {**cell.row.overrides, **tuned(root, experiment, cell.row).overrides}
  argv += [f'--config.{k}={_format_value(v)}' for k, v in sorted(overrides.items())]
  argv += [
    f'--config.{k}={path}' for k, path in sorted(_from_cells(root, experiment, cell).items())
  ]
  argv += [f'--config.{k}={v}' for k, v in sorted((locations or {}).items()) if v]
  return argv


def _same_seed(root, experiment, cell, row_name: str) -> str:
  rows = {r.name: r for r in experiment.rows}
  return workdir(root, experiment, spec_lib.Cell(rows[row_name], cell.seed))


def _from_cells(root, experiment, cell) -> dict[str, str]:
  """Config key -> the workdir of the row's `from_cells` cell at the same seed."""
  return {k: _same_seed(root, experiment, cell, r) for k, r in cell.row.from_cells.items()}


def source(root: str, experiment: spec_lib.Experiment, cell: spec_lib.Cell) -> str:
  """The workdir a compression cell compresses: its float row's cell at the
  same seed ('' : not a compression cell)."""
  if not cell.row.compress_from:
    return ''
  return _same_seed(root, experiment, cell, cell.row.compress_from)


def _audited(root, experiment, cell) -> dict[str, str]:
  """'audit_from' and 'audit_reference' -> the workdir of the row each names at
  the same seed (those an audit row names; {} : not an audit row)."""
  named = audit_rows.earlier(cell.row).items()
  return {k: _same_seed(root, experiment, cell, r) for k, r in named if r}


def tuned(root: str, experiment: spec_lib.Experiment, row: spec_lib.Row) -> tuning.Choice:
  """A tuned row's chosen setting (research/experiments/tuning.py; raises
  tuning.NotTuned before its tuning cells have results); an empty choice for
  any other row."""
  if not row.tuned_from:
    return tuning.Choice(row, {}, ())

  def outcome(cell):
    path = workdir(root, experiment, cell)
    return (state(path).status, *tuning.read_outcome(path, experiment))

  return tuning.choose(experiment, row, outcome)


def needs(root: str, experiment: spec_lib.Experiment, cell: spec_lib.Cell) -> dict[str, tuple]:
  """The workdirs whose cells must end before `cell` starts, each with the
  states it may end in: finished, and for a tuned row's tuning cells also
  diverged (a result its choice reads)."""
  waits = [source(root, experiment, cell), *_from_cells(root, experiment, cell).values()]
  out = {w: ('finished',) for w in waits + list(_audited(root, experiment, cell).values()) if w}
  if cell.row.tuned_from:
    for c in spec_lib.tuning_cells(experiment, cell.row):
      out[workdir(root, experiment, c)] = tuning.ENDED
  return out


def shown_command(root, experiment, cell, **kwargs) -> str:
  """The cell's command as a line, or what a tuned cell waits for."""
  try:
    return shlex.join(command(root, experiment, cell, **kwargs))
  except tuning.NotTuned as e:
    return f'(not chosen yet: {e})'


# The flags of research.compress and research.audit that say where the data lies.
_LOCATION_FLAGS = {'data.path': 'data_path', 'data.tfds_dir': 'tfds_dir'}


def _audit_command(root, experiment, cell, python, locations) -> list[str]:
  """`python -m research.audit` on the same-seed cell of `audit_from`, written
  into the cell's own workdir (research/experiments/audit_rows.py); the data
  where the audited cell's lies (a --data_path=ROWS=PATH matches that row)."""
  audited = _audited(root, experiment, cell)
  rows = {r.name: r for r in experiment.rows}
  source_cell = spec_lib.Cell(rows[cell.row.audit_from], cell.seed)
  locations = locations_lib.for_cell(locations or {}, source_cell)
  argv = [
    python or python_command(),
    '-m',
    'research.audit',
    f'--workdir={audited["audit_from"]}',
    f'--probe={cell.row.audit}',
    f'--out={workdir(root, experiment, cell)}',
  ]
  if 'audit_reference' in audited:
    argv.append(f'--reference={audited["audit_reference"]}')
  return argv + [f'--{_LOCATION_FLAGS[k]}={v}' for k, v in sorted(locations.items()) if v]


def _compress_command(root, experiment, cell, python, locations) -> list[str]:
  """`python -m research.compress` on the same-seed cell of `compress_from`;
  a fine-tuned row's own workdir is the fine-tuned run (the pruned model in
  its `pruned/`)."""
  path = workdir(root, experiment, cell)
  row = cell.row
  argv = [
    python or python_command(),
    '-m',
    'research.compress',
    f'--workdir={source(root, experiment, cell)}',
    f'--method={row.compress}',
  ]
  if row.finetune_steps:
    argv += [
      f'--out={os.path.join(path, "pruned")}',
      f'--finetune_steps={row.finetune_steps}',
      f'--finetune_out={path}',
    ]
  else:
    argv += [f'--out={path}']
  argv += [f'--{_LOCATION_FLAGS[k]}={v}' for k, v in sorted((locations or {}).items()) if v]
  return argv


def identity(argv: list[str]) -> list[str]:
  """What a cell's command trains: its config, seed and overrides.

  Not the interpreter, the workdir's root or the data locations: those
  belong to a machine, and the same experiment run elsewhere (the data in
  another folder) is the same experiment. The data's content is checked by
  its checksum when it is prepared.
  """

  def key(arg):
    return arg.split('=', 1)[0].removeprefix('--config.')

  if 'research.compress' in argv:  # The method, and the source cell by name.
    kept = [a for a in argv if a.startswith(('--method=', '--finetune_steps='))]
    return kept + [os.path.basename(a) for a in argv if a.startswith('--workdir=')]
  if 'research.audit' in argv:  # The probes, and the audited and reference cells by name.
    named = [a.split('=', 1) for a in argv if a.startswith(('--workdir=', '--reference='))]
    return [a for a in argv if a.startswith('--probe=')] + [
      f'{flag}={os.path.basename(path)}' for flag, path in named
    ]
  kept = [a for a in argv[1:] if a.startswith('--config') and key(a) not in spec_lib.LOCATION_KEYS]
  # A key naming another cell (Row.from_cells) is that cell, wherever the root lies.
  return [
    f'--config.{key(a)}={os.path.basename(a.split("=", 1)[1])}'
    if key(a) in spec_lib.WORKDIR_KEYS
    else a
    for a in kept
  ]


def _read_cell_file(path: str) -> dict:
  file = os.path.join(path, CELL_FILE)
  if not os.path.exists(file):
    return {}
  with open(file) as f:
    return json.load(f)


def _write_cell_file(path: str, record: dict) -> None:
  tmp = os.path.join(path, CELL_FILE + '.tmp')
  with open(tmp, 'w') as f:
    json.dump(record, f, indent=2)
  os.replace(tmp, os.path.join(path, CELL_FILE))


@dataclasses.dataclass
class CellState:
  status: str  # 'finished', 'running', 'diverged', 'failed', 'interrupted', 'not run'.
  reason: str = ''  # Why it failed; who runs it.

  def describe(self) -> str:
    """'running (host H, pid P)', 'failed: REASON', 'finished', ..."""
    if self.status == 'running' and self.reason:
      return f'running ({self.reason})'
    return f'{self.status}: {self.reason}' if self.reason else self.status


def state(path: str) -> CellState:
  """Reads a cell's state from its workdir (see the module docstring)."""
  runs = provenance.read_runs(path)
  if runs and runs[-1]['event'] == 'end' and runs[-1]['status'] == 'finished':
    return CellState('finished')
  holder = workdir_lock.read(path)
  if holder is not None and not workdir_lock.gone(holder):
    return CellState('running', holder.describe())
  record = _read_cell_file(path)
  if (
    record.get('pid')
    and record.get('host') == platform.node()
    and workdir_lock.pid_alive(record['pid'])
  ):
    return CellState('running', f'host {record["host"]}, pid {record["pid"]}')
  ended_diverged = runs and runs[-1]['event'] == 'end' and runs[-1]['status'] == 'diverged'
  if record.get('status') == 'diverged' or ended_diverged:
    return CellState('diverged', record.get('reason', ''))
  if record.get('status') == 'failed':
    return CellState('failed', record.get('reason', ''))
  if runs or record:
    return CellState('interrupted')
  return CellState('not run')


def _failure_reason(log_path: str, returncode: int) -> str:
  """The last non-empty line of the log (a traceback's exception line)."""
  last = ''
  with open(log_path, errors='replace') as f:
    for line in f:
      if line.strip():
        last = line.strip()
  return f'exit status {returncode}: {last}' if last else f'exit status {returncode}'


class _Launched:
  def __init__(self, cell, path, argv, python):
    self.cell, self.path = cell, path
    os.makedirs(path, exist_ok=True)
    self.log = open(os.path.join(path, LOG_FILE), 'a')
    self.log.write(f'\n=== {time.strftime("%Y-%m-%d %H:%M:%S")} {shlex.join(argv)}\n')
    self.log.flush()
    env = dict(os.environ, PYTHONUNBUFFERED='1')
    self.process = subprocess.Popen(
      [python] + argv[1:], stdout=self.log, stderr=subprocess.STDOUT, env=env
    )
    self.record = {
      'cell': cell.name,
      'command': shlex.join(argv),
      'status': 'running',
      'pid': self.process.pid,
      'host': platform.node(),
      'started': time.time(),
    }
    _write_cell_file(path, self.record)

  def finish(self) -> str:
    """Records how the process ended in cell.json; returns the cell's status:
    'finished', 'diverged' (exit status 3: a non-finite loss) or 'failed'."""
    code = self.process.returncode
    self.log.close()
    self.record.update(pid=None, ended=time.time())
    if code == 0:
      self.record.update(status='finished', reason='')
    else:
      status = 'diverged' if code == faults.EXIT_NONFINITE else 'failed'
      self.record.update(
        status=status, reason=_failure_reason(os.path.join(self.path, LOG_FILE), code)
      )
    _write_cell_file(self.path, self.record)
    return self.record['status']

  @property
  def wall_seconds(self) -> float:
    return self.record['ended'] - self.record['started']


def progress_line(
  counts: dict[str, int], total: int, walls: list[float], remaining: int, parallel: int
) -> str:
  """'progress: F finished, D diverged, X failed, R remaining of N; ETA H:MM:SS'.

  Args:
    counts: status -> cells ('finished', 'diverged', 'failed'; others are not read).
    total: N, the cells asked for; R = N - F - D - X.
    walls: wall seconds of the cells that finished in this run.
    remaining: cells this runner has still to end (queued or running here).
    parallel: cells run at once.

  The ETA is mean(walls) * remaining / parallel ('ETA unknown' before a cell
  finished in this run).
  """
  f, d, x = (counts.get(k, 0) for k in ('finished', 'diverged', 'failed'))
  line = (
    f'progress: {f} finished, {d} diverged, {x} failed, {total - f - d - x} remaining of {total}'
  )
  if not walls:
    return line + '; ETA unknown'
  seconds = round(sum(walls) / len(walls) * remaining / max(parallel, 1))
  return line + f'; ETA {seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}'


# States of a cell that has a result; a diverged cell's result is its divergence.
RESULTS = ('finished', 'diverged')


def skipped(current: CellState, rerun_diverged: bool = False) -> bool:
  """Whether `run` leaves a cell in this state alone."""
  return current.status in ('finished', 'running') or (
    current.status == 'diverged' and not rerun_diverged
  )


def _plan(root, experiment, cells, locations, rerun_diverged, echo) -> tuple[list, dict]:
  """`run`'s cells to start, as (cell, workdir, argv, workdirs it waits for), and
  those skipped that have a result, name -> 'finished' or 'diverged'; raises
  ValueError for a workdir made by another command."""
  todo, ended = [], {}
  for cell in cells:
    path = workdir(root, experiment, cell)
    current = state(path)
    try:
      argv = command(root, experiment, cell, locations=locations)
      _check_identity(cell, path, argv)
    except tuning.NotTuned:
      argv = None  # Chosen when it starts.
    if skipped(current, rerun_diverged):
      echo(f'{cell.name}: {current.describe()}, skipped')
      if current.status != 'running':
        ended[cell.name] = current.status
      continue
    todo.append((cell, path, argv, needs(root, experiment, cell)))
  return todo, ended


def _check_identity(cell: spec_lib.Cell, path: str, argv: list[str]) -> None:
  """Raises ValueError where the workdir was made by another command."""
  recorded = _read_cell_file(path).get('command')
  if recorded and identity(shlex.split(recorded)) != identity(argv):
    raise ValueError(
      f'Cell {cell.name} in {path} was run as\n  {recorded}\nbut the spec '
      f'now gives\n  {shlex.join(argv)}\nMove or delete {path} to run the '
      'new command, or restore the spec.'
    )


def run(
  root: str,
  experiment: spec_lib.Experiment,
  cells: list[spec_lib.Cell],
  parallel: int = 1,
  echo=print,
  locations: dict[str, str] | None = None,
  rerun_diverged: bool = False,
) -> dict[str, CellState]:
  """Runs the cells that are not finished, at most `parallel` at once.

  Finished cells are skipped, and diverged ones (a result: the same command
  resumes from the same checkpoint and diverges again) unless
  `rerun_diverged`; interrupted and failed ones are run again with the same
  command, which resumes from their latest checkpoint. A cell whose workdir
  was made by a command that trains something else (`identity`) stops the run
  before anything starts: its results would not be the row's. As each cell
  ends, a `progress_line` follows its own. `locations`: see `command`.
  """
  todo, ended = _plan(root, experiment, cells, locations, rerun_diverged, echo)
  # ended: cell name -> 'finished', 'diverged' or 'failed', for the progress line.
  python = sys.executable
  active: list[_Launched] = []
  walls = []  # Wall seconds of the cells finished in this run.

  def stop(signum, frame):
    del frame
    for launched in active:
      launched.process.send_signal(signum)
    raise KeyboardInterrupt(f'signal {signum}')

  previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
  try:
    while todo or active:
      while todo and len(active) < max(parallel, 1):
        # A compression cell waits for its float model's cell, a distilled one for its teacher,
        # an audit cell for the cells it reads.
        # A tuned cell waits for its tuning cells' results.
        ready = [t for t in todo if all(state(w).status in ok for w, ok in t[3].items())]
        if not ready:
          if not active:
            for cell, path, _, after in todo:
              echo(f'{cell.name}: not run: {", ".join(after)} did not finish')
            todo = []
          break
        todo.remove(ready[0])
        cell, path, argv, _ = ready[0]
        if argv is None:
          argv = command(root, experiment, cell, locations=locations)
          _check_identity(cell, path, argv)
        current = state(path)
        if skipped(current, rerun_diverged):  # Slurm or another runner took it since.
          echo(f'{cell.name}: {current.describe()}, skipped')
          continue
        echo(f'{cell.name}: starting ({current.status}): {shlex.join(argv)}')
        active.append(_Launched(cell, path, argv, python))
      time.sleep(0.5)
      for launched in [l for l in active if l.process.poll() is not None]:
        active.remove(launched)
        status = ended[launched.cell.name] = launched.finish()
        walls += [launched.wall_seconds] if status == 'finished' else []
        reason = launched.record['reason']
        echo(f'{launched.cell.name}: {status}' + (f': {reason}' if reason else ''))
        counts = collections.Counter(ended.values())
        echo(progress_line(counts, len(cells), walls, len(todo) + len(active), parallel))
  finally:
    for launched in active:
      launched.process.wait()
      launched.finish()
    for s, handler in previous.items():
      signal.signal(s, handler)
  return {cell.name: state(workdir(root, experiment, cell)) for cell in cells}
