"""Tests for research.data.pipeline: train iterators and eval batches.

The token stream is `arange(N)`, so a token's value is its position and
contiguity, shifts and coverage can be read straight off the batches.
Sizes are distinct primes-ish (N=1009, B=6/7, T=11) so a swapped axis fails.
"""

import itertools
import json

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np

from research.data import pipeline

N, B, T = 1009, 6, 11
TOKENS_N = np.arange(N, dtype=np.int32)


def _take(iterator, count: int) -> list[pipeline.Batch]:
  return list(itertools.islice(iterator, count))


def _assert_batches_equal(test, got, want):
  test.assertEqual(len(got), len(want))
  for g, w in zip(got, want):
    test.assertEqual(sorted(g), sorted(w))
    for key in w:
      np.testing.assert_array_equal(g[key], w[key], err_msg=key)


class StreamTest(absltest.TestCase):
  def test_steps_per_epoch(self):
    # L = 1009 // 6 = 168 tokens per row; (168 - 1) // 11 = 15 steps.
    self.assertEqual(pipeline.steps_per_epoch(N, kind='stream', batch_size=B, seq_len=T), 15)

  def test_rows_continue_and_targets_shift(self):
    row_len, steps = N // B, 15
    batches = _take(
      iter(pipeline.train_dataset(TOKENS_N, kind='stream', batch_size=B, seq_len=T, seed=0)), steps
    )
    for k, batch in enumerate(batches):
      self.assertEqual(batch['inputs'].shape, (B, T))
      self.assertEqual(batch['inputs'].dtype, np.int32)
      self.assertEqual(batch['weights'].dtype, np.float32)
      self.assertTrue((batch['weights'] == 1).all())
      expected_BxT = np.arange(B)[:, None] * row_len + k * T + np.arange(T)[None, :]
      np.testing.assert_array_equal(batch['inputs'], expected_BxT)
      np.testing.assert_array_equal(batch['targets'], expected_BxT + 1)
      np.testing.assert_array_equal(batch['reset'], np.full(B, k == 0))
    for prev, nxt in zip(batches, batches[1:]):
      # Row i of step k+1 starts right after row i of step k ends.
      np.testing.assert_array_equal(nxt['inputs'][:, 0], prev['inputs'][:, -1] + 1)

  def test_epochs_repeat_in_the_same_order(self):
    batches = _take(
      iter(pipeline.train_dataset(TOKENS_N, kind='stream', batch_size=B, seq_len=T, seed=0)),
      2 * 15 + 1,
    )
    _assert_batches_equal(self, batches[15:30], batches[:15])
    self.assertTrue(batches[15]['reset'].all())
    self.assertFalse(batches[14]['reset'].any())

  def test_too_small_split_says_what_is_needed(self):
    with self.assertRaisesRegex(ValueError, 'at least 72 tokens, has 71'):
      pipeline.train_dataset(TOKENS_N[:71], kind='stream', batch_size=B, seq_len=T, seed=0)
    # 72 = B * (T + 1) is enough for exactly one step.
    self.assertEqual(pipeline.steps_per_epoch(72, kind='stream', batch_size=B, seq_len=T), 1)


