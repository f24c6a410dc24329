"""The runner's Slurm job array (research/experiments/slurm.py): its text, and
one of its tasks run as emitted with a stand-in `srun`.

The real cluster is proven by tests/slurm/prove.sh (outside this suite: it
installs Slurm as root)."""

import json
import os
import subprocess
import textwrap
from unittest import mock

from absl.testing import absltest

from research import provenance
from research.experiments import runner
from research.experiments import slurm
from research.experiments import spec as spec_lib
from tests import test_util


def _spec_dir(tmp: str) -> str:
  """An experiment folder whose two rows train test_util's tiny config."""
  config = test_util.tiny_config_file(tmp)
  directory = os.path.join(tmp, 'spec')
  os.makedirs(directory)
  with open(os.path.join(directory, 'spec.py'), 'w') as f:
    f.write(
      textwrap.dedent(f"""\
        from research.experiments import spec
        SPEC = spec.Experiment(
          name='tiny', title='Tiny', seeds=(0, 1), metric='bpc', splits=('valid',),
          rows=(spec.Row('a', {config!r}), spec.Row('b', {config!r}, {{'num_train_steps': 3}})),
        )
        """)
    )
  return directory


def _finish_by_hand(workdir: str) -> None:
  """A cell that looks finished (its runs.jsonl ends so) with one figure."""
  os.makedirs(workdir)
  provenance.record_start(workdir)
  with open(os.path.join(workdir, 'metrics.jsonl'), 'w') as f:
    f.write(json.dumps({'step': 3, 'split': 'valid', 'bpc': 2.5, 'epoch': 1.0, 'time': 1.0}) + '\n')
  provenance.record_end(workdir, 'finished')


class ScriptTest(absltest.TestCase):
  def setUp(self):
    super().setUp()
    self.tmp = self.create_tempdir().full_path
    self.directory = _spec_dir(self.tmp)
    self.experiment = spec_lib.load(self.directory)
    self.cells = spec_lib.cells(self.experiment)

  def _script(self, resources=slurm.Resources(cpus_per_task=4), locations=None):
    return slurm.script(
      self.directory, 'cells', self.experiment, self.cells, '/repo', locations, resources
    )

  def test_resource_lines(self):
    plain = self._script()
    self.assertIn('#SBATCH --cpus-per-task=4\n', plain)
    self.assertIn('exec srun --ntasks=1 --cpus-per-task=4 "$@"', plain)
    self.assertNotIn('gpu', plain.lower())  # A CPU-only cluster refuses any GPU request.
    self.assertNotIn('--time', plain)
    asked = self._script(
      slurm.Resources(
        gpus_per_task=2,
        cpus_per_task=16,
        partition='short',
        time='2:00:00',
        extra=('--account=lm', 'mem=64G'),
      )
    )
    for line in (
      '--gpus-per-task=2',
      '--cpus-per-task=16',
      '--partition=short',
      '--time=2:00:00',
      '--signal=TERM@120',
      '--account=lm',
      '--mem=64G',
    ):
      self.assertIn(f'\n#SBATCH {line}\n', asked)

  def test_default_cpus_fit_the_node(self):
    defaults = slurm.default_resources
    with mock.patch.object(slurm, '_node_counts', return_value=(32, 4)):
      self.assertEqual(defaults(slurm.Resources())[0].cpus_per_task, 32)
      self.assertEqual(defaults(slurm.Resources(gpus_per_task=1))[0].cpus_per_task, 8)
      self.assertEqual(defaults(slurm.Resources(cpus_per_task=3))[0].cpus_per_task, 3)
    with mock.patch.object(slurm, '_node_counts', return_value=None):
      self.assertEqual(defaults(slurm.Resources())[0].cpus_per_task, os.cpu_count())

  def test_paths_are_absolute(self):
    text = self._script(
      locations={'data.path': 'a*=data/x.txt,b*=gs://bucket/y', 'data.tfds_dir': ''}
    )
    cells = os.path.abspath('cells')
    self.assertIn(f'#SBATCH --output={cells}/tiny/slurm-%A_%a.out', text)
    self.assertIn('cd /repo\n', text)
    for cell in self.cells:
      self.assertIn(f'--workdir={cells}/tiny/{cell.name}', text)
    self.assertIn(f'--config.data.path={os.path.abspath("data/x.txt")}', text)
    self.assertIn('--config.data.path=gs://bucket/y', text)  # A URL stays as given.
    report = next(l for l in text.splitlines() if 'research.experiments report' in l)
    self.assertIn(f'--root={cells}', report)
    self.assertIn(f'--data_path=a*={os.path.abspath("data/x.txt")},b*=gs://bucket/y', report)
    self.assertIn(os.path.abspath(self.directory), report)
    self.assertEqual(subprocess.run(['bash', '-n'], input=text, text=True).returncode, 0)


