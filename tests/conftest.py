"""pytest glue: absltest helpers (create_tempdir) read absl flags."""

from absl import flags

flags.FLAGS.mark_as_parsed()

import os
import tempfile

import jax

# Tests build the same small programs many times (every train_and_evaluate
# call jits afresh); a persistent compilation cache shared by the pytest
# workers turns the repeats into cache hits.
jax.config.update('jax_compilation_cache_dir',
                  os.path.join(tempfile.gettempdir(), 'research-test-jax-cache'))
jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)
jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)
