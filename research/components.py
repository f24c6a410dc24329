"""What a run is made of, built once from its config.

`validate` checks every name in a config before any data is read or anything
is compiled; `build` then assembles the corpus, model, optimizer, schedule and
mesh; `create_state` makes the train state born sharded on that mesh (abstract
init with `jax.eval_shape`, then a jitted init with `out_shardings`).
"""

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import Mesh

from research import config_checks
from research import data
from research import metrics
from research import models
from research import optim
from research import sharding
from research.data import pipeline
from research.privacy import accounting
from research.privacy import sampler


class TrainState(NamedTuple):
  """Everything a training step reads and writes; a plain pytree."""

  step: jax.Array  # int32 scalar: optimizer steps taken so far.
  params: Any
  opt_state: Any
  # The family's training carry (`model.init_carry`): the LSTM's state per
  # row, `{}` for the Transformer. Its shape is the family's business.
  carry: Any


class Components(NamedTuple):
  corpus: data.Corpus
  model: models.Model
  optimizer: optax.GradientTransformation
  schedule: optax.Schedule
  mesh: Mesh
  data_kind: str  # 'stream' (rows read in order, carry kept) or 'windows'.
  steps_per_epoch: int
  num_train_steps: int
  eval_every: int  # Steps between evaluations (resolved from the config).
  checkpoint_every: int  # Steps between checkpoints (resolved).
  # The model built for each evaluation context longer than the training one
  # (config.eval.seq_len, eval.extra_seq_lens), with the same parameters.
  eval_models: dict[int, models.Model] = {}
  train_rows: int = 0  # Global rows of a training batch (DP: the padded maximum).
  privacy: accounting.Budget | None = None  # A DP run's sampling rate, noise and delta.
  # The recurrent teacher of a student that reads streams (research/distill.py): the state's
  # carry is then the pair (the model's, the teacher's).
  teacher_model: models.Model | None = None


def eval_seq_len(config: ml_collections.ConfigDict) -> int:
  """The context of every evaluation: eval.seq_len, or the training one."""
  return config.eval.seq_len or config.data.seq_len


def validate(config: ml_collections.ConfigDict, num_devices: int | None = None) -> None:
  """Raises ValueError naming the key of any value that cannot be used:
  `config_checks.check`, then the mesh against `num_devices` (default: all)."""
  config_checks.check(config)
  if num_devices is None:
    num_devices = jax.device_count()
  sharding.mesh_shape(config.mesh, num_devices)


def _every(value: int, steps_per_epoch: int) -> int:
  return value if value > 0 else steps_per_epoch


def build(config: ml_collections.ConfigDict, devices: list[jax.Device] | None = None) -> Components:
  """Validates `config` and assembles the parts of a run on `devices` (all)."""
  devices = jax.devices() if devices is None else devices
  validate(config, len(devices))
  mesh = sharding.make_mesh(config.mesh, devices)
  sharding.check_batch_divisible(config.data.batch_size, mesh, 'data.batch_size')
  micro_rows = config.data.batch_size // config.optim.grad_accum_steps
  if micro_rows % sharding.data_parallel_size(mesh):
    raise ValueError(
      f'A micro-batch of config.data.batch_size / optim.grad_accum_steps = '
      f'{micro_rows} rows does not split over the '
      f'{sharding.data_parallel_size(mesh)} data-parallel devices of mesh '
      f'{dict(mesh.shape)}; lower optim.grad_accum_steps or raise the batch.'
    )
  corpus = data.load_corpus(config.data)
  if config.audit.enabled:
    corpus = _with_canaries(corpus, config)
  model = models.get_model(
    config.model, vocab_size=corpus.tokenizer.vocab_size, seq_len=config.data.seq_len
  )
  if config.optim.frozen:
    optim.check_frozen(config.optim.frozen, jax.eval_shape(model.init, jax.random.key(0)))
  # A recurrent model trains on streams: each row's segments in order, its
  # carry kept from batch to batch (truncated BPTT). Others read windows. DP
  # draws Poisson samples of fixed sequences, a recurrent model's carry reset
  # on every row (one sequence's gradient must not depend on another's).
  kind = 'stream' if model.recurrent else 'windows'
  if config.privacy.enabled:
    kind = 'poisson'
  per_epoch = pipeline.steps_per_epoch(
    len(corpus.splits['train']),
    kind=kind,
    batch_size=config.data.batch_size,
    seq_len=config.data.seq_len,
  )
  num_steps = (
    config.num_train_steps if config.num_train_steps > 0 else config.num_epochs * per_epoch
  )
  schedule = optim.make_schedule(config.optim, num_train_steps=num_steps, steps_per_epoch=per_epoch)
  train_rows, budget = config.data.batch_size, None
  if config.privacy.enabled:
    train_rows, budget = _privacy(config, len(corpus.splits['train']), num_steps, mesh)
  eval_models = {
    n: models.get_model(config.model, vocab_size=corpus.tokenizer.vocab_size, seq_len=n)
    for n in {eval_seq_len(config), *config.eval.extra_seq_lens}
    if model.context is not None and n > model.context
  }
  return Components(
    corpus=corpus,
    model=model,
    optimizer=optim.make_optimizer(
      config.optim, schedule, model.rate_multipliers, model.param_roles
    ),
    schedule=schedule,
    mesh=mesh,
    data_kind=kind,
    steps_per_epoch=per_epoch,
    num_train_steps=num_steps,
    eval_every=_every(config.eval_every_steps, per_epoch),
    checkpoint_every=_every(config.checkpoint_every_steps, per_epoch),
    eval_models=eval_models,
    train_rows=train_rows,
    privacy=budget,
  )


