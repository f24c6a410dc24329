"""Device mesh and shardings: the only module that touches jax.sharding.

The mesh has three axes, `data`, `fsdp` and `tensor`. Batches are split over
(`data`, `fsdp`); parameters follow `PARAM_RULES`, regular expressions on the
parameter's path mapped to a PartitionSpec (first match wins). One CPU is the
1x1x1 mesh of the same code.
"""

import re
from typing import Any, Sequence

import jax
import ml_collections
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ('data', 'fsdp', 'tensor')
BATCH_AXES = ('data', 'fsdp')

# (path regex, spec). Everything is replicated for now: pure data
# parallelism. FSDP and tensor-parallel rules extend this list.
PARAM_RULES: tuple[tuple[str, P], ...] = (
    ('.*', P()),
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


def param_shardings(params: Any, mesh: Mesh,
                    rules: Sequence[tuple[str, P]] = PARAM_RULES) -> Any:
  """Maps every parameter to the NamedSharding of the first matching rule."""
  def spec_for(path, _):
    name = _path_str(path)
    for pattern, spec in rules:
      if re.fullmatch(pattern, name):
        return NamedSharding(mesh, spec)
    raise ValueError(f'No partition rule matches parameter {name!r}.')
  return jax.tree_util.tree_map_with_path(spec_for, params)


def carry_shardings(carry: Any, mesh: Mesh) -> Any:
  """Recurrent state is per batch row, so it is split like the batch."""
  return jax.tree.map(lambda _: batch_sharding(mesh), carry)


def global_batch(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict:
  """Turns this process's rows of a batch into global arrays on the mesh."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, v)
          for k, v in local_batch.items()}
