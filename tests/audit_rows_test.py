"""Audit rows of an experiment (research/experiments/audit_rows.py): probes of
another row's cells, run by the runner, tabulated by the report."""

import csv
import dataclasses
import json
import os

from absl.testing import absltest
import numpy as np

from research import provenance
from research.audits import occupations
from research.audits import run as run_lib
from research.experiments import audit_plots
from research.experiments import audit_rows
from research.experiments import plots
from research.experiments import cell_results
from research.experiments import report
from research.experiments import runner
from research.experiments import spec as spec_lib
from tests import test_util

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
T975_DF1 = 12.7062  # Student's t_{0.975} with 1 degree of freedom.


def _word_config_file(directory: str) -> str:
  """A tiny word-level LSTM config (test_util.tiny_config) on a corpus of the
  occupation templates' sentences about five occupations, whose valid split
  holds the 20 sequences a side the membership probe needs."""
  rng = np.random.default_rng(7)
  jobs = ['nurse', 'engineer', 'teacher', 'lawyer', 'baker']
  lines = []
  for _ in range(400):
    template, pair = occupations.TEMPLATES[rng.integers(len(occupations.TEMPLATES))]
    lines.append(template.format(occupation=rng.choice(jobs), pronoun=rng.choice(pair)))
  corpus = os.path.join(directory, 'occupations.txt')
  with open(corpus, 'w') as f:
    f.write('\n'.join(line.lower().rstrip('.') for line in lines) + '\n')
  path = os.path.join(directory, 'tiny_word.py')
  with open(path, 'w') as f:
    f.write(
      'from tests import test_util\n\n\ndef get_config():\n'
      f"  c = test_util.tiny_config({directory!r}, level='word')\n"
      f'  c.data.path = {corpus!r}\n'
      '  return c\n'
    )
  return path


def _spec(config: str) -> spec_lib.Experiment:
  return spec_lib.Experiment(
    name='tiny_audit',
    title='Tiny audit',
    seeds=(0, 1),
    metric='loss',
    splits=('valid',),
    rows=(
      spec_lib.Row('lm', config),
      spec_lib.Row('bias', audit='occupations,membership', audit_from='lm'),
      # Five occupation words write no WEAT list: the probe cannot apply.
      spec_lib.Row('weat', audit='weat', audit_from='lm', seeds=(0,)),
    ),
    tables=(
      spec_lib.Table('Occupations', 'occupations', ('model.pearson', 'model.spearman', 'covered')),
      spec_lib.Table('Membership', 'membership', ('auc', 'tpr_at_fpr.0.01')),
    ),
  )


class SpecTest(absltest.TestCase):
  def setUp(self):
    super().setUp()
    self.config = test_util.tiny_config_file(self.create_tempdir().full_path)

  def _check(self, *rows, **kwargs):
    spec_lib.check(
      spec_lib.Experiment('x', 'x', rows=(spec_lib.Row('lm', self.config), *rows), **kwargs)
    )

  def test_bad_audit_rows_are_refused(self):
    Row = spec_lib.Row
    self._check(Row('a', audit='occupations,crows_pairs', audit_from='lm'))
    with self.assertRaisesRegex(ValueError, 'names both audit'):
      self._check(Row('a', audit='occupations'))
    with self.assertRaisesRegex(ValueError, r"unknown probes \['bias'\]; probes: occupations, "):
      self._check(Row('a', audit='occupations,bias', audit_from='lm'))
    with self.assertRaisesRegex(ValueError, r"trains nothing; drop its \['config', 'overrides'\]"):
      self._check(Row('a', self.config, {'seed': 3}, audit='weat', audit_from='lm'))
    with self.assertRaisesRegex(ValueError, 'calibrates the membership probe'):
      self._check(Row('a', audit='weat', audit_from='lm', audit_reference='lm'))
    with self.assertRaisesRegex(ValueError, "audit_from='b' must be a row before it"):
      self._check(Row('a', audit='weat', audit_from='b'), Row('b', self.config))
    with self.assertRaisesRegex(ValueError, "baseline='a' is an audit row"):
      self._check(Row('a', audit='weat', audit_from='lm'), baseline='a')

  def test_command_waits_for_and_names_the_cells_it_reads(self):
    spec = spec_lib.Experiment(
      'x',
      'x',
      rows=(
        spec_lib.Row('lm', self.config),
        spec_lib.Row('ref', self.config),
        spec_lib.Row('m', audit='membership', audit_from='lm', audit_reference='ref'),
      ),
      seeds=(3,),
    )
    cell = spec_lib.cells(spec)[2]
    at = lambda name: os.path.join('root', 'x', name)
    argv = runner.command('root', spec, cell, 'python', {'data.path': 'lm=/d/lm.txt,*=/d/x.txt'})
    self.assertEqual(
      argv,
      [
        'python',
        '-m',
        'research.audit',
        f'--workdir={at("lm-s3")}',
        '--probe=membership',
        f'--out={at("m-s3")}',
        f'--reference={at("ref-s3")}',
        '--data_path=/d/lm.txt',  # The audited row's data, not the pattern '*' of its own.
      ],
    )
    self.assertEqual(
      runner.needs('root', spec, cell), {at('lm-s3'): ('finished',), at('ref-s3'): ('finished',)}
    )
    elsewhere = runner.command('/scratch', spec, cell, '/opt/python', {'data.path': '/e.txt'})
    self.assertEqual(
      runner.identity(argv), ['--probe=membership', '--workdir=lm-s3', '--reference=ref-s3']
    )
    self.assertEqual(runner.identity(argv), runner.identity(elsewhere))


