"""Gradient accumulation (optim.grad_accum_steps = K): K micro-batches make
the same optimizer step as the whole batch, and a run with K > 1 resumes
bit-identically."""

import functools
import os
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest
from absl.testing import parameterized

from research import gradients
from research import losses
from research import components
from research import models
from research import optim
from research import sharding
from research import train
from tests import test_util

# Distinct sizes: B rows (divisible by K = 2 and 4), T steps, V vocabulary.
_B, _V = 12, 13
_TOL = dict(rtol=1e-5, atol=1e-5)


def _setup(tmp, family, objective):
  """(model, optimizer, schedule, initial state) without dropout or clipping.

  Clipping is off because a clipped (or Adam's first) update does not change
  with the gradient's scale, which would hide a wrong denominator.
  """
  config = test_util.tiny_config(tmp, model=family)
  config.model.dropout_rate = 0.0
  config.optim.loss = objective
  config.optim.name = 'sgd' if objective == 'sequence_sum' else 'adamw'
  config.optim.grad_clip_norm = 0.0
  config.optim.warmup_steps = 0
  model = models.get_model(config.model, vocab_size=_V, seq_len=config.data.seq_len)
  schedule = optim.make_schedule(config.optim, num_train_steps=10, steps_per_epoch=5)
  optimizer = optim.make_optimizer(config.optim, schedule)
  state = components.init_state(jax.random.key(0), model=model, optimizer=optimizer, batch_size=_B)
  # A non-zero incoming carry, so resets and per-row carries matter.
  rng = np.random.default_rng(1)
  state = state._replace(
    carry=jax.tree.map(lambda c: rng.normal(size=c.shape).astype(np.float32), state.carry)
  )
  return model, optimizer, schedule, state, config.data.seq_len


def _batch(seed, seq_len):
  rng = np.random.default_rng(seed)
  # Padding of uneven length per row, so micro-batches hold unequal weights.
  weights = (np.arange(seq_len)[None, :] < seq_len - (np.arange(_B)[:, None] * 5) % 9).astype(
    np.float32
  )
  return {
    'inputs': rng.integers(0, _V, (_B, seq_len), dtype=np.int32),
    'targets': rng.integers(0, _V, (_B, seq_len), dtype=np.int32),
    'weights': weights,
    'reset': np.arange(_B) % 5 == 1,
  }


def _run(steps, state, batches):
  metrics = []
  for batch in batches:
    state, m = steps(state, batch, jax.random.key(3))
    metrics.append(m)
  return jax.device_get((state, metrics))


def _assert_close(a, b):
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, **_TOL), a, b)


