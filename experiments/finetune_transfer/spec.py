"""Pre-train, then fine-tune: does a model pre-trained on the King James Bible
learn tiny-shakespeare faster than one trained from scratch?

Both corpora are read as UTF-8 bytes (`data.level='byte'`), one tokenizer for
both. Every row is nanoGPT's CPU recipe (`configs/shakespeare_char.py:cpu`:
4 layers, width 128, context 64, batch 12, AdamW at 1e-3 with a cosine
schedule). Prepare the pre-training text once with
`python experiments/finetune_transfer/prepare_kjv.py --out=KJV` and run

  python -m research.experiments run experiments/finetune_transfer \
      --data_path='pretrain=KJV,*=../shared/data/tinyshakespeare/input.txt'
"""

from research.experiments.spec import Experiment, Row

_RECIPE = 'configs/shakespeare_char.py:cpu'
_BYTES = {'data.name': 'text_file', 'data.level': 'byte', 'data.split': '0.9,0.1'}
_PRETRAIN_STEPS = 2000  # The recipe's own length, on the Bible.
_STEPS = 500  # Fine-tuning and from-scratch steps on tiny-shakespeare: a quarter of the recipe.
_TUNE = {**_BYTES, 'num_train_steps': _STEPS, 'eval_every_steps': 100}

SPEC = Experiment(
  name='finetune_transfer',
  title='Pre-training on the King James Bible, then fine-tuning on tiny-shakespeare',
  seeds=(0, 1, 2),
  metric='bpc',
  splits=('valid',),
  baseline='scratch',
  rows=(
    # Its valid split is the Bible's last tenth, not Shakespeare: its own baseline, so the
    # comparisons leave it out.
    Row('pretrain', _RECIPE, {**_BYTES, 'num_train_steps': _PRETRAIN_STEPS}, baseline='pretrain'),
    Row('scratch', _RECIPE, _TUNE),
    Row('finetune', _RECIPE, _TUNE, from_cells={'init_from': 'pretrain'}),
    Row(
      'finetune_frozen_embeddings',
      _RECIPE,
      {**_TUNE, 'optim.frozen': 'embed'},
      from_cells={'init_from': 'pretrain'},
    ),
  ),
  notes=(
    'Design: `pretrain` trains the recipe for 2,000 steps on the King James Bible '
    '(4,152,017 bytes, Debian bible-kjv-text 4.38; third_party/README.md), its first 90% '
    "for training; its bpc is on the Bible's last 10%. `scratch` trains the same model "
    "from a random initialisation for 500 steps on tiny-shakespeare (nanoGPT's split, "
    'first 90% train, last 10% valid; all ASCII, so bytes are characters); `finetune` '
    'starts those 500 steps from the `pretrain` model of the same seed (parameters only: '
    'the optimizer state, schedule and data order start fresh, as in `scratch`); '
    '`finetune_frozen_embeddings` also holds the token and position embeddings fixed '
    '(`optim.frozen=embed`; the embedding is also the tied output layer). Every row uses '
    "the recipe's optimizer and schedule unchanged; nothing was tuned for fine-tuning. "
    'The paired difference from `scratch` at each seed shares the fine-tuning data order '
    'and seed; what differs is the starting parameters (and, frozen, which of them move).'
  ),
)
