"""Keys every experiment config has, with their defaults.

Family files (`ptb_lstm.py`, `shakespeare_char.py`, ...) start from
`base_config()` and override; code never reads a key that is not set here or
in a family file. A model family's keys live in its `{name}_model()` (the
families have different hyperparameters), found by `model_defaults(name)`.
Comments that offer a choice name the registry that lists the choices.
"""

import ml_collections


def base_config() -> ml_collections.ConfigDict:
  """Returns the keys shared by every experiment, with their defaults."""
  c = ml_collections.ConfigDict()
  c.seed = 0  # Base PRNG seed: parameters, dropout and data order derive from it.

  c.data = ml_collections.ConfigDict()
  c.data.name = 'ptb'  # One of research.data.DATASETS.
  c.data.path = ''  # Local file/folder to read instead of downloading ('' = download or package).
  c.data.tfds_dir = ''  # TFDS data_dir for the built array_record files ('' = TFDS default).
  c.data.level = 'word'  # Tokenizer, a name in research/data/tokenizers.py KINDS; text_file only (ptb and tiny_shakespeare fix theirs).
  c.data.split = '0.9,0.05,0.05'  # text_file only: train,valid[,test] fractions by characters.
  c.data.vocab_size = 0  # text_file word level: max vocabulary incl. <unk> (0 = all words); sentencepiece: its pieces (bytes included).
  c.data.spm_model_type = 'bpe'  # sentencepiece level: 'bpe' or 'unigram'.
  c.data.seq_len = 35  # Tokens per training row: unroll length (LSTM) or context (Transformer).
  c.data.batch_size = 20  # Global training batch, in rows of seq_len tokens.
  c.data.eval_batch_size = (
    20  # Rows scored in parallel at evaluation (the LSTM carries state along each).
  )

  c.num_epochs = 0  # Training epochs; used when num_train_steps <= 0 (0 = step-based config).
  c.num_train_steps = 1000  # Optimizer steps; <= 0 means num_epochs * steps per epoch.
  c.log_every_steps = 100  # Steps between console/TensorBoard/metrics.jsonl train lines.
  c.eval_every_steps = 1000  # Steps between evaluations on the valid split (<= 0: once per epoch).
  c.eval_at_start = False  # Also score the valid split before the first step (the loss at init).
  # With each train line, the model's activation statistics (`Model.stats`; Transformer: largest
  # attention logit and block-output RMS per layer) from one extra forward pass on that step's batch.
  c.model_stats = True
  c.checkpoint_every_steps = 1000  # Steps between checkpoints (<= 0: once per epoch).
  c.keep_checkpoints = 3  # Number of most recent checkpoints kept on disk.
  c.skip_nonfinite_steps = False  # True: a step with a non-finite loss/gradient leaves the state unchanged (counted in metrics); False: stop the run.
  c.eval_on_test = True  # Also score the test split (where one exists) at the end of training.
  # Fine-tuning: start from the parameters of a workdir's latest checkpoint, or of a checkpoint
  # step folder (WORKDIR/checkpoints/N); the optimizer, step and data order start fresh. The
  # parameter shapes and the tokenizer must match. A run with its own checkpoints resumes them.
  c.init_from = ''

  c.optim = ml_collections.ConfigDict()
  c.optim.name = 'adamw'  # A name in research/optim.py OPTIMIZERS; the keys each reads are below.
  c.optim.learning_rate = 1e-3  # Peak learning rate.
  c.optim.grad_clip_norm = 1.0  # Global gradient-norm clip (<= 0: no clipping).
  c.optim.grad_accum_steps = 1  # Micro-batches per optimizer step: gradients of data.batch_size / k rows each are summed inside the jitted step (1 = none).
  # Parameters not updated: a regular expression searched in each parameter's path
  # ('embed/embedding', 'lstm_0/input_kernel', 'block_1/mlp/fc/kernel'); '' = none.
  c.optim.frozen = ''
  # Pruned fine-tuning: weights that are exactly zero in config.init_from's parameters stay
  # exactly zero (their gradients and updates are masked); research.compress sets it.
  c.optim.hold_zeros = False
  # Objective, a name in research/losses.py OBJECTIVES (each says what it averages over).
  c.optim.loss = 'token_mean'
  # Coefficient of PaLM's z-loss (Chowdhery et al. 2022, section 5; docs/stability.md): adds
  # z_loss * z^2 per weighted token to the objective, z = log sum exp(logits) in nats, divided
  # like the cross-entropy; PaLM and Wortsman et al. 2024 use 1e-4. 0 = off. Dimensionless.
  c.optim.z_loss = 0.0
  # Every optimizer but sgd (schedule_free_adamw: warmup_steps only, then constant).
  c.optim.warmup_steps = 100  # Linear warmup from 0 to learning_rate, in steps.
  c.optim.decay_steps = (
    0  # Step at which the cosine reaches min_learning_rate (0 = num_train_steps).
  )
  c.optim.min_learning_rate = 1e-4  # Learning rate at the end of the cosine.
  # Adam's betas: adamw's, and those of muon's AdamW half (embeddings, head, norms, biases).
  c.optim.b1 = 0.9  # Adam beta1.
  c.optim.b2 = 0.99  # Adam beta2.
  # Every optimizer but sgd: decoupled weight decay, applied to matrices only (not biases,
  # norms), lr_t * weight_decay * theta per step (docs/optimizers.md says how each optax rule
  # takes it).
  c.optim.weight_decay = 0.1
  # How weight_decay is applied, a name in research/optim.py WEIGHT_DECAY_MODES: 'coupled'
  # (optax.adamw) decays by lr_t * weight_decay per step, 'independent' (Wortsman et al. 2024)
  # by (lr_t / learning_rate) * weight_decay; docs/stability.md converts one to the other.
  c.optim.weight_decay_mode = 'coupled'
  # sgd only.
  c.optim.decay_after_epochs = 4  # Epochs at the constant rate before the per-epoch decay starts.
  c.optim.decay_factor = 0.5  # Multiplier applied to the rate once per epoch after that.
  # Each optimizer's own keys, read only under its optim.name (research/optim.py OPTIMIZERS names
  # the sub-config; docs/optimizers.md); one changed here under another optim.name is refused.
  # lion (Chen et al. 2023, Algorithm 2 and its defaults): update sign(b1 m + (1 - b1) g).
  c.optim.lion = ml_collections.ConfigDict()
  c.optim.lion.b1 = 0.9  # Weight of the momentum in the signed update (dimensionless).
  c.optim.lion.b2 = 0.99  # Decay of the momentum m per step (dimensionless).
  # adafactor (Shazeer and Stern 2018; optax.adafactor's defaults, which each names below).
  c.optim.adafactor = ml_collections.ConfigDict()
  # Second-moment decay beta2_t = 1 - t^-decay_rate at step t (the paper's 0.8, section 7).
  c.optim.adafactor.decay_rate = 0.8
  # d: each update is divided by max(1, RMS(update) / d) (the paper's 1.0, section 6); 0 = off.
  c.optim.adafactor.clipping_threshold = 1.0
  # Second moments of a parameter are factored (row and column means) when its two largest
  # dimensions are both at least this, else kept whole (optax's 128; the paper factors every
  # matrix). In elements.
  c.optim.adafactor.min_dim_size_to_factor = 128
  # True: learning_rate is relative, each update times max(1e-3, RMS(parameter)) (the paper's
  # relative step size, section 8).
  c.optim.adafactor.multiply_by_parameter_scale = True
  # beta1 of a first moment (0 = none, the paper's default; it costs one copy of the parameters).
  c.optim.adafactor.momentum = 0.0
  # muon (Jordan et al. 2024, optax.contrib.muon): orthogonalised momentum on the model family's
  # hidden matrices (Model.param_roles); the rest take AdamW with optim.b1 / b2 at the same rate.
  c.optim.muon = ml_collections.ConfigDict()
  c.optim.muon.momentum = 0.95  # Momentum decay (Jordan et al. 2024: 0.95); dimensionless.
  c.optim.muon.ns_steps = 5  # Newton-Schulz iterations of the orthogonalisation (theirs: 5).
  # Nesterov momentum (theirs; optax.contrib.muon applies it to the AdamW half too).
  c.optim.muon.nesterov = True
  # 0: each orthogonalised update times sqrt(max(1, fan_out / fan_in)) (Jordan's scale); c > 0:
  # times c * sqrt(max(fan_in, fan_out)), RMS about c (Liu et al. 2025 use 0.2, AdamW's RMS).
  c.optim.muon.consistent_rms = 0.0
  # schedule_free_adamw (Defazio et al. 2024, optax.contrib.schedule_free): constant rate after
  # optim.warmup_steps; evaluation reads the average x (docs/optimizers.md).
  c.optim.schedule_free_adamw = ml_collections.ConfigDict()
  # Interpolation y = (1 - b1) z + b1 x where gradients are taken, in (0, 1) (theirs: 0.9).
  c.optim.schedule_free_adamw.b1 = 0.9
  c.optim.schedule_free_adamw.b2 = 0.999  # Decay of the second moment (theirs: 0.999).
  # Each step enters the average x with weight max_lr_t ^ weight_lr_power (theirs and optax's: 2).
  c.optim.schedule_free_adamw.weight_lr_power = 2.0

  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1  # Data-parallel axis size (-1 = all devices left over).
  c.mesh.fsdp = 1  # Parameter-sharding axis size.
  c.mesh.tensor = 1  # Tensor-parallel axis size.

  c.distributed = ml_collections.ConfigDict()
  # Multi-process runs (TPU pods, multi-node GPU): jax.distributed.initialize.
  # 'auto': when a coordinator is named (here or $JAX_COORDINATOR_ADDRESS) or
  # a multi-process launcher is detected (Slurm srun, Open MPI, TPU pod);
  # 'always' / 'never' force it.
  c.distributed.initialize = 'auto'
  c.distributed.coordinator_address = (
    ''  # host:port of process 0 ('' = $JAX_COORDINATOR_ADDRESS or auto-detect).
  )
  c.distributed.num_processes = 0  # 0 = $JAX_NUM_PROCESSES or auto-detect.
  c.distributed.process_id = -1  # -1 = $JAX_PROCESS_ID or auto-detect.

  c.eval = ml_collections.ConfigDict()
  # Context of every evaluation, in tokens (0 = data.seq_len, the training context). A
  # Transformer scores non-overlapping windows of this length: longer than it was trained on
  # for a length-extrapolation study (not with a positional kind whose table has the training
  # length: `fixed_length` in research/models/positional.py). The LSTM reads whole rows.
  c.eval.seq_len = 0
  # More contexts at which the final model is scored, e.g. (512, 1024): each adds the records
  # 'valid@N' (and 'test@N' when eval_on_test) to metrics.jsonl, under the same rules.
  c.eval.extra_seq_lens = ()

  # Differentially private training (DP-SGD; docs/privacy.md). The unit of privacy is one
  # training sequence of data.seq_len tokens; data.batch_size becomes the expected rows of a
  # step, each sequence sampled with probability batch_size / N (Poisson sampling).
  c.privacy = ml_collections.ConfigDict()
  c.privacy.enabled = False
  c.privacy.l2_clip_norm = 1.0  # C: each sequence's gradient is scaled to norm at most C.
  c.privacy.noise_multiplier = 0.0  # sigma: noise std / C. 0: calibrated to target_epsilon.
  c.privacy.target_epsilon = 0.0  # Epsilon at the end of training (with noise_multiplier 0).
  c.privacy.delta = 0.0  # 0: the largest power of ten below 1 / N (printed).
  # Rows whose per-sequence gradients are held at once (0: all); groups of padding alone are
  # skipped, so small groups make a step cost about its sampled rows.
  c.privacy.microbatch_size = 4
  # The norms of the layers a model declares (every LSTM layer; an untied Transformer's
  # embedding and head) from their inputs and output gradients, without per-sequence
  # gradients of them: the same clipped sum up to float rounding, faster (docs/privacy.md).
  # False: per-sequence gradients of all.
  c.privacy.ghost_clipping = True
  # False: the noise and the Poisson sampling come from a secret drawn from the OS at the
  # run's first start and kept only in its checkpoints (docs/privacy.md, threat model).
  # True: from config.seed, reproducible; epsilon then assumes the seed is secret.
  c.privacy.reproducible_noise = False

  # Memorisation audit (Carlini et al. 2019; docs/privacy.md): canaries, a prefix and a
  # secret of secret_length tokens from alphabet_size vocabulary tokens, inserted into the
  # training split `repetitions` times each (canaries_per_count per count, and as many held
  # out), scored after training (and by --mode=audit) against reference_size candidates.
  c.audit = ml_collections.ConfigDict()
  c.audit.enabled = False
  c.audit.prefix = 'the secret code is'
  c.audit.secret_length = 4
  c.audit.alphabet_size = 10
  c.audit.repetitions = (1, 4, 16, 64)
  c.audit.canaries_per_count = 1
  c.audit.reference_size = 10000  # All of R when a^k is at most this; else a uniform sample.
  c.audit.seed = 0

  # Knowledge distillation (Hinton et al. 2015; docs/compression.md): the student trains on
  #   loss = (1 - alpha) * CE(data) + alpha * T^2 * KL(p_teacher^T || p_student^T),
  # p^T = softmax(logits / T), both on the same inputs; the T^2 keeps the term's gradients at
  # a comparable scale across temperatures. The teacher is frozen and not checkpointed (its
  # path and parameter checksum are recorded in runs.jsonl); it needs the student's tokenizer.
  c.distill = ml_collections.ConfigDict()
  c.distill.teacher = ''  # A finished workdir whose latest checkpoint is the teacher ('' = off).
  c.distill.alpha = 0.5  # Weight of the distillation term, in [0, 1] (0 = the data loss alone).
  c.distill.temperature = 2.0  # T > 0: softens both distributions (1 = as they are).

  # Post-training compression (docs/compression.md). research.compress writes these into the
  # config of the run it makes; a training config leaves them empty. method: 'int8' (weights,
  # per output channel), 'w8a8' (int8 weights and activations), 'prune' (global magnitude
  # pruning of the weight matrices to prune_fraction zeros; the embeddings too with
  # prune_embeddings). source: the workdir of the float model it was made from.
  c.compress = ml_collections.ConfigDict()
  c.compress.method = ''
  c.compress.source = ''
  c.compress.prune_fraction = 0.0
  c.compress.prune_embeddings = False

  c.sample = ml_collections.ConfigDict()
  c.sample.num_tokens = 200  # Tokens generated at each evaluation (0 = no sample).
  c.sample.prompt = ''  # Text the sample continues ('' = start of a line).
  c.sample.temperature = 0.8  # Softmax temperature.
  c.sample.top_k = 40  # Keep the k most likely tokens (0 = all).
  c.sample.top_p = 1.0  # Nucleus mass kept (1.0 = all).
  return c


