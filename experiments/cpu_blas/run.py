"""OpenBLAS's sgemm as XLA's CPU matmul: built, checked, timed (issue 31).

Issue 31 measured XLA's CPU dot at the recipes' shapes well below the MKL
sgemm eager PyTorch calls on the Intel kind. This script tries the kernel
route the issue names: `sgemm.cc`, an XLA FFI custom call to OpenBLAS's
cblas_sgemm (the `scipy-openblas32` wheel from PyPI), put in place of
`research.models.layers.matmul`'s float path (forward, and the backward's two
matmuls through a custom VJP) in this process only. It

1. builds the library with g++ against jax.ffi's headers (a few seconds);
2. checks it against XLA: products, gradients and per-row (vmapped)
   gradients at small shapes, float32 within 1e-4 relative;
3. times one matmul at each recipe shape inside one jitted loop of 50, so
   dispatch is amortised (XLA, the custom call, numpy's own OpenBLAS);
4. times the train step of both CPU recipes (`python -m research.bench
   --json` in subprocesses, the custom call patched in or not), interleaved
   in rounds.

    pip install scipy-openblas32==0.3.34.481.3   # not in requirements.txt
    python experiments/cpu_blas/run.py [--rounds=2] [--steps=60]

OPENBLAS_NUM_THREADS is left as the environment sets it (OpenBLAS's default:
every core); the step timings name it. Figures and the verdict: README.md.
"""

import ctypes
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parents[1]
SHAPES = ((768, 128, 384), (768, 128, 512), (768, 512, 128), (400, 200, 800), (400, 201, 10000))
RECIPES = ('configs/shakespeare_char.py:cpu', 'configs/ptb_lstm.py:small')


def build(out_dir: pathlib.Path) -> pathlib.Path:
  import jax  # pylint: disable=import-outside-toplevel
  import scipy_openblas32  # pylint: disable=import-outside-toplevel

  lib = out_dir / 'libresearch_sgemm.so'
  subprocess.run(
    ['g++', '-O2', '-shared', '-fPIC', '-std=c++17', '-w', f'-I{jax.ffi.include_dir()}']
    + [f'-I{scipy_openblas32.get_include_dir()}', str(HERE / 'sgemm.cc')]
    + [f'-L{scipy_openblas32.get_lib_dir()}', '-lscipy_openblas']
    + [f'-Wl,-rpath,{scipy_openblas32.get_lib_dir()}', '-o', str(lib)],
    check=True,
  )
  return lib


