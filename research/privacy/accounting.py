"""The privacy a DP-SGD run spends, from Google's `dp-accounting` library.

A DP-SGD step samples every training sequence independently with
probability q (Poisson sampling), clips each sampled sequence's gradient to
norm C and adds Gaussian noise of standard deviation sigma * C to their sum:
one Poisson-subsampled Gaussian mechanism of noise multiplier sigma. A run of
k steps is that mechanism composed k times. Its (epsilon, delta) comes from
the privacy-loss-distribution (PLD) accountant, which is tight; the Renyi
(RDP) bound, looser, is printed beside it for comparison with papers that use
it. Nothing here is an accountant of our own.
"""

import dataclasses
import functools
import importlib
from typing import Any

from research import metrics


def _dp(module: str = '') -> Any:
  """`dp_accounting` (or its submodule `module`), imported on first use: it
  pulls in scipy.signal, a few seconds of every start-up that only a private
  run needs."""
  return importlib.import_module('dp_accounting' + (f'.{module}' if module else ''))


# The PLD accountant discretises the privacy loss; 1e-4 keeps epsilon within
# about 1e-3 of the exact value at the sizes used here and takes well under a
# second for thousands of steps.
_PLD_DISCRETIZATION = 1e-4


def dp_event(sampling_rate: float, noise_multiplier: float, steps: int) -> Any:
  """`steps` Poisson-subsampled Gaussian mechanisms (one per DP-SGD step),
  a `dp_accounting.DpEvent`."""
  dp_accounting = _dp()
  return dp_accounting.SelfComposedDpEvent(
    dp_accounting.PoissonSampledDpEvent(
      sampling_rate, dp_accounting.GaussianDpEvent(noise_multiplier)
    ),
    steps,
  )


def _pld_accountant() -> Any:
  return _dp('pld.pld_privacy_accountant').PLDAccountant(
    value_discretization_interval=_PLD_DISCRETIZATION
  )


@functools.lru_cache(maxsize=256)
def epsilon(sampling_rate: float, noise_multiplier: float, steps: int, delta: float) -> float:
  """Epsilon (PLD accountant) after `steps` DP-SGD steps at `delta`."""
  if steps == 0:
    return 0.0
  accountant = _pld_accountant()
  accountant.compose(dp_event(sampling_rate, noise_multiplier, steps))
  return float(accountant.get_epsilon(delta))


@functools.lru_cache(maxsize=256)
def rdp_epsilon(sampling_rate: float, noise_multiplier: float, steps: int, delta: float) -> float:
  """Epsilon from the RDP accountant (an upper bound, looser than PLD's)."""
  if steps == 0:
    return 0.0
  accountant = _dp('rdp.rdp_privacy_accountant').RdpAccountant()
  accountant.compose(dp_event(sampling_rate, noise_multiplier, steps))
  return float(accountant.get_epsilon(delta))


_MAX_NOISE = 1000.0  # The largest noise multiplier calibration considers.
_MIN_NOISE = 0.1
_NOISE_TOLERANCE = 1e-4  # Relative: the calibrated sigma is within this of the smallest.


@functools.lru_cache(maxsize=64)
def calibrate_noise(sampling_rate: float, steps: int, target_epsilon: float, delta: float) -> float:
  """The smallest noise multiplier (to a relative 1e-4, rounded up) whose run
  of `steps` spends at most `target_epsilon` at `delta` (PLD accountant).

  A bisection on sigma over `epsilon`, which is decreasing in sigma; every
  epsilon is dp-accounting's. (dp_accounting.calibrate_dp_mechanism's
  root-finder took 45 to 85 s here, about 50 accountant runs; this takes
  about 17.)

  Raises:
    ValueError: naming privacy.target_epsilon when no noise multiplier up to
      1,000 reaches it (epsilon too small for so many steps at this rate).
  """
  spent = lambda sigma: epsilon(sampling_rate, sigma, steps, delta)  # noqa: E731
  if spent(_MAX_NOISE) > target_epsilon:
    raise ValueError(
      f'config.privacy.target_epsilon={target_epsilon} cannot be reached in {steps} steps '
      f'at sampling rate {sampling_rate:.3g} and delta {delta:g} with a noise multiplier up '
      f'to {_MAX_NOISE:g}; raise target_epsilon, or lower the steps or data.batch_size.'
    )
  # A bracket (lo, hi] with spent(hi) <= target < spent(lo), found from 1.
  lo = hi = 1.0
  if spent(hi) > target_epsilon:
    while spent(hi) > target_epsilon:
      lo, hi = hi, min(2 * hi, _MAX_NOISE)
  else:
    while lo > _MIN_NOISE and spent(lo) <= target_epsilon:
      hi, lo = lo, max(lo / 2, _MIN_NOISE)
    if spent(lo) <= target_epsilon:
      return lo  # Even the least noise considered is enough.
  while hi - lo > _NOISE_TOLERANCE * hi:
    mid = (lo + hi) / 2
    lo, hi = (lo, mid) if spent(mid) <= target_epsilon else (mid, hi)
  return hi


@dataclasses.dataclass(frozen=True)
class Budget:
  """What a DP run spends: its mechanism and its privacy after some steps."""

  sampling_rate: float  # q: each training sequence's chance of being in a step.
  noise_multiplier: float  # sigma: noise standard deviation / clip norm.
  delta: float
  # Noise and sampling drawn from config.seed (research/privacy/noise.py): epsilon then holds
  # only against someone who does not know the seed.
  seeded: bool = False

  def figures(self, steps: int) -> dict[str, float]:
    """The metrics of a log line: epsilon (PLD), rdp_epsilon, delta, q, sigma,
    and seeded_noise (1: epsilon assumes config.seed is secret)."""
    return {
      'epsilon': epsilon(self.sampling_rate, self.noise_multiplier, steps, self.delta),
      'rdp_epsilon': rdp_epsilon(self.sampling_rate, self.noise_multiplier, steps, self.delta),
      'delta': self.delta,
      'sampling_rate': self.sampling_rate,
      'noise_multiplier': self.noise_multiplier,
      'seeded_noise': float(self.seeded),
    }

  def caveat(self) -> str:
    """What every printed epsilon of a seeded run adds; '' for secret noise."""
    return metrics.SEEDED_NOISE if self.seeded else ''

  def summary(self, steps: int) -> str:
    """The line a run ends with: the privacy spent in `steps` steps."""
    spent = self.figures(steps)
    return (
      f'DP-SGD spent epsilon {spent["epsilon"]:.4f} (PLD accountant; RDP bound '
      f'{spent["rdp_epsilon"]:.4f}) at delta {self.delta:g}{self.caveat()}: {steps} steps, '
      f'sampling rate {self.sampling_rate:.6g}, noise multiplier {self.noise_multiplier:.4g}.'
    )
