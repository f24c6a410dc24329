"""Lion, Adafactor, Muon and schedule-free AdamW in whole runs: every one
through train_and_evaluate (the LSTM under DP-SGD, the Transformer with
gradient accumulation, each with a frozen matrix), schedule-free killed and
resumed bit for bit, schedule-free evaluated at its
average by training and by research.evaluate, and muon and adafactor on 8
fake devices equal to one. The update formulas: tests/optimizers_test.py."""

import contextlib
import io
import json
import os
import shutil
import tempfile
from unittest import mock

import jax
import numpy as np
from absl.testing import absltest

from research import checkpoint
from research import components
from research import evaluate
from research import optim
from research import sharding
from research import train
from tests import test_util


class _Crash(Exception):
  pass


def _train(config, workdir, crash_in_step=None):
  """train_and_evaluate, raising in the batch of this segment's step
  `crash_in_step` when given (after the checkpoint before it)."""
  real, calls = sharding.global_batch, []

  def batch(local, mesh):
    calls.append(1)
    if len(calls) == crash_in_step:
      raise _Crash()
    return real(local, mesh)

  with (
    mock.patch.object(sharding, 'global_batch', batch),
    contextlib.redirect_stdout(io.StringIO()),
    contextlib.redirect_stderr(io.StringIO()),
  ):
    try:
      train.train_and_evaluate(config, workdir)
    except _Crash:
      pass


def _state(config, workdir, step):
  parts = components.build(config)
  manager = checkpoint.make_manager(os.path.join(workdir, 'checkpoints'), max_to_keep=100)
  structs, _ = components.abstract_state(parts, parts.train_rows)
  state = checkpoint.restore(manager, step, structs)
  manager.close()
  return jax.device_get(state)


def _records(workdir, split):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    records = [r for r in map(json.loads, f) if r['split'] == split]
  return [{k: v for k, v in r.items() if k != 'time'} for r in records]


# Frozen in each family's runs: a matrix, which the weight decay would move.
_FROZEN = {'lstm': 'embed/embedding', 'transformer': 'pos_embed'}


def _run_config(directory, family, name):
  """4 steps, checkpoints at 2 and 4; the LSTM under DP-SGD (seeded noise),
  the Transformer with 2 micro-batches; each with a frozen matrix."""
  config = test_util.tiny_config(directory, model=family)
  with config.unlocked():
    config.optim.name = name
    config.optim.frozen = _FROZEN[family]
    config.num_train_steps, config.log_every_steps, config.checkpoint_every_steps = 4, 2, 2
    config.eval_every_steps, config.eval_on_test, config.sample.num_tokens = 1000, False, 0
    config.model_stats = False
    if family == 'lstm':
      config.privacy.update(enabled=True, noise_multiplier=1.0, reproducible_noise=True)
    else:
      config.optim.grad_accum_steps = 2
  return config


# One run per optimizer, for the suite's time, the families alternated: the LSTM's gate
# matrices under Muon and schedule-free's average under DP-SGD; Lion and Adafactor with the
# Transformer's micro-batches. Muon on the Transformer: EightDevicesTest's one-device run.
_RUNS = (  # Every optimizer of research/optimizers.py once.
  ('lstm', 'muon'),
  ('lstm', 'schedule_free_adamw'),
  ('transformer', 'lion'),
  ('transformer', 'adafactor'),
)


