"""FLOP counts by hand, and the benchmark's figures (not its speed)."""

import json
import os

import jax
import ml_collections
from absl.testing import absltest

from research import bench
from research import flops
from research import models
from tests import test_util


class FlopsTest(absltest.TestCase):
  def test_lstm_counts_its_matmuls(self):
    config = test_util.tiny_config(self.create_tempdir().full_path, model='lstm')
    V, H, L = 17, config.model.hidden_size, config.model.num_layers  # pylint: disable=invalid-name
    model = models.get_model(config.model, V, 11)
    params = model.init(jax.random.key(0))
    per_layer = 4 * H * (H + H)  # input and recurrent kernels, D = H
    self.assertEqual(models.matmul_params(params, ('embed/embedding',)), L * per_layer + H * V)
    self.assertEqual(model.flops_per_token(params), 6 * (L * per_layer + H * V))

  def test_transformer_adds_the_attention_term(self):
    config = test_util.tiny_config(self.create_tempdir().full_path, model='transformer')
    m = config.model
    V, T, D, F, L = 17, 11, m.d_model, m.d_ff, m.num_layers  # pylint: disable=invalid-name
    block = D * 3 * D + D * D + D * F + F * D
    n = L * block + D * V  # The output layer (tied or not) counts once.
    for overrides in ({}, {'scan_layers': True}, {'tie_embeddings': False}):
      with self.subTest(**overrides):
        model = models.get_model(ml_collections.ConfigDict(dict(m, **overrides)), V, T)
        params = model.init(jax.random.key(0))
        self.assertEqual(model.flops_per_token(params), 6 * n + 12 * L * T * D)

  def test_peaks(self):
    self.assertGreater(flops.measure_cpu_matmul_peak(size=256, repeats=2, min_seconds=0.0), 1e8)
    device = type('D', (), {'platform': 'gpu', 'device_kind': 'NVIDIA H100 80GB HBM3'})()
    self.assertEqual(flops.device_peak(device)[0], 989.4e12)


class BenchTest(absltest.TestCase):
  def test_figures_and_table(self):
    tmp = self.create_tempdir().full_path
    config = test_util.tiny_config(tmp)
    figures = bench.run(config, steps=3, warmup=1, config_name='tiny', profile_steps=2)
    # The profiled steps' instructions are attributed, the LSTM's matmuls among them.
    self.assertGreater(figures['profile']['kinds']['matmul'], 0)
    self.assertGreater(figures['profile']['in_loops_s'], 0)  # tiny_config is the LSTM.
    for key in (
      'compile_s',
      'step_time_median_s',
      'tokens_per_s',
      'flops_per_s',
      'mfu',
      'peak_flops_per_s',
      'device',
      'data_tokens_per_s',
    ):
      self.assertIn(key, figures)
    self.assertGreater(figures['tokens_per_s'], 0)
    self.assertAlmostEqual(figures['mfu'], figures['flops_per_s'] / figures['peak_flops_per_s'])
    records = os.path.join(tmp, 'runs.jsonl')
    with open(records, 'w') as f:
      f.write(json.dumps(figures) + '\n')
    table = os.path.join(tmp, 'BENCHMARKS.md')
    bench.write_table(records, table)
    with open(table) as f:
      self.assertIn('| `tiny` | 8x11 |', f.read())

  def test_dp_and_generation_figures(self):
    tmp = self.create_tempdir().full_path
    config = test_util.tiny_config(tmp, model='transformer')
    private = bench.private(config)
    self.assertTrue(private.privacy.enabled)
    self.assertEqual(private.privacy.noise_multiplier, 1.0)  # The cost does not depend on it.
    self.assertFalse(config.privacy.enabled)  # The given config is left alone.
    figures = bench.run(private, steps=2, warmup=1, config_name='tiny [DP-SGD]')
    self.assertIn('DP: expected rows, padded to', figures['batch'])
    self.assertGreater(figures['step_time_median_s'], 0)
    generation = bench.generation(config, 'tiny', repeats=1)
    self.assertEqual((generation['context'], generation['new_tokens']), (11, 10))
    self.assertAlmostEqual(
      generation['speedup'],
      generation['cached_tokens_per_s'] / generation['recompute_tokens_per_s'],
    )
    # A recurrent model: no context, so 200 new tokens, its baseline re-reading
    # windows of seq_len from a fresh state.
    generation = bench.generation(test_util.tiny_config(tmp, model='lstm'), 'tiny', repeats=1)
    self.assertEqual((generation['context'], generation['new_tokens']), (11, 200))
    self.assertGreater(generation['recompute_tokens_per_s'], 0)


