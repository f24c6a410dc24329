"""Learning-rate sweeps (research/experiments/sweep.py) on made-up workdirs with
hand-computed answers, the runner's 'diverged' state and progress line, and the
`status` command. Nothing is trained."""

import dataclasses
import json
import math
import os
import re
import sys
import textwrap
from unittest import mock

from absl.testing import absltest

from research import provenance
from research.experiments import plots
from research.experiments import cell_results
from research.experiments import report
from research.experiments import runner
from research.experiments import rows as rows_lib
from research.experiments import spec as spec_lib
from research.experiments import stats
from tests import test_util

_CONFIG = 'configs/shakespeare_char.py:cpu'  # Exists; nothing runs it.
_RATES = (1e-3, 1e-2, 1e-1)
_INITIAL = 4.0  # Sweep.initial: the loss at initialisation of a cell without a step-0 record.
_T975_DF1 = 12.7062  # t_{0.975}(1).


def _cell(path: str, final=None, diverged: bool = False, step0=None) -> None:
  """A cell's workdir as research.main and the runner leave it: finished with
  validation loss `final`, or stopped by a non-finite loss (exit status 3);
  `step0`: a validation loss at step 0."""
  records = [] if step0 is None else [{'step': 0, 'split': 'valid', 'loss': step0, 'time': 1.0}]
  if not diverged:
    records.append({'step': 9, 'split': 'valid', 'loss': final, 'epoch': 1.0, 'time': 2.0})
  test_util.fake_cell(path, records, 'diverged' if diverged else 'finished', diverged_at=5)


def _spec(initial=_INITIAL, groups=('default', 'qk')) -> spec_lib.Experiment:
  rows = rows_lib.sweep_rows(
    _CONFIG, {g: {'model.qk_norm': 'layernorm'} if g == 'qk' else {} for g in groups}, _RATES
  )
  return spec_lib.Experiment(
    name='sweep',
    title='Sweep',
    seeds=(0, 1),
    metric='loss',
    splits=('valid',),
    rows=rows,
    sweep=spec_lib.Sweep(baseline='default', initial=initial),
  )


# Final validation loss per (group, rate index, seed); 'div': stopped with exit 3.
_FINAL = {
  ('default', 0): (2.0, 2.2),
  ('default', 1): (1.5, 1.7),
  ('default', 2): ('div', math.nan),  # Exit 3 at seed 0; a NaN final figure at seed 1.
  ('qk', 0): (4.5, 2.3),  # Above the initial loss at seed 0: counted at 4.0.
  ('qk', 1): (1.6, 1.9),
  ('qk', 2): (1.5, 1.7),
}


def _write_cells(root: str) -> None:
  for (group, i), finals in _FINAL.items():
    for seed, final in enumerate(finals):
      name = f'{group}_lr{_RATES[i]}-s{seed}'
      _cell(os.path.join(root, 'sweep', name), final=final, diverged=final == 'div')


def _interval(values):
  """mean, 95% half-width of two values, written out: t_{0.975}(1) * sd / sqrt(2)."""
  mean = sum(values) / 2
  sd = abs(values[0] - values[1]) / math.sqrt(2)
  return mean, _T975_DF1 * sd / math.sqrt(2)


class FormulaTest(absltest.TestCase):
  def test_counted_loss_and_sensitivity(self):
    self.assertEqual(stats.counted_loss(2.0, 4.0), (2.0, False))
    self.assertEqual(stats.counted_loss(4.0, 4.0), (4.0, False))  # At, not above.
    for diverged in (None, math.nan, math.inf, 4.5):
      self.assertEqual(stats.counted_loss(diverged, 4.0), (4.0, True), diverged)
    # mean(3, 2, 4) - min = 3 - 2.
    self.assertAlmostEqual(stats.lr_sensitivity([3.0, 2.0, 4.0]), 1.0)

  def test_progress_line(self):
    counts = {'finished': 3, 'diverged': 1, 'failed': 1, 'running': 4}
    # Mean wall 90 s x 5 cells left / 2 at once = 225 s.
    self.assertEqual(
      runner.progress_line(counts, 10, [60.0, 120.0], 5, 2),
      'progress: 3 finished, 1 diverged, 1 failed, 5 remaining of 10; ETA 0:03:45',
    )
    self.assertEqual(
      runner.progress_line({'finished': 1}, 8, [7200.0], 3, 2),
      'progress: 1 finished, 0 diverged, 0 failed, 7 remaining of 8; ETA 3:00:00',
    )
    self.assertEqual(
      runner.progress_line({'diverged': 1}, 4, [], 3, 1),
      'progress: 0 finished, 1 diverged, 0 failed, 3 remaining of 4; ETA unknown',
    )


