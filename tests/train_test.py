"""End-to-end tests of training, resuming and evaluation on a tiny corpus."""

import contextlib
import io
import json
import os
from unittest import mock

import jax
import numpy as np
from absl.testing import absltest
from absl.testing import parameterized

from configs import common
from research import components
from research import evaluate
from research import faults
from research import models
from research import optim
from research import sharding
from research import train
from tests import test_util


class _Crash(Exception):
  pass


def _read_metrics(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f]


class _BatchRecorder:
  """Wraps sharding.global_batch to record batches and optionally crash."""

  def __init__(self, crash_at_call=None):
    self.batches = []
    self._crash_at = crash_at_call
    self._real = sharding.global_batch

  def __call__(self, local_batch, mesh):
    if self._crash_at is not None and len(self.batches) + 1 == self._crash_at:
      raise _Crash()
    self.batches.append({k: np.array(v) for k, v in local_batch.items()})
    return self._real(local_batch, mesh)


def _mean_nll(logits_BxTxV, targets_BxT) -> float:
  """Mean next-token loss in nats, by a float64 log-softmax in numpy."""
  logits = np.asarray(logits_BxTxV, np.float64)
  peak = logits.max(-1, keepdims=True)
  log_probs = logits - peak - np.log(np.exp(logits - peak).sum(-1, keepdims=True))
  return float(-np.take_along_axis(log_probs, targets_BxT[..., None], -1).mean())


class LstmCarryTest(absltest.TestCase):
  def test_train_step_carries_the_state_between_batches_of_a_stream(self):
    # B rows, T steps, V words, H units: distinct sizes.
    b, t, v = 3, 7, 13
    model_config = common.lstm_model()
    model_config.hidden_size = 11
    model_config.init_scale = 0.5  # A strong recurrence: the carry matters.
    model = models.get_model(model_config, vocab_size=v, seq_len=t)
    optim_config = common.base_config().optim
    schedule = lambda _: 0.01
    optimizer = optim.make_optimizer(optim_config, schedule)
    step = jax.jit(
      train.step_function(
        model=model, optimizer=optimizer, schedule=schedule, objective='token_mean'
      )
    )
    rng = np.random.default_rng(0)

    def batch(reset_B):
      return {
        'inputs': rng.integers(0, v, (b, t), dtype=np.int32),
        'targets': rng.integers(0, v, (b, t), dtype=np.int32),
        'weights': np.ones((b, t), np.float32),
        'reset': np.asarray(reset_B, bool),
      }

    first, second = batch([True] * b), batch([False, True, False])
    state0 = components.init_state(
      jax.random.key(0), model=model, optimizer=optimizer, batch_size=b
    )
    state1, _ = step(state0, first, jax.random.key(1))
    state2, metrics2 = step(state1, second, jax.random.key(1))

    # Reference with plain model.apply: the first batch from zeros; the
    # second from the state the first left, except row 1 which starts anew.
    zeros = model.init_carry(b)
    _, carry1 = model.apply(state0.params, zeros, first['inputs'], train=False, rng=None)
    jax.tree.map(
      lambda got, want: np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6),
      state1.carry,
      carry1,
    )
    carried = jax.tree.map(lambda c: np.asarray(c).copy(), carry1)
    for c in jax.tree.leaves(carried):
      c[1] = 0.0
    logits, carry2 = model.apply(state1.params, carried, second['inputs'], train=False, rng=None)
    want = _mean_nll(logits, second['targets'])
    zero_logits, _ = model.apply(state1.params, zeros, second['inputs'], train=False, rng=None)
    from_zeros = _mean_nll(zero_logits, second['targets'])
    self.assertGreater(abs(want - from_zeros), 1e-3)  # The test can tell.
    np.testing.assert_allclose(
      float(metrics2['loss']),
      want,
      rtol=1e-5,
      err_msg=f'not the carried state (from zeros the loss is {from_zeros})',
    )
    jax.tree.map(
      lambda got, want: np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6),
      state2.carry,
      carry2,
    )


