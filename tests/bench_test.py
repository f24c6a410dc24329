"""FLOP counts by hand, and the benchmark's figures (not its speed)."""

import json
import os

import jax
from absl.testing import absltest

from research import bench
from research import flops
from research import models
from tests import test_util


class FlopsTest(absltest.TestCase):

  def test_lstm_counts_its_matmuls(self):
    config = test_util.tiny_config(self.create_tempdir().full_path, model='lstm')
    V, H, L = 17, config.model.hidden_size, config.model.num_layers  # pylint: disable=invalid-name
    params = models.get_model(config.model, V, 11).init(jax.random.key(0))
    per_layer = 4 * H * (H + H)  # input and recurrent kernels, D = H
    self.assertEqual(flops.matmul_params(params), L * per_layer + H * V)
    self.assertEqual(flops.flops_per_token(params, config.model, 11),
                     6 * (L * per_layer + H * V))

  def test_transformer_adds_the_attention_term(self):
    config = test_util.tiny_config(self.create_tempdir().full_path,
                                   model='transformer')
    m = config.model
    V, T, D, F, L = 17, 11, m.d_model, m.d_ff, m.num_layers  # pylint: disable=invalid-name
    params = models.get_model(m, V, T).init(jax.random.key(0))
    block = D * 3 * D + D * D + D * F + F * D
    n = L * block + D * V  # The output layer (tied or not) counts once.
    self.assertEqual(flops.matmul_params(params), n)
    self.assertEqual(flops.flops_per_token(params, m, T), 6 * n + 12 * L * T * D)
    m.scan_layers = True  # Stacked block weights count the same.
    scanned = models.get_model(m, V, T).init(jax.random.key(0))
    self.assertEqual(flops.matmul_params(scanned), n)

  def test_peaks(self):
    self.assertGreater(flops.measure_cpu_matmul_peak(size=256, repeats=2, min_seconds=0.0), 1e8)
    device = type('D', (), {'platform': 'gpu', 'device_kind': 'NVIDIA H100 80GB HBM3'})()
    self.assertEqual(flops.device_peak(device)[0], 989.4e12)


class BenchTest(absltest.TestCase):

  def test_figures_and_table(self):
    tmp = self.create_tempdir().full_path
    config = test_util.tiny_config(tmp)
    figures = bench.run(config, steps=3, warmup=1, config_name='tiny')
    for key in ('compile_s', 'step_time_median_s', 'tokens_per_s', 'flops_per_s',
                'mfu', 'peak_flops_per_s', 'device', 'data_tokens_per_s'):
      self.assertIn(key, figures)
    self.assertGreater(figures['tokens_per_s'], 0)
    self.assertAlmostEqual(figures['mfu'],
                           figures['flops_per_s'] / figures['peak_flops_per_s'])
    records = os.path.join(tmp, 'runs.jsonl')
    with open(records, 'w') as f:
      f.write(json.dumps(figures) + '\n')
    table = os.path.join(tmp, 'BENCHMARKS.md')
    bench.write_table(records, table)
    with open(table) as f:
      self.assertIn('| `tiny` | 8x11 |', f.read())


if __name__ == '__main__':
  absltest.main()