class WindowsTest(absltest.TestCase):
  def _batches(self, seed: int, count: int, batch_size: int = B):
    return _take(
      iter(
        pipeline.train_dataset(
          TOKENS_N, kind='windows', batch_size=batch_size, seq_len=T, seed=seed
        )
      ),
      count,
    )

  def test_steps_per_epoch(self):
    # W = 1009 // 11 - 1 = 90 windows; 90 // 6 = 15 steps.
    self.assertEqual(pipeline.steps_per_epoch(N, kind='windows', batch_size=B, seq_len=T), 15)

  def test_windows_are_contiguous_and_in_range(self):
    offsets = []
    for batch in self._batches(seed=3, count=40):
      inputs_BxT = batch['inputs']
      self.assertEqual(inputs_BxT.shape, (B, T))
      np.testing.assert_array_equal(inputs_BxT, inputs_BxT[:, :1] + np.arange(T)[None, :])
      np.testing.assert_array_equal(batch['targets'], inputs_BxT + 1)
      self.assertTrue(batch['reset'].all())
      self.assertTrue((batch['weights'] == 1).all())
      self.assertGreaterEqual(inputs_BxT.min(), 0)
      self.assertLess(batch['targets'].max(), N)
      offsets.extend(inputs_BxT[:, 0] % T)
    self.assertGreater(len(set(offsets)), T // 2)  # offsets really vary

  def test_epoch_uses_distinct_windows_and_reshuffles(self):
    batches = self._batches(seed=3, count=30)
    window_ids = [b['inputs'][:, 0] // T for b in batches]
    epoch0 = np.concatenate(window_ids[:15])
    epoch1 = np.concatenate(window_ids[15:])
    self.assertLen(set(epoch0), 90)  # 15 * 6 of the 90 windows, no repeats
    self.assertLen(set(epoch1), 90)
    self.assertFalse((epoch0 == epoch1).all())

  def test_seed_determines_batches(self):
    _assert_batches_equal(self, self._batches(seed=5, count=4), self._batches(seed=5, count=4))
    self.assertFalse(
      np.array_equal(
        self._batches(seed=5, count=1)[0]['inputs'], self._batches(seed=6, count=1)[0]['inputs']
      )
    )

  def test_too_small_split_says_what_is_needed(self):
    with self.assertRaisesRegex(ValueError, 'at least 77 tokens, has 76'):
      pipeline.train_dataset(TOKENS_N[:76], kind='windows', batch_size=B, seq_len=T, seed=0)
    self.assertEqual(pipeline.steps_per_epoch(77, kind='windows', batch_size=B, seq_len=T), 1)


class ProcessesAndStateTest(parameterized.TestCase):
  @parameterized.product(kind=['stream', 'windows'], process_count=[2, 3, 6])
  def test_process_batches_concatenate_to_global(self, kind, process_count):
    global_batches = _take(
      iter(pipeline.train_dataset(TOKENS_N, kind=kind, batch_size=B, seq_len=T, seed=1)), 17
    )
    per_process = [
      _take(
        iter(
          pipeline.train_dataset(
            TOKENS_N,
            kind=kind,
            batch_size=B,
            seq_len=T,
            seed=1,
            process_index=p,
            process_count=process_count,
          )
        ),
        17,
      )
      for p in range(process_count)
    ]
    for step, want in enumerate(global_batches):
      parts = [batches[step] for batches in per_process]
      self.assertEqual(parts[0]['inputs'].shape, (B // process_count, T))
      got = {k: np.concatenate([p[k] for p in parts]) for k in want}
      _assert_batches_equal(self, [got], [want])

  def test_indivisible_batch_fails(self):
    with self.assertRaisesRegex(ValueError, 'divisible by process_count 4'):
      pipeline.train_dataset(
        TOKENS_N, kind='stream', batch_size=B, seq_len=T, seed=0, process_index=0, process_count=4
      )

  @parameterized.product(kind=['stream', 'windows'], k=[0, 5, 14])
  def test_iterator_state_resumes_exactly(self, kind, k):
    def fresh():
      return iter(pipeline.train_dataset(TOKENS_N, kind=kind, batch_size=B, seq_len=T, seed=7))

    iterator = fresh()
    _take(iterator, k)
    # Through JSON, as grain.checkpoint stores it.
    state = json.loads(json.dumps(iterator.get_state()))
    want = _take(iterator, 20)  # crosses an epoch boundary (15 steps)
    resumed = fresh()
    _take(resumed, 3)  # a different position, overwritten by set_state
    resumed.set_state(state)
    _assert_batches_equal(self, _take(resumed, 20), want)


class EvalBatchesTest(parameterized.TestCase):
  @parameterized.parameters((1, 11), (4, 11), (7, 11), (6, 5), (1000, 3), (1008, 1))
  def test_every_target_scored_once(self, batch_size, seq_len):
    batches = list(pipeline.eval_batches(TOKENS_N, batch_size=batch_size, seq_len=seq_len))
    row_len = -(-(N - 1) // batch_size)
    self.assertLen(batches, -(-row_len // seq_len))
    scored = []
    for i, batch in enumerate(batches):
      self.assertEqual(batch['inputs'].shape, (batch_size, seq_len))
      self.assertEqual(batch['weights'].dtype, np.float32)
      np.testing.assert_array_equal(batch['reset'], np.full(batch_size, i == 0))
      real = batch['weights'] == 1
      self.assertTrue((batch['weights'][~real] == 0).all())
      np.testing.assert_array_equal(batch['targets'][real], batch['inputs'][real] + 1)
      scored.extend(batch['targets'][real])
    self.assertEqual(sum(b['weights'].sum() for b in batches), N - 1)
    np.testing.assert_array_equal(np.sort(scored), np.arange(1, N))
    # Rows are contiguous across segments: row i is positions i*L ... .
    inputs_BxS = np.concatenate([b['inputs'] for b in batches], axis=1)
    weights_BxS = np.concatenate([b['weights'] for b in batches], axis=1)
    flat = inputs_BxS[:, :row_len][weights_BxS[:, :row_len] == 1]
    np.testing.assert_array_equal(flat, np.arange(N - 1))

  def test_batch_size_one_is_the_plain_stream(self):
    batches = list(pipeline.eval_batches(TOKENS_N[:30], batch_size=1, seq_len=T))
    inputs = np.concatenate([b['inputs'][0] for b in batches])
    np.testing.assert_array_equal(inputs[:29], np.arange(29))
    self.assertTrue((inputs[29:] == 0).all())

  def test_too_small_split_fails(self):
    with self.assertRaisesRegex(ValueError, 'need at least 2'):
      pipeline.eval_batches(TOKENS_N[:1], batch_size=2, seq_len=T)


if __name__ == '__main__':
  absltest.main()
