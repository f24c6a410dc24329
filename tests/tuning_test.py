"""Tuned rows (research/experiments/tuning.py: a setting chosen on sweep
groups' results when the row's cells start) and the steps-to-baseline table
(research/experiments/speedup.py), on workdirs written by hand."""

import dataclasses
import json
import math
import os
import statistics

from absl.testing import absltest

from research import provenance
from research.experiments import claims
from research.experiments import curves
from research.experiments import cell_results
from research.experiments import report
from research.experiments import runner
from research.experiments import rows as rows_lib
from research.experiments import speedup
from research.experiments import spec as spec_lib
from research.experiments import stats as stats_lib
from research.experiments import tuning
from tests import test_util

_CONFIG = 'configs/shakespeare_char.py:cpu'  # Exists; nothing runs it.
_RATES = (1e-3, 1e-2, 1e-1)
_SHORT = {'num_train_steps': 9, 'eval_on_test': False}
_T975_DF1 = 12.7062  # t_{0.975}(1).


def _cell(path: str, curve=(), status: str = 'finished', speed: float = 0.0) -> None:
  """A cell's workdir as the runner leaves it: valid loss per step from
  `curve` [(step, loss)], train lines at `speed` tokens/s; 'diverged': exit
  status 3 after the curve; 'running': started, not ended."""
  records = []
  for step, loss in curve:
    records.append({'step': step, 'split': 'valid', 'loss': loss, 'time': 1.0})
    if speed:
      records.append(
        {'step': step, 'split': 'train', 'loss': loss, 'tokens_per_s': speed, 'time': 1.0}
      )
  test_util.fake_cell(path, records, status, diverged_at=5)


def _spec(**tuned_overrides) -> spec_lib.Experiment:
  groups = {
    'a_wd0': {**_SHORT, 'optim.weight_decay': 0.0},
    'a_wd1': {**_SHORT, 'optim.weight_decay': 0.1},
  }
  sweep = rows_lib.sweep_rows(_CONFIG, groups, _RATES, seeds=(0,))
  final = spec_lib.Row(
    'a', _CONFIG, {'num_train_steps': 30, **tuned_overrides}, tuned_from=('a_wd0', 'a_wd1')
  )
  return spec_lib.Experiment(
    name='opt',
    title='Optimizers',
    seeds=(1, 2),
    metric='loss',
    splits=('valid', 'test'),
    rows=(*sweep, final),
    sweep=spec_lib.Sweep(initial=4.0),
  )


# Final valid loss of each tuning cell (seed 0): (group, rate index) -> loss or 'div'.
_TUNING = {
  ('a_wd0', 0): 2.0,
  ('a_wd0', 1): 1.6,
  ('a_wd0', 2): 'div',
  ('a_wd1', 0): 1.9,
  ('a_wd1', 1): 1.5,  # The best.
  ('a_wd1', 2): 4.5,  # Above the loss at initialisation: counted as diverged.
}


def _write_tuning(root: str, skip=()) -> None:
  for (group, i), loss in _TUNING.items():
    if (group, i) in skip:
      continue
    path = os.path.join(root, 'opt', f'{group}_lr{_RATES[i]}-s0')
    diverged = loss == 'div'
    _cell(
      path, [(0, 4.0)] + ([] if diverged else [(9, loss)]), 'diverged' if diverged else 'finished'
    )


class SpecTest(absltest.TestCase):
  def test_tuned_keys_are_the_swept_key_and_what_differs_between_groups(self):
    experiment = _spec()
    row = experiment.rows[-1]
    self.assertEqual(
      spec_lib.tuned_keys(experiment, row), ['optim.learning_rate', 'optim.weight_decay']
    )
    self.assertLen(spec_lib.tuning_cells(experiment, row), 6)

  def test_bad_tuned_rows_are_refused(self):
    with self.assertRaisesRegex(ValueError, r"sets \['optim.weight_decay'\], which its tuning"):
      spec_lib.check(_spec(**{'optim.weight_decay': 0.2}))
    experiment = _spec()
    strange = dataclasses.replace(experiment.rows[-1], tuned_from=('nope',))
    with self.assertRaisesRegex(ValueError, r"tuned_from names \['nope'\], not sweep groups"):
      spec_lib.check(dataclasses.replace(experiment, rows=(*experiment.rows[:-1], strange)))
    other = dataclasses.replace(experiment.rows[-1], config='configs/default.py')
    with self.assertRaisesRegex(ValueError, 'differs from its tuning rows'):
      spec_lib.check(dataclasses.replace(experiment, rows=(*experiment.rows[:-1], other)))
    with self.assertRaisesRegex(ValueError, 'steps_to_baseline counts steps to the baseline'):
      spec_lib.check(dataclasses.replace(experiment, steps_to_baseline=True))


