"""On 8 (fake) CPU devices: every mesh trains like one device, shardings
follow the partition rules, and checkpoints move between meshes.

XLA fixes the number of CPU devices when JAX starts, so each check runs in a
process of its own whose JAX starts with 8 host devices (`test_util.forked`)
and reports back as JSON.
"""

import os
import tempfile

import numpy as np
from absl.testing import absltest
from absl.testing import parameterized

from tests import test_util


# name: (data, fsdp, tensor); devices used = product.
# fsdp alone at 8, tensor (2: the heads of the tiny Transformer) with each of the others;
# data alone (8) and tensor alone would run nothing these do not (data parallelism at 8
# is restore_worker's first segment, checked against the run that moved between meshes).
MESHES = {'one': (1, 1, 1), 'fsdp': (1, 8, 1), 'data_tensor': (4, 1, 2), 'fsdp_tensor': (1, 4, 2)}


def _set_mesh(config, sizes):
  config.mesh.data, config.mesh.fsdp, config.mesh.tensor = sizes


def _max_diff(a, b) -> float:
  import jax  # pylint: disable=g-import-not-at-top

  return max(
    jax.tree.leaves(
      jax.tree.map(
        lambda x, y: float(np.abs(np.asarray(x, float) - np.asarray(y, float)).max()), a, b
      )
    )
  )


def _specs_match_rules(state, parts) -> bool:
  """Parameters carry the rule's spec; Adam's moments carry their param's."""
  import jax  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from research import sharding  # pylint: disable=g-import-not-at-top

  want = sharding.param_shardings(state.params, parts.mesh, parts.model.partition_rules)
  same = lambda a, w: a.sharding.is_equivalent_to(w, a.ndim)
  ok = all(jax.tree.leaves(jax.tree.map(same, state.params, want)))
  moments = optax.tree_map_params(
    parts.optimizer,
    lambda a, w: same(a, w),
    state.opt_state,
    want,
    transform_non_params=lambda _: True,
  )
  return ok and all(jax.tree.leaves(moments))


def mesh_worker(
  model: str, directory: str, scan_layers: bool = False, options: dict | None = None
) -> dict:
  """Runs 3 steps under every mesh of MESHES from the same initial state
  (`options`: config.model keys to set)."""
  import jax  # pylint: disable=g-import-not-at-top
  from research import components, sharding, train  # pylint: disable=g-import-not-at-top
  from research.data import pipeline  # pylint: disable=g-import-not-at-top
  from tests import test_util  # pylint: disable=g-import-not-at-top

  assert jax.device_count() == 8, jax.devices()
  config = test_util.tiny_config(directory, model=model)
  if scan_layers:
    config.model.scan_layers = True
  config.model.update(options or {})
  runs = {}
  # Scanned layers change no partition rule: the meshes that combine axes.
  names = ('one', 'data_tensor', 'fsdp_tensor') if scan_layers else tuple(MESHES)
  for name in names:
    sizes = MESHES[name]
    _set_mesh(config, sizes)
    parts = components.build(config, devices=jax.devices()[: int(np.prod(sizes))])
    state, shardings = components.create_state(parts, jax.random.key(0), config.data.batch_size)
    rules_before = _specs_match_rules(state, parts)
    step = train.make_train_step(parts, shardings, config)
    batches = iter(
      pipeline.train_dataset(
        parts.corpus.splits['train'],
        kind=parts.data_kind,
        batch_size=config.data.batch_size,
        seq_len=config.data.seq_len,
        seed=0,
      )
    )
    losses = []
    for _ in range(3):
      state, m = step(state, sharding.global_batch(next(batches), parts.mesh), jax.random.key(1))
      losses.append(float(m['loss']))
    sharded = sum(not l.sharding.is_fully_replicated for l in jax.tree.leaves(state.params))
    runs[name] = {
      'losses': losses,
      'state': jax.device_get(state),
      'rules_before': rules_before,
      'rules_after': _specs_match_rules(state, parts),
      'sharded_params': int(sharded),
    }
  one = runs['one']['state']
  return {
    name: {
      'losses': r['losses'],
      'max_state_diff': _max_diff(one, r['state']),
      'rules_before': r['rules_before'],
      'rules_after': r['rules_after'],
      'sharded_params': r['sharded_params'],
    }
    for name, r in runs.items()
  }


