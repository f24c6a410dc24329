"""Tests of the experiment runner on a tiny spec that trains in seconds."""

import csv
import json
import os
import shlex
import signal
import subprocess
import sys
import time

from absl.testing import absltest

from research import provenance
from research.experiments import cell_results
from research.experiments import report
from research.experiments import runner
from research.experiments import spec as spec_lib
from research.experiments import stats
from tests import test_util

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tiny_spec(config_path: str) -> spec_lib.Experiment:
  return spec_lib.Experiment(
    name='tiny',
    title='Tiny',
    seeds=(0, 1),
    metric='bpc',
    splits=('valid', 'test'),
    rows=(
      spec_lib.Row(
        'a', config_path, published={'valid': 3.0, 'test': 2.9}, source='A paper, Table 1'
      ),
      # Long enough to be killed between two checkpoints.
      spec_lib.Row(
        'b',
        config_path,
        overrides={
          'model.hidden_size': 8,
          'num_train_steps': 600,
          'checkpoint_every_steps': 50,
          'eval_every_steps': 200,
          'log_every_steps': 100,
        },
      ),
      spec_lib.Row('broken', config_path, overrides={'data.name': 'nope'}, seeds=(0,)),
    ),
  )


def _wait_for_checkpoint(path: str, process, timeout: float = 240) -> None:
  ckpt = os.path.join(path, 'checkpoints')
  deadline = time.time() + timeout
  while time.time() < deadline:
    # Orbax marks a step committed with commit_success.txt once all is written.
    if os.path.isdir(ckpt) and any(
      n.isdigit() and os.path.exists(os.path.join(ckpt, n, 'commit_success.txt'))
      for n in os.listdir(ckpt)
    ):
      return
    if process.poll() is not None:
      raise AssertionError('the cell ended before its first checkpoint')
    time.sleep(0.05)
  raise AssertionError('no checkpoint appeared')


def _failures(outcome: dict, path) -> str:
  """Each unexpected failure's reason and the end of its log, for the message."""
  lines = []
  for name, state in outcome.items():
    if state.status == 'failed' and not name.startswith('broken'):
      with open(os.path.join(path(name), runner.LOG_FILE)) as f:
        lines.append(f'{name}: {state.reason}\n{f.read()[-2000:]}')
  return '\n'.join(lines)


class StatisticsTest(absltest.TestCase):
  def test_interval_on_known_numbers(self):
    # mean 3, sample sd sqrt(2.5), t_{0.975}(4) = 2.7764.
    mean, half = stats.confidence_interval([1.0, 2.0, 3.0, 4.0, 5.0])
    self.assertAlmostEqual(mean, 3.0)
    self.assertAlmostEqual(half, 2.7764 * (2.5**0.5) / (5**0.5), places=6)
    mean, half = stats.confidence_interval([10.0, 12.0])
    self.assertAlmostEqual(half, 12.7062 * (2**0.5) / (2**0.5), places=4)
    self.assertEqual(stats.confidence_interval([7.0]), (7.0, None))

  def test_t_quantiles(self):
    self.assertAlmostEqual(stats.t_quantile_975(30), 2.0423, places=4)
    self.assertAlmostEqual(stats.t_quantile_975(31), 2.0395, places=3)
    self.assertAlmostEqual(stats.t_quantile_975(120), 1.9799, places=3)
    with self.assertRaises(ValueError):
      stats.t_quantile_975(0)


