"""Temperature / top-k / top-p decoding for both model families.

Shape letters: B batch (1 here), T context length, V vocabulary, P prompt length.

A model reads the prompt once with `decode` and then feeds one token at a
time through its cache (the LSTM's carry; the Transformer's keys and values),
all in one compiled loop. A Transformer sample longer than its context
instead re-reads a window of the last T tokens at every step, sliding it by
one token once full.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from research import models


def filter_logits(
  logits_V: jax.Array, *, temperature: float, top_k: int, top_p: float
) -> jax.Array:
  """Scales by 1/temperature and masks tokens outside the top-k / top-p set."""
  logits_V = logits_V.astype(jnp.float32) / jnp.maximum(temperature, 1e-6)
  if top_k > 0:
    kth = jax.lax.top_k(logits_V, min(top_k, logits_V.shape[-1]))[0][-1]
    logits_V = jnp.where(logits_V < kth, -jnp.inf, logits_V)
  if top_p < 1.0:
    sorted_V = jnp.sort(logits_V)[::-1]
    cumulative_V = jnp.cumsum(jax.nn.softmax(sorted_V))
    # Keep the smallest prefix whose mass reaches top_p (always >= 1 token).
    cutoff = sorted_V[jnp.sum(cumulative_V < top_p)]
    logits_V = jnp.where(logits_V < cutoff, -jnp.inf, logits_V)
  return logits_V


@functools.partial(jax.jit, static_argnames=('model', 'num_tokens', 'top_k', 'top_p'))
def _sample_cached(
  params, prompt_1xP, rng, *, model: models.Model, num_tokens: int, temperature, top_k: int, top_p
):
  P = prompt_1xP.shape[1]  # pylint: disable=invalid-name
  logits_1xPxV, cache = model.decode(params, model.init_cache(1), prompt_1xP, jnp.arange(P)[None])

  def step(c, key_and_position):
    cache, logits_V = c
    key, position = key_and_position
    logits_V = filter_logits(logits_V, temperature=temperature, top_k=top_k, top_p=top_p)
    token = jax.random.categorical(key, logits_V).astype(prompt_1xP.dtype)
    logits_1x1xV, cache = model.decode(params, cache, token.reshape(1, 1), position.reshape(1, 1))
    return (cache, logits_1x1xV[0, 0]), token

  keys = jax.random.split(rng, num_tokens)
  positions = P + jnp.arange(num_tokens, dtype=jnp.int32)
  _, tokens_N = jax.lax.scan(step, (cache, logits_1xPxV[0, -1]), (keys, positions))
  return tokens_N


@functools.partial(jax.jit, static_argnames=('model', 'num_tokens', 'top_k', 'top_p'))
def _sample_stateless(
  params,
  window_1xT,
  length,
  rng,
  *,
  model: models.Model,
  num_tokens: int,
  temperature,
  top_k: int,
  top_p,
):
  context = window_1xT.shape[1]

  def step(c, key):
    window_1xT, length = c
    logits_1xTxV, _ = model.apply(params, {}, window_1xT, train=False, rng=None)
    logits_V = filter_logits(
      logits_1xTxV[0, length - 1], temperature=temperature, top_k=top_k, top_p=top_p
    )
    token = jax.random.categorical(key, logits_V).astype(window_1xT.dtype)
    full = length == context
    # A full window slides left by one; otherwise the token fills the next slot.
    window_1xT = jnp.where(full, jnp.roll(window_1xT, -1, axis=1), window_1xT)
    window_1xT = window_1xT.at[0, jnp.where(full, context - 1, length)].set(token)
    return (window_1xT, jnp.minimum(length + 1, context)), token

  keys = jax.random.split(rng, num_tokens)
  _, tokens_N = jax.lax.scan(step, (window_1xT, length), keys)
  return tokens_N


def sample(
  model: models.Model,
  params,
  prompt_ids: np.ndarray,
  rng: jax.Array,
  *,
  num_tokens: int,
  context: int,
  temperature: float,
  top_k: int,
  top_p: float,
) -> np.ndarray:
  """Returns `num_tokens` token ids continuing `prompt_ids` (at least 1 id)."""
  prompt_ids = np.asarray(prompt_ids, np.int32)
  if prompt_ids.size == 0:
    raise ValueError('sampling needs a prompt of at least one token.')
  kwargs = dict(
    model=model, num_tokens=num_tokens, temperature=temperature, top_k=top_k, top_p=top_p
  )
  if model.context is None or prompt_ids.size + num_tokens <= model.context:
    return np.asarray(_sample_cached(params, prompt_ids[None], rng, **kwargs))
  prompt_ids = prompt_ids[-context:]
  window = np.zeros((1, context), np.int32)
  window[0, : prompt_ids.size] = prompt_ids
  return np.asarray(_sample_stateless(params, window, prompt_ids.size, rng, **kwargs))
