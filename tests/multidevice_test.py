"""The train step on 8 (fake) CPU devices equals the 1-device step.

XLA fixes the number of CPU devices when JAX starts, so the comparison runs
in a fresh interpreter started with 8 host devices; it trains both layouts
from the same initial state on the same batches and reports the differences.
"""

import json
import os
import subprocess
import sys
import tempfile

import numpy as np
from absl.testing import absltest
from absl.testing import parameterized

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def worker(model: str, directory: str) -> dict:
  """Runs 3 steps under a 1-device and an 8-device data-parallel mesh."""
  import jax  # pylint: disable=g-import-not-at-top
  from research import components, sharding, train  # pylint: disable=g-import-not-at-top
  from research.data import pipeline  # pylint: disable=g-import-not-at-top
  from tests import test_util  # pylint: disable=g-import-not-at-top

  assert jax.device_count() == 8, jax.devices()
  config = test_util.tiny_config(directory, model=model)
  runs = {}
  for name, devices in (('one', jax.devices()[:1]), ('eight', jax.devices())):
    parts = components.build(config, devices=devices)
    state, shardings = components.create_state(
        parts, jax.random.key(0), config.data.batch_size)
    step = train.make_train_step(parts, shardings, config.optim.loss)
    batches = iter(pipeline.train_dataset(
        parts.corpus.splits['train'], kind=parts.data_kind,
        batch_size=config.data.batch_size, seq_len=config.data.seq_len, seed=0))
    losses = []
    for _ in range(3):
      state, m = step(state, sharding.global_batch(next(batches), parts.mesh),
                      jax.random.key(1))
      losses.append(float(m['loss']))
    runs[name] = (losses, jax.device_get(state),
                  len(jax.tree.leaves(state.params)[0].sharding.device_set))
  diffs = jax.tree.leaves(jax.tree.map(
      lambda a, b: float(abs(a.astype(float) - b.astype(float)).max()),
      runs['one'][1], runs['eight'][1]))
  return {'losses_one': runs['one'][0], 'losses_eight': runs['eight'][0],
          'max_state_diff': max(diffs), 'devices_one': runs['one'][2],
          'devices_eight': runs['eight'][2]}


class MultiDeviceTest(parameterized.TestCase):

  @parameterized.parameters('lstm', 'transformer')
  def test_data_parallel_step_equals_single_device_step(self, model):
    env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=8',
               JAX_PLATFORMS='cpu')
    with tempfile.TemporaryDirectory() as tmp:
      code = ('import json, sys; from tests import multidevice_test as m; '
              f'print("RESULT", json.dumps(m.worker({model!r}, {tmp!r})))')
      out = subprocess.run([sys.executable, '-c', code], cwd=_ROOT, env=env,
                           capture_output=True, text=True, timeout=300)
    self.assertEqual(out.returncode, 0, out.stderr[-3000:])
    line = [l for l in out.stdout.splitlines() if l.startswith('RESULT')][-1]
    result = json.loads(line[len('RESULT '):])
    self.assertEqual((result['devices_one'], result['devices_eight']), (1, 8))
    np.testing.assert_allclose(result['losses_eight'], result['losses_one'],
                               rtol=1e-5)
    self.assertLess(result['max_state_diff'], 1e-5)
    # The steps did train: the loss moved.
    self.assertNotEqual(result['losses_one'][0], result['losses_one'][-1])


if __name__ == '__main__':
  absltest.main()