class TrainTest(parameterized.TestCase):
  @parameterized.parameters('lstm', 'transformer')
  def test_loss_decreases_and_metrics_are_written(self, model):
    tmp = self.create_tempdir().full_path
    config = test_util.tiny_config(tmp, model=model)
    config.num_train_steps = 40
    config.log_every_steps = 10
    config.eval_every_steps = 20
    workdir = os.path.join(tmp, 'work')
    console = io.StringIO()
    with contextlib.redirect_stdout(console):
      results = train.train_and_evaluate(config, workdir)
    records = _read_metrics(workdir)
    train_losses = [r['loss'] for r in records if r['split'] == 'train']
    self.assertLen(train_losses, 4)
    # Means over steps 1-10 and 31-40; the corpus is a few repeated phrases.
    self.assertLess(train_losses[-1], train_losses[0] - 0.15)
    for r in records:
      self.assertIn('step', r)
      self.assertIn(r['split'], ('train', 'valid', 'test'))
      self.assertIn('loss', r)
      if r['split'] != 'train':
        self.assertIn('bpc', r)  # Character level.
        self.assertAlmostEqual(r['bpc'], r['loss'] / np.log(2), places=5)
        self.assertBetween(r['accuracy'], 0.0, 1.0)
    evals = [(r['step'], r['split']) for r in records if r['split'] != 'train']
    self.assertEqual(evals, [(20, 'valid'), (40, 'valid'), (40, 'test')])
    self.assertSetEqual(set(results), {'valid', 'test'})
    self.assertRegex(
      console.getvalue(),
      r'eval at step 40 \| valid \| loss '
      r'\d\.\d{4} \| bpc \d\.\d{4} \| acc \d+\.\d%\n',
    )
    events = os.listdir(os.path.join(workdir, 'tensorboard'))
    self.assertTrue(events)
    with open(os.path.join(workdir, 'tensorboard', events[0]), 'rb') as f:
      self.assertIn(b'valid/accuracy', f.read())
    # --mode=eval on the finished workdir gives the end-of-training figures.
    again = evaluate.evaluate_checkpoint(config, workdir)
    for name in ('loss', 'accuracy'):
      self.assertEqual(again['valid'][name], results['valid'][name])
    # ... and refuses a config whose model is not the one trained there.
    config.model.dropout_rate = 0.3
    with self.assertRaisesRegex(
      faults.ConfigMismatchError, r'model.dropout_rate: 0\.1 -> 0\.3\n--mode=eval'
    ):
      evaluate.evaluate_checkpoint(config, workdir)

  def test_word_level_run_reports_perplexity_as_exp_of_the_loss(self):
    tmp = self.create_tempdir().full_path
    config = test_util.tiny_config(tmp, model='lstm', level='word')
    config.num_train_steps = 4
    config.log_every_steps = 2
    config.eval_every_steps = 100
    config.sample.num_tokens = 0
    workdir = os.path.join(tmp, 'work')
    with contextlib.redirect_stdout(io.StringIO()):
      results = train.train_and_evaluate(config, workdir)
    records = _read_metrics(workdir)
    self.assertEqual(
      [(r['step'], r['split']) for r in records],
      [(2, 'train'), (4, 'train'), (4, 'valid'), (4, 'test')],
    )
    for r in records:
      # A word spans several characters: fewer bits per character than per word.
      self.assertLess(r['bpc'], r['loss'] / np.log(2))
      # Nats per word, so e ** loss; a loss above 1 tells it from 2 ** loss.
      self.assertGreater(r['loss'], 1.0)
      np.testing.assert_allclose(r['perplexity'], np.exp(r['loss']), rtol=1e-6)
    np.testing.assert_allclose(
      results['valid']['perplexity'], np.exp(results['valid']['loss']), rtol=1e-12
    )

  def test_lstm_eval_does_not_depend_on_the_segment_length(self):
    # The Evaluator gives the LSTM longer segments than data.seq_len; its
    # carry makes the loss the same as in seq_len segments.
    tmp = self.create_tempdir().full_path
    config = test_util.tiny_config(tmp, model='lstm')
    parts = components.build(config)
    params = parts.model.init(jax.random.key(0))
    tokens = parts.corpus.splits['valid']
    long = evaluate.Evaluator(parts, batch_size=1, seq_len=config.data.seq_len)
    self.assertGreater(long._seq_len, config.data.seq_len)  # pylint: disable=protected-access
    with mock.patch.object(evaluate, 'segment_length', lambda model, batch_size, seq_len: seq_len):
      short = evaluate.Evaluator(parts, batch_size=1, seq_len=config.data.seq_len)
    self.assertEqual(short._seq_len, config.data.seq_len)  # pylint: disable=protected-access
    np.testing.assert_allclose(long.loss(params, tokens), short.loss(params, tokens), rtol=1e-6)

  @parameterized.parameters('lstm', 'transformer')
  def test_interrupted_run_resumes_bit_identically(self, model):
    tmp = self.create_tempdir().full_path
    config = test_util.tiny_config(tmp, model=model)
    straight = _BatchRecorder()
    with mock.patch.object(sharding, 'global_batch', straight):
      train.train_and_evaluate(config, os.path.join(tmp, 'straight'))

    resumed_dir = os.path.join(tmp, 'resumed')
    crashing = _BatchRecorder(crash_at_call=7)  # Dies in step 7; last save: 4.
    with mock.patch.object(sharding, 'global_batch', crashing):
      with self.assertRaises(_Crash):
        train.train_and_evaluate(config, resumed_dir)
    rest = _BatchRecorder()
    with mock.patch.object(sharding, 'global_batch', rest):
      train.train_and_evaluate(config, resumed_dir)

    # The resumed run saw exactly the batches of steps 5..12.
    self.assertLen(rest.batches, 8)
    for got, want in zip(rest.batches, straight.batches[4:]):
      for key in want:
        np.testing.assert_array_equal(got[key], want[key])
    a = test_util.final_state(config, os.path.join(tmp, 'straight'))
    b = test_util.final_state(config, resumed_dir)
    self.assertEqual(int(a.step), 12)
    jax.tree.map(np.testing.assert_array_equal, a, b)
    # metrics.jsonl holds each event once after the resume.
    steps = [(r['step'], r['split']) for r in _read_metrics(resumed_dir)]
    self.assertEqual(len(steps), len(set(steps)))
    self.assertEqual(
      steps, [(r['step'], r['split']) for r in _read_metrics(os.path.join(tmp, 'straight'))]
    )


if __name__ == '__main__':
  absltest.main()