def restore_worker(directory: str) -> dict:
  """Trains 12 steps with checkpoints every 4: once straight on 8-way data
  parallelism, once stopped after step 4, resumed on fsdp 4 x tensor 2,
  stopped after step 8 and finished on a single device."""
  from unittest import mock  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  from research import checkpoint, sharding, train  # pylint: disable=g-import-not-at-top
  from tests import test_util  # pylint: disable=g-import-not-at-top

  config = test_util.tiny_config(directory, model='transformer')
  config.eval_every_steps = 100
  config.sample.num_tokens = 0

  def final_state(workdir):
    _set_mesh(config, (1, 1, 1))
    return test_util.final_state(config, workdir, devices=jax.devices()[:1])

  straight = os.path.join(directory, 'straight')
  _set_mesh(config, (8, 1, 1))
  train.train_and_evaluate(config, straight)

  moved = os.path.join(directory, 'moved')
  real = sharding.global_batch
  resumed_at = []
  for sizes, devices, stop_after in (((8, 1, 1), 8, 6), ((1, 4, 2), 8, 5), ((1, 1, 1), 1, None)):
    _set_mesh(config, sizes)
    calls = []

    def batches(local, mesh, stop_after=stop_after, calls=calls):
      calls.append(1)
      if stop_after is not None and len(calls) > stop_after:
        raise KeyboardInterrupt('stopped by the test')
      return real(local, mesh)

    manager = checkpoint.make_manager(os.path.join(moved, 'checkpoints'), max_to_keep=10)
    resumed_at.append(checkpoint.latest_step(manager))
    manager.close()
    with mock.patch.object(sharding, 'global_batch', batches):
      try:
        train.train_and_evaluate(config, moved, devices=jax.devices()[:devices])
      except KeyboardInterrupt:
        pass
  return {
    'resumed_at': resumed_at,
    'max_state_diff': _max_diff(final_state(straight), final_state(moved)),
  }


def shard_shapes_worker() -> dict:
  """{family: {parameter path: its shard's shape on every device}} for
  parameters born sharded on the mesh data 1 x fsdp 4 x tensor 2."""
  import jax  # pylint: disable=g-import-not-at-top
  import ml_collections  # pylint: disable=g-import-not-at-top
  from configs import common  # pylint: disable=g-import-not-at-top
  from research import models, sharding  # pylint: disable=g-import-not-at-top

  mesh = sharding.make_mesh(ml_collections.ConfigDict({'data': 1, 'fsdp': 4, 'tensor': 2}))
  transformer = common.transformer_model()
  transformer.update(
    num_layers=2, num_heads=2, d_model=20, d_ff=36, tie_embeddings=False, use_bias=True
  )
  lstm = common.lstm_model()
  lstm.hidden_size = 24
  configs = {
    'transformer': transformer,
    'lstm': lstm,
    'scanned': ml_collections.ConfigDict(dict(transformer, scan_layers=True)),
  }
  result = {}
  for name, config in configs.items():
    model = models.get_model(config, vocab_size=13, seq_len=11)
    abstract = jax.eval_shape(model.init, jax.random.key(0))
    params = jax.jit(
      model.init, out_shardings=sharding.param_shardings(abstract, mesh, model.partition_rules)
    )(jax.random.key(0))
    result[name] = {
      '/'.join(k.key for k in path): sorted({tuple(s.data.shape) for s in leaf.addressable_shards})
      for path, leaf in jax.tree_util.tree_leaves_with_path(params)
    }
  return result


def _run(call: str) -> dict:
  # Without the tests' persistent compilation cache: executables of the
  # scanned Transformer's sharded step loaded from it deadlocked in an XLA CPU
  # all-reduce rendezvous on 8 fake devices (compiled afresh they run).
  return test_util.on_fake_devices('tests.multidevice_test', call, cache=False)


def assert_meshes_train_like_one_device(test: absltest.TestCase, result: dict) -> None:
  """`mesh_worker`'s result: every mesh's losses and state as the one-device
  run's (float32 rounding), its shardings the partition rules' throughout,
  and a mesh with fsdp or tensor axes really splitting parameters."""
  one = result['one']['losses']
  test.assertNotEqual(one[0], one[-1])  # The steps did train.
  for name, r in result.items():
    with test.subTest(mesh=name):
      np.testing.assert_allclose(r['losses'], one, rtol=1e-5)
      test.assertLess(r['max_state_diff'], 1e-5)
      test.assertTrue(r['rules_before'], 'initial shardings differ from the rules')
      test.assertTrue(r['rules_after'], 'shardings changed during a step')
      if 'fsdp' in name or 'tensor' in name:
        test.assertGreater(r['sharded_params'], 0)