class SpecTest(absltest.TestCase):
  def test_sweep_rows_carry_their_group_and_value(self):
    rows = _spec().rows
    self.assertEqual(
      [r.name for r in rows[:3]], ['default_lr0.001', 'default_lr0.01', 'default_lr0.1']
    )
    self.assertEqual({r.group for r in rows}, {'default', 'qk'})
    sweep = spec_lib.Sweep()
    self.assertEqual([sweep.value(r) for r in rows[3:]], list(_RATES))
    self.assertEqual(rows[3].overrides['model.qk_norm'], 'layernorm')
    small = rows_lib.sweep_rows(_CONFIG, {'g': {}}, (3e-5, 1e-4))
    self.assertEqual([r.name for r in small], ['g_lr0.00003', 'g_lr0.0001'])  # No '-'.

  def test_bad_sweeps_are_refused(self):
    good = _spec()
    spec_lib.check(good)
    lone = lambda rate: (
      good.rows[:3] + (spec_lib.Row('z', _CONFIG, {'optim.learning_rate': rate}, group='z'),)
    )
    cases = {
      'has no sweep': dict(sweep=None),
      'is not a group': dict(sweep=spec_lib.Sweep(baseline='nope')),
      'must be a number > 0': dict(rows=lone(0.0)),
      'has one row': dict(rows=lone(0.1)),
    }
    for message, change in cases.items():
      with self.subTest(message), self.assertRaisesRegex(ValueError, message):
        spec_lib.check(dataclasses.replace(good, **change))


class ReportTest(absltest.TestCase):
  def setUp(self):
    super().setUp()
    self.root = self.create_tempdir().full_path
    _write_cells(self.root)
    self.spec = _spec()
    self.results = cell_results.collect(self.root, self.spec)

  def test_table_sensitivity_and_paired_difference_on_known_numbers(self):
    text = report.results_markdown(self.spec, self.results)
    # Counted losses (diverged at 4.0): default s0 2.0 1.5 4.0, s1 2.2 1.7 4.0;
    # qk s0 4.0 1.6 1.5, s1 2.3 1.9 1.7. Sensitivity: mean minus min per seed.
    default = [7.5 / 3 - 1.5, 7.9 / 3 - 1.7]
    qk = [7.1 / 3 - 1.5, 5.9 / 3 - 1.7]
    mean, half = _interval([2.0, 2.2])
    self.assertIn(f'| default | {mean:.3f} ± {half:.3f} | ', text)
    self.assertIn(' | 4.000 ± 0.000 † | 1e-2 | ', text)  # Both seeds diverged at 1e-1.
    mean, half = _interval([4.0, 2.3])
    self.assertIn(f'| qk | {mean:.3f} ± {half:.3f} †1/2 | ', text)
    self.assertIn('| group | 1e-3 | 1e-2 | 1e-1 | best learning rate | LR sensitivity | n |', text)
    mean, half = _interval(default)
    self.assertIn(f' | 1e-2 | {mean:.4f} ± {half:.4f} | 2 of 2 |', text)
    mean, half = _interval(qk)
    self.assertIn(f' | 1e-1 | {mean:.4f} ± {half:.4f} | 2 of 2 |', text)  # Best: 1.6 mean.
    # Paired by seed: d = qk - default; t = mean / (sd / sqrt 2); for one degree of
    # freedom the two-sided p-value is 1 - 2 atan(|t|) / pi.
    d = [q - b for q, b in zip(qk, default)]
    mean, half = _interval(d)
    t = abs(mean) / (abs(d[0] - d[1]) / 2)
    p = 1 - 2 * math.atan(t) / math.pi
    self.assertAlmostEqual(mean, -0.4)
    self.assertIn(f'| qk | {mean:+.4f} ± {half:.4f} | {p:.3f} | ', text)
    # The diverged cell is listed with its reason, and is not a row to run.
    self.assertIn('| default_lr0.1-s0 | diverged | ', text)
    self.assertIn('Non-finite loss (nan) at step 5', text)
    self.assertNotIn('Rows without a finished cell', text)

  def test_initial_loss_is_the_cells_step_0_evaluation_where_it_has_one(self):
    root = self.create_tempdir().full_path
    spec = _spec(initial=None, groups=('default',))
    finals = {0: (3.0, 'div'), 1: (2.0, 2.5), 2: (3.5, 1.0)}  # rate index -> seeds 0, 1.
    for i, (seed0, seed1) in finals.items():
      _cell(os.path.join(root, 'sweep', f'default_lr{_RATES[i]}-s0'), seed0, step0=3.2)
      # Seed 1 has no step-0 record and there is no Sweep.initial: not counted.
      _cell(os.path.join(root, 'sweep', f'default_lr{_RATES[i]}-s1'), seed1, seed1 == 'div')
    text = report.results_markdown(spec, cell_results.collect(root, spec))
    # Seed 0 counts 3.5 at its step-0 loss 3.2: 3.0, 2.0, 3.2 -> mean 2.7333 - 2.0.
    self.assertIn(
      f'| default | 3.000 | 2.000 | 3.200 † | 1e-2 | {8.2 / 3 - 2.0:.4f} | 1 of 2 |', text
    )
    self.assertIn(
      'no `Sweep.initial`): default_lr0.001-s1, default_lr0.01-s1, default_lr0.1-s1.', text
    )

  def test_plot_and_table_files(self):
    out = self.create_tempdir().full_path
    written = report.write(out, self.root, self.spec)
    plot = os.path.join(out, plots.SWEEP_PLOT)
    self.assertIn(plot, written)
    self.assertGreater(os.path.getsize(plot), 10_000)
    # Every row is a sweep point: no plot per row beside lr_sweep.png, and the page says so.
    self.assertTrue(report.swept_only(self.spec))
    self.assertFalse(os.path.exists(os.path.join(out, 'final.png')))
    with open(os.path.join(out, 'RESULTS.md')) as f:
      self.assertIn(f'Plots: `{plots.SWEEP_PLOT}` (each sweep group per learning rate).', f.read())
    mixed = dataclasses.replace(self.spec, rows=self.spec.rows + (spec_lib.Row('plain', _CONFIG),))
    self.assertFalse(report.swept_only(mixed))
    with open(os.path.join(out, 'results.csv')) as f:
      self.assertIn('default_lr0.1,0,valid,loss,nan,', f.read())  # Kept, not dropped.
    fig, ax = plots.sweep_figure(self.spec, self.results)
    fig.canvas.draw()
    self.assertEqual(ax.get_xscale(), 'log')
    self.assertEqual([t.get_text() for t in ax.get_xticklabels()], ['1e-3', '1e-2', '1e-1'])
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    plots._pyplot().close(fig)
    self.assertCountEqual(
      legend,
      ['at initialisation', 'default', 'a seed diverged (counted at the initial figure)', 'qk'],
    )