def _record(config: str, step_s: float) -> dict:
  """A benchmark record with the fields write_table reads."""
  return {
    'config': config,
    'device': 'CPU: test, 1 JAX device(s)',
    'batch': '7x11',
    'step_time_median_s': step_s,
    'step_time_p10_s': step_s,
    'step_time_p90_s': step_s,
    'tokens_per_s': 77 / step_s,
    'flops_per_s': 1e9,
    'peak_flops_per_s': 2e9,
    'mfu': 0.5,
    'compile_s': 1.0,
    'data_tokens_per_s': 1e6,
    'commit': 'abcdef0123456789',
    'date': '2026-12-01 00:00 UTC',
  }


class WriteTableTest(absltest.TestCase):
  """write_table rewrites only the part between its markers."""

  def _write(self, tmp: str, records: list[dict], table_text: str | None) -> str:
    records_path = os.path.join(tmp, 'records.jsonl')
    with open(records_path, 'w') as f:
      f.writelines(json.dumps(r) + '\n' for r in records)
    table = os.path.join(tmp, 'BENCHMARKS.md')
    if table_text is not None:
      with open(table, 'w', newline='') as f:
        f.write(table_text)
    bench.write_table(records_path, table)
    with open(table, newline='') as f:
      return f.read()

  def test_keeps_hand_written_text_and_replaces_the_generated_part(self):
    tmp = self.create_tempdir().full_path
    first = self._write(tmp, [_record('old', 0.5)], None)
    self.assertIn('| `old` | 7x11 |', first)
    # Hand-written text around the markers, with a CRLF line and no final
    # newline, must come back byte for byte.
    head = '# Benchmarks\n\nIntro written by hand.\r\n\n'
    tail = '\n\n## History\n\n| machine | step |\n| --- | --- |\n| A | 45 ms |'
    start = first.index(bench.GENERATED_START)
    end = first.index(bench.GENERATED_END) + len(bench.GENERATED_END)
    second = self._write(tmp, [_record('new', 0.25)], head + first[start:end] + tail)
    self.assertTrue(second.startswith(head + bench.GENERATED_START + '\n'))
    self.assertTrue(second.endswith(bench.GENERATED_END + tail))
    self.assertIn('| `new` | 7x11 | CPU: test, 1 JAX device(s) | 250.0 ms', second)
    self.assertNotIn('`old`', second)  # The previous table is gone.
    self.assertEqual(second.count('| `new` |'), 1)

  def test_a_file_without_markers_is_replaced(self):
    tmp = self.create_tempdir().full_path
    text = self._write(tmp, [_record('tiny', 0.5)], 'an old table, no markers\n')
    self.assertNotIn('an old table', text)
    self.assertTrue(text.startswith('# Benchmarks\n\n' + bench.GENERATED_START))
    self.assertTrue(text.endswith(bench.GENERATED_END + '\n'))

  def test_broken_markers_are_refused_and_nothing_is_written(self):
    tmp = self.create_tempdir().full_path
    for broken in (
      f'notes\n{bench.GENERATED_START}\nrows\n',
      f'{bench.GENERATED_END}\nrows\n{bench.GENERATED_START}\n',
    ):
      with self.assertRaisesRegex(ValueError, 'restore the markers'):
        self._write(tmp, [_record('tiny', 0.5)], broken)
      with open(os.path.join(tmp, 'BENCHMARKS.md'), newline='') as f:
        self.assertEqual(f.read(), broken)

  def test_the_repository_table_has_its_markers(self):
    # BENCHMARKS.md keeps hand-written history below the generated table;
    # without the markers, the next --table run would erase it.
    path = os.path.join(os.path.dirname(os.path.dirname(__file__)), 'BENCHMARKS.md')
    with open(path) as f:
      text = f.read()
    self.assertEqual(text.count(bench.GENERATED_START), 1)
    self.assertEqual(text.count(bench.GENERATED_END), 1)
    self.assertLess(text.index(bench.GENERATED_START), text.index(bench.GENERATED_END))


if __name__ == '__main__':
  absltest.main()
