"""Trace plots (research/experiments/traces.py) and published claims
(research/experiments/claims.py) on made-up workdirs with hand-computed
answers. Nothing is trained."""

import dataclasses
import math
import os
import shutil

from absl.testing import absltest

from research.experiments import claims
from research.experiments import plots
from research.experiments import cell_results
from research.experiments import report
from research.experiments import rows as rows_lib
from research.experiments import spec as spec_lib
from research.experiments import sweep as sweep_lib
from research.experiments import traces
from tests import test_util

_CONFIG = 'configs/shakespeare_char.py:cpu'  # Exists; nothing runs it.
_RATES = (1e-3, 1e-2, 1e-1)
_INITIAL = 4.0  # Sweep.initial: a diverged cell counts at it.
_T975 = {1: 12.7062, 3: 3.1824, 7: 2.3646}  # t_{0.975}(df).

# Final validation loss per (group, rate index), seeds 0 and 1; 'div': stopped with exit 3.
# a_* are treated, b_* the comparison; w7 and w11 two widths.
_FINAL = {
  ('a_w7', 0): (3.0, 3.1),
  ('a_w7', 1): (2.0, 2.2),
  ('a_w7', 2): (2.5, 2.4),
  ('b_w7', 0): (3.0, 3.2),
  ('b_w7', 1): (2.1, 2.3),
  ('b_w7', 2): ('div', 'div'),
  ('a_w11', 0): (2.8, 2.9),
  ('a_w11', 1): (1.9, 2.1),
  ('a_w11', 2): (2.6, 2.6),
  ('b_w11', 0): (2.5, 2.6),
  ('b_w11', 1): ('div', 2.5),
  ('b_w11', 2): ('div', 'div'),
}
# Peak attn_logit_max per (group, rate index), seeds 0 and 1. Rate 1e-3 lies below the
# claim's `above` and must not count (a: 100, b: 1 would swing the mean).
_PEAK = {
  ('a_w7', 0): (100, 100),
  ('a_w7', 1): (5, 6),
  ('a_w7', 2): (7, 8),
  ('b_w7', 0): (1, 1),
  ('b_w7', 1): (4, 9),
  ('b_w7', 2): (20, 3),
  ('a_w11', 0): (100, 100),
  ('a_w11', 1): (5, 5),
  ('a_w11', 2): (6, 6),
  ('b_w11', 0): (1, 1),
  ('b_w11', 1): (10, 2),
  ('b_w11', 2): (3, 30),
}
_PAIRS = (('a_w7', 'b_w7'), ('a_w11', 'b_w11'))


def _cell(path: str, final, peak: float) -> None:
  """A cell's workdir: train lines at steps 10, 20, 30 whose attn_logit_max
  peaks at `peak` and whose log_z goes negative (-peak / 2), then a finished
  validation loss `final`; or, for 'div', the first two lines, a third with
  non-finite values, and exit status 3 (the runner's 'diverged')."""
  diverged = final == 'div'
  attn = (0.5, peak, math.nan) if diverged else (0.5, peak, peak / 2)
  log_z = (4.0, -peak / 2, math.inf) if diverged else (4.0, -peak / 2, 1.0)
  records = [
    {'step': step, 'split': 'train', 'loss': 3.0, 'attn_logit_max': a, 'log_z': z}
    for step, a, z in zip((10, 20, 30), attn, log_z)
  ]
  if not diverged:
    records.append({'step': 30, 'split': 'valid', 'loss': final, 'time': 2.0})
  test_util.fake_cell(path, records, 'diverged' if diverged else 'finished', diverged_at=31)


def _name(group: str, i: int, seed: int) -> str:
  return f'{group}_lr{_RATES[i]}-s{seed}'


def _claim(quantity='sensitivity', pairs=_PAIRS, direction='lower', **kwargs):
  return spec_lib.Claim(
    statement=f'{quantity} {direction}',
    source='Test, Figure 0',
    quantity=quantity,
    pairs=pairs,
    direction=direction,
    **kwargs,
  )


_CLAIMS = (
  _claim(label='sens'),
  _claim(direction='higher', label='sens_up'),
  _claim('peak', metric='attn_logit_max', above=1e-2, label='peak'),
  _claim('peak', metric='attn_logit_max', above=1e-2, log10=True, label='log_peak'),
  _claim('best_shift', label='shift'),
  _claim(pairs=(('mup_w7', 'b_w7'), ('mup_w11', 'b_w11')), label='mup'),
)
_TRACES = (
  spec_lib.Trace('attn_logit_max', ('b_w7', 'b_w11'), beside=('a_w7', 'a_w11')),
  spec_lib.Trace('log_z', ('a_w7', 'mup_w7'), yscale='symlog', plot='z.png'),
)


