"""Decoding: logit filters and samples from both model families."""

import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest
from absl.testing import parameterized

from configs import common
from research import models
from research import sampling

_V, _T = 13, 7


def _model(name):
  if name == 'lstm':
    c = common.lstm_model()
    c.hidden_size = 11
  else:
    c = common.transformer_model()
    c.num_layers, c.num_heads, c.d_model, c.d_ff = 1, 2, 10, 12
  return models.get_model(c, vocab_size=_V, seq_len=_T)


class SamplingTest(parameterized.TestCase):
  def test_top_k_keeps_exactly_k(self):
    logits = jnp.array([0.1, 3.0, -1.0, 2.0, 0.5])
    out = sampling.filter_logits(logits, temperature=1.0, top_k=2, top_p=1.0)
    np.testing.assert_array_equal(np.isfinite(out), [0, 1, 0, 1, 0])

  def test_top_p_keeps_the_smallest_set_reaching_p(self):
    logits = jnp.log(jnp.array([0.5, 0.3, 0.15, 0.05]))
    out = sampling.filter_logits(logits, temperature=1.0, top_k=0, top_p=0.75)
    np.testing.assert_array_equal(np.isfinite(out), [1, 1, 0, 0])
    out = sampling.filter_logits(logits, temperature=1.0, top_k=0, top_p=0.1)
    np.testing.assert_array_equal(np.isfinite(out), [1, 0, 0, 0])

  def test_top_p_stops_at_the_token_whose_mass_reaches_p_exactly(self):
    # Powers of two: the sorted cumulative masses are exactly 0.5, 0.75,
    # 0.875, 0.9375, 1 in float32, so a prefix reaches top_p with equality.
    probs = np.array([0.125, 0.5, 0.0625, 0.25, 0.0625], np.float32)
    logits = jnp.log(jnp.asarray(probs))
    masses = np.cumsum(np.asarray(jax.nn.softmax(jnp.sort(logits)[::-1])))
    np.testing.assert_array_equal(masses, [0.5, 0.75, 0.875, 0.9375, 1.0])
    # "The smallest prefix whose mass reaches top_p": 0.5 + 0.25 reaches
    # 0.75, so the 0.125 token is dropped at top_p = 0.75.
    for top_p, kept in (
      (0.75, [0, 1, 0, 1, 0]),
      (0.5, [0, 1, 0, 0, 0]),
      (0.875, [1, 1, 0, 1, 0]),
      (0.7499, [0, 1, 0, 1, 0]),
      (0.7501, [1, 1, 0, 1, 0]),
    ):
      out = sampling.filter_logits(logits, temperature=1.0, top_k=0, top_p=top_p)
      np.testing.assert_array_equal(np.isfinite(out), kept, err_msg=f'top_p={top_p}')

  def test_temperature_scales(self):
    logits = jnp.array([1.0, 2.0])
    out = sampling.filter_logits(logits, temperature=0.5, top_k=0, top_p=1.0)
    np.testing.assert_allclose(out, [2.0, 4.0])

  # n = 3 fits the Transformer's context (read through the cache); n = 10
  # does not (the window slides).
  @parameterized.product(name=['lstm', 'transformer'], n=[3, 10])
  def test_top_1_sampling_is_greedy_decoding(self, name, n):
    model = _model(name)
    params = model.init(jax.random.key(0))
    prompt = np.array([3, 1, 4], np.int32)
    got = sampling.sample(
      model,
      params,
      prompt,
      jax.random.key(1),
      num_tokens=n,
      context=_T,
      temperature=1.0,
      top_k=1,
      top_p=1.0,
    )
    self.assertEqual(got.shape, (n,))
    # Reference: re-run the model on the whole (cropped) history each step.
    history = list(prompt)
    apply = jax.jit(lambda w: model.apply(params, model.init_carry(1), w, train=False, rng=None)[0])
    for _ in range(n):
      window = np.array(history[-_T:] if name == 'transformer' else history)[None]
      logits = apply(window)
      history.append(int(jnp.argmax(logits[0, -1])))
    np.testing.assert_array_equal(got, history[len(prompt) :])

  @parameterized.parameters('lstm', 'transformer')
  def test_recomputing_reads_the_last_window_afresh(self, name):
    # The benchmark's baseline (`recompute=True`): every token from the model
    # run again on the last `context` tokens, a recurrent one from a zero state.
    model = _model(name)
    params = model.init(jax.random.key(0))
    prompt, n, context = np.array([3, 1, 4], np.int32), 8, 5
    kwargs = dict(num_tokens=n, context=context, temperature=1.0, top_k=1, top_p=1.0)
    got = sampling.sample(model, params, prompt, jax.random.key(1), recompute=True, **kwargs)
    history = list(prompt)
    apply = jax.jit(lambda w: model.apply(params, model.init_carry(1), w, train=False, rng=None)[0])
    for _ in range(n):
      history.append(int(jnp.argmax(apply(np.array(history[-context:])[None])[0, -1])))
    np.testing.assert_array_equal(got, history[len(prompt) :])

  @parameterized.parameters('lstm', 'transformer')
  def test_sampling_is_seeded(self, name):
    model = _model(name)
    params = model.init(jax.random.key(0))
    kwargs = dict(num_tokens=20, context=_T, temperature=1.5, top_k=0, top_p=1.0)
    a = sampling.sample(model, params, [2], jax.random.key(5), **kwargs)
    b = sampling.sample(model, params, [2], jax.random.key(5), **kwargs)
    c = sampling.sample(model, params, [2], jax.random.key(6), **kwargs)
    np.testing.assert_array_equal(a, b)
    self.assertFalse(np.array_equal(a, c))
    self.assertTrue(np.all((a >= 0) & (a < _V)))


if __name__ == '__main__':
  absltest.main()