def lstm_model() -> ml_collections.ConfigDict:
  """Returns the LSTM hyperparameters (Zaremba et al. 2014 small by default)."""
  m = ml_collections.ConfigDict()
  m.name = 'lstm'  # Model family, a name in research/models/__init__.py MODELS.
  m.num_layers = 2  # Stacked LSTM layers.
  m.hidden_size = 200  # Units per layer; also the embedding width.
  m.dropout_rate = 0.0  # Dropout on non-recurrent connections.
  m.init_scale = 0.1  # Every parameter starts uniform in [-init_scale, init_scale].
  return m


def transformer_model() -> ml_collections.ConfigDict:
  """Returns the Transformer hyperparameters (nanoGPT shakespeare_char by default)."""
  m = ml_collections.ConfigDict()
  m.name = 'transformer'  # Model family, a name in research/models/__init__.py MODELS.
  m.num_layers = 6  # Transformer blocks.
  m.num_heads = 6  # Attention heads per block.
  # Key/value heads per block, shared by groups of num_heads / num_kv_heads query heads: 0 = as
  # many as num_heads (multi-head attention), 1 = multi-query (Shazeer 2019), a divisor of
  # num_heads in between = grouped-query (Ainslie et al. 2023). The decoding cache holds only
  # these heads. 0 rather than a copy of num_heads, so a variant that changes num_heads keeps MHA.
  m.num_kv_heads = 0
  m.d_model = 384  # Residual stream width.
  m.d_ff = 1536  # MLP hidden width.
  m.dropout_rate = 0.2  # Dropout on embeddings, attention weights and residual branches.
  # Positional information, a name in research/models/positional.py POSITIONAL (a table added
  # to the embeddings, a rotation of queries and keys, or attention biases; each kind says).
  m.positional = 'learned'
  m.norm = 'layernorm'  # A name in research/models/transformer_options.py NORMS.
  # Where the norms sit, a name in research/models/transformer_options.py NORM_POSITIONS: 'pre'
  # at each block's two inputs and before the head (GPT-2); 'post' after each residual sum.
  m.norm_position = 'pre'
  # Each block's MLP, D -> d_ff -> D, a name in research/models/transformer_options.py MLPS. A
  # gated one has two input projections d_ff wide each (1.5x the parameters at equal d_ff).
  m.mlp = 'gelu'
  m.tie_embeddings = True  # Output layer reuses the token embedding matrix.
  # Multiply the looked-up token embeddings by sqrt(d_model) before positions are added (Vaswani
  # et al. 2017, section 3.4; fairseq's embed_scale). A tied head still reads them unscaled.
  m.scale_embeddings = False
  m.use_bias = False  # Biases in dense layers and LayerNorms (nanoGPT: False).
  # Training stability (docs/stability.md). qk-norm: 'none', or a norm of NORMS applied to each
  # head's queries and keys over its head_dim features, before RoPE and the 1/sqrt(head_dim)
  # (Dehghani et al. 2023; Wortsman et al. 2024's qk-layernorm); a name in
  # research/models/transformer_options.py QK_NORMS. Its gain (and bias, with use_bias) is one
  # vector of head_dim per layer for queries and one for keys, shared by the heads.
  m.qk_norm = 'none'
  # Output logits become c * tanh(logits / c), bounded by c in absolute value (Gemma 2, Gemma
  # Team 2024, section 2; Gemma 2 uses c = 30), in training, evaluation and sampling. 0 = off.
  m.logit_softcap = 0.0
  # How initial scales and learning rates follow the width, a name in research/models/mup.py
  # PARAMETRIZATIONS: 'standard' (as always), or 'mup' (Wortsman et al. 2024's muParam (simple),
  # section 3.2.4; docs/stability.md): with r = d_model / mup_base_width, every attention and MLP
  # kernel and the untied head start at std times 1/sqrt(r) and take Adam's rate times 1/r;
  # embeddings, norms and biases keep theirs. Needs tie_embeddings=False and optim.name adamw.
  m.parametrization = 'standard'
  # 'mup' only: the width (d_model, in features) the learning rate was tuned at, r = 1 there;
  # 0 = unset ('mup' refuses it; 'standard' ignores the key).
  m.mup_base_width = 0
  # Speed options (accelerators mostly); the defaults are the exact recipe.
  m.compute_dtype = 'float32'  # A name in research/models/transformer.py COMPUTE_DTYPES: activations and matmuls in it; parameters, optimizer state, softmaxes and the loss stay float32.
  m.attention = 'xla'  # A name in research/models/attention.py ATTENTION_KINDS (a fused kind uses cuDNN flash attention on GPU; each says whether it drops attention weights).
  m.remat = False  # Recompute each block's activations in the backward pass: less memory, about a third more compute.
  m.scan_layers = False  # One lax.scan over stacked block weights (params under 'blocks', leading axis L): compile time independent of depth; same function.
  return m


def model_defaults(name) -> ml_collections.ConfigDict | None:
  """The defaults of model family `name` (a name in research.models.MODELS): its
  `{name}_model()` here, or None for a name without one. A new family adds that
  function, and every tool that fills a saved config's missing keys finds it."""
  make = globals().get(f'{name}_model') if isinstance(name, str) else None
  return make() if callable(make) else None


def select_variant(variants: dict, arg: str | None, default: str) -> ml_collections.ConfigDict:
  """Returns `variants[arg or default]()`, or raises naming the valid variants."""
  name = arg or default
  if name not in variants:
    raise ValueError(f'Unknown config variant {name!r}; valid variants: {sorted(variants)}.')
  return variants[name]()