class SpecTest(absltest.TestCase):
  def setUp(self):
    super().setUp()
    self.config = test_util.tiny_config_file(self.create_tempdir().full_path)
    self.spec = _tiny_spec(self.config)

  def test_cells_expand_rows_by_seeds(self):
    names = [c.name for c in spec_lib.cells(self.spec)]
    self.assertEqual(names, ['a-s0', 'a-s1', 'b-s0', 'b-s1', 'broken-s0'])
    cells = spec_lib.cells(self.spec)
    self.assertEqual(
      [c.name for c in spec_lib.select(cells, 'b,*-s0')], ['a-s0', 'b-s0', 'b-s1', 'broken-s0']
    )
    with self.assertRaisesRegex(ValueError, 'match no cell'):
      spec_lib.select(cells, 'c')

  def test_command_carries_seed_and_overrides(self):
    cell = spec_lib.cells(self.spec)[3]
    argv = runner.command('root', self.spec, cell, python='python')
    self.assertEqual(argv[:3], ['python', '-m', 'research.main'])
    self.assertIn('--workdir=' + os.path.join('root', 'tiny', 'b-s1'), argv)
    self.assertIn('--config.seed=1', argv)
    self.assertIn('--config.model.hidden_size=8', argv)

  def test_identity_leaves_out_what_belongs_to_a_machine(self):
    cell = spec_lib.cells(self.spec)[3]
    here = runner.command(
      'root',
      self.spec,
      cell,
      python='python',
      locations={'data.path': '/data/x.txt', 'data.tfds_dir': ''},
    )
    self.assertIn('--config.data.path=/data/x.txt', here)
    self.assertFalse(any(a.startswith('--config.data.tfds_dir') for a in here))
    elsewhere = runner.command(
      '/scratch/runs',
      self.spec,
      cell,
      python='/opt/venv/bin/python',
      locations={'data.path': '/mnt/x.txt', 'data.tfds_dir': '/mnt/tfds'},
    )
    self.assertEqual(runner.identity(here), runner.identity(elsewhere))
    other_seed = runner.command('root', self.spec, spec_lib.cells(self.spec)[2])
    self.assertNotEqual(runner.identity(here), runner.identity(other_seed))
    changed = here[:-1] + ['--config.model.hidden_size=9']
    self.assertNotEqual(runner.identity(here), runner.identity(changed))

  def test_a_spec_may_not_say_where_the_data_lies(self):
    row = spec_lib.Row('a', self.config, overrides={'data.path': '/x/input.txt'})
    with self.assertRaisesRegex(ValueError, r"sets \['data.path'\].*--data_path"):
      spec_lib.check(spec_lib.Experiment('x', 'x', rows=(row,)))

  def test_bad_specs_are_refused(self):
    row = spec_lib.Row('a', self.config)
    with self.assertRaisesRegex(ValueError, 'unique'):
      spec_lib.check(spec_lib.Experiment('x', 'x', rows=(row, row)))
    with self.assertRaisesRegex(ValueError, 'does not exist'):
      spec_lib.check(spec_lib.Experiment('x', 'x', rows=(spec_lib.Row('a', 'configs/nope.py'),)))
    with self.assertRaisesRegex(ValueError, 'source'):
      spec_lib.check(
        spec_lib.Experiment(
          'x', 'x', rows=(spec_lib.Row('a', self.config, published={'test': 1.0}),)
        )
      )


