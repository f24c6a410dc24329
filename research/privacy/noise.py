"""Where a DP run's randomness comes from: its Gaussian noise (and dropout:
the step key) and its Poisson sampling (the data pipeline's seed).

Seeded from config.seed, anyone who knows the seed (the config publishes it)
regenerates the noise and the sampled rows and subtracts them, so the
(epsilon, delta) guarantee does not hold against them. A private run therefore
draws a 32-byte secret from the OS's secure randomness (`secrets`) at its
first start, keeps it only in its checkpoints (the `noise` item, read before
the data iterator is built, so a resumed run draws the same noise and batches
as an uninterrupted one) and never in the config, logs, metrics or model card.

`privacy.reproducible_noise` keeps the seeded randomness (bit-identical to the
code before this module), and so does a checkpoint written before it (no
`noise` item); then every epsilon line says it assumes the seed is secret.
A run that is not private is untouched.
"""

import dataclasses
import hashlib
import secrets

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from research import checkpoint
from research import metrics

SECRET_BYTES = 32  # 256 bits of OS randomness.


@dataclasses.dataclass(frozen=True)
class Source:
  """A run's randomness: `secret`'s, or config.seed's when it is None. Its
  repr leaves the secret out, so no log line can print it by accident."""

  secret: bytes | None = dataclasses.field(default=None, repr=False)
  private: bool = False  # A DP run: its checkpoints record where its noise came from.

  def _derived(self, purpose: bytes) -> bytes:
    # Noise and sampling from independent halves of the secret's hash.
    return hashlib.sha256(purpose + self.secret).digest()

  def sampling_seed(self, seed: int) -> int:
    """The Poisson sampler's seed (research/data/pipeline.py): `seed` when seeded."""
    if self.secret is None:
      return seed
    return int.from_bytes(self._derived(b'research/poisson-sampling'), 'big')

  def step_key(self, seeded: jax.Array) -> jax.Array:
    """The key train_step folds with the step (DP noise, dropout): `seeded`
    when seeded, else one from the secret (as many bits as JAX's default
    key holds: 64 for threefry)."""
    if self.secret is None:
      return seeded
    shape = jax.random.key_data(seeded).shape
    words = np.frombuffer(self._derived(b'research/dp-noise'), np.uint32)
    return jax.random.wrap_key_data(words[: int(np.prod(shape))].reshape(shape))

  def record(self) -> dict | None:
    """The checkpoint's `noise` item; None for a run that is not private."""
    if not self.private:
      return None
    if self.secret is None:
      return {'noise': 'seeded'}
    return {'noise': 'secret', 'secret': self.secret.hex()}


def draw() -> bytes:
  """A fresh secret from the OS, the same on every process (process 0's)."""
  secret = secrets.token_bytes(SECRET_BYTES)
  if jax.process_count() > 1:
    words = multihost_utils.broadcast_one_to_all(np.frombuffer(secret, np.uint8))
    secret = np.asarray(words, np.uint8).tobytes()
  return secret


def _recorded(manager) -> tuple[int, dict | None] | None:
  """(step, its `noise` item or None when it has none) of the newest
  checkpoint whose item reads back; None when there is no checkpoint. A damaged
  checkpoint is left to checkpoint.restore_latest_good (same run, same item)."""
  for step in sorted(manager.all_steps(), reverse=True):
    try:
      return step, checkpoint.restore_noise(manager, step)
    except Exception:  # pylint: disable=broad-except
      continue
  return None


def for_run(parts, config: ml_collections.ConfigDict, manager):
  """(parts with `privacy.seeded` set, the run's `Source`), before its data
  iterator is built: the secret of its checkpoints, else a fresh one; seeded
  under privacy.reproducible_noise or from a checkpoint that predates secret
  noise (said once, here)."""
  if parts.privacy is None:
    return parts, Source()
  seeded = parts.privacy.seeded  # privacy.reproducible_noise.
  found = None if seeded else _recorded(manager)
  if found is None:
    source = Source(None if seeded else draw(), private=True)
  elif found[1] is None or found[1].get('noise') == 'seeded':
    why = 'before DP noise was secret' if found[1] is None else 'with seeded noise'
    metrics.console(
      'The checkpoint at step %d was written %s: this run continues with noise and sampling '
      'from config.seed, so its epsilon assumes the seed is secret (docs/privacy.md).',
      found[0],
      why,
    )
    source = Source(None, private=True)
  else:
    source = Source(bytes.fromhex(found[1]['secret']), private=True)
  if source.secret is None:
    parts = parts._replace(privacy=dataclasses.replace(parts.privacy, seeded=True))
  metrics.console(
    'DP noise and sampling: %s.',
    'from config.seed (epsilon assumes the seed is secret)'
    if source.secret is None
    else 'from a secret drawn from the OS, kept only in the checkpoints',
  )
  return parts, source