class SweepPanelsTest(absltest.TestCase):
  def test_one_panel_per_entry_with_its_groups_only(self):
    root = self.create_tempdir().full_path
    _write_cells(root)
    base = _spec()
    sweep = dataclasses.replace(base.sweep, panels=(('first', ('default',)), ('second', ('qk',))))
    spec = dataclasses.replace(base, sweep=sweep)
    spec_lib.check(spec)
    fig, axes = plots.sweep_figure(spec, cell_results.collect(root, spec))
    fig.canvas.draw()
    self.assertLen(axes, 2)
    self.assertEqual([ax.get_title() for ax in axes], ['first', 'second'])
    legends = [[t.get_text() for t in ax.get_legend().get_texts()] for ax in axes]
    plots._pyplot().close(fig)
    self.assertIn('default', legends[0])
    self.assertNotIn('qk', legends[0])
    self.assertIn('qk', legends[1])
    self.assertNotIn('default', legends[1])
    bad = dataclasses.replace(sweep, panels=(('x', ('nope',)),))
    with self.assertRaisesRegex(ValueError, r"Sweep panel 'x' names \['nope'\]"):
      spec_lib.check(dataclasses.replace(base, sweep=bad))


def _fake_command(root, experiment, cell, python=None, locations=None):
  """A cell's command that trains nothing: a-* finish, b-* stop as research.main
  does on a non-finite loss (exit 3), c-* fail with a bad input (exit 2)."""
  del python, locations
  path = runner.workdir(root, experiment, cell)
  code = {'a': 0, 'b': 3, 'c': 2}[cell.row.name]
  end = 'finished' if code == 0 else 'failed'
  script = textwrap.dedent(f"""\
    import json, os, sys
    with open(os.path.join({path!r}, 'runs.jsonl'), 'a') as f:
      f.write(json.dumps({{'event': 'start', 'time': 0.0}}) + '\\n')
      f.write(json.dumps({{'event': 'end', 'time': 1.0, 'status': {end!r}}}) + '\\n')
    print('error: Non-finite loss (nan) at step 5.' if {code} == 3 else 'error: bad')
    sys.exit({code})
    """)
  return [sys.executable, '-c', script, f'--config.seed={cell.seed}']