def _with_canaries(corpus: data.Corpus, config) -> data.Corpus:
  """The corpus with config.audit's canaries in its training split (the
  split's character counts stay those of the text without them)."""
  from research.privacy import canaries  # pylint: disable=g-import-not-at-top

  train = canaries.insert(corpus.splits['train'], config, corpus.tokenizer)
  sizes = dict(corpus.sizes, train=corpus.sizes['train']._replace(tokens=len(train)))
  return corpus._replace(splits=dict(corpus.splits, train=train), sizes=sizes)


def _privacy(config, num_tokens: int, num_steps: int, mesh) -> tuple[int, accounting.Budget]:
  """(padded rows, budget) of a DP run; the noise calibrated when asked."""
  n, q, delta = sampler.sampling(config, num_tokens)
  sigma = config.privacy.noise_multiplier or accounting.calibrate_noise(
    q, num_steps, config.privacy.target_epsilon, delta
  )
  multiple = math.lcm(
    sharding.data_parallel_size(mesh), config.privacy.microbatch_size or 1, jax.process_count()
  )
  rows = sampler.padded_rows(config.data.batch_size, q, multiple)
  metrics.console(
    'DP-SGD: %d sequences of %d tokens, sampling rate q = %.6g (expected %d rows, padded to '
    '%d), clip %g, noise multiplier %.4g%s, delta %g.',
    n,
    config.data.seq_len,
    q,
    config.data.batch_size,
    rows,
    config.privacy.l2_clip_norm,
    sigma,
    ' (calibrated to epsilon %g)' % config.privacy.target_epsilon
    if not config.privacy.noise_multiplier
    else '',
    delta,
  )
  # Seeded noise as configured; research/privacy/noise.py also finds it in old checkpoints.
  seeded = config.privacy.reproducible_noise
  return rows, accounting.Budget(
    sampling_rate=q, noise_multiplier=sigma, delta=delta, seeded=seeded
  )


def init_state(
  rng: jax.Array,
  *,
  model: models.Model,
  optimizer: optax.GradientTransformation,
  batch_size: int,
  teacher_model: models.Model | None = None,
) -> TrainState:
  """The state at step 0 (pure; jitted by `create_state`)."""
  params = model.init(rng)
  carry = model.init_carry(batch_size)
  return TrainState(
    step=jnp.zeros((), jnp.int32),
    params=params,
    opt_state=optimizer.init(params),
    carry=carry if teacher_model is None else (carry, teacher_model.init_carry(batch_size)),
  )


def state_shardings(abstract: TrainState, components: Components) -> TrainState:
  """Shardings of every leaf: parameters by rule, optimizer state likewise."""
  mesh = components.mesh
  params = sharding.param_shardings(abstract.params, mesh, components.model.partition_rules)
  replicated = sharding.replicated(mesh)

  def like_param(leaf, param_sharding, param):
    # A moment of the parameter's shape is sharded as it is; one of another shape (Adafactor's
    # row and column statistics, a placeholder) is small and replicated. A masked node (a
    # parameter another part of a partitioned rule owns, Muon's) has nothing to place.
    if isinstance(leaf, optax.MaskedNode):
      return leaf
    return param_sharding if leaf.shape == param.shape else replicated

  opt_state = optax.tree_map_params(
    components.optimizer,
    like_param,
    abstract.opt_state,
    params,
    abstract.params,
    transform_non_params=lambda _: replicated,
    is_leaf=lambda x: isinstance(x, optax.MaskedNode),
  )
  return TrainState(
    step=sharding.replicated(mesh),
    params=params,
    opt_state=opt_state,
    carry=sharding.carry_shardings(abstract.carry, mesh),
  )


def abstract_state(components: Components, batch_size: int) -> tuple[TrainState, TrainState]:
  """Returns (shape/dtype/sharding structs of the state, its shardings)."""
  abstract = jax.eval_shape(
    lambda k: init_state(
      k,
      model=components.model,
      optimizer=components.optimizer,
      batch_size=batch_size,
      teacher_model=components.teacher_model,
    ),
    jax.random.key(0),
  )
  shardings = state_shardings(abstract, components)
  structs = jax.tree.map(
    lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings
  )
  return structs, shardings


def create_state(
  components: Components, rng: jax.Array, batch_size: int
) -> tuple[TrainState, TrainState]:
  """Returns (the initial state, born sharded, and its shardings)."""
  _, shardings = abstract_state(components, batch_size)
  init = jax.jit(
    lambda k: init_state(
      k,
      model=components.model,
      optimizer=components.optimizer,
      batch_size=batch_size,
      teacher_model=components.teacher_model,
    ),
    out_shardings=shardings,
  )
  return init(rng), shardings


def train_iterator(
  parts: Components, config: ml_collections.ConfigDict, sampling_seed: int | None = None
):
  """This process's checkpointable iterator over the training batches; a DP
  run's Poisson sampling from `sampling_seed` (None: config.seed)."""
  if parts.privacy is not None:
    return iter(
      pipeline.poisson_dataset(
        parts.corpus.splits['train'],
        sampling_rate=parts.privacy.sampling_rate,
        rows=parts.train_rows,
        seq_len=config.data.seq_len,
        seed=config.seed if sampling_seed is None else sampling_seed,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
      )
    )
  return iter(
    pipeline.train_dataset(
      parts.corpus.splits['train'],
      kind=parts.data_kind,
      batch_size=config.data.batch_size,
      seq_len=config.data.seq_len,
      seed=config.seed,
      process_index=jax.process_index(),
      process_count=jax.process_count(),
    )
  )
