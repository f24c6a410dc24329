"""The Penn Treebank under one protocol: Zaremba et al.'s small LSTM beside a
Transformer of about the same non-embedding parameter count and training
budget (configs/ptb_transformer.py says how they are matched).
"""

from research.experiments.spec import Experiment, Row

SPEC = Experiment(
  name='ptb_lstm_vs_transformer',
  title='The Penn Treebank under one protocol: small LSTM and a Transformer of its size',
  seeds=(0, 1, 2),
  metric='perplexity',
  splits=('valid', 'test'),
  baseline='lstm',
  notes=(
    'Both rows read the same PTB splits and 10,000-word vocabulary and train for the '
    "same number of tokens (13 epochs of the training split); each keeps its family's "
    "recipe: the LSTM exactly Zaremba et al.'s small (SGD, no dropout, unroll 20, state "
    "carried through the split at evaluation), the Transformer nanoGPT's (AdamW, "
    'dropout 0.2, context 128, scored in non-overlapping windows of 128). Non-embedding '
    'parameters: 640,000 (LSTM gates) and 614,400 (Transformer blocks). Hyperparameters '
    "were set once and not tuned. A seed here fixes each run's own draws; the two "
    'families read their data differently (streams against windows), so a pair shares '
    'little and the paired test is about as sensitive as an unpaired one.'
  ),
  rows=(
    Row('lstm', 'configs/ptb_lstm.py:small'),
    Row('transformer', 'configs/ptb_transformer.py:small'),
  ),
)
