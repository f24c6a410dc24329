"""The accelerator check (`research.bench --suite=accelerator`) in tiny mode:
every part runs and reports, its correctness checks pass on CPU, and a broken
comparison fails with a non-zero status."""

import json
import os
import tempfile

import numpy as np
from absl.testing import absltest

from research import bench
from research import bench_checks
from research import bench_suite


class TinySuiteTest(absltest.TestCase):
  """One in-process run of the whole tiny suite, read by every test."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.tmp = tempfile.TemporaryDirectory()
    cls.json_path = os.path.join(cls.tmp.name, 'suite.json')
    cls.markdown_path = os.path.join(cls.tmp.name, 'suite.md')
    cls.status = bench.suite(bench_suite.TINY, bench_suite.Data(), cls.json_path, cls.markdown_path)
    with open(cls.json_path) as f:
      cls.report = json.load(f)
    with open(cls.markdown_path) as f:
      cls.markdown = f.read()

  @classmethod
  def tearDownClass(cls):
    cls.tmp.cleanup()
    super().tearDownClass()

  def test_the_json_has_every_part_and_its_figures(self):
    r = self.report
    self.assertEqual(r['mode'], 'tiny')
    self.assertEqual(set(r['elapsed_s']), {*bench_suite.PARTS, 'total'})
    self.assertEqual((r['devices']['platform'], r['devices']['count']), ('cpu', 1))
    for part in ('gpt2_small', 'ptb_lstm_medium'):
      self.assertGreater(r[part]['tokens_per_s'], 0)
      self.assertAlmostEqual(r[part]['mfu'], r[part]['flops_per_s'] / r[part]['peak_flops_per_s'])
    self.assertIn('gpt2_small', r['gpt2_small']['config'])
    self.assertIn('ptb_lstm.py:medium', r['ptb_lstm_medium']['config'])
    self.assertEqual(r['generation']['new_tokens'], 10)  # Context 11, one prompt token.
    full = r['full']
    # The tiny target (2.8 nats, from about ln 20 = 3.0) is passed within 40 steps.
    self.assertTrue(full['reached'])
    self.assertLessEqual(full['loss_attained'], bench_suite.TINY.target_loss)
    self.assertEqual(full['steps'] % bench_suite.LOSS_WINDOW, 0)  # Fetched once per window.
    self.assertLessEqual(full['steps_to_target'], full['steps'])
    self.assertAlmostEqual(full['steps_per_s'], full['steps'] / full['train_s'])

  def test_the_checks_pass_on_cpu_within_their_tolerances(self):
    self.assertEqual(self.status, 0)
    checks = {c['check']: c for c in self.report['correctness']['checks']}
    self.assertEqual(set(checks), set(bench_checks.CHECKS))
    for c in checks.values():
      self.assertTrue(c['passed'], c)
      self.assertLessEqual(c['logits_max_abs_diff'], c['logits_bound'])
      self.assertLessEqual(c['loss_abs_diff'], c['loss_bound'])
    # bf16 really ran: its logits differ from float32's, by more than float32 rounding.
    scale = self.report['correctness']['reference_max_abs_logit']
    self.assertGreater(checks['bfloat16']['logits_max_abs_diff'], 2**-12 * scale)
    self.assertEqual(checks['bfloat16']['logits_bound'], bench_checks.BF16_LOGITS_RTOL * scale)

  def test_the_markdown_has_a_row_per_check_and_config(self):
    for name in ('compute_dtype=bfloat16', 'attention=dot_product', 'gpt2_small', 'medium'):
      self.assertIn(name, self.markdown)
    self.assertEqual(self.markdown.count('| pass |'), len(bench_checks.CHECKS))
    self.assertIn('exit status 0', self.markdown)

  def test_a_part_that_raised_is_reported_and_fails_the_status(self):
    report = dict(self.report, gpt2_small={'error': 'RuntimeError: out of memory'})
    self.assertEqual(bench_suite.status(report), 1)
    text = bench_suite.markdown(report)
    self.assertIn('**gpt2_small failed**: RuntimeError: out of memory', text)
    self.assertIn('exit status 1', text)
    self.assertIn('ptb_lstm.py:medium', text)  # The other parts' figures stay.


class BrokenComparisonTest(absltest.TestCase):
  def test_bf16_at_zero_tolerance_fails_with_a_nonzero_status(self):
    tmp = self.create_tempdir().full_path
    config = bench_suite.part_configs(bench_suite.TINY, bench_suite.Data(), tmp)['correctness'][0]
    strict = {'bfloat16': bench_checks.CHECKS['bfloat16']._replace(logits_rtol=0.0, loss_rtol=0.0)}
    result = bench_checks.correctness(config, 'tiny', train_steps=0, checks=strict)
    self.assertFalse(result['passed'])
    self.assertGreater(result['checks'][0]['logits_max_abs_diff'], 0.0)
    self.assertEqual(bench_suite.status({'correctness': result}), 1)

  def test_a_perturbed_or_nan_logit_fails(self):
    logits = np.linspace(-3.0, 3.0, 7 * 11 * 13, dtype=np.float32).reshape(7, 11, 13)
    reference = bench_checks.Forward(logits, 2.5)
    check = bench_checks.CHECKS['dot_product']
    same = bench_checks.compare('same', check, reference, reference)
    self.assertTrue(same['passed'])
    perturbed = logits.copy()
    perturbed[3, 5, 7] += 3.0 * 2**-14  # 4x the float32 bound of 2^-16 of the largest |logit|, 3.
    broken = bench_checks.compare(
      'perturbed', check, reference, bench_checks.Forward(perturbed, 2.5)
    )
    self.assertFalse(broken['passed'])
    self.assertAlmostEqual(broken['logits_max_abs_diff'], 3.0 * 2**-14, delta=1e-6)
    perturbed[0, 0, 0] = np.nan
    nan = bench_checks.compare('nan', check, reference, bench_checks.Forward(perturbed, np.nan))
    self.assertFalse(nan['passed'])
    report = {'correctness': {'checks': [same, broken]}}
    self.assertEqual(bench_suite.status(report), 1)


class TargetAndDataTest(absltest.TestCase):
  def test_reached_at_is_the_first_window_mean_at_or_below_the_target(self):
    losses = [5.0, 4.0, 3.0, 2.0, 1.0]
    # Means of windows of 2 ending at steps 2..5: 4.5, 3.5, 2.5, 1.5.
    self.assertEqual(bench_suite.reached_at(losses, 2.5, 2), 4)
    self.assertEqual(bench_suite.reached_at(losses, 1.0, 2), None)
    self.assertEqual(bench_suite.reached_at(losses[:1], 9.0, 2), None)  # Not a window yet.

  def test_a_missing_data_file_is_one_error_line_exit_2(self):
    missing = os.path.join(self.create_tempdir().full_path, 'input.txt')
    with self.assertRaises(SystemExit) as e:
      bench.suite(bench_suite.TINY, bench_suite.Data(shakespeare=missing), None, None)
    self.assertEqual(e.exception.code, 2)


if __name__ == '__main__':
  absltest.main()