class ChoiceTest(absltest.TestCase):
  def test_tuned_cells_wait_then_take_the_best_setting(self):
    root = self.create_tempdir().full_path
    experiment = _spec()
    tuned = spec_lib.Cell(experiment.rows[-1], 1)
    # Every tuning cell must have a result: one still running holds the row back.
    _write_tuning(root, skip={('a_wd1', 1)})
    _cell(os.path.join(root, 'opt', 'a_wd1_lr0.01-s0'), [(0, 4.0)], 'running')
    with self.assertRaisesRegex(tuning.NotTuned, r'a is tuned once a_wd1_lr0.01-s0 have results'):
      runner.command(root, experiment, tuned)
    self.assertIn('not chosen yet', runner.shown_command(root, experiment, tuned))
    todo, _ = runner._plan(root, experiment, [tuned], {}, False, lambda _: None)
    self.assertIsNone(todo[0][2])  # Its command is made when it starts.
    # It waits for all six; a diverged one is a result.
    waits = runner.needs(root, experiment, tuned)
    self.assertLen(waits, 6)
    self.assertEqual(set(waits.values()), {('finished', 'diverged')})

    os.remove(os.path.join(root, 'opt', 'a_wd1_lr0.01-s0', 'metrics.jsonl'))
    with open(os.path.join(root, 'opt', 'a_wd1_lr0.01-s0', 'metrics.jsonl'), 'w') as f:
      for step, loss in ((0, 4.0), (9, 1.5)):
        f.write(json.dumps({'step': step, 'split': 'valid', 'loss': loss, 'time': 1.0}) + '\n')
    provenance.record_end(os.path.join(root, 'opt', 'a_wd1_lr0.01-s0'), 'finished')
    argv = runner.command(root, experiment, tuned)
    # The chosen setting, and the row's own budget, not the tuning cells'.
    self.assertIn('--config.optim.learning_rate=0.01', argv)
    self.assertIn('--config.optim.weight_decay=0.1', argv)
    self.assertIn('--config.num_train_steps=30', argv)
    self.assertNotIn('--config.eval_on_test=false', argv)

    choice = runner.tuned(root, experiment, tuned.row)
    scores = {r.name: (score, n, diverged) for r, score, n, diverged in choice.scores}
    self.assertEqual(scores['a_wd0_lr0.1'], (4.0, 1, 1))  # Diverged: its loss at step 0.
    self.assertEqual(scores['a_wd1_lr0.1'], (4.0, 1, 1))  # 4.5 > 4.0: diverged too.
    self.assertEqual(scores['a_wd1_lr0.01'], (1.5, 1, 0))

  def test_a_tie_takes_the_lower_rate_and_the_report_names_the_choice(self):
    root = self.create_tempdir().full_path
    experiment = _spec()
    for (group, i), loss in _TUNING.items():
      loss = 1.5 if (group, i) in (('a_wd1', 1), ('a_wd1', 0)) else 3.0
      _cell(os.path.join(root, 'opt', f'{group}_lr{_RATES[i]}-s0'), [(0, 4.0), (9, loss)])
    choice = runner.tuned(root, experiment, experiment.rows[-1])
    self.assertEqual(choice.overrides, {'optim.learning_rate': 1e-3, 'optim.weight_decay': 0.1})
    results = cell_results.collect(root, experiment)
    text = report.results_markdown(experiment, results)
    self.assertIn('## Tuning', text)
    self.assertIn(
      '| a | a_wd0, a_wd1 | optim.learning_rate=0.001, optim.weight_decay=0.1 (at the edge of '
      'the swept range: a wider sweep may do better) | 1.5000 | 6 | 0 |',
      text,
    )
    # The main table shows the tuned row, not the tuning cells (the sweep section does).
    main = text.split('## Sweeps')[0]
    self.assertIn('| a | valid |', main)
    self.assertNotIn('a_wd0_lr', main)


