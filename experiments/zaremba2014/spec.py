"""Zaremba, Sutskever and Vinyals 2014, "Recurrent Neural Network
Regularization": the word-level Penn Treebank LSTMs of Table 1.

Each row is `configs/ptb_lstm.py` at the paper's exact hyperparameters
(Section 4.1; the config's docstring lists them). Evaluation carries the LSTM
state through the whole split in one row (batch 1), for validation and test.
"""

from research.experiments.spec import Experiment, Row

_TABLE_1 = 'Zaremba, Sutskever and Vinyals 2014, "Recurrent Neural Network Regularization", Table 1'

SPEC = Experiment(
  name='zaremba2014',
  title='Zaremba et al. 2014 on the Penn Treebank (word level)',
  seeds=(0, 1, 2),
  metric='perplexity',
  splits=('valid', 'test'),
  notes=(
    'Protocol (experiments/README.md): hyperparameters of Section 4.1 '
    "(small: the authors' released code); decay from epoch max_epoch + 1; "
    'the loss summed over the unroll, averaged over the batch, its '
    'gradient clipped; validation and test scored at batch 1 with the '
    'LSTM state carried through the whole split, dropout off.\n\n'
    'Run log: small-s0 ran on 2026-12-06 at revision 246b07a on the '
    'development machine (a 2-core AMD EPYC CPU, no GPU), alone on the CPU '
    'but for light editing: 30 min 45 s for 30,199 steps and 13 '
    'evaluations. Its earlier run (2026-11-23, revision 7afeb2a, before the '
    'LSTM gate axis became unit-major: the same model, another draw of the '
    'initial weights) gave 120.28 / 114.98. This task had no GPU, so medium '
    'and large and the other seeds are not run; their commands are listed '
    'below.'
  ),
  rows=(
    Row(
      'small',
      'configs/ptb_lstm.py:small',
      published={'valid': 120.7, 'test': 114.5},
      source=_TABLE_1,
    ),
    Row(
      'medium',
      'configs/ptb_lstm.py:medium',
      published={'valid': 86.2, 'test': 82.7},
      source=_TABLE_1,
    ),
    Row(
      'large', 'configs/ptb_lstm.py:large', published={'valid': 82.2, 'test': 78.4}, source=_TABLE_1
    ),
  ),
)
