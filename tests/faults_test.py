"""Fault injection: kills, stop signals, damaged checkpoints, config drift,
non-finite steps, bad input, determinism. Every fault ends either in a result
bit-identical to the uninterrupted run or in one clear error."""

import functools
import json
import os
import signal
import sys

import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest

from configs import common
from research import checkpoint
from research import components
from research import faults
from research import optim
from research import provenance
from research import sharding
from research import train
from research import workdir as workdir_lib
from tests import test_util

_TIMING = ('time', 'tokens_per_s', 'step_time_s', 'eta_s', 'flops_per_s', 'mfu')


def long_config(directory: str, **overrides):
  """The tiny LSTM config, 60 steps, checkpoints every 10, one eval."""
  c = test_util.tiny_config(directory, model='lstm')
  c.num_train_steps = 60
  c.log_every_steps = 5
  c.checkpoint_every_steps = 10
  c.eval_every_steps = 1000
  c.keep_checkpoints = 20
  c.sample.num_tokens = 0
  for k, v in overrides.items():
    c[k] = v
  return c


def drive(directory: str, workdir: str, fault: str = '', config_fn: str = 'long_config') -> None:
  """Runs `research.main` on long_config, injecting `fault` ('kind:step'):

  kill:N  SIGKILL before training step N; term:N  SIGTERM to itself before
  step N; killsave:N  SIGKILL right after the save of step N started (its
  files are being written); killeval:0  SIGKILL during the final evaluation.
  """
  from unittest import mock  # pylint: disable=g-import-not-at-top
  from absl import app  # pylint: disable=g-import-not-at-top
  from research import evaluate, main  # pylint: disable=g-import-not-at-top

  kind, _, at = fault.partition(':')
  at = int(at or 0)
  real_batch, real_save = sharding.global_batch, checkpoint.save
  real_splits = evaluate.Evaluator.splits
  calls = []

  def batch(local, mesh):
    calls.append(1)
    step = int(open(os.path.join(workdir, 'start')).read()) + len(calls)
    if kind in ('kill', 'term') and step == at:
      os.kill(os.getpid(), signal.SIGKILL if kind == 'kill' else signal.SIGTERM)
    return real_batch(local, mesh)

  def save(manager, step, *args):
    real_save(manager, step, *args)
    if kind == 'killsave' and step == at:
      os.kill(os.getpid(), signal.SIGKILL)

  def splits(self, params, names):
    if kind == 'killeval' and 'test' in names:
      os.kill(os.getpid(), signal.SIGKILL)
    return real_splits(self, params, names)

  def record_start(parts, manager, config, rng, data_iterator):
    state, shardings = real_restore(parts, manager, config, rng, data_iterator)
    with open(os.path.join(workdir, 'start'), 'w') as f:
      f.write(str(int(jax.device_get(state.step))))
    return state, shardings

  real_restore = train.restore_or_init
  config_file = os.path.join(directory, f'{config_fn}.py')
  with open(config_file, 'w') as f:
    f.write(
      f'from tests import faults_test\n'
      f'def get_config():\n  return faults_test.{config_fn}({directory!r})\n'
    )
  with (
    mock.patch.object(sharding, 'global_batch', batch),
    mock.patch.object(checkpoint, 'save', save),
    mock.patch.object(evaluate.Evaluator, 'splits', splits),
    mock.patch.object(train, 'restore_or_init', record_start),
  ):
    sys.argv = ['research.main', f'--config={config_file}', f'--workdir={workdir}']
    app.run(main.main)


def _drive(directory, workdir, fault='', config_fn='long_config'):
  """`drive` in a process of its own, which the fault may kill."""
  code = (
    f'from tests import faults_test as f; '
    f'f.drive({directory!r}, {workdir!r}, {fault!r}, {config_fn!r})'
  )
  return test_util.forked([{'code': code}])[0]