class EmittedTest(absltest.TestCase):
  def test_emit_skips_finished_cells_and_a_task_runs_as_emitted(self):
    tmp = self.create_tempdir().full_path
    directory = _spec_dir(tmp)
    root = os.path.relpath(os.path.join(tmp, 'cells'), test_util.ROOT)  # As a user types it.
    cells_dir = os.path.join(tmp, 'cells', 'tiny')

    # Nothing finished yet: report says so and exits non-zero, writing nothing.
    report = test_util.run_module(['research.experiments', 'report', directory, f'--root={root}'])
    self.assertEqual(report.returncode, 2, report.stderr[-2000:])
    self.assertIn('error: No finished cell of tiny under', report.stderr)
    self.assertFalse(os.path.exists(os.path.join(directory, 'RESULTS.md')))

    _finish_by_hand(os.path.join(cells_dir, 'a-s0'))
    script = os.path.join(tmp, 'tiny.sbatch')
    emitted = test_util.run_module(
      [
        'research.experiments',
        'run',
        directory,
        f'--emit-slurm={script}',
        f'--root={root}',
        '--cells=a-s0,b-s1',
        '--slurm_cpus_per_task=2',
      ]
    )
    self.assertEqual(emitted.returncode, 0, emitted.stderr[-2000:])
    self.assertIn('a-s0: finished, left out (--force keeps it)', emitted.stdout)
    self.assertIn(
      f'a job array of 1 cells, 2 CPUs and 0 GPUs each. Submit it with: sbatch {script}',
      emitted.stdout,
    )
    self.assertTrue(os.path.isdir(cells_dir))  # The --output folder, before any task runs.
    with open(script) as f:
      text = f.read()
    self.assertIn('#SBATCH --array=0-0\n', text)
    self.assertIn('0) CELL=b-s1 ', text)
    self.assertNotIn('a-s0', text.split('case')[1])

    # Task 0 as Slurm would run it, `srun` standing in for the real one.
    bin_dir = os.path.join(tmp, 'bin')
    os.makedirs(bin_dir)
    with open(os.path.join(bin_dir, 'srun'), 'w') as f:
      f.write('#!/bin/bash\nwhile [[ "$1" == --* ]]; do shift; done\nexec "$@"\n')
    os.chmod(os.path.join(bin_dir, 'srun'), 0o755)
    env = dict(
      os.environ,
      PATH=f'{bin_dir}:{os.environ["PATH"]}',
      SLURM_ARRAY_TASK_ID='0',
      SLURM_ARRAY_JOB_ID='900',
      PYTHONPATH=test_util.ROOT,
      JAX_PLATFORMS='cpu',
    )
    task = subprocess.run(
      ['bash', script], cwd=tmp, env=env, capture_output=True, text=True, timeout=300
    )
    self.assertEqual(task.returncode, 0, task.stdout[-2000:] + task.stderr[-2000:])
    self.assertIn('cell b-s1 on ', task.stdout)
    self.assertEqual(runner.state(os.path.join(cells_dir, 'b-s1')).status, 'finished')

    # The report line the script suggests collects both cells, run from anywhere.
    line = next(l for l in text.splitlines() if 'research.experiments report' in l)
    collected = subprocess.run(
      line.lstrip('# '), shell=True, cwd=tmp, env=env, capture_output=True, text=True
    )
    self.assertEqual(collected.returncode, 0, collected.stderr[-2000:])
    with open(os.path.join(directory, 'results.csv')) as f:
      rows = f.read()
    self.assertIn('b,1,valid,bpc,', rows)


if __name__ == '__main__':
  absltest.main()