def matmul_fn(lib: pathlib.Path):
  """`matmul(x, w)` over x's last axis through the custom call, with a VJP."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

  handler = ctypes.cdll.LoadLibrary(str(lib)).ResearchSgemm
  jax.ffi.register_ffi_target('research_sgemm', jax.ffi.pycapsule(handler), platform='cpu')

  def gemm(a, b, trans_a=False, trans_b=False):
    m = a.shape[-1] if trans_a else a.shape[-2]
    n = b.shape[-2] if trans_b else b.shape[-1]
    out = jax.ShapeDtypeStruct(jnp.broadcast_shapes(a.shape[:-2], b.shape[:-2]) + (m, n), a.dtype)
    call = jax.ffi.ffi_call('research_sgemm', out, vmap_method='expand_dims')
    return call(a, b, trans_a=trans_a, trans_b=trans_b)

  @jax.custom_vjp
  def matmul_2d(x, w):
    return gemm(x, w)

  def forward(x, w):
    return gemm(x, w), (x, w)

  def backward(saved, dy):
    x, w = saved
    return gemm(dy, w, trans_b=True), gemm(x, dy, trans_a=True)

  matmul_2d.defvjp(forward, backward)

  def matmul(x, w):
    return matmul_2d(x.reshape(-1, x.shape[-1]), w).reshape(x.shape[:-1] + (w.shape[-1],))

  return matmul


def patch_layers(matmul) -> None:
  from research.models import layers  # pylint: disable=import-outside-toplevel

  xla = layers.matmul

  def patched(x, w):
    if layers.is_int8(w) or x.dtype != np.float32 or w.dtype != np.float32:
      return xla(x, w)
    return matmul(x, w)

  layers.matmul = patched


def check(matmul) -> float:
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

  x = jax.random.normal(jax.random.key(0), (3, 5, 7))
  w = jax.random.normal(jax.random.key(1), (7, 11))
  loss = lambda mm: lambda x, w: jnp.sum(jnp.sin(mm(x, w)))  # noqa: E731
  pairs = [
    (matmul(x, w), x @ w),
    *zip(jax.grad(loss(matmul), (0, 1))(x, w), jax.grad(loss(jnp.matmul), (0, 1))(x, w)),
    (
      jax.vmap(jax.grad(loss(matmul), 1), (0, None))(x, w),
      jax.vmap(jax.grad(loss(jnp.matmul), 1), (0, None))(x, w),
    ),
  ]
  worst = max(float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b))) for a, b in pairs)
  if worst > 1e-4:
    raise SystemExit(f'the custom call differs from XLA by {worst:.2e} (relative)')
  return worst


def time_kernels(matmul, repeats: int = 50) -> list[dict]:
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

  def per_call(fn, reps=10):
    fn()
    start = time.perf_counter()
    for _ in range(reps):
      fn()
    return (time.perf_counter() - start) / reps / repeats * 1e3

  rows = []
  for m, k, n in SHAPES:
    a = jax.random.normal(jax.random.key(0), (m, k))
    ws = jax.random.normal(jax.random.key(1), (repeats, k, n))

    def loop(mm):
      body = lambda i, acc: acc + mm(a, ws[i])  # noqa: E731
      return jax.jit(lambda: jax.lax.fori_loop(0, repeats, body, jnp.zeros((m, n))))

    xla, blas = loop(jnp.matmul), loop(matmul)
    a_np, ws_np = np.asarray(a), np.asarray(ws)
    ms = {
      'xla': per_call(lambda: xla().block_until_ready()),
      'ffi': per_call(lambda: blas().block_until_ready()),
      'numpy': per_call(lambda: [a_np @ w for w in ws_np]),
    }
    flops = 2 * m * k * n
    rows.append(
      {'shape': f'{m}x{k}x{n}', **{f'{kind}_gflops': flops / t / 1e6 for kind, t in ms.items()}}
    )
  return rows


def step_time(config: str, arm: str, steps: int, lib: pathlib.Path) -> float:
  """One arm's median step in its own process; the custom call's arm loads
  `lib`, built once by `main`."""
  with tempfile.NamedTemporaryFile(suffix='.json') as out:
    subprocess.run(
      [sys.executable, __file__, f'--arm={arm}', f'--lib={lib}', f'--config={config}']
      + [f'--steps={steps}', f'--json={out.name}'],
      check=True,
      cwd=ROOT,
      capture_output=True,
    )
    figures = json.load(open(out.name))
    return 1e3 * (figures[0] if isinstance(figures, list) else figures)['step_time_median_s']


def main() -> None:
  args = dict(a[2:].split('=', 1) for a in sys.argv[1:] if a.startswith('--') and '=' in a)
  rounds, steps = int(args.get('rounds', 2)), int(args.get('steps', 60))
  with tempfile.TemporaryDirectory() as build_dir:
    measure(build(pathlib.Path(build_dir)), rounds, steps)


def measure(lib: pathlib.Path, rounds: int, steps: int) -> None:
  matmul = matmul_fn(lib)
  print(f'custom call against XLA: largest relative difference {check(matmul):.1e}')
  print('\n| shape (m x k x n) | XLA GFLOP/s | custom call | numpy |\n| --- | --- | --- | --- |')
  for row in time_kernels(matmul):
    print(
      f'| {row["shape"]} | {row["xla_gflops"]:.0f} | {row["ffi_gflops"]:.0f} | {row["numpy_gflops"]:.0f} |'
    )
  threads = os.environ.get('OPENBLAS_NUM_THREADS', 'unset (all cores)')
  print(f'\nstep medians, ms (OPENBLAS_NUM_THREADS {threads}), {rounds} interleaved rounds:')
  for config in RECIPES:
    times = {arm: [] for arm in ('xla', 'blas')}
    for _ in range(rounds):
      for arm in times:
        times[arm].append(step_time(config, arm, steps, lib))
    print(
      f'| {config} | xla {" / ".join(f"{t:.1f}" for t in times["xla"])} '
      f'| custom call {" / ".join(f"{t:.1f}" for t in times["blas"])} |'
    )


if __name__ == '__main__':
  if any(a.startswith('--arm=') for a in sys.argv):
    # One arm's `research.bench` run, in its own process.
    own = dict(a[2:].split('=', 1) for a in sys.argv if a.startswith(('--arm=', '--lib=')))
    sys.argv = [a for a in sys.argv if not a.startswith(('--arm=', '--lib='))]
    sys.path.insert(0, str(ROOT))
    from absl import app  # pylint: disable=import-outside-toplevel

    from research import bench, cli, host  # pylint: disable=import-outside-toplevel

    host.reexec_with_huge_pages()
    if own['arm'] == 'blas':
      patch_layers(matmul_fn(pathlib.Path(own['lib'])))
    app.run(bench.main, flags_parser=cli.flags_parser('config'))
  else:
    main()