def _metrics(workdir, evals_only=False):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    records = [{k: v for k, v in json.loads(l).items() if k not in _TIMING} for l in f]
  # A resumed run's first train line averages fewer steps (those since the
  # resume), so only its evaluations can equal an uninterrupted run's.
  return [r for r in records if r['split'] != 'train'] if evals_only else records


def _assert_same_state(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)


class KillAndResumeTest(absltest.TestCase):
  def test_kills_and_stop_signals_resume_bit_identically(self):
    tmp = self.create_tempdir().full_path
    straight = os.path.join(tmp, 'straight')
    out = _drive(tmp, straight)
    self.assertEqual(out.returncode, 0, out.stderr[-3000:])

    chained = os.path.join(tmp, 'chained')
    faults_in_order = [  # (fault, expected exit status)
      ('kill:7', -signal.SIGKILL),  # before the first checkpoint
      ('term:16', faults.EXIT_PREEMPTED),  # stop signal: saves step 16
      ('kill:27', -signal.SIGKILL),  # between two checkpoints
      ('killsave:30', -signal.SIGKILL),  # while step 30 is being written
      ('term:41', faults.EXIT_PREEMPTED),
      ('killeval:0', -signal.SIGKILL),  # in the final evaluation
      ('', 0),
    ]
    previous = 0
    for fault, status in faults_in_order:
      out = _drive(tmp, chained, fault)
      self.assertEqual(out.returncode, status, f'{fault}: {out.stderr[-3000:]}')
      # A killed run leaves its workdir lock behind; the next run takes it over
      # (research.workdir_lock), a run that stopped by itself released it.
      self.assertEqual(
        'taking over the lock' in out.stderr, previous == -signal.SIGKILL, out.stderr[-3000:]
      )
      previous = status
      if status == faults.EXIT_PREEMPTED:
        self.assertIn('preempted: SIGTERM received: stopped after step', out.stderr)
        self.assertIn(
          int(fault.split(':')[1]),
          checkpoint.make_manager(os.path.join(chained, 'checkpoints'), max_to_keep=50).all_steps(),
        )
    config = long_config(tmp)
    _assert_same_state(
      test_util.final_state(config, straight), test_util.final_state(config, chained)
    )
    self.assertEqual(_metrics(straight, evals_only=True), _metrics(chained, evals_only=True))


