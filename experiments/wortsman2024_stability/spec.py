"""Wortsman et al. 2024, "Small-scale proxies for large-scale Transformer
training instabilities" (ICLR 2024): learning-rate sweeps of a small pre-norm
Transformer on tiny-shakespeare's characters, with and without qk-layernorm,
z-loss, and their combination with muParam and independent weight decay, at
two widths (configs/wortsman2024.py says what the model and recipe are).
"""

from research.experiments.spec import Experiment, Sweep, sweep_rows

RATES = (3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1)  # Half-decades, as the paper's sweeps.
WIDTHS = (64, 128)
QK_NORM = {'model.qk_norm': 'layernorm'}
Z_LOSS = {'optim.z_loss': 1e-4}  # The paper's (and PaLM's) coefficient.
# Groups per width, in table order; the sweep compares each with the group named in BASELINES.
GROUPS = {'default': {}, 'qk_norm': QK_NORM, 'z_loss': Z_LOSS, 'both': {**QK_NORM, **Z_LOSS}}
BASELINES = {'qk_norm': 'default', 'z_loss': 'default', 'both': 'default'}


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
  sweep=Sweep(
    baseline={
      f'{group}_w{width}': f'{base}_w{width}'
      for group, base in BASELINES.items()
      for width in WIDTHS
    }
  ),
)