class RunnerTest(absltest.TestCase):
  def test_run_skip_resume_fail_and_report(self):
    os.chdir(_REPO)  # Cells run `python -m research.main` from the repo root.
    tmp = self.create_tempdir().full_path
    spec = _tiny_spec(test_util.tiny_config_file(tmp))
    root = os.path.join(tmp, 'cells')
    cells = spec_lib.cells(spec)
    path = lambda name: os.path.join(root, 'tiny', name)

    # Interrupt b-s0 by hand: SIGKILL after its first checkpoint.
    cell_b0 = cells[2]
    os.makedirs(path('b-s0'))
    process = subprocess.Popen(
      runner.command(root, spec, cell_b0, sys.executable),
      stdout=subprocess.DEVNULL,
      stderr=subprocess.DEVNULL,
    )
    _wait_for_checkpoint(path('b-s0'), process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    self.assertEqual(runner.state(path('b-s0')).status, 'interrupted')

    messages = []
    outcome = runner.run(root, spec, cells, parallel=2, echo=messages.append)
    self.assertEqual(
      {n: s.status for n, s in outcome.items()},
      {
        'a-s0': 'finished',
        'a-s1': 'finished',
        'b-s0': 'finished',
        'b-s1': 'finished',
        'broken-s0': 'failed',
      },
      _failures(outcome, path),
    )
    self.assertIn(
      "config.data.name='nope' must be one of the known datasets", outcome['broken-s0'].reason
    )
    with open(os.path.join(path('b-s0'), runner.LOG_FILE)) as f:
      log = f.read()
    self.assertIn('Resuming from the checkpoint at step', log, log[-3000:])
    runs = provenance.read_runs(path('b-s0'))
    self.assertEqual([r['event'] for r in runs].count('start'), 2)
    for name in ('a-s0', 'b-s1'):
      with open(os.path.join(path(name), 'metrics.jsonl')) as f:
        records = [json.loads(l) for l in f]
      events = [(r['step'], r['split']) for r in records]
      self.assertLen(set(events), len(events))
      self.assertTrue(all('time' in r and 'epoch' in r for r in records))

    # A re-run starts nothing: every finished cell is skipped.
    messages.clear()
    runner.run(root, spec, cells[:4], parallel=2, echo=messages.append)
    self.assertEqual(messages, [f'{c.name}: finished, skipped' for c in cells[:4]])
    self.assertEqual([r['event'] for r in provenance.read_runs(path('a-s0'))], ['start', 'end'])

    # A spec that changed under a cell is refused, not mixed in.
    changed = spec_lib.Experiment(
      name='tiny',
      title='Tiny',
      seeds=(0,),
      metric='bpc',
      rows=(spec_lib.Row('a', spec.rows[0].config, overrides={'model.hidden_size': 4}),),
    )
    with self.assertRaisesRegex(ValueError, 'was run as'):
      runner.run(root, changed, spec_lib.cells(changed))

    out = self.create_tempdir().full_path
    written = report.write(out, root, spec)
    for f in written:
      self.assertGreater(os.path.getsize(f), 0, f)
    with open(os.path.join(out, 'results.csv')) as f:
      rows = list(csv.DictReader(f))
    self.assertEqual(
      list(rows[0]), ['row', 'seed', 'split', 'metric', 'value', 'wall_seconds', 'hardware']
    )
    self.assertEqual(
      [(r['row'], r['seed'], r['split']) for r in rows[:2]],
      [('a', 'published', 'valid'), ('a', 'published', 'test')],
    )
    ours = [r for r in rows if r['seed'] != 'published']
    self.assertLen(ours, 8)  # 4 finished cells x 2 splits.
    self.assertTrue(
      all(float(r['wall_seconds']) > 0 and r['hardware'].startswith('CPU') for r in ours)
    )
    a_valid = [float(r['value']) for r in ours if r['row'] == 'a' and r['split'] == 'valid']
    mean, half = stats.confidence_interval(a_valid)
    with open(os.path.join(out, 'RESULTS.md')) as f:
      markdown = f.read()
    # bpc to three decimals; the published value as the paper gives it.
    self.assertIn(f'| a | valid | 3 | {mean:.3f} ± {half:.3f} | 2 of 2 |', markdown)
    self.assertIn('| broken-s0 | failed |', markdown)
    self.assertIn("config.data.name='nope' must be one of the known datasets", markdown)

    # Reporting from a root without those workdirs would drop their results:
    # refused, naming the cells, with nothing written; --force rewrites.
    elsewhere = os.path.join(tmp, 'elsewhere')
    with self.assertRaisesRegex(ValueError, 'a-s0, a-s1, b-s0, b-s1.*--force'):
      report.write(out, elsewhere, spec)
    with open(os.path.join(out, 'RESULTS.md')) as f:
      self.assertEqual(f.read(), markdown)
    self.assertLen(cell_results.recorded_cells(os.path.join(out, 'results.csv')), 4)
    # Cells about to run count as kept.
    self.assertEqual(report.finished_cells(root, spec), {'a-s0', 'a-s1', 'b-s0', 'b-s1'})
    self.assertEmpty(report.finished_cells(elsewhere, spec))
    with self.assertRaisesRegex(ValueError, 'results of b-s1, which'):
      report.check_nothing_dropped(out, elsewhere, spec, {'a-s0', 'a-s1', 'b-s0'})
    report.check_nothing_dropped(out, elsewhere, spec, {'a-s0', 'a-s1', 'b-s0', 'b-s1'})
    recorded_csv = os.path.join(out, 'results.csv')
    with open(recorded_csv) as f:
      recorded = f.read()
    report.write(out, elsewhere, spec, force=True)
    self.assertEmpty(cell_results.recorded_cells(recorded_csv))

    # --dry-run prints each cell's command, and a printed command runs as is.
    listing = subprocess.run(
      [sys.executable, '-m', 'research.experiments', 'run', os.path.dirname(out), '--dry-run'],
      capture_output=True,
      text=True,
    )
    self.assertNotEqual(listing.returncode, 0)  # No spec.py there.
    self.assertIn('No experiment spec', listing.stderr)
    spec_dir = os.path.join(tmp, 'spec_dir')
    os.makedirs(spec_dir)
    with open(os.path.join(spec_dir, 'spec.py'), 'w') as f:
      f.write(
        'import sys\nsys.path.insert(0, %r)\n' % os.path.dirname(__file__)
        + 'from experiments_test import _tiny_spec\n'
        + f'SPEC = _tiny_spec({spec.rows[0].config!r})\n'
      )
    listing = subprocess.run(
      [
        sys.executable,
        '-m',
        'research.experiments',
        'run',
        spec_dir,
        '--dry-run',
        f'--root={root}',
        '--cells=a-s1',
      ],
      capture_output=True,
      text=True,
      check=True,
    ).stdout.splitlines()
    self.assertEqual(listing[0], 'a-s1 [finished]')
    printed = shlex.split(listing[1])
    self.assertEqual(printed[3:], runner.command(root, spec, cells[1])[3:])
    subprocess.run(printed, check=True, capture_output=True)

    # `run` refuses before running anything when its table would drop cells.
    with open(os.path.join(spec_dir, 'results.csv'), 'w') as f:
      f.write(recorded)
    refused = subprocess.run(
      [
        sys.executable,
        '-m',
        'research.experiments',
        'run',
        spec_dir,
        f'--root={elsewhere}',
        '--cells=a-s0',
      ],
      capture_output=True,
      text=True,
    )
    self.assertEqual(refused.returncode, 2, refused.stderr[-2000:])
    self.assertIn('results of a-s1, b-s0, b-s1, which', refused.stderr)
    self.assertFalse(os.path.exists(elsewhere))
    # With --keep_recorded the page is rewritten from the recorded figures instead.
    subprocess.run(
      [
        sys.executable,
        '-m',
        'research.experiments',
        'report',
        spec_dir,
        f'--root={elsewhere}',
        '--keep_recorded',
      ],
      capture_output=True,
      check=True,
    )
    self.assertLen(cell_results.recorded_cells(os.path.join(spec_dir, 'results.csv')), 4)
    with open(os.path.join(spec_dir, 'RESULTS.md')) as f:
      self.assertIn('(`--keep_recorded`): a-s0, a-s1, b-s0, b-s1.', f.read())


if __name__ == '__main__':
  absltest.main()
