"""Device mesh and shardings: the only module that touches jax.sharding.

The mesh has three axes, `data`, `fsdp` and `tensor`. Batches are split over
(`data`, `fsdp`): every device of those two axes sees different rows.
Parameters follow the partition rules of their model family
(`Model.partition_rules`, in research/models/): regular expressions on the
parameter's path mapped to a spec (first match wins); the optimizer state
mirrors them. One CPU is the 1x1x1 mesh of the same code.

- FSDP: every large matrix has one dimension split over `fsdp`; XLA gathers
  it where it is used and reduce-scatters its gradient.
- Tensor parallelism (Megatron style): pairs of matmuls split the first by
  output column and the second by input row, so each pair needs one
  reduction (the families' docstrings say which weights).
- Activations are pinned with `constrain` at the places the layout changes
  (models call it; it is a no-op outside a mesh context).

Rules are strict: a parameter that no rule matches is an error naming it,
never silently replicated (replication is a rule, spec `()`), and a rule that
does not divide its dimension fails at start-up, naming the parameter, its
shape and the mesh.
"""

import functools
import re
from typing import Any, Sequence

import jax
import ml_collections
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ('data', 'fsdp', 'tensor')
BATCH_AXES = ('data', 'fsdp')
BATCH = BATCH_AXES  # For specs: (BATCH, None) splits dimension 0 over both.

# (path regex, spec): a spec has one entry per leading dimension, a mesh axis
# name, a tuple of them or None; () replicates.
Rules = Sequence[tuple[str, tuple]]


def mesh_shape(mesh_config: ml_collections.ConfigDict, num_devices: int) -> tuple[int, int, int]:
  """Resolves the (data, fsdp, tensor) sizes; one of them may be -1."""
  sizes = [mesh_config.data, mesh_config.fsdp, mesh_config.tensor]
  free = [i for i, s in enumerate(sizes) if s == -1]
  if len(free) > 1 or any(s == 0 or s < -1 for s in sizes):
    raise ValueError(
      f'Mesh sizes {dict(zip(MESH_AXES, sizes))} are invalid: '
      'use positive sizes and at most one -1 ("the rest").'
    )
  fixed = int(np.prod([s for s in sizes if s != -1]))
  if free:
    if num_devices % fixed:
      raise ValueError(
        f'{num_devices} devices cannot be split into a mesh '
        f'with fixed sizes {dict(zip(MESH_AXES, sizes))}.'
      )
    sizes[free[0]] = num_devices // fixed
  if int(np.prod(sizes)) != num_devices:
    raise ValueError(
      f'Mesh {dict(zip(MESH_AXES, sizes))} needs '
      f'{int(np.prod(sizes))} devices but {num_devices} exist; '
      'set config.mesh sizes whose product is the device count.'
    )
  return tuple(sizes)


def make_mesh(
  mesh_config: ml_collections.ConfigDict, devices: Sequence[jax.Device] | None = None
) -> Mesh:
  """Builds the (data, fsdp, tensor) mesh over `devices` (default: all)."""
  devices = list(jax.devices() if devices is None else devices)
  shape = mesh_shape(mesh_config, len(devices))
  # Auto axes: shardings given at jit boundaries, propagated by the compiler.
  return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * 3, devices=devices)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) dimension split over the data-parallel axes."""
  return NamedSharding(mesh, P(BATCH_AXES))


def data_parallel_size(mesh: Mesh) -> int:
  return int(np.prod([mesh.shape[a] for a in BATCH_AXES]))


def check_batch_divisible(batch_size: int, mesh: Mesh, key: str) -> None:
  """Fails early when a batch cannot be split evenly over the mesh."""
  n = data_parallel_size(mesh)
  if batch_size % n:
    raise ValueError(
      f'config.{key}={batch_size} is not divisible by the '
      f'{n} data-parallel devices of mesh {dict(mesh.shape)}; '
      'choose a multiple or change config.mesh.'
    )


def param_path(path) -> str:
  """'block_0/attn/qkv/kernel': the name partition rules match, of a jax
  tree path."""
  return '/'.join(str(getattr(k, 'key', getattr(k, 'idx', k))) for k in path)


def _check_divides(name: str, shape: tuple[int, ...], spec: P, mesh: Mesh) -> None:
  if len(spec) > len(shape):
    raise ValueError(
      f'Partition rule {spec} for parameter {name!r} has more entries than its shape {shape}.'
    )
  for size, axes in zip(shape, spec):
    axes = () if axes is None else (axes,) if isinstance(axes, str) else axes
    parts = int(np.prod([mesh.shape[a] for a in axes]))
    if size % parts:
      raise ValueError(
        f'Parameter {name!r} of shape {shape} cannot be sharded as {spec} on '
        f'mesh {dict(mesh.shape)}: its dimension of size {size} does not '
        f'divide into {parts} parts over {axes}. Change config.mesh (or the '
        'model size) so the axis sizes divide it.'
      )


def param_shardings(params: Any, mesh: Mesh, rules: Rules) -> Any:
  """Maps every parameter to the NamedSharding of the first matching rule.

  `params` may hold arrays or shape structs; `rules` are the model's
  (`Model.partition_rules`). A parameter no rule matches, or whose rule does
  not divide its shape, raises ValueError naming it.
  """

  def spec_for(path, leaf):
    name = param_path(path)
    for pattern, spec in rules:
      if re.fullmatch(pattern, name):
        _check_divides(name, tuple(leaf.shape), P(*spec), mesh)
        return NamedSharding(mesh, P(*spec))
    raise ValueError(
      f'No partition rule matches parameter {name!r} of shape '
      f'{tuple(leaf.shape)}; add a rule for it to the partition rules of '
      'its model family (a spec of () replicates it).'
    )

  return jax.tree_util.tree_map_with_path(spec_for, params)


def under_mesh(jitted, mesh: Mesh):
  """Calls (and lowers) `jitted` with `mesh` in context, so the models'
  `constrain` calls take effect when it is traced."""

  @functools.wraps(jitted)
  def call(*args, **kwargs):
    with jax.set_mesh(mesh):
      return jitted(*args, **kwargs)

  def lower(*args, **kwargs):
    with jax.set_mesh(mesh):
      return jitted.lower(*args, **kwargs)

  call.lower = lower
  call.compile = lambda *args, **kwargs: lower(*args, **kwargs).compile()
  return call


def constrain(x: jax.Array, *spec) -> jax.Array:
  """Pins an activation's layout inside a jitted function traced under
  `jax.set_mesh(mesh)`; `BATCH` stands for the batch axes. A no-op without a
  mesh in context (plain `model.apply` calls, tests)."""
  if jax.sharding.get_abstract_mesh().empty:
    return x
  return jax.lax.with_sharding_constraint(x, P(*spec))


def carry_shardings(carry: Any, mesh: Mesh) -> Any:
  """Recurrent state is per batch row, so it is split like the batch."""
  return jax.tree.map(lambda _: batch_sharding(mesh), carry)


def global_batch(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict:
  """Turns this process's rows of a batch into global arrays on the mesh."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local_batch.items()}
