"""pytest glue: absltest helpers (create_tempdir) read absl flags."""

from absl import flags

flags.FLAGS.mark_as_parsed()

import os
import tempfile

import jax

# Tests build the same small programs many times (every train_and_evaluate
# call jits afresh); a persistent compilation cache shared by the pytest
# workers turns the repeats into cache hits.
_CACHE = os.path.join(tempfile.gettempdir(), 'research-test-jax-cache')
jax.config.update('jax_compilation_cache_dir', _CACHE)
jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)
jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)
# Subprocesses started by tests (research.main, fake-device workers) share it.
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', _CACHE)
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '0')
# Subprocesses started by tests run `research.main` and friends, which re-execute
# themselves once with a tuned allocator (research/host.py): a second
# interpreter start and import of JAX per subprocess, for a speed-up no test
# measures. tests/host_test.py clears this to test the re-execution itself.
os.environ.setdefault('RESEARCH_KEEP_MALLOC', '1')
