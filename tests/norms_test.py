"""Every registered norm against a formula written here, on inputs small enough
that the epsilon decides the output.

With inputs of unit scale, mean(x^2) is about 1 and an epsilon of 1e-5, 1e-6
or none changes the output by less than any tolerance, so a changed or
dropped epsilon passed every other test. Here mean(x^2) is of the order of
the epsilon itself (or far below it), and each test first checks that the
formula with another epsilon would have failed it. The LSTM has no norm.
"""

import jax
import numpy as np
from absl.testing import absltest
from absl.testing import parameterized

from research import models
from research.models import transformer_options
from tests import models_test

B, T, D = 2, 3, 13
# GPT-2's and nanoGPT's value (Flax's own default is 1e-6): written here, not
# read from the model, so a change there fails this test.
EPSILON = 1e-5
# Epsilons a mistake could leave: Flax's default, none, other powers of ten.
_WRONG = (0.0, 1e-6, 2e-5, 1e-4)
# Input scales: mean(x^2) about the epsilon, and far below it.
_SCALES = (3e-3, 1e-4)


def _rmsnorm(x, params, epsilon):
  """Zhang and Sennrich 2019: x / sqrt(mean(x^2) + eps) * g."""
  return x / np.sqrt(np.mean(x**2, -1, keepdims=True) + epsilon) * params['scale']


def _layernorm(x, params, epsilon):
  """Ba et al. 2016: (x - mean) / sqrt(var + eps) * g + b."""
  centred = x - np.mean(x, -1, keepdims=True)
  var = np.mean(centred**2, -1, keepdims=True)
  return centred / np.sqrt(var + epsilon) * params['scale'] + params['bias']


_FORMULAS = {'rmsnorm': _rmsnorm, 'layernorm': _layernorm}


def _inputs(scale: float, seed: int) -> np.ndarray:
  rng = np.random.default_rng(seed)
  # An offset of the size of the spread: LayerNorm must take the mean away.
  return (rng.normal(size=(B, T, D)) * scale + scale).astype(np.float32)


class NormEpsilonTest(parameterized.TestCase):
  def test_the_norms_with_a_formula_here_are_registered(self):
    # A subset: a new norm is its registry entry and its own test, this file untouched.
    self.assertContainsSubset(set(_FORMULAS), set(transformer_options.NORMS))

  @parameterized.product(name=tuple(_FORMULAS), scale=_SCALES)
  def test_norm_matches_its_formula_where_epsilon_matters(self, name, scale):
    config = models.get_config(models_test.transformer_config(norm=name, use_bias=True))
    module = transformer_options.NORMS[name](config, 'ln')
    x_BxTxD = _inputs(scale, seed=int(scale * 1e5))
    shapes = module.init(jax.random.key(0), x_BxTxD)['params']
    # Gains and biases away from 1 and 0, so a swapped or missing one shows.
    rng = np.random.default_rng(7)
    params = {k: (rng.normal(size=v.shape) + 1).astype(np.float32) for k, v in shapes.items()}
    self.assertEqual(set(params), {'scale', 'bias'} if name == 'layernorm' else {'scale'})
    got = np.asarray(module.apply({'params': params}, x_BxTxD))
    want = _FORMULAS[name](x_BxTxD, params, EPSILON)
    for wrong in _WRONG:  # The test can fail: another epsilon is another output.
      self.assertFalse(
        np.allclose(_FORMULAS[name](x_BxTxD, params, wrong), want, rtol=1e-2, atol=0),
        f'{name} at scale {scale}: epsilon {wrong} is indistinguishable from {EPSILON}',
      )
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())


if __name__ == '__main__':
  absltest.main()
