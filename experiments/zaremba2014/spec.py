"""Zaremba, Sutskever and Vinyals 2014, "Recurrent Neural Network
Regularization": the word-level Penn Treebank LSTMs of Table 1.

Each row is `configs/ptb_lstm.py` at the paper's exact hyperparameters
(Section 4.1; the config's docstring lists them). Evaluation carries the LSTM
state through the whole split in one row (batch 1), for validation and test.
"""

from research.experiments.spec import Experiment, Row

_TABLE_1 = ('Zaremba, Sutskever and Vinyals 2014, "Recurrent Neural Network '
            'Regularization", Table 1')

SPEC = Experiment(
    name='zaremba2014',
    title='Zaremba et al. 2014 on the Penn Treebank (word level)',
    seeds=(0, 1, 2),
    metric='perplexity',
    splits=('valid', 'test'),
    rows=(
        Row('small', 'configs/ptb_lstm.py:small',
            published={'valid': 120.7, 'test': 114.5}, source=_TABLE_1),
        Row('medium', 'configs/ptb_lstm.py:medium',
            published={'valid': 86.2, 'test': 82.7}, source=_TABLE_1),
        Row('large', 'configs/ptb_lstm.py:large',
            published={'valid': 82.2, 'test': 78.4}, source=_TABLE_1),
    ),
)
