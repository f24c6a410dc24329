"""One process per workdir (research.workdir_lock), and one voice per run
(metrics.console / metrics.warn in multi-process runs)."""

import dataclasses
import io
import json
import os
import platform
import subprocess
import sys
from unittest import mock

from absl.testing import absltest
import jax

from research import metrics
from research import workdir_lock
from research.experiments import runner
from research.experiments import spec as spec_lib
from tests import test_util


def _write_holder(workdir: str, **fields) -> workdir_lock.Holder:
  holder = dataclasses.replace(workdir_lock.this_process(), **fields)
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, workdir_lock.LOCK_FILE), 'w') as f:
    json.dump(dataclasses.asdict(holder), f)
  return holder


class LockTest(absltest.TestCase):
  def setUp(self):
    super().setUp()
    self.workdir = os.path.join(self.create_tempdir().full_path, 'run')
    # A live process that is not this one, and the pid of one that has ended.
    self.live = subprocess.Popen(['sleep', '600'])
    self.addCleanup(self.live.kill)
    ended = subprocess.Popen(['true'])
    ended.wait()
    self.ended_pid = ended.pid

  def _live_holder(self, **fields):
    return _write_holder(
      self.workdir,
      pid=self.live.pid,
      process_start=workdir_lock._process_start(self.live.pid),
      command='python -m research.main --workdir=run',
      **fields,
    )

  def test_a_live_holder_keeps_it(self):
    self._live_holder()
    with self.assertRaisesRegex(
      workdir_lock.WorkdirInUse, f'is in use by host {platform.node()}, pid {self.live.pid}.*kill'
    ):
      workdir_lock.acquire(self.workdir)
    self.assertEqual(workdir_lock.read(self.workdir).pid, self.live.pid)  # Untouched.

  def test_this_process_cannot_take_it_twice(self):
    with workdir_lock.held(self.workdir):
      with self.assertRaises(workdir_lock.WorkdirInUse):
        workdir_lock.acquire(self.workdir)
    self.assertIsNone(workdir_lock.read(self.workdir))  # Released: empty.

  def test_a_dead_holder_is_taken_over_with_a_warning(self):
    cases = {
      'is gone': dict(pid=self.ended_pid),
      'is now another process': dict(
        pid=self.live.pid, process_start=str(int(workdir_lock._process_start(self.live.pid)) - 1)
      ),
      'could not be read': None,
    }
    for reason, fields in cases.items():
      with self.subTest(reason):
        if fields is None:  # A writer killed mid-write.
          with open(os.path.join(self.workdir, workdir_lock.LOCK_FILE), 'w') as f:
            f.write('{"host": "vm", "pi')
        else:
          _write_holder(self.workdir, **fields)
        warnings = []
        me = workdir_lock.acquire(self.workdir, warn=warnings.append)
        self.assertLen(warnings, 1)
        self.assertIn(reason, warnings[0])
        self.assertIn('taking over the lock', warnings[0])
        self.assertEqual(workdir_lock.read(self.workdir), me)
        workdir_lock.release(self.workdir, me)

  def test_holders_on_other_hosts(self):
    # Under Slurm: squeue tells whether the job is still there.
    _write_holder(self.workdir, host='node7', pid=123, job='4242_3')
    with mock.patch.object(workdir_lock, '_job_listed', return_value=True):
      with self.assertRaisesRegex(
        workdir_lock.WorkdirInUse, r'Slurm job 4242_3 on host node7.*scancel 4242'
      ):
        workdir_lock.acquire(self.workdir)
    with mock.patch.object(workdir_lock, '_job_listed', return_value=False):
      warnings = []
      me = workdir_lock.acquire(self.workdir, warn=warnings.append)
      self.assertIn('Slurm no longer lists job 4242_3', warnings[0])
      workdir_lock.release(self.workdir, me)
    # Outside Slurm a remote holder cannot be checked: the message says how to clear it.
    _write_holder(self.workdir, host='node7', pid=123, job='')
    with self.assertRaisesRegex(
      workdir_lock.WorkdirInUse, 'if no such process runs on node7 any more, delete .*lock.json'
    ):
      workdir_lock.acquire(self.workdir)

  def test_release_leaves_a_lock_taken_over(self):
    me = workdir_lock.acquire(self.workdir)
    other = self._live_holder()
    workdir_lock.release(self.workdir, me)
    self.assertEqual(workdir_lock.read(self.workdir), other)

  def test_the_runner_shows_a_locked_cell_as_running_and_never_starts_it(self):
    config = os.path.join(self.create_tempdir().full_path, 'never_read.py')
    experiment = spec_lib.Experiment(
      name='tiny', title='Tiny', seeds=(0,), metric='bpc', rows=(spec_lib.Row('a', config),)
    )
    root = os.path.dirname(self.workdir)
    (cell,) = spec_lib.cells(experiment)
    self.workdir = runner.workdir(root, experiment, cell)
    self._live_holder(job='77_0')
    state = runner.state(self.workdir)
    self.assertEqual(
      state.describe(), f'running (Slurm job 77_0 on host {platform.node()}, pid {self.live.pid})'
    )
    messages = []
    outcome = runner.run(root, experiment, [cell], echo=messages.append)
    self.assertEqual(messages, [f'a-s0: {state.describe()}, skipped'])
    self.assertEqual(outcome['a-s0'].status, 'running')
    self.assertFalse(os.path.exists(os.path.join(self.workdir, runner.LOG_FILE)))


class MainLockTest(absltest.TestCase):
  def test_a_second_main_on_a_workdir_in_use_exits_2_with_one_error_line(self):
    tmp = self.create_tempdir().full_path
    config = test_util.tiny_config_file(tmp)
    workdir = os.path.join(tmp, 'run')
    live = subprocess.Popen(['sleep', '600'])
    self.addCleanup(live.kill)
    _write_holder(
      workdir, pid=live.pid, process_start=workdir_lock._process_start(live.pid), job=''
    )
    result = test_util.run_module(['research.main', f'--config={config}', f'--workdir={workdir}'])
    self.assertEqual(result.returncode, 2, result.stderr[-2000:])
    errors = [l for l in result.stderr.splitlines() if l.startswith('error:')]
    self.assertLen(errors, 1, result.stderr)
    self.assertIn(f'is in use by host {platform.node()}, pid {live.pid}', errors[0])
    self.assertNotIn('Traceback', result.stderr)
    # Nothing was written beside the lock.
    self.assertEqual(os.listdir(workdir), [workdir_lock.LOCK_FILE])


class ProcessPrintingTest(absltest.TestCase):
  def _printed(self, index: int, initialized: bool = True) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    with (
      mock.patch.object(jax.distributed, 'is_initialized', return_value=initialized),
      mock.patch.object(jax, 'process_index', return_value=index),
      mock.patch.object(sys, 'stdout', out),
      mock.patch.object(sys, 'stderr', err),
    ):
      metrics.console('step %d', 5)
      metrics.warn('warning: %s', 'disk slow')
    return out.getvalue(), err.getvalue()

  def test_process_0_reports_and_every_process_warns(self):
    self.assertEqual(self._printed(0), ('step 5\n', 'warning: disk slow\n'))
    self.assertEqual(self._printed(1), ('', '[process 1] warning: disk slow\n'))
    # Before jax.distributed joins the processes nobody asks JAX (it would start its backend).
    self.assertEqual(self._printed(3, initialized=False), ('step 5\n', 'warning: disk slow\n'))


if __name__ == '__main__':
  absltest.main()