class MultiDeviceTest(parameterized.TestCase):
  @parameterized.parameters(
    ('lstm', False, {}),
    ('transformer', False, {}),
    # Scanned, with the options whose parameters have their own partition rules
    # or change the attention's layout (qk-norm's gains, RoPE, the soft-cap, one key/value head), and
    # muParam's per-parameter rates on the stacked, sharded matrices (untied head).
    (
      'transformer',
      True,
      {
        'qk_norm': 'layernorm',
        'positional': 'rope',
        'logit_softcap': 2.0,
        'parametrization': 'mup',
        'mup_base_width': 8,
        'tie_embeddings': False,
        'num_kv_heads': 1,  # Multi-query: one key/value head for the tensor axis's 2.
      },
    ),
  )
  def test_every_mesh_trains_like_one_device(self, model, scan_layers, options):
    with tempfile.TemporaryDirectory() as tmp:
      result = _run(f'mesh_worker({model!r}, {tmp!r}, {scan_layers}, {options!r})')
    assert_meshes_train_like_one_device(self, result)

  def test_checkpoint_moves_between_meshes(self):
    with tempfile.TemporaryDirectory() as tmp:
      result = _run(f'restore_worker({tmp!r})')
    self.assertEqual(result['resumed_at'], [None, 4, 8])
    self.assertLess(result['max_state_diff'], 1e-5)

  def test_rule_that_does_not_divide_fails_naming_the_parameter(self):
    with tempfile.TemporaryDirectory() as tmp:
      result = _run(f'bad_mesh_worker({tmp!r})')
    # The first parameter checked whose rule splits a 6- or 24-wide dimension.
    self.assertRegex(
      result['error'],
      r"Parameter '(lstm_\d/\w+|softmax/kernel)' "
      r'of shape \(\d+(, \d+)?,?\) cannot be sharded as P\(',
    )
    self.assertIn("mesh {'data': 1, 'fsdp': 1, 'tensor': 8}", result['error'])
    self.assertIn('does not divide into 8 parts', result['error'])
    self.assertIn("'tensor': 8", result['error'])


def bad_mesh_worker(directory: str) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  from research import components  # pylint: disable=g-import-not-at-top
  from tests import test_util  # pylint: disable=g-import-not-at-top

  config = test_util.tiny_config(directory, model='lstm')
  config.model.hidden_size = 6  # The 4H = 24 gate columns do not split 8 ways.
  _set_mesh(config, (1, 1, 8))
  parts = components.build(config, devices=jax.devices())
  try:
    components.abstract_state(parts, config.data.batch_size)
  except ValueError as e:
    return {'error': str(e)}
  return {'error': ''}


def _expected_shard_shapes() -> dict:
  """Written out by hand from the families' docstrings, not from their rules:
  fsdp splits one dimension of every large matrix 4 ways; tensor splits qkv
  and mlp/fc by output column, attn/out and mlp/proj by input row, the LSTM
  gates by column and the softmax by row (over tensor and fsdp), 2 ways.
  Vocabulary (13) and position (11) dimensions are never split."""
  block = {  # D = 20, 3D = 60, F = 36.
    'ln_1/scale': (20,),
    'ln_1/bias': (20,),
    'ln_2/scale': (20,),
    'ln_2/bias': (20,),
    'attn/qkv/kernel': (5, 30),
    'attn/qkv/bias': (30,),
    'attn/out/kernel': (10, 5),
    'attn/out/bias': (20,),
    'mlp/fc/kernel': (5, 18),
    'mlp/fc/bias': (18,),
    'mlp/proj/kernel': (18, 5),
    'mlp/proj/bias': (20,),
  }
  outer = {
    'embed/embedding': (13, 5),
    'pos_embed': (11, 5),
    'ln_f/scale': (20,),
    'ln_f/bias': (20,),
    'head/kernel': (5, 13),
  }
  transformer = dict(outer, **{f'block_{i}/{k}': s for i in range(2) for k, s in block.items()})
  scanned = dict(outer, **{f'blocks/{k}': (2,) + s for k, s in block.items()})
  lstm = {
    'embed/embedding': (13, 6),
    'softmax/kernel': (3, 13),  # H = 24.
    'softmax/bias': (13,),
  }
  for i in range(2):
    lstm.update(
      {
        f'lstm_{i}/input_kernel': (6, 48),
        f'lstm_{i}/recurrent_kernel': (6, 48),
        f'lstm_{i}/bias': (48,),
      }
    )
  return {'transformer': transformer, 'scanned': scanned, 'lstm': lstm}


class ShardShapesTest(absltest.TestCase):
  def test_key_parameters_split_the_intended_axes(self):
    got = _run('shard_shapes_worker()')
    for family, want in _expected_shard_shapes().items():
      with self.subTest(family=family):
        self.assertEqual(got[family], {k: [list(s)] for k, s in want.items()})


if __name__ == '__main__':
  absltest.main()
