"""Differentially private training: DP-SGD (Abadi et al. 2016) with Poisson
sampling and Google's dp-accounting.

- `accounting.py`: epsilon of a run (PLD accountant, RDP beside it) and noise
  calibrated to a target epsilon.
- `sampler.py`: the sampling rate, padded batch size and default delta.
- `dp_sgd.py`: the gradient function: per-sequence clipping, Gaussian noise.
- `noise.py`: where the noise and the sampling come from: a secret of the OS
  kept in the checkpoints, or config.seed (privacy.reproducible_noise).
- `audit.py`: canaries and their exposure (Carlini et al. 2019).

The batches themselves are research/data/pipeline.py's 'poisson' kind.
"""
