"""The canaries probe: the memorisation audit of config.audit (Carlini et al.
2019, "The Secret Sharer"; research/privacy/canaries.py), the one
`python -m research.main --mode=audit` runs, read from the run's own canaries.

Figures: each canary's exposure (by rank among the candidates, and the
skew-normal extrapolation), and per insertion count their mean with a 95%
percentile bootstrap interval over the canaries of that count (0 = held out,
never inserted: what chance gives).
"""

import numpy as np

from research.audits import context as context_lib
from research.audits import stats
from research.privacy import canaries as canaries_lib

DEFAULTS = {
  'bootstrap': 2000,  # Bootstrap resamples of every interval.
  'seed': 0,  # Their seed.
}


def run(ctx, options: dict) -> dict:
  """The exposures (module docstring); options: DEFAULTS' keys."""
  options = {**DEFAULTS, **{k: v for k, v in options.items() if k in DEFAULTS}}
  if not ctx.config.audit.enabled:
    raise context_lib.NotApplicable(
      'canaries: the run inserted no canaries (config.audit.enabled is False); train with '
      '--config.audit.enabled=True to audit memorisation this way.'
    )
  records = canaries_lib.run(ctx.parts.model, ctx.params, ctx.config, ctx.tokenizer)
  per_canary = [r for r in records if r['split'] == 'audit']
  by_count = {}
  for count in sorted({r['repetitions'] for r in per_canary}):
    exposures = np.asarray([r['exposure'] for r in per_canary if r['repetitions'] == count])
    lo, hi = stats.bootstrap_interval(
      exposures, np.mean, n=options['bootstrap'], seed=options['seed']
    )
    by_count[str(count)] = {
      'canaries': len(exposures),
      'exposure': float(exposures.mean()),
      'interval': [lo, hi],
      'exposure_extrapolated': float(
        np.mean([r['exposure_extrapolated'] for r in per_canary if r['repetitions'] == count])
      ),
    }
  return {
    'log2_space': per_canary[0]['log2_space'],
    'by_repetitions': by_count,
    'canaries': [{k: v for k, v in r.items() if k != 'split'} for r in per_canary],
    'options': options,
    'data': {},
  }


def _line(count: str, figures: dict) -> str:
  lo, hi = figures['interval']
  name = 'held out' if count == '0' else f'inserted {count} times'
  return (
    f'{name}: exposure {figures["exposure"]:.2f} bits [{lo:.2f}, {hi:.2f}] '
    f'(extrapolated {figures["exposure_extrapolated"]:.2f}; {figures["canaries"]} canaries)'
  )


def table(result: dict) -> str:
  """The console lines."""
  lines = [f'canaries: exposure of at most {result["log2_space"]:.2f} bits (chance about 1.44)']
  lines += [f'  {_line(c, f)}' for c, f in result['by_repetitions'].items()]
  return '\n'.join(lines)


def card(result: dict) -> list[str]:
  """The model card's section (docs/audit.md#canaries)."""
  return [
    f'Exposure of the inserted canaries (Carlini et al. 2019; the most it can be is '
    f'{result["log2_space"]:.2f} bits, chance about 1.44); 95% bootstrap intervals over the '
    'canaries of each count.',
    '',
    *[f'- {_line(c, f)}.' for c, f in result['by_repetitions'].items()],
  ]
