"""Press, Smith and Lewis 2022, "Train Short, Test Long: Attention with Linear
Biases Enables Input Length Extrapolation" (ALiBi): train at one context,
evaluate at longer ones.

Every row is nanoGPT's CPU recipe (`configs/shakespeare_char.py:cpu`, trained
at context 64) with one kind of positional information. Each trained model is
scored on the validation split in non-overlapping windows of 64 (`valid`), 128,
256 and 512 characters (`valid@N`, config.eval.extra_seq_lens): the paper's
nonoverlapping evaluation. Learned positions have no rows beyond 64, so that
row is scored at 64 only.
"""

from research.experiments.rows import grid
from research.experiments.spec import Experiment, Row

RECIPE = 'configs/shakespeare_char.py:cpu'
TRAINED_CONTEXT = 64  # RECIPE's data.seq_len
LONGER = tuple(TRAINED_CONTEXT * k for k in (2, 4, 8))

SPEC = Experiment(
  name='press2022_alibi',
  title='Train short, test long: positional information and length extrapolation '
  '(tiny-shakespeare, character level)',
  seeds=(0, 1, 2),
  metric='loss',
  splits=('valid', *(f'valid@{n}' for n in LONGER)),
  baseline='sinusoidal',
  split_baseline='valid',
  notes=(
    "Design: one model (nanoGPT's CPU recipe: 4 layers, width 128, 2,000 steps at "
    'context 64) with learned, sinusoidal, rotary (Su et al. 2021), ALiBi (Press et al. '
    '2022, their slopes) or no positions; three seeds each. Every trained model is scored '
    'on the whole validation split in non-overlapping windows of 64, 128, 256 and 512 '
    'characters, so a token is predicted from at most that many characters before it, '
    'within its window.\n\n'
    'Published anchor: Press et al. 2022, Figure 1 (WikiText-103, models trained at 512 '
    "and 1024 tokens, evaluated at up to 16k): the sinusoidal model's perplexity rises "
    "sharply once the evaluation window exceeds the training length, the rotary model's "
    "rises too (more slowly), and ALiBi's stays flat or improves. The within-row table "
    'below (each split minus the same model at 64) tests each claim here: the claim holds '
    "where its row's change column says higher (sinusoidal, rotary) or lower / no "
    'significant change (ALiBi). The table against sinusoidal compares the kinds at each '
    'length.\n\n'
    'A caveat on the sinusoidal row: its table is added, at unit amplitude, to token '
    'embeddings initialised with standard deviation 0.02, without the sqrt(d_model) embedding '
    'scale of Vaswani et al. (and of the fairseq models Press et al. trained), so position '
    'dominates the input; the row measures that arrangement, and its level at context 64 is '
    'not a fair comparison with the other kinds. The row sinusoidal_scaled adds the scale '
    '(model.scale_embeddings: looked-up rows times sqrt(128), so tokens start at standard '
    'deviation 0.23; fairseq also initialises them at d_model^-0.5, so its tokens start at 1); its '
    'difference from sinusoidal, seed-paired, is what the scale changes.\n\n'
    'Run log: 2026-12-01 on the development machine (a 2-core Intel Xeon, no GPU), two '
    'cells at a time with the GLU experiment, so wall times are about twice a lone run; '
    'the sinusoidal_scaled cells on 2026-12-02, beside one PTB Transformer cell.'
  ),
  rows=(
    *grid(
      RECIPE,
      {'model.positional': ['learned', 'sinusoidal', 'rope', 'alibi', 'none']},
      derived=lambda o: (
        {} if o['model.positional'] == 'learned' else {'eval.extra_seq_lens': LONGER}
      ),
    ),
    # Vaswani et al.'s arrangement: token embeddings times sqrt(d_model) before the table.
    Row(
      'sinusoidal_scaled',
      RECIPE,
      {
        'model.positional': 'sinusoidal',
        'model.scale_embeddings': True,
        'eval.extra_seq_lens': LONGER,
      },
    ),
  ),
)
