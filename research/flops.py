"""Training FLOPs per token and device peaks, for tokens/s -> MFU.

FLOPs per trained token (forward + backward = 3 x forward):
  - Every weight matrix used in a matmul costs 2 FLOPs per parameter per
    token forward, so 6 N per token trained, N = the matmul parameters: all
    kernels (qkv, attention out, MLP, LSTM input and recurrent kernels, the
    output layer), the tied embedding once as the output layer; not the
    input lookups, positions, biases or norms.
  - Transformer attention adds 12 L T d per token (the QK^T and AV matmuls,
    forward and backward; PaLM, Chowdhery et al. 2022, Appendix B), T the
    context length, d the model width. The causal mask halves the useful
    work, but the dense kernels compute all of it, so it is counted.
  - The LSTM's count is exactly its matmuls: per layer 2 x 4H x (D + H) per
    token forward, plus 2 H V for the softmax; that is the 6 N rule above.

Peaks: accelerators by device kind from vendor datasheets (dense bf16
matmul, no sparsity); on CPU a float32 matmul peak measured on the spot.
"""

import functools
import time

import jax
import jax.numpy as jnp
import numpy as np

from research import models

# device_kind prefix -> (dense bf16 FLOP/s, source).
ACCELERATOR_PEAKS = (
    ('NVIDIA H200', 989.4e12, 'NVIDIA H200 datasheet: 1,979 TFLOPS bf16 with sparsity, half dense'),
    ('NVIDIA H100 PCIe', 756.5e12, 'NVIDIA H100 datasheet (PCIe): 1,513 TFLOPS bf16 with sparsity'),
    ('NVIDIA H100', 989.4e12, 'NVIDIA H100 datasheet (SXM): 1,979 TFLOPS bf16 with sparsity, half dense'),
    ('NVIDIA A100', 312e12, 'NVIDIA A100 datasheet: 312 TFLOPS bf16 dense'),
    ('NVIDIA L4', 121e12, 'NVIDIA L4 datasheet: 242 TFLOPS bf16 with sparsity'),
    ('NVIDIA A10', 125e12, 'NVIDIA A10 datasheet: 125 TFLOPS bf16 dense'),
    ('TPU v4', 275e12, 'Google Cloud TPU v4 documentation: 275 TFLOPS bf16'),
    ('TPU v5 lite', 197e12, 'Google Cloud TPU v5e documentation: 197 TFLOPS bf16'),
    ('TPU v5e', 197e12, 'Google Cloud TPU v5e documentation: 197 TFLOPS bf16'),
    ('TPU v5p', 459e12, 'Google Cloud TPU v5p documentation: 459 TFLOPS bf16'),
)


def _path_name(path) -> str:
  return '/'.join(str(getattr(k, 'key', k)) for k in path)


def matmul_params(params) -> int:
  """N: parameters of every weight matrix used in a matmul (see above)."""
  total = 0
  # scan_layers stacks the blocks' matrices on a leading layer axis.
  matrices = {_path_name(path): leaf for path, leaf
              in jax.tree_util.tree_flatten_with_path(params)[0]
              if leaf.ndim - models.layer_axes(path) == 2}
  tied = 'head/kernel' not in matrices and any(
      n.startswith(('block_', models.STACKED_BLOCKS + '/')) for n in matrices)
  for name, leaf in matrices.items():
    if name.endswith('embed/embedding'):
      total += leaf.size if tied else 0  # Lookup only, unless it is the head.
    elif name != 'pos_embed':
      total += leaf.size
  return int(total)


def flops_per_token(params, model_config, seq_len: int) -> float:
  """Training FLOPs per token (forward and backward)."""
  n = matmul_params(params)
  flops = 6.0 * n
  if model_config.name == 'transformer':
    flops += 12.0 * model_config.num_layers * seq_len * model_config.d_model
  return flops


@functools.cache
def measure_cpu_matmul_peak(size: int = 1024, repeats: int = 8,
                            min_seconds: float = 1.0) -> float:
  """Best float32 FLOP/s of a jitted size^3 matmul on this CPU.

  At least `repeats` timings and at least `min_seconds` of them: on a shared
  VM the same matmul ran at 80 to 165 GFLOP/s from one second to the next,
  and a best-of-8 taken in a slow second halved the peak (and doubled MFU).
  Measured once per process: every train_and_evaluate call (and the tests
  make many in one process) would otherwise spend that second again.
  """
  a = jnp.ones((size, size), jnp.float32)
  matmul = jax.jit(lambda x, y: x @ y)
  matmul(a, a).block_until_ready()
  best, count, begin = float('inf'), 0, time.perf_counter()
  while count < repeats or time.perf_counter() - begin < min_seconds:
    start = time.perf_counter()
    matmul(a, a).block_until_ready()
    best = min(best, time.perf_counter() - start)
    count += 1
  return 2.0 * size**3 / best


def device_peak(device: jax.Device | None = None, *, measure_cpu: bool = True,
                ) -> tuple[float | None, str]:
  """(peak FLOP/s, where the figure comes from) for `device` (default: the
  first). For CPU the peak of all its cores, measured (None if not asked)."""
  device = device or jax.devices()[0]
  if device.platform == 'cpu':
    if not measure_cpu:
      return None, 'not measured'
    return measure_cpu_matmul_peak(), 'measured: best jitted 1024^3 float32 matmul on this CPU'
  for prefix, peak, source in ACCELERATOR_PEAKS:
    if device.device_kind.startswith(prefix):
      return peak, source
  return None, f'unknown device kind {device.device_kind!r}: add it to research/flops.py'


def total_peak() -> tuple[float | None, str]:
  """Peak of all devices of the run. CPU devices (fake ones included) share
  one host, whose measured peak already counts all its cores."""
  peak, source = device_peak()
  if peak is None or jax.devices()[0].platform == 'cpu':
    return peak, source
  return peak * jax.device_count(), f'{jax.device_count()} x ({source})'


def describe(values_s: list[float]) -> dict[str, float]:
  """Median and spread of step times in seconds."""
  arr = np.asarray(values_s)
  return {'step_time_median_s': float(np.median(arr)),
          'step_time_p10_s': float(np.percentile(arr, 10)),
          'step_time_p90_s': float(np.percentile(arr, 90)),
          'step_time_min_s': float(arr.min())}
