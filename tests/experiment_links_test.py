"""Rows that start from other rows' cells (compression, a teacher, a
pre-trained model) and rows that read different data files."""

from absl.testing import absltest

from research.experiments import runner
from research.experiments import spec as spec_lib

_CONFIG = 'configs/default.py'


class LinkedCellsTest(absltest.TestCase):
  def test_compression_rows_run_research_compress_on_their_float_cell(self):
    rows = (
      spec_lib.Row('float', 'configs/default.py'),
      spec_lib.Row('p50', 'configs/default.py', compress='prune:0.5', compress_from='float'),
      spec_lib.Row(
        'p50ft', 'configs/default.py', compress='prune:0.5', compress_from='float', finetune_steps=9
      ),
    )
    spec = spec_lib.Experiment('x', 'x', rows=rows, seeds=(3,))
    spec_lib.check(spec)
    cells = {c.name: c for c in spec_lib.cells(spec)}
    argv = runner.command('root', spec, cells['p50-s3'], 'python', {'data.path': 'here.txt'})
    self.assertEqual(
      argv,
      [
        'python', '-m', 'research.compress', '--workdir=root/x/float-s3', '--method=prune:0.5',
        '--out=root/x/p50-s3', '--data_path=here.txt',
      ],
    )  # fmt: skip
    argv = runner.command('root', spec, cells['p50ft-s3'], 'python')
    self.assertIn('--finetune_out=root/x/p50ft-s3', argv)
    self.assertIn('--out=root/x/p50ft-s3/pruned', argv)
    # What it compresses is the cell's identity, not where the root lies.
    self.assertEqual(
      runner.identity(argv), runner.identity(runner.command('/else', spec, cells['p50ft-s3']))
    )
    with self.assertRaisesRegex(ValueError, 'must be a row before it'):
      spec_lib.check(spec_lib.Experiment('x', 'x', rows=rows[1:] + rows[:1]))

  def test_a_row_names_the_same_seed_cell_of_another_as_its_teacher(self):
    rows = (
      spec_lib.Row('big', 'configs/default.py'),
      spec_lib.Row(
        'small', 'configs/default.py', {'model.d': 9}, from_cells={'distill.teacher': 'big'}
      ),
    )
    spec = spec_lib.Experiment('x', 'x', rows=rows, seeds=(0, 1))
    spec_lib.check(spec)
    cell = spec_lib.cells(spec)[3]
    argv = runner.command('root', spec, cell, 'python')
    self.assertEqual(cell.name, 'small-s1')
    self.assertIn('--config.distill.teacher=root/x/big-s1', argv)
    self.assertEqual(runner.needs('root', spec, cell), {'root/x/big-s1': ('finished',)})
    self.assertEqual(runner.identity(argv), runner.identity(runner.command('/else', spec, cell)))
    tuned = spec_lib.Row('tuned', 'configs/default.py', from_cells={'init_from': 'big'})
    spec = spec_lib.Experiment('x', 'x', rows=rows + (tuned,), seeds=(0,))
    argv = runner.command('root', spec, spec_lib.cells(spec)[2], 'python')
    self.assertIn('--config.init_from=root/x/big-s0', argv)
    odd = spec_lib.Row('odd', 'configs/default.py', from_cells={'seed': 'big'})
    with self.assertRaisesRegex(ValueError, r"from_cells sets \['seed'\], which name no workdir"):
      spec_lib.check(spec_lib.Experiment('x', 'x', rows=rows + (odd,)))
    with self.assertRaisesRegex(ValueError, 'distill.teacher=.big. must be a row before it'):
      spec_lib.check(spec_lib.Experiment('x', 'x', rows=rows[::-1]))

  def test_rows_reading_different_data_take_their_own_path(self):
    rows = (spec_lib.Row('pretrain', _CONFIG), spec_lib.Row('tune', _CONFIG))
    spec = spec_lib.Experiment('x', 'x', rows=rows, seeds=(0,))
    pretrain, tune = spec_lib.cells(spec)
    locations = {'data.path': 'pre*=/d/kjv.txt,*=/d/input.txt', 'data.tfds_dir': '/t'}
    argv = runner.command('root', spec, pretrain, 'python', locations)
    self.assertIn('--config.data.path=/d/kjv.txt', argv)
    self.assertIn('--config.data.tfds_dir=/t', argv)
    self.assertIn(
      '--config.data.path=/d/input.txt', runner.command('r', spec, tune, 'p', locations)
    )
    only = runner.command('r', spec, tune, 'p', {'data.path': 'pretrain-s0=/d/kjv.txt'})
    self.assertEqual([a for a in only if 'data.path' in a], [])  # No pattern matches: none.
    # A plain path is every cell's, '=' in it or not.
    plain = runner.command('r', spec, tune, 'p', {'data.path': '/d/a=b/input.txt'})
    self.assertIn('--config.data.path=/d/a=b/input.txt', plain)


if __name__ == '__main__':
  absltest.main()
