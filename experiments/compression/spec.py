"""What compression costs: post-training int8 and w8a8 quantisation, global
magnitude pruning at 50% and 90% with and without fine-tuning, on nanoGPT's
CPU recipe for tiny-shakespeare (`configs/shakespeare_char.py:cpu`).

The float row trains the models (three seeds); every other row is
`python -m research.compress` applied to the float model of the same seed, so
the rows are compared seed by seed with the float model they came from.
"""

from research.experiments.spec import Experiment, Row, Table

_FLOAT = 'configs/shakespeare_char.py:cpu'
_FINETUNE = 200  # Steps of fine-tuning a pruned model: a tenth of the float run's 2,000.
# The student: the float model at half the width (d_model 64, d_ff 256, 4 heads of 16), which
# has a quarter of its non-embedding weights (4 x 12 x 64^2 = 196,608 against 786,432).
_STUDENT = {'model.d_model': 64, 'model.d_ff': 256}


def _compressed(name: str, method: str, finetune_steps: int = 0) -> Row:
  return Row(name, _FLOAT, compress=method, compress_from='float', finetune_steps=finetune_steps)


SPEC = Experiment(
  name='compression',
  title='Compression of a character-level Transformer: what int8, w8a8 and pruning cost',
  seeds=(0, 1, 2),
  metric='bpc',
  splits=('valid',),
  baseline='float',
  rows=(
    Row('float', _FLOAT),
    _compressed('int8', 'int8'),
    _compressed('w8a8', 'w8a8'),
    _compressed('prune50', 'prune:0.5'),
    _compressed('prune90', 'prune:0.9'),
    _compressed('prune50_ft', 'prune:0.5', _FINETUNE),
    _compressed('prune90_ft', 'prune:0.9', _FINETUNE),
    Row('student', _FLOAT, _STUDENT),
    # Hinton et al. 2015's objective at the config's defaults (alpha 0.5, temperature 2),
    # fixed before any run; compared with the same student trained alone.
    Row(
      'student_distilled',
      _FLOAT,
      _STUDENT,
      from_cells={'distill.teacher': 'float'},
      baseline='student',
    ),
  ),
  notes=(
    "Design: the float row is nanoGPT's CPU recipe (4 layers, width 128, context 64, 2,000 "
    'AdamW steps) at three seeds; each other row compresses the float model of its seed with '
    '`python -m research.compress` (the paired difference is therefore the cost of the method '
    'on that very model). int8: weight matrices in int8 with one absmax scale per output '
    'channel, the token embedding (also the tied head) per row; qwix dequantises them before '
    'float matmuls. w8a8: the same weights, and every matmul input quantised to int8 per row '
    'at run time (int8 x int8 matmuls). Pruning: one global magnitude threshold over the '
    'weight matrices (not the embedding, norms or biases); `_ft` rows then train 200 steps '
    '(a tenth of the run) at the rate where the run ended, the zeros held. Parameter bytes '
    'are as stored: pruned models stay dense float. `student` is the float recipe at half '
    'the width (d_model 64, d_ff 256), a quarter of the non-embedding weights, trained alone; '
    '`student_distilled` is the same student trained on (1 - 0.5) x cross-entropy + 0.5 x '
    'T^2 x KL(teacher^T || student^T) at T = 2 (the config defaults, fixed before running), '
    'its teacher the float model of the same seed, and is compared with `student`. Speeds are measured on this CPU while '
    'other jobs may share it (see the hardware column); compare them within a seed, not '
    'across tables.\n\n'
    'Published anchors, compared in direction only: int8 quantisation costs little '
    'perplexity; unstructured magnitude pruning costs little at 50% and much more at 90% '
    'without fine-tuning, and fine-tuning recovers most of it (Han et al. 2015, "Learning both '
    'Weights and Connections for Efficient Neural Networks"; Zhu and Gupta 2017, "To prune, or '
    'not to prune"); distillation beats the same student trained alone (Hinton, Vinyals and '
    'Dean 2015, "Distilling the Knowledge in a Neural Network").'
  ),
  tables=(
    Table(
      title='Parameter bytes as stored',
      metric='param_bytes',
      splits=('compress',),
      labels=('bytes',),
    ),
    Table(
      title='Size relative to the float model',
      metric='size_ratio',
      splits=('compress',),
      labels=('bytes / float bytes',),
    ),
    Table(
      title='Evaluation speed relative to the float model (valid split, this CPU)',
      metric='eval_speedup',
      splits=('compress',),
      labels=('tokens/s over float tokens/s',),
      note='Both measured in the same process, minutes apart: the ratio is what compares '
      'across cells when other jobs load the machine differently from cell to cell.',
    ),
    Table(
      title='Evaluation speed (tokens per second, valid split, this CPU)',
      metric='eval_tokens_per_s',
      splits=('compress',),
      labels=('tokens/s',),
    ),
    Table(
      title='Generation speed relative to the float model (one sample through the cache)',
      metric='generate_speedup',
      splits=('compress',),
      labels=('tokens/s over float tokens/s',),
    ),
    Table(
      title='Fraction of the weight matrices (the embedding included) that is exactly zero',
      metric='zero_fraction',
      splits=('compress',),
      labels=('zeros',),
    ),
  ),
)