class SpeedupTest(absltest.TestCase):
  def test_steps_to_a_target_interpolate_between_evaluations(self):
    curve = [(0, 4.0), (10, 3.0), (20, 2.0), (30, 1.8)]
    self.assertEqual(speedup.steps_to(curve, 2.5), (15.0, True))  # 10 + 10 * 0.5 / 1.0.
    self.assertEqual(speedup.steps_to(curve, 4.0), (0.0, True))
    self.assertEqual(speedup.steps_to(curve, 1.0), (30.0, False))

  def test_table_gives_the_geometric_mean_ratio_over_seeds(self):
    root = self.create_tempdir().full_path
    rows = (spec_lib.Row('adamw', _CONFIG), spec_lib.Row('muon', _CONFIG))
    experiment = spec_lib.Experiment(
      name='opt',
      title='T',
      seeds=(1, 2),
      metric='loss',
      splits=('valid',),
      rows=rows,
      baseline='adamw',
      steps_to_baseline=True,
    )
    # The baseline ends at 2.0 (seed 1) and 1.9 (seed 2), at step 40.
    base = {1: [(0, 4.0), (20, 3.0), (40, 2.0)], 2: [(0, 4.0), (20, 2.9), (40, 1.9)]}
    # muon reaches 2.0 at step 20 (seed 1) and 1.9 half-way from 20 (2.1) to 40 (1.7): 30.
    muon = {1: [(0, 4.0), (20, 2.0), (40, 1.5)], 2: [(0, 4.0), (20, 2.1), (40, 1.7)]}
    for seed in (1, 2):
      _cell(os.path.join(root, 'opt', f'adamw-s{seed}'), base[seed], speed=1000.0)
      _cell(os.path.join(root, 'opt', f'muon-s{seed}'), muon[seed], speed=800.0)
    results = cell_results.collect(root, experiment)
    [(row, pairs, planned)] = speedup.comparisons(experiment, results)
    self.assertEqual((row.name, planned), ('muon', 2))
    self.assertAlmostEqual(pairs[1].ratio, 40 / 20)
    self.assertAlmostEqual(pairs[2].ratio, 40 / 30)
    self.assertAlmostEqual(pairs[2].wall_ratio, 40 / 30 * 0.8)
    # Geometric mean and its interval, written out: exp(mean log r +- t(1) sd / sqrt 2).
    logs = [math.log(2.0), math.log(4 / 3)]
    mean, half = statistics.fmean(logs), _T975_DF1 * statistics.stdev(logs) / math.sqrt(2)
    shown = f'{math.exp(mean):.2f} [{math.exp(mean - half):.2f}, {math.exp(mean + half):.2f}]'
    text = report.results_markdown(experiment, results)
    self.assertIn(f'| muon | 2 of 2 | 0 | 25 | {shown} |', text)

    # Claims on the rows: the step ratio's log, and a match of the final loss within a margin.
    claims_ = (
      spec_lib.Claim('fewer steps', 'S', 'step_ratio', (('muon', 'adamw'),), direction='higher'),
      spec_lib.Claim('matches', 'S', 'final', (('muon', 'adamw'),), direction='equal', margin=0.5),
      spec_lib.Claim('lower', 'S', 'final', (('muon', 'adamw'),), margin=0.0),
    )
    claimed = dataclasses.replace(experiment, claims=claims_)
    spec_lib.check(claimed)
    ratio, match, lower = claims.outcomes(claimed, results)
    self.assertAlmostEqual(ratio.paired.mean, mean)
    self.assertAlmostEqual(ratio.paired.half, half)
    self.assertEqual(ratio.verdict, 'not significant')  # mean - half < 0 at one dof.
    # Final losses: muon - adamw = 1.5 - 2.0 and 1.7 - 1.9: mean -0.35, half t(1) * 0.15 / 1.
    self.assertAlmostEqual(lower.paired.mean, -0.35)
    self.assertAlmostEqual(lower.paired.half, _T975_DF1 * statistics.stdev([-0.5, -0.2]) / 2**0.5)
    self.assertEqual(match.verdict, 'not significant')  # [-2.26, 1.56] is not inside +-0.5.
    self.assertEqual(
      claims.verdict(stats_lib.Paired(0.1, 0.2, 0.5, 5, 0.3), 'equal', 0.5), 'reproduced'
    )
    self.assertEqual(
      claims.verdict(stats_lib.Paired(0.7, 0.1, 0.01, 5, 0.3), 'equal', 0.5), 'not reproduced'
    )
    with self.assertRaisesRegex(ValueError, "direction 'equal' and a margin > 0 go together"):
      spec_lib.check(
        dataclasses.replace(
          experiment,
          claims=(spec_lib.Claim('m', 'S', 'final', (('muon', 'adamw'),), direction='equal'),),
        )
      )
    with self.assertRaisesRegex(ValueError, r"\['lion'\] are not rows"):
      spec_lib.check(
        dataclasses.replace(
          experiment, claims=(spec_lib.Claim('m', 'S', 'final', (('lion', 'adamw'),)),)
        )
      )
    self.assertIn('| 1 | fewer steps | S | log(', report.results_markdown(claimed, results))

    # curves.png: per row, at each step all its seeds have, the mean and its 95% band.
    (_, m20, h20), (_, m40, h40) = curves.bands(rows[1], results)[1:]
    self.assertAlmostEqual(m20, 2.05)
    self.assertAlmostEqual(h20, _T975_DF1 * statistics.stdev([2.0, 2.1]) / math.sqrt(2))
    self.assertAlmostEqual(m40, 1.6)
    written = report.write(self.create_tempdir().full_path, root, experiment, force=True)
    self.assertIn(curves.PLOT, [os.path.basename(w) for w in written])


if __name__ == '__main__':
  absltest.main()