def _spec() -> spec_lib.Experiment:
  return spec_lib.Experiment(
    name='claims',
    title='Claims',
    seeds=(0, 1),
    metric='loss',
    splits=('valid',),
    rows=rows_lib.sweep_rows(_CONFIG, {g: {} for g in ('a_w7', 'b_w7', 'a_w11', 'b_w11')}, _RATES),
    sweep=spec_lib.Sweep(initial=_INITIAL),
    traces=_TRACES,
    claims=_CLAIMS,
  )


# LR sensitivity per (group, seed): counted losses (diverged at 4.0), mean minus min.
_SENS = {
  ('a_w7', 0): 7.5 / 3 - 2.0,
  ('a_w7', 1): 7.7 / 3 - 2.2,
  ('b_w7', 0): 9.1 / 3 - 2.1,
  ('b_w7', 1): 9.5 / 3 - 2.3,
  ('a_w11', 0): 7.3 / 3 - 1.9,
  ('a_w11', 1): 7.6 / 3 - 2.1,
  ('b_w11', 0): 10.5 / 3 - 2.5,
  ('b_w11', 1): 9.1 / 3 - 2.5,
}
_SENS_DIFFERENCES = [_SENS[(a, s)] - _SENS[(b, s)] for a, b in _PAIRS for s in (0, 1)]


def _paired(d):
  """mean, 95% half-width of differences `d`, written out."""
  n = len(d)
  mean = sum(d) / n
  sd = math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1))
  return mean, _T975[n - 1] * sd / math.sqrt(n)


def _write_cells(root: str) -> None:
  for (group, i), finals in _FINAL.items():
    for seed, final in enumerate(finals):
      _cell(os.path.join(root, 'claims', _name(group, i, seed)), final, _PEAK[(group, i)][seed])