class FiguresTest(absltest.TestCase):
  def test_every_number_by_its_key_path(self):
    workdir = self.create_tempdir().full_path
    os.makedirs(os.path.join(workdir, 'audit'))
    result = {
      'auc': 0.75,
      'auc_interval': [0.5, 0.875],
      'tpr_at_fpr': {'0.01': 0.25},
      'attack': 'loss threshold',
      'reference': None,
      'flag': True,
      'n': 40,
    }
    with open(os.path.join(workdir, 'audit', 'membership.json'), 'w') as f:
      json.dump({'probe': 'membership', 'result': result}, f)
    self.assertEqual(
      audit_rows.figures(workdir),
      {
        ('auc', 'membership'): 0.75,
        ('auc_interval.0', 'membership'): 0.5,
        ('auc_interval.1', 'membership'): 0.875,
        ('tpr_at_fpr.0.01', 'membership'): 0.25,
        ('n', 'membership'): 40.0,
      },
    )


class RunnerTest(absltest.TestCase):
  def test_audit_cells_run_after_their_source_and_fill_the_tables(self):
    os.chdir(_REPO)  # Cells run `python -m research.*` from the repository root.
    tmp = self.create_tempdir().full_path
    spec = _spec(_word_config_file(tmp))
    root = os.path.join(tmp, 'cells')
    path = lambda name: os.path.join(root, 'tiny_audit', name)
    cells = spec_lib.cells(spec)
    audits = [c for c in cells if c.row.audit]

    # Without their source, audit cells are not run (and start nothing).
    messages = []
    outcome = runner.run(root, spec, audits, echo=messages.append)
    self.assertIn(f'bias-s0: not run: {path("lm-s0")} did not finish', messages)
    self.assertEqual({s.status for s in outcome.values()}, {'not run'})
    self.assertFalse(os.path.exists(path('bias-s0')))

    outcome = runner.run(root, spec, cells, parallel=2, echo=messages.append)
    states = {n: s.status for n, s in outcome.items()}
    self.assertEqual(
      states,
      {
        'lm-s0': 'finished',
        'lm-s1': 'finished',
        'bias-s0': 'finished',
        'bias-s1': 'finished',
        'weat-s0': 'failed',
      },
      messages,
    )
    self.assertRegex(outcome['weat-s0'].reason, r'^exit status 2: error: weat: ')
    for seed in (0, 1):
      source, audit = path(f'lm-s{seed}'), path(f'bias-s{seed}')
      # It started once its source had finished, and wrote nothing there.
      self.assertGreaterEqual(
        provenance.read_runs(audit)[0]['time'], provenance.read_runs(source)[-1]['time']
      )
      self.assertFalse(os.path.exists(os.path.join(source, 'audit')))
      with open(os.path.join(source, 'MODEL_CARD.md')) as f:
        self.assertNotIn('## Audit: ', f.read())

    # A source that is not finished (a Slurm task started early) is refused, nothing written.
    provenance.record_start(path('lm-s1'))
    early = os.path.join(tmp, 'early')
    with self.assertRaisesRegex(ValueError, 'lm-s1 holds no finished run'):
      run_lib.run_audit(path('lm-s1'), ['occupations'], out=early)
    self.assertFalse(os.path.exists(early))
    provenance.record_end(path('lm-s1'), 'finished')

    out = self.create_tempdir().full_path
    written = report.write(out, root, spec)
    with open(os.path.join(out, 'RESULTS.md')) as f:
      markdown = f.read()
    results = {}  # seed -> probe -> its result, read from the JSON files.
    for seed in (0, 1):
      for probe in ('occupations', 'membership'):
        with open(os.path.join(path(f'bias-s{seed}'), 'audit', f'{probe}.json')) as f:
          results.setdefault(seed, {})[probe] = json.load(f)['result']

    def shown(values):  # Mean ± the 95% t half-width over two seeds, as the table rounds it.
      half = T975_DF1 * abs(values[0] - values[1]) / 2
      return f'{(values[0] + values[1]) / 2:.3f} ± {half:.3f} (2)'

    model = [results[s]['occupations']['model'] for s in (0, 1)]
    pearson, spearman = shown([m['pearson'] for m in model]), shown([m['spearman'] for m in model])
    self.assertIn(f'| bias | {pearson} | {spearman} | 5 (2) |', markdown)
    auc = shown([results[s]['membership']['auc'] for s in (0, 1)])
    tpr = shown([results[s]['membership']['tpr_at_fpr']['0.01'] for s in (0, 1)])
    self.assertIn(f'| bias | {auc} | {tpr} |', markdown)
    # A table lists the audit rows of its probe; the main table only the trained rows.
    tables = markdown.split('## Occupations')[1].split('## Cells')[0]
    self.assertNotIn('| lm |', tables)
    self.assertNotIn('| weat |', tables)
    self.assertIn('| lm | valid |', markdown)
    self.assertNotIn('| bias | valid |', markdown)
    self.assertIn('| weat-s0 | failed |', markdown)
    with open(os.path.join(out, 'results.csv')) as f:
      recorded = {
        (int(r['seed']), r['metric'], r['split']): float(r['value'])
        for r in csv.DictReader(f)
        if r['row'] == 'bias'
      }
    self.assertLen(recorded, 10)  # 2 seeds x 5 columns.
    for seed in (0, 1):
      for key, want in (
        (('occupations', 'model.pearson'), model[seed]['pearson']),
        (('occupations', 'covered'), 5),
        (('membership', 'auc'), results[seed]['membership']['auc']),
      ):
        self.assertAlmostEqual(recorded[(seed, *key)], want, places=5)

    # occupations.png: a panel per audit row running the probe (one more here, with no cell
    # run), each occupation's gap against its BLS share, the fitted line through the seed means.
    plot = os.path.join(out, 'occupations.png')
    self.assertIn(plot, written)
    self.assertGreater(os.path.getsize(plot), 1000)
    self.assertIn('`occupations.png`', markdown.split('Plots: ')[1])
    per = [results[s]['occupations']['per_occupation'] for s in (0, 1)]
    names = [o for o in per[0] if 'gap' in per[0][o]]
    share = [per[0][o]['bls_pct_female'] for o in names]
    mean_gap = [(per[0][o]['gap'] + per[1][o]['gap']) / 2 for o in names]
    slope, intercept = np.polyfit(share, mean_gap, 1)
    idle = spec_lib.Row('idle', audit='occupations', audit_from='lm')
    more = dataclasses.replace(spec, rows=(*spec.rows, idle))
    fig, axes = audit_plots.occupation_figure(root, more, cell_results.collect(root, more))
    self.assertLen(axes, 2)
    self.assertEqual(axes[1].get_title(), 'idle: not run')
    r = np.corrcoef(share, mean_gap)[0, 1]
    self.assertIn(f'bias: 5 occupations, r = {r:+.2f} (means)', axes[0].get_title())
    (line,) = [x for x in axes[0].get_lines() if x.get_gid() == 'least_squares']
    (x0, x1), (y0, y1) = line.get_data()
    self.assertAlmostEqual((y1 - y0) / (x1 - x0), slope, places=9)
    self.assertAlmostEqual(y0 - (y1 - y0) / (x1 - x0) * x0, intercept, places=9)
    means = [x for x in axes[0].get_lines() if x.get_label() == 'mean over seeds']
    np.testing.assert_allclose(
      sorted(zip(*means[0].get_data())), sorted(zip(share, mean_gap)), rtol=1e-12
    )
    plots._pyplot().close(fig)


if __name__ == '__main__':
  absltest.main()
