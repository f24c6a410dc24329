"""Temperature / top-k / top-p decoding for both model families.

Shape letters: B samples drawn together, T context length, V vocabulary, P prompt
length, N new tokens.

A model reads the prompt once with `decode` and then feeds one token at a
time through its cache (the LSTM's carry; the Transformer's keys and values),
all in one compiled loop. A Transformer sample longer than its context
instead re-reads a window of the last T tokens at every step, sliding it by
one token once full.
"""

import functools
from typing import Callable

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


def _draw(logits_BxV, key, *, temperature, top_k: int, top_p, dtype, on_token) -> jax.Array:
  """One token per row from the filtered logits, handed to `on_token` on the
  host (in order) when there is one."""
  filtered_BxV = jax.vmap(
    lambda l: filter_logits(l, temperature=temperature, top_k=top_k, top_p=top_p)
  )(logits_BxV)
  tokens_B = jax.random.categorical(key, filtered_BxV, axis=-1).astype(dtype)
  if on_token is not None:
    jax.debug.callback(on_token, tokens_B, ordered=True)
  return tokens_B


_STATIC = ('model', 'num_tokens', 'top_k', 'top_p', 'on_token')


@functools.partial(jax.jit, static_argnames=_STATIC)
def _sample_cached(
  params,
  prompt_BxP,
  rng,
  *,
  model: models.Model,
  num_tokens: int,
  temperature,
  top_k: int,
  top_p,
  on_token: Callable | None = None,
):
  B, P = prompt_BxP.shape  # pylint: disable=invalid-name
  positions_BxP = jnp.broadcast_to(jnp.arange(P), (B, P))
  logits_BxPxV, cache = model.decode(params, model.init_cache(B), prompt_BxP, positions_BxP)

  def step(c, key_and_position):
    cache, logits_BxV = c
    key, position = key_and_position
    tokens_B = _draw(
      logits_BxV,
      key,
      temperature=temperature,
      top_k=top_k,
      top_p=top_p,
      dtype=prompt_BxP.dtype,
      on_token=on_token,
    )
    logits_Bx1xV, cache = model.decode(
      params, cache, tokens_B[:, None], jnp.full((B, 1), position, jnp.int32)
    )
    return (cache, logits_Bx1xV[:, 0]), tokens_B

  keys = jax.random.split(rng, num_tokens)
  positions = P + jnp.arange(num_tokens, dtype=jnp.int32)
  _, tokens_NxB = jax.lax.scan(step, (cache, logits_BxPxV[:, -1]), (keys, positions))
  return tokens_NxB.T


@functools.partial(jax.jit, static_argnames=_STATIC)
def _sample_stateless(
  params,
  window_BxT,
  length,
  rng,
  *,
  model: models.Model,
  num_tokens: int,
  temperature,
  top_k: int,
  top_p,
  on_token: Callable | None = None,
):
  rows, context = window_BxT.shape
  carry = model.init_carry(rows)  # A recurrent model reads each window from a fresh state.

  def step(c, key):
    window_BxT, length = c
    logits_BxTxV, _ = model.apply(params, carry, window_BxT, train=False, rng=None)
    tokens_B = _draw(
      logits_BxTxV[:, length - 1],
      key,
      temperature=temperature,
      top_k=top_k,
      top_p=top_p,
      dtype=window_BxT.dtype,
      on_token=on_token,
    )
    full = length == context
    # A full window slides left by one; otherwise the token fills the next slot.
    window_BxT = jnp.where(full, jnp.roll(window_BxT, -1, axis=1), window_BxT)
    window_BxT = window_BxT.at[:, jnp.where(full, context - 1, length)].set(tokens_B)
    return (window_BxT, jnp.minimum(length + 1, context)), tokens_B

  keys = jax.random.split(rng, num_tokens)
  _, tokens_NxB = jax.lax.scan(step, (window_BxT, length), keys)
  return tokens_NxB.T


def sample_batch(
  model: models.Model,
  params,
  prompt_ids: np.ndarray,
  rng: jax.Array,
  *,
  num_samples: int = 1,
  num_tokens: int,
  context: int,
  temperature: float,
  top_k: int,
  top_p: float,
  on_token: Callable | None = None,
  recompute: bool = False,
) -> np.ndarray:
  """[num_samples, num_tokens] token ids, each row continuing `prompt_ids`
  (at least 1 id), all rows in one compiled loop.

  Args:
    on_token: called on the host with each step's [num_samples] new ids, in
      order, while the loop runs (streaming); None: nothing is called.
    recompute: read the whole window again for every token instead of
      decoding through the cache (the benchmark's baseline).
  """
  prompt_ids = np.asarray(prompt_ids, np.int32)
  if prompt_ids.size == 0:
    raise ValueError('sampling needs a prompt of at least one token.')
  kwargs = dict(
    model=model,
    num_tokens=num_tokens,
    temperature=temperature,
    top_k=top_k,
    top_p=top_p,
    on_token=on_token,
  )
  fits = model.context is None or prompt_ids.size + num_tokens <= model.context
  if fits and not recompute:
    prompt = np.broadcast_to(prompt_ids, (num_samples, prompt_ids.size))
    return np.asarray(_sample_cached(params, prompt, rng, **kwargs))
  prompt_ids = prompt_ids[-context:]
  window = np.zeros((num_samples, context), np.int32)
  window[:, : prompt_ids.size] = prompt_ids
  return np.asarray(_sample_stateless(params, window, prompt_ids.size, rng, **kwargs))


def sample(model: models.Model, params, prompt_ids: np.ndarray, rng: jax.Array, **kwargs):
  """Returns `num_tokens` token ids continuing `prompt_ids` (at least 1 id);
  `kwargs` as `sample_batch`'s."""
  return sample_batch(model, params, prompt_ids, rng, num_samples=1, **kwargs)[0]
