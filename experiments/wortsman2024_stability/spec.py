"""Wortsman et al. 2024, "Small-scale proxies for large-scale Transformer
training instabilities" (ICLR 2024): learning-rate sweeps of a small pre-norm
Transformer on tiny-shakespeare's characters, with and without qk-layernorm,
z-loss, and their combination with muParam and independent weight decay, at
two widths (configs/wortsman2024.py says what the model and recipe are).
"""

from research.experiments.spec import Claim, Experiment, Sweep, Trace, sweep_rows

RATES = (3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1)  # Half-decades, as the paper's sweeps.
WIDTHS = (64, 128)
QK_NORM = {'model.qk_norm': 'layernorm'}
Z_LOSS = {'optim.z_loss': 1e-4}  # The paper's (and PaLM's) coefficient.
# Groups per width, in table order; the sweep compares each with the group named in BASELINES.
# The paper's combined recipe: both, with muParam (simple) against the narrow width and
# independent weight decay at its coefficient (1e-4; the default groups' coupled 0.1 decays
# the same at rate 1e-3: docs/stability.md).
MUP = {
  **QK_NORM,
  **Z_LOSS,
  'model.parametrization': 'mup',
  'model.mup_base_width': WIDTHS[0],
  'optim.weight_decay_mode': 'independent',
  'optim.weight_decay': 1e-4,
}
GROUPS = {
  'default': {},
  'qk_norm': QK_NORM,
  'z_loss': Z_LOSS,
  'both': {**QK_NORM, **Z_LOSS},
  'mup': MUP,
}
BASELINES = {'qk_norm': 'default', 'z_loss': 'default', 'both': 'default', 'mup': 'both'}
# The claims' source: the figures issue 28 lists; which figure shows which claim was not
# checked against the paper here.
SOURCE = 'Wortsman et al. 2024, Figures 1, 2, 4, 6-9 (as issue 28 lists them; not checked)'
HIGH = 1e-2  # The "high" learning rates of the peak claims: >= 1e-2, fixed before the runs.


def _widths(group: str) -> tuple[str, ...]:
  """The group's name at each width, the narrow first ('qk_norm_w64', 'qk_norm_w128')."""
  return tuple(f'{group}_w{w}' for w in WIDTHS)


def _pairs(treated: str, comparison: str) -> tuple:
  """(treated, comparison) group pairs, one per width, the narrow first."""
  return tuple(zip(_widths(treated), _widths(comparison)))


CLAIMS = (
  Claim(
    'Without qk-layernorm the loss degrades at high learning rates; with it LR sensitivity drops.',
    SOURCE,
    'sensitivity',
    _pairs('qk_norm', 'default'),
    label='a',
  ),
  Claim(
    'Without qk-layernorm the attention logits grow at high learning rates; with it they do not.',
    SOURCE,
    'peak',
    _pairs('qk_norm', 'default'),
    metric='attn_logit_max',
    above=HIGH,
    log10=True,
    label='b',
  ),
  Claim(
    'Without z-loss log Z drifts far from 0 at high learning rates; z-loss keeps it near 0.',
    SOURCE,
    'peak',
    _pairs('z_loss', 'default'),
    metric='log_z',
    above=HIGH,
    label='c',
  ),
  Claim(
    'qk-layernorm and z-loss together lower LR sensitivity.',
    SOURCE,
    'sensitivity',
    _pairs('both', 'default'),
    label='d',
  ),
  Claim(
    'muParam (with qk-layernorm, z-loss and independent decay) lowers LR sensitivity.',
    SOURCE,
    'sensitivity',
    _pairs('mup', 'both'),
    label='e',
  ),
  Claim(
    'Under muParam the best learning rate stays about the same across widths; under the '
    'standard parametrisation it moves.',
    SOURCE,
    'best_shift',
    _pairs('mup', 'both'),
    label='f',
  ),
)
# The attention logits and log Z of default at its highest stable and lowest unstable rates,
# beside the group with the mitigation at the same rates.
TRACES = (
  Trace('attn_logit_max', _widths('default'), beside=_widths('qk_norm')),
  Trace('log_z', _widths('default'), beside=_widths('z_loss'), yscale='symlog'),
)


def _rows():
  rows = ()
  for width in WIDTHS:
    rows += sweep_rows(
      f'configs/wortsman2024.py:w{width}',
      {f'{group}_w{width}': overrides for group, overrides in GROUPS.items()},
      RATES,
    )
  return rows


SPEC = Experiment(
  name='wortsman2024_stability',
  title='Training stability at high learning rates (Wortsman et al. 2024) at small scale',
  seeds=(0, 1),
  metric='loss',
  splits=('valid',),
  notes='',
  rows=_rows(),
  traces=TRACES,
  claims=CLAIMS,
  sweep=Sweep(
    baseline={
      f'{group}_w{width}': f'{base}_w{width}'
      for group, base in BASELINES.items()
      for width in WIDTHS
    }
  ),
)
