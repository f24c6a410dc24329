"""nanoGPT's shakespeare_char (Karpathy, github.com/karpathy/nanoGPT): the
character-level Transformer on tiny-shakespeare, its CPU recipe and its GPU
recipe.

Each row is `configs/shakespeare_char.py` at nanoGPT's hyperparameters (the
config's docstring lists them). Validation is nanoGPT's split (the last 10%
of the characters), scored exactly: every prediction once, in
non-overlapping windows of the context length. nanoGPT instead reports the
mean of 20 (cpu) or 200 (full) random batches.
"""

from research.experiments.spec import Experiment, Row

_README = (
  'nanoGPT README (github.com/karpathy/nanoGPT), "quick start": '
  'validation loss of the trained model'
)

SPEC = Experiment(
  name='nanogpt_shakespeare_char',
  title="nanoGPT's shakespeare_char (character level, tiny-shakespeare)",
  seeds=(0, 1, 2, 3, 4),
  metric='loss',
  splits=('valid',),
  notes=(
    'Metric: validation loss in nats per character over the whole '
    "split. The cells download Karpathy's input.txt; on a machine "
    'without internet give a local copy to the runner, e.g. `python -m '
    'research.experiments run experiments/nanogpt_shakespeare_char '
    "--data_path=../shared/data/tinyshakespeare/input.txt` (the file's "
    'sha256 is checked; where it lies is not part of a cell).\n\n'
    'The published 1.88 for the cpu recipe is one 20-batch estimate. '
    '`torch_reference.py` in this folder trains the same recipe in plain '
    'PyTorch and scores it the same exact way; `torch_reference.jsonl` '
    'holds its figures per seed (run log below), including the spread of '
    "nanoGPT's 20-batch estimate on one trained model.\n\n"
    'Run log: the cpu cells and the PyTorch reference ran on 2026-12-01 '
    'on the development machine (a 2-core AMD EPYC CPU, no GPU), one at a '
    'time except cpu-s0, which shared the CPU with benchmarks. The full '
    'row needs a GPU (about 10 s per step on that CPU, 14 hours) and was '
    'not run.'
  ),
  rows=(
    Row(
      'cpu',
      'configs/shakespeare_char.py:cpu',
      published={'valid': 1.88},
      source=_README + ', CPU recipe',
    ),
    Row(
      'full',
      'configs/shakespeare_char.py',
      published={'valid': 1.4697},
      source=_README + ', 5,000 steps on an A100',
      seeds=(0,),
    ),
  ),
)