class TrainTest(absltest.TestCase):
  """Every new optimizer through train_and_evaluate (_RUNS); schedule_free_adamw
  (LSTM, DP), whose state is more than moments, killed and resumed."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.tmp = tempfile.mkdtemp()
    cls.runs = {}
    for family, name in _RUNS:
      config = _run_config(cls.tmp, family, name)
      workdir = os.path.join(cls.tmp, f'{family}_{name}')
      _train(config, workdir)
      cls.runs[family, name] = (config, workdir)
    cls.resumed = {}
    for family, name in (('lstm', 'schedule_free_adamw'),):
      config = cls.runs[family, name][0]
      workdir = os.path.join(cls.tmp, f'{family}_{name}_resumed')
      _train(config, workdir, crash_in_step=3)  # Dies in step 3, after the save at 2.
      _train(config, workdir)
      cls.resumed[family, name] = workdir

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls.tmp, ignore_errors=True)
    super().tearDownClass()

  def test_every_optimizer_trains_both_families_with_its_frozen_matrix_held(self):
    for (family, name), (config, workdir) in self.runs.items():
      with self.subTest(family=family, name=name):
        train_losses = [r['loss'] for r in _records(workdir, 'train')]
        (valid,) = _records(workdir, 'valid')
        self.assertTrue(np.all(np.isfinite(train_losses + [valid['loss']])))
        before, after = (_state(config, workdir, s).params for s in (2, 4))
        moved = jax.tree.map(lambda a, b: bool(np.any(a != b)), before, after)
        for path, leaf_moved in jax.tree_util.tree_leaves_with_path(moved):
          frozen = optim.param_path(path) == _FROZEN[family]
          self.assertEqual(leaf_moved, not frozen, optim.param_path(path))

  def test_a_killed_run_resumes_bit_identically(self):
    for (family, name), resumed in self.resumed.items():
      with self.subTest(family=family, name=name):
        config, straight = self.runs[family, name]
        for a, b in zip(
          jax.tree.leaves(_state(config, straight, 4)),
          jax.tree.leaves(_state(config, resumed, 4)),
          strict=True,
        ):
          np.testing.assert_array_equal(a, b)
        self.assertEqual(_records(straight, 'valid'), _records(resumed, 'valid'))

  def test_schedule_free_is_evaluated_at_its_average_by_training_and_the_tools(self):
    config, workdir = self.runs['lstm', 'schedule_free_adamw']
    state = _state(config, workdir, 4)
    x = optim.eval_params(config.optim, state.opt_state, state.params)
    _, step, params = evaluate.restore(config, workdir, 'research.evaluate')
    self.assertEqual(step, 4)
    jax.tree.map(
      lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), jax.device_get(params), x
    )
    self.assertGreater(
      np.abs(x['lstm_0']['input_kernel'] - state.params['lstm_0']['input_kernel']).max(), 0
    )
    # research.evaluate's figure on the restored average is the one training wrote.
    with contextlib.redirect_stdout(io.StringIO()):
      results = evaluate.evaluate_checkpoint(config, workdir)
    self.assertAlmostEqual(results['valid']['loss'], _records(workdir, 'valid')[-1]['loss'], 5)


def mesh_worker(directory: str) -> dict:
  """{optimizer: {mesh: figures}}: 3 steps of muon and adafactor from one
  initial state on one device and on 8 (fsdp 4 x tensor 2: the qkv kernel
  split both ways)."""
  from research.data import pipeline  # pylint: disable=g-import-not-at-top

  assert jax.device_count() == 8, jax.devices()
  result = {}
  for name in ('muon', 'adafactor'):
    config = test_util.tiny_config(directory, model='transformer')
    config.optim.name = name
    if name == 'adafactor':
      # Every matrix factored but pos_embed (11 x 16), whose moment keeps its shape.
      config.optim.adafactor.min_dim_size_to_factor = 12
    runs = {}
    for mesh_name, sizes in (('one', (1, 1, 1)), ('fsdp_tensor', (1, 4, 2))):
      config.mesh.data, config.mesh.fsdp, config.mesh.tensor = sizes
      parts = components.build(config, devices=jax.devices()[: int(np.prod(sizes))])
      state, shardings = components.create_state(parts, jax.random.key(0), config.data.batch_size)
      step = train.make_train_step(parts, shardings, config)
      batches = pipeline.train_dataset(
        parts.corpus.splits['train'],
        kind=parts.data_kind,
        batch_size=config.data.batch_size,
        seq_len=config.data.seq_len,
        seed=0,
      )
      batches, losses = iter(batches), []
      for _ in range(3):
        state, m = step(state, sharding.global_batch(next(batches), parts.mesh), jax.random.key(1))
        losses.append(float(m['loss']))
      placed = jax.tree.map(lambda a, s: a.sharding.is_equivalent_to(s, a.ndim), state, shardings)
      qkv = state.params['block_0']['attn']['qkv']['kernel']
      runs[mesh_name] = {
        'losses': losses,
        'state': jax.device_get(state),
        'placed': bool(all(jax.tree.leaves(placed))),
        # Optimizer-state leaves split over devices like a parameter.
        'sharded_moments': sum(
          not leaf.sharding.is_fully_replicated for leaf in jax.tree.leaves(state.opt_state)
        ),
        'qkv_sharded': not qkv.sharding.is_fully_replicated,
      }
    one = runs['one']['state']
    result[name] = {
      mesh: {
        **{k: v for k, v in r.items() if k != 'state'},
        'max_state_diff': max(
          float(np.abs(np.asarray(a, float) - np.asarray(b, float)).max())
          for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(r['state']))
        ),
      }
      for mesh, r in runs.items()
    }
  return result


class EightDevicesTest(absltest.TestCase):
  def test_muon_and_adafactor_on_8_devices_equal_one(self):
    with tempfile.TemporaryDirectory() as tmp:
      result = test_util.on_fake_devices('tests.optimizers_train_test', f'mesh_worker({tmp!r})')
    for name, runs in result.items():
      one = runs['one']['losses']
      self.assertNotEqual(one[0], one[-1])
      for mesh, r in runs.items():
        with self.subTest(name=name, mesh=mesh):
          np.testing.assert_allclose(r['losses'], one, rtol=1e-5)
          self.assertLess(r['max_state_diff'], 1e-5)
          self.assertTrue(r['placed'], 'the state left the shardings it was born with')
          if mesh != 'one':
            self.assertTrue(r['qkv_sharded'])
            self.assertGreater(r['sharded_moments'], 0)


if __name__ == '__main__':
  absltest.main()
