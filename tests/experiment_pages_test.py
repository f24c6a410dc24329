"""What a reader of an experiment's page sees: RESULTS.md's commands and wall
times, and the plots' legends and log axes, from workdirs written here (nothing
is trained)."""

import json
import math
import os
import shutil

from absl.testing import absltest
from matplotlib import colors
from matplotlib import lines

from research import provenance
from research.experiments import plots
from research.experiments import cell_results
from research.experiments import report
from research.experiments import spec as spec_lib


def _finished_cell(path: str, epochs: float, seconds: float, value: float) -> None:
  """A finished cell's workdir as research.main leaves it, with nothing trained:
  runs.jsonl (start, finished end) and metrics.jsonl (one validation record)."""
  os.makedirs(path)
  with open(os.path.join(path, provenance.RUNS_FILE), 'w') as f:
    f.write(json.dumps({'event': 'start', 'time': 0.0, 'revision': 'abc', 'hardware': 'CPU: x'}))
    f.write('\n' + json.dumps({'event': 'end', 'time': seconds, 'status': 'finished'}) + '\n')
  with open(os.path.join(path, 'metrics.jsonl'), 'w') as f:
    record = {'step': 10, 'split': 'valid', 'bpc': value, 'epoch': epochs, 'time': seconds}
    f.write(json.dumps(record) + '\n')