class AccumulateTest(parameterized.TestCase):
  def test_micro_batches_take_interleaved_rows(self):
    x_BxD = np.arange(_B * 5).reshape(_B, 5)
    parts = gradients.split({'x': x_BxD, 'r': np.arange(_B)}, 4)
    self.assertEqual(parts['x'].shape, (4, _B // 4, 5))
    for j in range(4):
      np.testing.assert_array_equal(parts['r'][j], np.arange(j, _B, 4))
      np.testing.assert_array_equal(parts['x'][j], x_BxD[j::4])
    np.testing.assert_array_equal(gradients.merge(parts)['x'], x_BxD)

  def test_micro_batch_j_gets_the_key_folded_with_j(self):
    # The loss "model" writes its key's uniform draw into its carry rows, so
    # the merged carry shows which key each row's micro-batch got.
    def loss_fn(params, batch, key):
      draw_M = jax.random.uniform(key, batch.rows['inputs'].shape)
      return jnp.sum(params * draw_M) / batch.denominator, losses.Aux(
        carry={'draw': draw_M},
        distill_kl_sum=None,
        loss_sum=jnp.sum(draw_M),
        weight_sum=jnp.float32(1.0),
      )

    key = jax.random.key(7)
    rows = {'inputs': jnp.zeros(_B), 'carry': {'draw': jnp.zeros(_B)}}
    _, aux = gradients.accumulated(3)(
      loss_fn, jnp.float32(1.0), losses.Batch(rows, jnp.float32(1.0)), key
    )
    for j in range(3):
      np.testing.assert_array_equal(
        aux.carry['draw'][j::3], jax.random.uniform(jax.random.fold_in(key, j), (_B // 3,))
      )

  @parameterized.parameters(
    ('lstm', 2, 'token_mean'),
    ('lstm', 4, 'sequence_sum'),
    ('transformer', 4, 'token_mean'),
    ('transformer', 2, 'sequence_sum'),
  )
  def test_k_micro_batches_make_the_whole_batch_step(self, family, k, objective):
    model, optimizer, schedule, state, seq_len = _setup(
      self.create_tempdir().full_path, family, objective
    )
    step = functools.partial(
      train.step_function, model=model, optimizer=optimizer, schedule=schedule, objective=objective
    )
    batches = [_batch(10, seq_len), _batch(11, seq_len)]
    # Two steps: the second starts from the first one's carry and optimizer state.
    whole, whole_m = _run(jax.jit(step()), state, batches)
    accum, accum_m = _run(jax.jit(step(grad_accum_steps=k)), state, batches)
    for name in ('params', 'opt_state', 'carry'):
      with self.subTest(name):
        _assert_close(getattr(accum, name), getattr(whole, name))
    for m, w in zip(accum_m, whole_m):
      for name in ('loss', 'grad_norm', 'nonfinite'):
        np.testing.assert_allclose(m[name], w[name], **_TOL, err_msg=name)
    # The comparison can fail: the steps moved the parameters well beyond the
    # tolerance, and (LSTM) every carry row changed.
    moved = max(
      jax.tree.leaves(
        jax.tree.map(
          lambda a, b: float(np.abs(a - b).max()), accum.params, jax.device_get(state.params)
        )
      )
    )
    self.assertGreater(moved, 1e-3)
    for new, old in zip(jax.tree.leaves(accum.carry), jax.tree.leaves(state.carry)):
      self.assertTrue(np.all(np.abs(new - old).max(axis=-1) > 1e-3))

  def test_each_micro_batch_divides_by_the_whole_batch_denominator(self):
    model, _, _, state, seq_len = _setup(self.create_tempdir().full_path, 'lstm', 'token_mean')
    batch = _batch(10, seq_len)
    objective = losses.make_objective(model, 'token_mean')
    batch = losses.Batch(dict(batch, carry=state.carry), objective.denominator(batch))
    key = jax.random.key(3)
    want, want_aux = gradients.plain(objective.loss_fn, state.params, batch, key)
    got, got_aux = gradients.accumulated(2)(objective.loss_fn, state.params, batch, key)
    _assert_close(got, want)
    np.testing.assert_allclose(got_aux.loss_sum, want_aux.loss_sum, **_TOL)

    # What that test would catch: each micro-batch's own token mean (summed,
    # or averaged over the micro-batches) is not the whole batch's gradient,
    # because the micro-batches hold different numbers of tokens.
    weights = batch.rows['weights']
    self.assertNotEqual(weights[0::2].sum(), weights[1::2].sum())

    def own(p, b, k):  # Each micro-batch divides by its own token count.
      return objective.loss_fn(p, b._replace(denominator=jnp.sum(b.rows['weights'])), k)

    wrong, _ = gradients.accumulated(2)(own, state.params, batch, key)
    for scale in (1.0, 0.5):
      gap = max(
        jax.tree.leaves(
          jax.tree.map(lambda a, b, s=scale: float(np.abs(s * a - b).max()), wrong, want)
        )
      )
      self.assertGreater(gap, 100 * _TOL['atol'])

  def test_k_that_does_not_divide_the_batch_is_refused(self):
    model, optimizer, schedule, state, seq_len = _setup(
      self.create_tempdir().full_path, 'transformer', 'token_mean'
    )
    step = train.step_function(
      model=model,
      optimizer=optimizer,
      schedule=schedule,
      objective='token_mean',
      grad_accum_steps=5,
    )
    with self.assertRaisesRegex(ValueError, r'grad_accum_steps=5 .* 12 rows'):
      step(state, _batch(10, seq_len), jax.random.key(3))


class _Crash(Exception):
  pass


class ResumeTest(absltest.TestCase):
  def test_interrupted_accumulating_run_resumes_bit_identically(self):
    tmp = self.create_tempdir().full_path
    config = test_util.tiny_config(tmp, model='lstm')  # With dropout.
    config.optim.grad_accum_steps = 2
    config.sample.num_tokens = 0
    straight = os.path.join(tmp, 'straight')
    with mock.patch.object(gradients, 'accumulated', wraps=gradients.accumulated) as spy:
      train.train_and_evaluate(config, straight)
    self.assertEqual(spy.call_args.args[-1], 2)  # The config reached the step.

    resumed = os.path.join(tmp, 'resumed')
    real, calls = sharding.global_batch, []

    def crash_in_step_7(local, mesh):
      calls.append(1)
      if len(calls) == 7:  # The last checkpoint is step 4.
        raise _Crash()
      return real(local, mesh)

    with mock.patch.object(sharding, 'global_batch', crash_in_step_7):
      with self.assertRaises(_Crash):
        train.train_and_evaluate(config, resumed)
    rest = mock.Mock(wraps=real)
    with mock.patch.object(sharding, 'global_batch', rest):
      train.train_and_evaluate(config, resumed)
    self.assertEqual(rest.call_count, 8)  # Steps 5..12: it resumed at 4.

    a = test_util.final_state(config, straight)
    b = test_util.final_state(config, resumed)
    self.assertEqual(int(b.step), config.num_train_steps)
    jax.tree.map(np.testing.assert_array_equal, a, b)


if __name__ == '__main__':
  absltest.main()