class ClaimsTest(absltest.TestCase):
  def setUp(self):
    super().setUp()
    self.root = self.create_tempdir().full_path
    _write_cells(self.root)
    self.spec = _spec()
    spec_lib.check(self.spec)
    self.results = cell_results.collect(self.root, self.spec)
    self.outcomes = {o.label: o for o in claims.outcomes(self.spec, self.results)}

  def test_train_lines_are_read_up_to_where_a_cell_stopped(self):
    by_name = {r.cell.name: r for r in self.results}
    diverged = by_name[_name('b_w7', 2, 0)]
    self.assertEqual(diverged.status, 'diverged')
    self.assertEqual([s for s, _ in diverged.train['log_z']], [10, 20, 30])
    self.assertEqual(diverged.train['log_z'][1], (20, -10.0))
    self.assertTrue(math.isnan(diverged.train['attn_logit_max'][2][1]))
    # Largest |value| over the finite ones: -10 beats 4; NaN and inf are skipped.
    self.assertEqual(claims.peak(diverged.train['log_z']), 10.0)
    self.assertEqual(claims.peak(diverged.train['attn_logit_max']), 20.0)
    self.assertIsNone(claims.peak([(1, math.nan)]))

  def test_sensitivity_claims_reproduced_and_not_reproduced(self):
    mean, half = _paired(_SENS_DIFFERENCES)  # -0.375 +- 0.295: below 0.
    down, up = self.outcomes['sens'], self.outcomes['sens_up']
    self.assertAlmostEqual(down.paired.mean, mean)
    self.assertAlmostEqual(down.paired.half, half, places=6)
    self.assertLess(mean + half, 0)
    self.assertEqual((down.paired.n, down.planned), (4, 4))
    self.assertEqual(down.verdict, 'reproduced')
    self.assertEqual(up.verdict, 'not reproduced')  # Published 'higher'; ours is lower.
    self.assertEqual(down.missing, ())

  def test_peak_pairs_by_rate_above_the_stated_one(self):
    d = [_PEAK[(a, i)][s] - _PEAK[(b, i)][s] for a, b in _PAIRS for s in (0, 1) for i in (1, 2)]
    mean, half = _paired(d)  # -4.125 +- 9.5: not significant.
    got = self.outcomes['peak']
    self.assertAlmostEqual(got.paired.mean, -33 / 8)
    self.assertAlmostEqual(got.paired.half, half, places=6)
    self.assertEqual((got.paired.n, got.planned), (8, 8))
    self.assertEqual(got.verdict, 'not significant')
    # Declared log10: the same pairs, each a difference of log10 peaks.
    logs = [
      math.log10(_PEAK[(a, i)][s]) - math.log10(_PEAK[(b, i)][s])
      for a, b in _PAIRS
      for s in (0, 1)
      for i in (1, 2)
    ]
    got = self.outcomes['log_peak']
    self.assertAlmostEqual(got.paired.mean, _paired(logs)[0])
    self.assertAlmostEqual(got.paired.half, _paired(logs)[1], places=6)
    self.assertNotAlmostEqual(got.paired.mean, mean)

  def test_best_shift(self):
    # Best rate per seed: a is 1e-2 at both widths (shift 0); b_w7 1e-2, b_w11 1e-3 at
    # seed 0 (1 decade) and 1e-2 at seed 1 (2.5 < 2.6). Differences -1, 0.
    got = self.outcomes['shift']
    mean, half = _paired([-1.0, 0.0])
    self.assertAlmostEqual(got.paired.mean, mean)
    self.assertAlmostEqual(got.paired.half, half, places=6)
    self.assertEqual(got.verdict, 'not significant')
    # A tie goes to the lower rate; a seed without every rate's cell has no best.
    points = [
      sweep_lib.Point(v, c, frozenset(), 2)
      for v, c in ((1e-3, {0: 2.0, 1: 3.0}), (1e-2, {0: 2.0}), (1e-1, {0: 2.5, 1: 1.0}))
    ]
    group = sweep_lib.Group('g', points, {0: 0.1}, (0, 1), ())
    self.assertEqual(claims.best_by_seed(group), {0: 1e-3})

  def test_absent_groups_are_not_run(self):
    got = self.outcomes['mup']
    self.assertEqual(got.verdict, 'not run')
    self.assertEqual(got.absent, ('mup_w7', 'mup_w11'))
    text = '\n'.join(claims.markdown(self.spec, self.results))
    self.assertIn('- (mup) not run: the spec has no group mup_w7, mup_w11.', text)
    self.assertIn('| mup | sensitivity lower | Test, Figure 0 | LR sensitivity |', text)

  def test_missing_cells_are_named_and_reduce_n(self):
    shutil.rmtree(os.path.join(self.root, 'claims', _name('a_w11', 2, 1)))
    results = cell_results.collect(self.root, self.spec)
    got = {o.label: o for o in claims.outcomes(self.spec, results)}
    # a_w11 at seed 1 lacks a value: no sensitivity there, and one peak unit fewer.
    self.assertEqual((got['sens'].paired.n, got['sens'].planned), (3, 4))
    self.assertEqual((got['peak'].paired.n, got['peak'].planned), (7, 8))
    self.assertEqual(got['sens'].missing, (_name('a_w11', 2, 1),))
    text = '\n'.join(claims.markdown(self.spec, results))
    self.assertIn(
      f'- (peak) lacks 1 of its 16 cells (not run, failed, without a figure at '
      f'initialisation or without the metric): {_name("a_w11", 2, 1)}.',
      text,
    )
    self.assertIn('| 3 of 4 | ', text)

  def test_table_line(self):
    text = '\n'.join(claims.markdown(self.spec, self.results))
    mean, half = _paired(_SENS_DIFFERENCES)
    self.assertIn(
      '| sens | sensitivity lower | Test, Figure 0 | LR sensitivity | '
      f'a_w7 − b_w7, a_w11 − b_w11 | < 0 | {mean:+.3g} '
      f'[{mean - half:+.3g}, {mean + half:+.3g}] | ',
      text,
    )
    self.assertIn(' | 4 of 4 | reproduced |', text)
    self.assertIn('| peak \\|attn_logit_max\\| at learning rate ≥ 1e-2 |', text)
    # The preamble says what a unit is for the quantities these claims use, and no other's.
    used = {c.quantity for c in self.spec.claims}
    self.assertSetEqual(set(claims._UNITS), set(spec_lib.CLAIM_QUANTITIES))
    for quantity, sentence in claims._UNITS.items():
      self.assertEqual(sentence in text, quantity in used, quantity)

  def test_bad_claims_and_traces_are_refused(self):
    cases = {
      'quantity=': dict(claims=(_claim('nope'),)),
      'direction=': dict(claims=(_claim(direction='down'),)),
      'exactly two pairs': dict(claims=(_claim('best_shift', pairs=_PAIRS[:1]),)),
      'names its train metric': dict(claims=(_claim('peak'),)),
      'log10 belong to a peak claim only': dict(claims=(_claim('sensitivity', log10=True),)),
      'one group per traced group': dict(traces=(spec_lib.Trace('x', ('a', 'b'), ('c',)),)),
      'yscale=': dict(traces=(spec_lib.Trace('x', ('a',), yscale='loglog'),)),
    }
    for message, change in cases.items():
      with self.subTest(message), self.assertRaisesRegex(ValueError, message):
        spec_lib.check(dataclasses.replace(self.spec, **change))