class PageTest(absltest.TestCase):
  """What a reader of RESULTS.md and the plots sees, from workdirs written here."""

  def setUp(self):
    super().setUp()
    self.tmp = self.create_tempdir().full_path
    cwd = os.getcwd()
    self.addCleanup(os.chdir, cwd)
    os.chdir(self.tmp)  # The folder the user runs the report from.
    self.spec = spec_lib.Experiment(
      name='tiny',
      title='Tiny',
      seeds=(0,),
      metric='bpc',
      splits=('valid',),
      rows=(
        spec_lib.Row('short', 'configs/x.py', published={'valid': 2.0}, source='P, T1'),
        spec_lib.Row('long', 'configs/x.py'),
        spec_lib.Row('unrun', 'configs/x.py', published={'valid': 1.5}, source='P, T1'),
      ),
    )
    # Two tenths of an epoch in 30 s; two epochs in 2 min.
    _finished_cell(os.path.join(self.tmp, 'SOMEROOT', 'tiny', 'short-s0'), 0.2, 30.0, 2.5)
    _finished_cell(os.path.join(self.tmp, 'SOMEROOT', 'tiny', 'long-s0'), 2.0, 120.0, 2.1)

  def test_commands_name_the_root_as_given_not_the_machines_folder(self):
    for root in ('SOMEROOT', 'SOMEROOT/', os.path.join(self.tmp, 'SOMEROOT')):
      text = report.results_markdown(self.spec, cell_results.collect(root, self.spec))
      for cell in ('short-s0', 'long-s0', 'unrun-s0'):
        self.assertIn(f'--workdir=SOMEROOT/tiny/{cell} ', text, root)
      self.assertNotIn(self.tmp, text, root)

  def test_wall_time_per_epoch_only_for_runs_of_an_epoch_or_more(self):
    text = report.results_markdown(self.spec, cell_results.collect('SOMEROOT', self.spec))
    self.assertIn('| short | valid | 2 | 2.500 | 1 of 1 |  | 0 min 30 s | CPU: x |', text)
    self.assertIn('| long | valid | — | 2.100 | 1 of 1 | 1 min 00 s | 2 min 00 s | CPU: x |', text)

  def test_recorded_cells_keep_their_figures_when_their_workdirs_are_gone(self):
    out = os.path.join(self.tmp, 'page')
    os.makedirs(out)
    report.write(out, 'SOMEROOT', self.spec)
    with open(os.path.join(out, 'results.csv')) as f:
      before = f.read()
    shutil.rmtree(os.path.join('SOMEROOT', 'tiny', 'long-s0'))
    with self.assertRaisesRegex(ValueError, 'long-s0'):  # Dropping it is refused...
      report.write(out, 'SOMEROOT', self.spec)
    recorded = cell_results.read_recorded(out, 'SOMEROOT', self.spec)
    self.assertEqual(list(recorded), ['short-s0', 'long-s0'])  # Every cell the csv holds.
    self.assertEqual(recorded['long-s0'].final, {'valid': 2.1})
    self.assertEqual(
      (recorded['long-s0'].wall_seconds, recorded['long-s0'].hardware), (120.0, 'CPU: x')
    )
    curves = os.path.join(out, 'valid_per_epoch.png')
    os.utime(curves, (0, 0))
    report.write(out, 'SOMEROOT', self.spec, keep_recorded=True)  # ...kept with the flag.
    self.assertEqual(os.path.getmtime(curves), 0)  # Drawn from every workdir: left alone.
    with open(os.path.join(out, 'results.csv')) as f:
      self.assertEqual(f.read(), before)
    with open(os.path.join(out, 'RESULTS.md')) as f:
      text = f.read()
    self.assertIn('| long | valid | — | 2.100 | 1 of 1 |  | 2 min 00 s | CPU: x |', text)
    self.assertIn('the previous results.csv held (`--keep_recorded`): long-s0. Their', text)
    self.assertIn('| long-s0 | finished | 2.1000 |  | 2 min 00 s |  | recorded: ', text)
    # A workdir that comes back wins over the record.
    _finished_cell(os.path.join(self.tmp, 'SOMEROOT', 'tiny', 'long-s0'), 2.0, 60.0, 2.3)
    results = cell_results.collect('SOMEROOT', self.spec, recorded)
    self.assertEqual([r.final for r in results if r.cell.name == 'long-s0'], [{'valid': 2.3}])

  def test_every_line_drawn_is_in_the_legend(self):
    results = cell_results.collect('SOMEROOT', self.spec)
    for figure in (plots.valid_figure, plots.final_figure):
      fig, ax = figure(self.spec, results)
      fig.canvas.draw()
      legend = ax.get_legend()
      style = lambda l: (colors.to_hex(l.get_color()), l.get_linestyle(), l.get_marker())
      shown = {style(l) for l in legend.findobj(lines.Line2D)}
      drawn = [l for l in ax.get_lines() if l.get_marker() not in ('_', '|')]  # Not error caps.
      self.assertNotEmpty(drawn)
      for line in drawn:
        self.assertIn(style(line), shown, f'{figure.__name__}: a line without a legend entry')
      texts = [t.get_text() for t in legend.get_texts()]
      plots._pyplot().close(fig)
      if figure is plots.valid_figure:  # The published line of a row not run included.
        self.assertEqual(texts, ['short', 'long', 'unrun: published'])
        self.assertLen(drawn, 4)  # Two curves, two published lines.

  def test_a_log_axis_is_labelled_across_its_range(self):
    plt = plots._pyplot()
    fig, ax = plots.valid_figure(self.spec, cell_results.collect('SOMEROOT', self.spec))
    axes = [(fig, ax, 3)]  # The validation plot's own axis, then given ranges.
    for low, high, least in ((1.8, 2.5, 3), (2.74, 2.76, 3), (0.5, 3e3, 3), (70.0, 250.0, 5)):
      fig, ax = plt.subplots()
      ax.set_yscale('log')
      ax.set_ylim(low, high)
      plots.readable_log_axis(ax)
      axes.append((fig, ax, least))
    for fig, ax, least in axes:
      fig.canvas.draw()
      low, high = ax.get_ylim()
      labelled = [
        (t.get_position()[1], t.get_text())
        for t in ax.yaxis.get_ticklabels(which='both')
        if t.get_text() and low <= t.get_position()[1] <= high
      ]
      plt.close(fig)
      where = f'axis {low}..{high}: {labelled}'
      self.assertGreaterEqual(len(labelled), least, where)
      # Plain numbers (not 2 x 10^0), spread over the range: the lowest and
      # highest labels cover at least half of it (in log terms).
      self.assertTrue(all(math.isclose(float(t), v, rel_tol=1e-6) for v, t in labelled), where)
      values = sorted(v for v, _ in labelled)
      self.assertGreater(math.log(values[-1] / values[0]), 0.5 * math.log(high / low), where)
    # The last, Zaremba's validation axis, read 80, 90, 100 up to 250.
    self.assertEqual(
      [t for _, t in labelled], ['70', '80', '90', '100', '120', '150', '200', '250']
    )


if __name__ == '__main__':
  absltest.main()
