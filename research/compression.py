"""Compression as pure functions of the parameters (research.compress is the
program): int8 quantisation through qwix and global magnitude pruning of the
matrices a model names as compressible (`Model.compressible`)."""

import re

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import qwix

from research import models
from research import sharding
from research.models import layers

QUANTIZE = {'int8': False, 'w8a8': True}  # method -> quantise the matmul inputs too
# Every config.compress.method: the quantisations, then magnitude pruning.
METHODS = (*QUANTIZE, 'prune')


def _kind(model: models.Model, path) -> str | None:
  """'columns', 'rows' or None (not compressible) for the parameter at `path`."""
  name = sharding.param_path(path)
  for pattern, kind in model.compressible:
    if re.fullmatch(pattern, name):
      return kind
  return None


def quantize(model: models.Model, params, *, quantize_inputs: bool):
  """`params` with every compressible matrix as `layers.Int8`: one scale per
  output column of a kernel, per row of an embedding (and per layer of
  weights stacked by scan_layers)."""

  def one(path, leaf):
    kind = _kind(model, path)
    if kind is None:
      return leaf
    stacked = models.layer_axes(path)
    channel = leaf.ndim - 1 if kind == 'columns' else stacked
    axes = tuple(range(stacked)) + (channel,)
    return layers.Int8(qwix.quantize(leaf, jnp.int8, channelwise_axes=axes), quantize_inputs)

  return jax.tree_util.tree_map_with_path(one, params)


def prunable(model: models.Model, params, embeddings: bool) -> list[bool]:
  """Per leaf of `params` (flattened order): whether pruning touches it."""
  leaves = jax.tree_util.tree_flatten_with_path(params)[0]
  return [
    _kind(model, path) == 'columns' or (embeddings and _kind(model, path) == 'rows')
    for path, _ in leaves
  ]


def prune(model: models.Model, params, fraction: float, *, embeddings: bool = False):
  """`params` with the `fraction` of the prunable entries smallest in
  magnitude set to zero: exactly round(fraction * n) of the n entries, by one
  global ranking (ties broken by position)."""
  leaves, treedef = jax.tree.flatten(params)
  chosen = [i for i, ok in enumerate(prunable(model, params, embeddings)) if ok]
  if not chosen:
    raise ValueError(
      'The model declares no weight matrix that pruning may touch (Model.compressible is '
      'empty); declare its matmul kernels there (research/models/contract.py) to prune it.'
    )
  host_leaves = [np.asarray(jax.device_get(leaves[i])) for i in chosen]
  magnitudes = np.concatenate([np.abs(x).ravel() for x in host_leaves])
  k = round(fraction * magnitudes.size)
  keep = np.ones(magnitudes.size, bool)
  if k:
    keep[np.argpartition(magnitudes, k - 1, kind='introselect')[:k]] = False
  offset = 0
  out = list(leaves)
  for i, x in zip(chosen, host_leaves):
    mask = keep[offset : offset + x.size].reshape(x.shape)
    offset += x.size
    out[i] = jax.device_put(np.where(mask, x, np.zeros((), x.dtype)), leaves[i].sharding)
  return jax.tree.unflatten(treedef, out)


def compress_params(model: models.Model, params, compress: ml_collections.ConfigDict):
  """The parameters `config.compress` describes, made from float `params`."""
  if compress.method in QUANTIZE:
    return quantize(model, params, quantize_inputs=QUANTIZE[compress.method])
  if compress.method == 'prune':
    return prune(model, params, compress.prune_fraction, embeddings=compress.prune_embeddings)
  raise ValueError(f'config.compress.method={compress.method!r} compresses nothing.')


def abstract_params(parts, structs, compress: ml_collections.ConfigDict):
  """Shape structs (with shardings) of the compressed parameters: a pruned
  model's are the float ones; a quantised model's hold `layers.Int8` and are
  replicated (a deployment-sized model; the partition rules name float
  matrices)."""
  if compress.method not in QUANTIZE:
    return structs
  shapes = jax.eval_shape(
    lambda p: quantize(parts.model, p, quantize_inputs=QUANTIZE[compress.method]), structs
  )
  replicated = sharding.replicated(parts.mesh)
  return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=replicated), shapes)


def param_bytes(params) -> int:
  """Bytes of every parameter as stored (int8 values and their scales)."""
  return int(
    sum(np.dtype(x.dtype).itemsize * int(np.prod(x.shape)) for x in jax.tree.leaves(params))
  )


def zero_count(model: models.Model, params) -> tuple[int, int]:
  """(exact zeros, entries) over the weight matrices pruning may touch
  (embeddings included)."""
  leaves = jax.tree.leaves(params)
  zeros = total = 0
  for leaf, ok in zip(leaves, prunable(model, params, embeddings=True)):
    if ok:
      x = np.asarray(jax.device_get(leaf))
      zeros += int(np.sum(x == 0))
      total += x.size
  return zeros, total