class RunnerTest(absltest.TestCase):
  def test_exit_3_is_diverged_skipped_on_rerun_and_counted_in_progress(self):
    root = self.create_tempdir().full_path
    rows = tuple(spec_lib.Row(n, _CONFIG) for n in ('a', 'b', 'c'))
    experiment = spec_lib.Experiment('fake', 'Fake', rows=rows)
    cells = spec_lib.cells(experiment)
    messages = []
    with mock.patch.object(runner, 'command', _fake_command):
      outcome = runner.run(root, experiment, cells, echo=messages.append)
    self.assertEqual(
      {n: s.status for n, s in outcome.items()},
      {'a-s0': 'finished', 'b-s0': 'diverged', 'c-s0': 'failed'},
    )
    self.assertIn('b-s0: diverged: exit status 3: error: Non-finite loss', '\n'.join(messages))
    progress = [m for m in messages if m.startswith('progress:')]
    self.assertLen(progress, 3)
    self.assertRegex(
      progress[0], r'^progress: 1 finished, 0 diverged, 0 failed, 2 remaining of 3; ETA 0:00:\d\d$'
    )
    self.assertEqual(
      progress[2], 'progress: 1 finished, 1 diverged, 1 failed, 0 remaining of 3; ETA 0:00:00'
    )
    self.assertEqual(runner.state(runner.workdir(root, experiment, cells[1])).status, 'diverged')
    # A run that records its own divergence in runs.jsonl (no runner, e.g. Slurm) is one too.
    by_hand = os.path.join(root, 'by_hand')
    os.makedirs(by_hand)
    provenance.record_start(by_hand)
    provenance.record_end(by_hand, 'diverged')
    self.assertEqual(runner.state(by_hand).status, 'diverged')
    # A re-run leaves the diverged cell (a result) alone and tries the failed one again.
    messages.clear()
    with mock.patch.object(runner, 'command', _fake_command):
      runner.run(root, experiment, cells, echo=messages.append)
    started = [m.split(':')[0] for m in messages if ': starting' in m]
    self.assertEqual(started, ['c-s0'])
    self.assertTrue(any(re.match(r'b-s0: diverged: .*, skipped', m) for m in messages), messages)
    self.assertIn('progress: 1 finished, 1 diverged, 1 failed, 0 remaining of 3', messages[-1])
    messages.clear()
    with mock.patch.object(runner, 'command', _fake_command):
      runner.run(root, experiment, cells, echo=messages.append, rerun_diverged=True)
    self.assertEqual([m.split(':')[0] for m in messages if ': starting' in m], ['b-s0', 'c-s0'])

  def test_status_prints_the_cells_and_runs_nothing(self):
    tmp = self.create_tempdir().full_path
    directory = os.path.join(tmp, 'spec')
    os.makedirs(directory)
    with open(os.path.join(directory, 'spec.py'), 'w') as f:
      f.write(
        'from research.experiments import rows, spec\n'
        f"SPEC = spec.Experiment('sweep', 'S', seeds=(0,), rows=rows.sweep_rows({_CONFIG!r}, "
        "{'g': {}}, (0.001, 0.01, 0.1, 1.0)), sweep=spec.Sweep())\n"
      )
    cells = os.path.join(tmp, 'cells', 'sweep')
    _cell(os.path.join(cells, 'g_lr0.001-s0'), 2.0)
    _cell(os.path.join(cells, 'g_lr0.01-s0'), diverged=True)
    os.makedirs(os.path.join(cells, 'g_lr0.1-s0'))
    with open(os.path.join(cells, 'g_lr0.1-s0', runner.CELL_FILE), 'w') as f:
      json.dump({'status': 'failed', 'reason': 'exit status 2: error: bad'}, f)
    listed = test_util.run_module(
      ['research.experiments', 'status', directory, f'--root={os.path.join(tmp, "cells")}']
    )
    self.assertEqual(listed.returncode, 0, listed.stderr[-2000:])
    self.assertEqual(
      listed.stdout.splitlines(),
      [
        'cell          state',
        'g_lr0.001-s0  finished',
        'g_lr0.01-s0   diverged: exit status 3: error: Non-finite loss (nan) at step 5.',
        'g_lr0.1-s0    failed: exit status 2: error: bad',
        'g_lr1.0-s0    not run',
        f'4 cells under {cells}: 1 finished, 1 diverged, 1 failed, 1 not run',
      ],
    )
    self.assertEqual(os.listdir(directory), ['spec.py'])  # Nothing written.
    self.assertFalse(os.path.exists(os.path.join(cells, 'g_lr1.0-s0')))
    bad = test_util.run_module(['research.experiments', 'stat', directory])
    self.assertEqual(bad.returncode, 2)
    self.assertIn('run|report|status', bad.stderr)


if __name__ == '__main__':
  absltest.main()
