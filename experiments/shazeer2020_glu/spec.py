"""Shazeer 2020, "GLU Variants Improve Transformer": the feed-forward variants
of Table 1, as an ablation of a small character-level Transformer.

Every row is nanoGPT's CPU recipe (`configs/shakespeare_char.py:cpu`: 4 layers,
width 128, context 64, 2,000 AdamW steps, no biases, no dropout) with one MLP
swapped. The ungated rows keep d_ff = 512 (4 x width); the gated rows, which
have three weight matrices instead of two, use d_ff = 341, two thirds of it,
as Shazeer does (3,072 against 2,048), so every row has the same parameters
and FLOPs within 0.1%. The baseline is ReLU, the paper's.
"""

from research.experiments.rows import grid
from research.experiments.spec import Experiment

GATED = ('glu', 'bilinear', 'reglu', 'geglu', 'swiglu')
UNGATED_D_FF = 512  # configs/shakespeare_char.py:cpu
_TABLE_1 = (
  'Shazeer 2020, "GLU Variants Improve Transformer", Table 1: heldout-set '
  'log-perplexity after 65,536 steps (T5 span-filling on C4, not comparable in level)'
)
# Table 1, 65,536-step column, as read from the paper.
_PUBLISHED = {
  'relu': 1.997,
  'gelu': 1.983,
  'swish': 1.994,
  'glu': 1.982,
  'bilinear': 1.960,
  'reglu': 1.953,
  'geglu': 1.942,
  'swiglu': 1.944,
}

SPEC = Experiment(
  name='shazeer2020_glu',
  title="Shazeer 2020's feed-forward variants on tiny-shakespeare (character level)",
  seeds=(0, 1, 2, 3, 4),
  metric='loss',
  splits=('valid',),
  baseline='relu',
  notes=(
    "Design: nanoGPT's CPU recipe (4 layers, width 128, context 64, batch 12, 2,000 "
    'steps) with each feed-forward variant of Shazeer 2020, Table 1; gated rows at d_ff '
    '341 = 2/3 of 512 so that every row has the same parameters (within 0.1%) and FLOPs. '
    'Five seeds per row; a seed fixes the data order and the initial values of every '
    'weight outside the MLPs, so the rows are compared seed by seed against ReLU (the '
    "paper's baseline). This is the largest design that fits the CPU budget (about 1.5 "
    'minutes a cell, 40 cells); the detectable column says how small a difference it '
    'could see.\n\n'
    "What is compared with the paper: only the sign of each row's difference from ReLU "
    '("published ordering reproduced"). The paper\'s numbers are log-perplexities of a '
    '220M-parameter T5 on a span-filling task after 65,536 steps, not losses of a 0.8M '
    'character model, so the levels are not comparable and the published column is there '
    'for the ordering only. In the paper the differences between the ungated rows '
    '(0.003 to 0.014) are within about two of its standard deviations over runs (0.003 to '
    '0.006, the same table).\n\n'
    "The gpu_ rows are the same grid at nanoGPT's GPU recipe (6 layers, width 384, "
    'context 256, dropout 0.2, 5,000 steps; gated d_ff 1,024 against 1,536), compared with '
    'gpu_relu. This task had no GPU, so they are listed below as not run, with the command '
    'that runs them: `python -m research.experiments run experiments/shazeer2020_glu '
    "--cells='gpu_*'` (three seeds each).\n\n"
    'Run log: 2026-12-01 on the development machine (a 2-core Intel Xeon, no GPU), sharing '
    'the CPU with test suites and, for most cells, with the ALiBi experiment, so wall times '
    'are up to about twice a lone run (about 1.5 minutes).'
  ),
  rows=grid(
    'configs/shakespeare_char.py:cpu',
    {'model.mlp': list(_PUBLISHED)},
    derived=lambda o: {'model.d_ff': UNGATED_D_FF * 2 // 3} if o['model.mlp'] in GATED else {},
    published={name: {'valid': value} for name, value in _PUBLISHED.items()},
    source=_TABLE_1,
  )
  # The same grid at nanoGPT's GPU recipe (6 layers, width 384, d_ff 1,536 or
  # 1,024 gated, context 256, dropout 0.2, 5,000 steps), compared with its own
  # ReLU row; about 10 s a step on the CPU, so run on a GPU.
  + grid(
    'configs/shakespeare_char.py',
    {'model.mlp': list(_PUBLISHED)},
    derived=lambda o: {'model.d_ff': 1536 * 2 // 3} if o['model.mlp'] in GATED else {},
    published={f'gpu_{name}': {'valid': value} for name, value in _PUBLISHED.items()},
    source=_TABLE_1,
    prefix='gpu_',
    baseline='gpu_relu',
    seeds=(0, 1, 2),
  ),
)