class TracesTest(absltest.TestCase):
  def setUp(self):
    super().setUp()
    self.root = self.create_tempdir().full_path
    _write_cells(self.root)
    self.spec = _spec()
    self.results = cell_results.collect(self.root, self.spec)

  def test_highest_stable_and_lowest_unstable_cells(self):
    drawn = traces.panels(self.spec, self.results, _TRACES[0])
    # Seed 0: b_w7 is stable to 1e-2 and diverged at 1e-1; b_w11 stable at 1e-3 only.
    self.assertEqual(
      drawn[0].cells(self.spec),
      [_name('b_w7', 1, 0), _name('b_w7', 2, 0), _name('a_w7', 1, 0), _name('a_w7', 2, 0)],
    )
    self.assertEqual(
      drawn[1].cells(self.spec),
      [_name('b_w11', 0, 0), _name('b_w11', 1, 0), _name('a_w11', 0, 0), _name('a_w11', 1, 0)],
    )
    self.assertEqual(drawn[1].lines, ((traces.STABLE, 1e-3), (traces.UNSTABLE, 1e-2)))
    # a_w7 diverged nowhere: its highest stable rate is its highest rate, drawn once, with
    # its best rate at seed 0 (2.0 at 1e-2) before it; b_w7's and b_w11's best is their
    # highest stable, drawn once. A group the spec lacks draws nothing.
    a_w7, mup = traces.panels(self.spec, self.results, _TRACES[1])
    self.assertEqual(a_w7.lines, ((traces.BEST, 1e-2), (traces.STABLE, 1e-1)))
    self.assertEqual(a_w7.cells(self.spec), [_name('a_w7', 1, 0), _name('a_w7', 2, 0)])
    self.assertEqual((mup.lines, mup.seed), ((), None))
    text = '\n'.join(traces.markdown(self.spec, self.results))
    self.assertIn(
      f'- b_w7: highest stable 1e-2: {_name("b_w7", 1, 0)} (finished), '
      f'{_name("a_w7", 1, 0)} (finished); lowest unstable 1e-1: {_name("b_w7", 2, 0)} '
      f'(diverged), {_name("a_w7", 2, 0)} (finished).',
      text,
    )
    self.assertIn(
      f'- a_w7: best 1e-2: {_name("a_w7", 1, 0)} (finished); highest stable 1e-1: '
      f'{_name("a_w7", 2, 0)} (finished); no cell diverged at '
      'seed 0, so the highest rate (1e-1) is shown.',
      text,
    )
    self.assertIn('- mup_w7: not run', text)

  def test_plots_are_written_with_their_lines(self):
    out = self.create_tempdir().full_path
    written = report.write(out, self.root, self.spec)
    for name in ('traces_attn_logit_max.png', 'z.png'):
      path = os.path.join(out, name)
      self.assertIn(path, written)
      self.assertGreater(os.path.getsize(path), 10_000)
    with open(os.path.join(out, 'RESULTS.md')) as f:
      page = f.read()
    self.assertIn('## Traces', page)
    self.assertIn('## Published claims', page)
    fig, axes = plots.trace_figure(self.spec, self.results, _TRACES[0])
    labels = [
      line.get_label() for line in axes[0].get_lines() if not line.get_label().startswith('_')
    ]
    styles = [line.get_linestyle() for line in axes[0].get_lines() if line.get_marker() != 'x']
    crosses = [line for line in axes[0].get_lines() if line.get_marker() == 'x']
    scale = axes[0].get_yscale()
    plots._pyplot().close(fig)
    self.assertEqual(
      labels,
      [
        'b_w7, 1e-2 (highest stable)',
        'b_w7, 1e-1 (lowest unstable)',
        'a_w7, 1e-2 (highest stable)',
        'a_w7, 1e-1 (lowest unstable)',
      ],
    )
    self.assertEqual(styles, ['-', '-', '--', '--'])
    self.assertLen(crosses, 1)  # b_w7 at 1e-1 stopped; its cross is at its last finite value.
    self.assertEqual(list(crosses[0].get_ydata()), [20.0])
    self.assertEqual(scale, 'log')


if __name__ == '__main__':
  absltest.main()
