"""Device peaks and step-time summaries, for tokens/s -> MFU.

The FLOPs per trained token are the model family's (`Model.flops_per_token`
in research/models/): 6 N for the N parameters of the weight matrices used in
matmuls (2 FLOPs per parameter per token forward, twice that backward;
`models.matmul_params`), plus what the family computes beyond its weights
(the Transformer's attention).

Peaks: accelerators by device kind from vendor datasheets (dense bf16
matmul, no sparsity); on CPU a float32 matmul peak measured on the spot.
"""

import functools
import time

import jax
import jax.numpy as jnp
import numpy as np

# device_kind prefix -> (dense bf16 FLOP/s, source).
ACCELERATOR_PEAKS = (
  ('NVIDIA H200', 989.4e12, 'NVIDIA H200 datasheet: 1,979 TFLOPS bf16 with sparsity, half dense'),
  ('NVIDIA H100 PCIe', 756.5e12, 'NVIDIA H100 datasheet (PCIe): 1,513 TFLOPS bf16 with sparsity'),
  (
    'NVIDIA H100',
    989.4e12,
    'NVIDIA H100 datasheet (SXM): 1,979 TFLOPS bf16 with sparsity, half dense',
  ),
  ('NVIDIA A100', 312e12, 'NVIDIA A100 datasheet: 312 TFLOPS bf16 dense'),
  ('NVIDIA L4', 121e12, 'NVIDIA L4 datasheet: 242 TFLOPS bf16 with sparsity'),
  ('NVIDIA A10', 125e12, 'NVIDIA A10 datasheet: 125 TFLOPS bf16 dense'),
  ('TPU v4', 275e12, 'Google Cloud TPU v4 documentation: 275 TFLOPS bf16'),
  ('TPU v5 lite', 197e12, 'Google Cloud TPU v5e documentation: 197 TFLOPS bf16'),
  ('TPU v5e', 197e12, 'Google Cloud TPU v5e documentation: 197 TFLOPS bf16'),
  ('TPU v5p', 459e12, 'Google Cloud TPU v5p documentation: 459 TFLOPS bf16'),
)


@functools.cache
def measure_cpu_matmul_peak(size: int = 1024, repeats: int = 8, min_seconds: float = 1.0) -> float:
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


def device_peak(
  device: jax.Device | None = None, *, measure_cpu: bool = True
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
  return {
    'step_time_median_s': float(np.median(arr)),
    'step_time_p10_s': float(np.percentile(arr, 10)),
    'step_time_p90_s': float(np.percentile(arr, 90)),
    'step_time_min_s': float(arr.min()),
  }