class DamagedCheckpointTest(absltest.TestCase):
  def _run_to(self, tmp, workdir, stop_at):
    """Stops the run with SIGTERM: every checkpoint up to `stop_at` is
    committed."""
    out = _drive(tmp, workdir, f'term:{stop_at}')
    self.assertEqual(out.returncode, faults.EXIT_PREEMPTED, out.stderr[-3000:])

  def test_damaged_checkpoints_are_skipped_and_kept_aside(self):
    tmp = self.create_tempdir().full_path
    straight = os.path.join(tmp, 'straight')
    self.assertEqual(_drive(tmp, straight).returncode, 0)
    work = os.path.join(tmp, 'damaged')
    self._run_to(tmp, work, 35)  # Checkpoints 10, 20, 30, 35.
    ckpts = os.path.join(work, 'checkpoints')
    # 35: a truncated array file; 30: its data item deleted.
    files = [
      os.path.join(d, f) for d, _, fs in os.walk(os.path.join(ckpts, '35', 'state')) for f in fs
    ]
    biggest = max(files, key=os.path.getsize)
    with open(biggest, 'r+b') as f:
      f.truncate(os.path.getsize(biggest) // 2)
    for d, _, fs in os.walk(os.path.join(ckpts, '30', 'data'), topdown=False):
      for f in fs:
        os.remove(os.path.join(d, f))
      os.rmdir(d)
    out = _drive(tmp, work)
    self.assertEqual(out.returncode, 0, out.stderr[-3000:])
    self.assertIn('warning: checkpoint at step 35 is unreadable', out.stderr)
    self.assertIn('warning: checkpoint at step 30 is unreadable', out.stderr)
    self.assertIn('Resuming from the checkpoint at step 20.', out.stdout)
    self.assertLen(os.listdir(os.path.join(work, 'unreadable_checkpoints')), 2)
    config = long_config(tmp)
    _assert_same_state(test_util.final_state(config, straight), test_util.final_state(config, work))

  def test_no_readable_checkpoint_stops_with_a_message(self):
    tmp = self.create_tempdir().full_path
    work = os.path.join(tmp, 'w')
    self._run_to(tmp, work, 15)  # Checkpoints 10 and 15.
    for step in ('10', '15'):
      with open(os.path.join(work, 'checkpoints', step, 'config', 'metadata'), 'w') as f:
        f.write('\x00garbage')
    out = _drive(tmp, work)
    self.assertEqual(out.returncode, faults.EXIT_BAD_INPUT, out.stderr[-3000:])
    self.assertIn('error: No checkpoint in', out.stderr)
    self.assertIn('--fresh', out.stderr)
    self.assertTrue(os.listdir(os.path.join(work, 'unreadable_checkpoints')))
    self.assertNotIn('Training lstm', out.stdout)  # It did not start over.


class InProcessFaultTest(absltest.TestCase):
  def test_config_that_changed_is_refused_unless_fresh(self):
    tmp = self.create_tempdir().full_path
    work = os.path.join(tmp, 'w')
    train.train_and_evaluate(test_util.tiny_config(tmp), work)
    changed = test_util.tiny_config(tmp)
    changed.model.hidden_size = 8
    with self.assertRaisesRegex(
      faults.ConfigMismatchError, r'model.hidden_size: 16 -> 8[\s\S]*--fresh'
    ):
      train.train_and_evaluate(changed, work)
    moved = workdir_lib.move_aside(work)
    self.assertTrue(os.path.isdir(os.path.join(moved, 'checkpoints')))
    train.train_and_evaluate(changed, work)

  def _nan_at(self, step):
    real = sharding.global_batch
    calls = []

    def batch(local, mesh):
      calls.append(1)
      if len(calls) == step:
        local = dict(local, weights=np.full_like(local['weights'], np.nan))
      return real(local, mesh)

    return absltest.mock.patch.object(sharding, 'global_batch', batch)

  def test_nonfinite_step_stops_without_saving_it(self):
    tmp = self.create_tempdir().full_path
    work = os.path.join(tmp, 'w')
    with (
      self._nan_at(6),
      self.assertRaisesRegex(
        faults.NonFiniteError,
        r'Non-finite loss \(nan\) at step 6\. .*last good '
        r'checkpoint is step 4',
      ),
    ):
      train.train_and_evaluate(test_util.tiny_config(tmp), work)
    manager = checkpoint.make_manager(os.path.join(work, 'checkpoints'), max_to_keep=10)
    self.assertEqual(manager.all_steps(), [4])
    # A result for the experiment runner (a diverged cell), not a failure.
    self.assertEqual(provenance.read_runs(work)[-1]['status'], 'diverged')

  def test_nonfinite_steps_can_be_skipped_and_counted(self):
    tmp = self.create_tempdir().full_path
    work = os.path.join(tmp, 'w')
    config = test_util.tiny_config(tmp)
    config.skip_nonfinite_steps = True
    with self._nan_at(6):
      results = train.train_and_evaluate(config, work)
    self.assertTrue(np.isfinite(results['valid']['loss']))
    skipped = [m['skipped_steps'] for m in _metrics(work) if m['split'] == 'train']
    self.assertEqual(skipped, [0.0, 1.0, 0.0])

  def test_infinite_gradient_with_a_finite_loss_is_caught_and_skipped(self):
    v, b, t = 13, 3, 7

    def apply(params, carry, inputs_BxT, *, train, rng):
      """A bigram table plus sqrt(root) on token 0's logit: at root = 0 the
      forward pass is finite, its derivative 1 / (2 sqrt(0)) is inf."""
      del train, rng
      logits_BxTxV = params['table'][inputs_BxT]
      return logits_BxTxV.at[..., 0].add(jnp.sqrt(params['root'])), carry

    rng = np.random.default_rng(0)
    table = rng.normal(size=(v, v)).astype(np.float32)
    model = test_util.apply_only_model(
      apply, init=lambda _: {'table': jnp.asarray(table), 'root': jnp.zeros(())}
    )
    schedule = lambda _: 0.01
    optimizer = optim.make_optimizer(common.base_config().optim, schedule)
    state = components.init_state(jax.random.key(0), model=model, optimizer=optimizer, batch_size=b)
    # No target is token 0, so d loss / d sqrt(root) > 0 and the gradient of
    # root is +inf (not NaN).
    batch = {
      'inputs': rng.integers(0, v, (b, t), dtype=np.int32),
      'targets': rng.integers(1, v, (b, t), dtype=np.int32),
      'weights': np.ones((b, t), np.float32),
      'reset': np.ones((b,), bool),
    }
    step = train.step_function(
      model=model, optimizer=optimizer, schedule=schedule, objective='token_mean'
    )
    manager = checkpoint.make_manager(self.create_tempdir().full_path, max_to_keep=1)
    fetch_checked = train._fetch_checked  # pylint: disable=protected-access
    for skip in (False, True):
      new, metrics = jax.jit(functools.partial(step, skip_nonfinite=skip))(
        state, batch, jax.random.key(0)
      )
      metrics = jax.device_get(metrics)
      self.assertTrue(np.isfinite(metrics['loss']))
      self.assertEqual(metrics['grad_norm'], np.inf)
      self.assertEqual(metrics['nonfinite'], 1.0, 'the step reported finite')
      self.assertEqual(int(new.step), 1)
      if skip:
        jax.tree.map(
          np.testing.assert_array_equal,
          (new.params, new.opt_state),
          (state.params, state.opt_state),
        )
        self.assertEqual(fetch_checked([(1, metrics)], manager, True), [metrics])
      else:
        # Not skipped, the step makes the parameters NaN.
        self.assertTrue(np.isnan(float(new.params['root'])))
        with self.assertRaisesRegex(
          faults.NonFiniteError,
          r'Non-finite grad_norm \(inf\) at step 1\. '
          r'.*there is no checkpoint yet',
        ):
          fetch_checked([(1, metrics)], manager, False)
    manager.close()

  def test_full_disk_during_a_save_keeps_earlier_checkpoints(self):
    tmp = self.create_tempdir().full_path
    work = os.path.join(tmp, 'w')
    real = checkpoint.save

    def save(manager, step, *args):
      if step == 8:
        raise OSError(28, 'No space left on device')
      return real(manager, step, *args)

    with (
      absltest.mock.patch.object(checkpoint, 'save', save),
      self.assertRaisesRegex(
        faults.RunError,
        r'No space left on device .*'
        r'\(\[4\]\) are intact',
      ),
    ):
      train.train_and_evaluate(test_util.tiny_config(tmp), work)
    manager = checkpoint.make_manager(os.path.join(work, 'checkpoints'), max_to_keep=10)
    self.assertEqual(manager.all_steps(), [4])
    test_util.final_state(test_util.tiny_config(tmp), work)  # Step 4 still restores.

  def test_same_config_and_seed_give_identical_metrics(self):
    tmp = self.create_tempdir().full_path
    for name in ('a', 'b'):
      train.train_and_evaluate(
        test_util.tiny_config(tmp, model='transformer'), os.path.join(tmp, name)
      )
    self.assertEqual(_metrics(os.path.join(tmp, 'a')), _metrics(os.path.join(tmp, 'b')))


if __name__ == '__main__':
  absltest.main()
