"""Device mesh and shardings: the only module that touches jax.sharding.

The mesh has three axes, `data`, `fsdp` and `tensor`. Batches are split over
(`data`, `fsdp`): every device of those two axes sees different rows.
Parameters follow `PARAM_RULES`, regular expressions on the parameter's path
mapped to a PartitionSpec (first match wins); the optimizer state mirrors
them. One CPU is the 1x1x1 mesh of the same code.

- FSDP: every large matrix has one dimension split over `fsdp`; XLA gathers
  it where it is used and reduce-scatters its gradient.
- Tensor parallelism (Megatron style): the Transformer's qkv and MLP-in
  kernels are split by output column (whole heads, hidden units) and the
  attention-out and MLP-out kernels by input row, so a block needs one
  reduction per matmul pair; the LSTM's gate matrices are split by unit (the
  gate axis is unit-major, see models/lstm.py) and the softmax by input row.
  Vocabulary dimensions are never split: they rarely divide.
- Activations are pinned with `constrain` at the places the layout changes
  (models call it; it is a no-op outside a mesh context).

A rule that does not divide its dimension fails at start-up, naming the
parameter, its shape and the mesh.
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
BATCH = BATCH_AXES  # For specs: P(BATCH, None) splits dimension 0 over both.

# Transformer block weights, by their path inside a block.
_BLOCK_RULES: tuple[tuple[str, P], ...] = (
    (r'attn/qkv/kernel', P('fsdp', 'tensor')),   # Dx(N*3*K), head-major
    (r'attn/qkv/bias', P('tensor')),
    (r'attn/out/kernel', P('tensor', 'fsdp')),   # (N*K)xD
    (r'mlp/fc/kernel', P('fsdp', 'tensor')),     # DxF
    (r'mlp/fc/bias', P('tensor')),
    (r'mlp/proj/kernel', P('tensor', 'fsdp')),   # FxD
)

# (path regex, spec), first match wins. Shapes as in the models' docstrings.
PARAM_RULES: tuple[tuple[str, P], ...] = (
    # Both families: token embedding VxD, split by feature (vocabularies such
    # as shakespeare's 65 characters divide nothing).
    (r'embed/embedding', P(None, 'fsdp')),
    # Transformer.
    (r'pos_embed', P(None, 'fsdp')),                       # PxD
    *((rf'block_\d+/{name}', spec) for name, spec in _BLOCK_RULES),
    # scan_layers=True: the same weights stacked on a leading layer axis.
    *((rf'blocks/{name}', P(None, *spec)) for name, spec in _BLOCK_RULES),
    (r'head/kernel', P('fsdp', None)),                     # DxV
    # LSTM: gate axis 4H is unit-major, so a contiguous split keeps each
    # unit's four gates on one device.
    (r'lstm_\d+/input_kernel', P('fsdp', 'tensor')),       # Dx4H
    (r'lstm_\d+/recurrent_kernel', P('fsdp', 'tensor')),   # Hx4H
    (r'lstm_\d+/bias', P('tensor')),                       # 4H
    # Softmax HxV split by row (unit), like the h it multiplies, so tensor
    # parallelism needs one reduction of the logits and no gather of h; rows
    # because vocabularies rarely divide (a character set of 65).
    (r'softmax/kernel', P(('tensor', 'fsdp'), None)),
    # Norm scales, small biases: replicated.
    (r'.*', P()),
)


def mesh_shape(mesh_config: ml_collections.ConfigDict,
               num_devices: int) -> tuple[int, int, int]:
  """Resolves the (data, fsdp, tensor) sizes; one of them may be -1."""
  sizes = [mesh_config.data, mesh_config.fsdp, mesh_config.tensor]
  free = [i for i, s in enumerate(sizes) if s == -1]
  if len(free) > 1 or any(s == 0 or s < -1 for s in sizes):
    raise ValueError(f'Mesh sizes {dict(zip(MESH_AXES, sizes))} are invalid: '
                     'use positive sizes and at most one -1 ("the rest").')
  fixed = int(np.prod([s for s in sizes if s != -1]))
  if free:
    if num_devices % fixed:
      raise ValueError(f'{num_devices} devices cannot be split into a mesh '
                       f'with fixed sizes {dict(zip(MESH_AXES, sizes))}.')
    sizes[free[0]] = num_devices // fixed
  if int(np.prod(sizes)) != num_devices:
    raise ValueError(f'Mesh {dict(zip(MESH_AXES, sizes))} needs '
                     f'{int(np.prod(sizes))} devices but {num_devices} exist; '
                     'set config.mesh sizes whose product is the device count.')
  return tuple(sizes)


def make_mesh(mesh_config: ml_collections.ConfigDict,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
  """Builds the (data, fsdp, tensor) mesh over `devices` (default: all)."""
  devices = list(jax.devices() if devices is None else devices)
  shape = mesh_shape(mesh_config, len(devices))
  # Auto axes: shardings given at jit boundaries, propagated by the compiler.
  return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * 3,
                       devices=devices)


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
    raise ValueError(f'config.{key}={batch_size} is not divisible by the '
                     f'{n} data-parallel devices of mesh {dict(mesh.shape)}; '
                     'choose a multiple or change config.mesh.')


def _path_str(path) -> str:
  return '/'.join(str(getattr(k, 'key', getattr(k, 'idx', k))) for k in path)


def _check_divides(name: str, shape: tuple[int, ...], spec: P, mesh: Mesh) -> None:
  if len(spec) > len(shape):
    raise ValueError(f'Partition rule {spec} for parameter {name!r} has more '
                     f'entries than its shape {shape}.')
  for size, axes in zip(shape, spec):
    axes = () if axes is None else (axes,) if isinstance(axes, str) else axes
    parts = int(np.prod([mesh.shape[a] for a in axes]))
    if size % parts:
      raise ValueError(
          f'Parameter {name!r} of shape {shape} cannot be sharded as {spec} on '
          f'mesh {dict(mesh.shape)}: its dimension of size {size} does not '
          f'divide into {parts} parts over {axes}. Change config.mesh (or the '
          'model size) so the axis sizes divide it.')


def param_shardings(params: Any, mesh: Mesh,
                    rules: Sequence[tuple[str, P]] = PARAM_RULES) -> Any:
  """Maps every parameter to the NamedSharding of the first matching rule.

  `params` may hold arrays or shape structs; a rule that does not divide its
  parameter's shape raises ValueError.
  """
  def spec_for(path, leaf):
    name = _path_str(path)
    for pattern, spec in rules:
      if re.fullmatch(pattern, name):
        _check_divides(name, tuple(leaf.shape), spec, mesh)
        return NamedSharding(mesh, spec)
    raise ValueError(f'No partition rule matches parameter {name!r}.')
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
  return {k: jax.make_array_from_process_local_data(sharding, v)
          for k, v in local_batch.items()}
