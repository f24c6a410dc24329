"""nanoGPT's CPU shakespeare_char recipe in plain PyTorch, scored exactly.

An independent re-implementation (written for this repository, not nanoGPT's
code) of the recipe that `configs/shakespeare_char.py:cpu` carries: 4 layers,
4 heads, width 128, context 64, batch 12, no biases, tied embeddings, dropout
0, AdamW (0.9, 0.99) with weight decay 0.1 on matrices, lr 1e-3 with
nanoGPT's warmup (it + 1) / 101 for 100 steps and a cosine to 1e-4 at step
2,000, clipping at 1.0, windows drawn uniformly at random every step.

It answers one question: what validation loss does the recipe itself reach
when the validation split is scored the way research/ scores it (every
prediction once, non-overlapping windows of 64)? It also repeats nanoGPT's
own estimate (the mean of 20 random 12x64 batches) 30 times, to show how far
that estimate moves on one trained model.

Needs PyTorch, which requirements.txt does not install:
  python3 -m venv /tmp/torch && /tmp/torch/bin/pip install torch==2.13.0 numpy
  /tmp/torch/bin/python experiments/nanogpt_shakespeare_char/torch_reference.py \
      --data=../shared/data/tinyshakespeare/input.txt --seeds=0,1,2,3,4 \
      --out=experiments/nanogpt_shakespeare_char/torch_reference.jsonl
Each seed takes about 2 minutes on a 2-core CPU and appends one JSON line.
"""

import argparse
import json
import math
import time

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

LAYERS, HEADS, WIDTH, CONTEXT, BATCH = 4, 4, 128, 64, 12
STEPS, WARMUP, LR, MIN_LR = 2000, 100, 1e-3, 1e-4
ESTIMATE_BATCHES, ESTIMATE_REPEATS = 20, 30


class Block(nn.Module):
  """Pre-LayerNorm block: causal self-attention, then a GELU MLP."""

  def __init__(self):
    super().__init__()
    self.ln_1 = nn.LayerNorm(WIDTH, bias=False)
    self.qkv = nn.Linear(WIDTH, 3 * WIDTH, bias=False)
    self.attn_out = nn.Linear(WIDTH, WIDTH, bias=False)
    self.ln_2 = nn.LayerNorm(WIDTH, bias=False)
    self.fc = nn.Linear(WIDTH, 4 * WIDTH, bias=False)
    self.proj = nn.Linear(4 * WIDTH, WIDTH, bias=False)

  def forward(self, x):
    b, t, _ = x.shape
    heads = lambda z: z.view(b, t, HEADS, WIDTH // HEADS).transpose(1, 2)
    q, k, v = self.qkv(self.ln_1(x)).split(WIDTH, dim=2)
    y = F.scaled_dot_product_attention(heads(q), heads(k), heads(v), is_causal=True)
    x = x + self.attn_out(y.transpose(1, 2).reshape(b, t, WIDTH))
    return x + self.proj(F.gelu(self.fc(self.ln_2(x))))


class Model(nn.Module):
  """Token and learned position embeddings, blocks, final norm, tied head."""

  def __init__(self, vocab_size: int):
    super().__init__()
    self.embed = nn.Embedding(vocab_size, WIDTH)
    self.pos_embed = nn.Embedding(CONTEXT, WIDTH)
    self.blocks = nn.ModuleList(Block() for _ in range(LAYERS))
    self.ln_f = nn.LayerNorm(WIDTH, bias=False)
    for m in self.modules():
      if isinstance(m, (nn.Linear, nn.Embedding)):
        nn.init.normal_(m.weight, 0.0, 0.02)
    for block in self.blocks:  # GPT-2's residual-projection scaling.
      for w in (block.attn_out.weight, block.proj.weight):
        nn.init.normal_(w, 0.0, 0.02 / math.sqrt(2 * LAYERS))

  def forward(self, inputs, targets):
    """Per-token cross-entropy (nats), same shape as `targets`."""
    x = self.embed(inputs) + self.pos_embed(torch.arange(inputs.shape[1]))
    for block in self.blocks:
      x = block(x)
    logits = self.ln_f(x) @ self.embed.weight.T
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction='none').view(
      targets.shape
    )


def learning_rate(step: int) -> float:
  if step < WARMUP:
    return LR * (step + 1) / (WARMUP + 1)
  ratio = min((step - WARMUP) / (STEPS - WARMUP), 1.0)
  return MIN_LR + 0.5 * (1 + math.cos(math.pi * ratio)) * (LR - MIN_LR)


def random_batch(tokens: torch.Tensor, generator: torch.Generator):
  starts = torch.randint(len(tokens) - CONTEXT, (BATCH,), generator=generator)
  rows = torch.stack([tokens[s : s + CONTEXT + 1] for s in starts.tolist()])
  return rows[:, :-1], rows[:, 1:]


@torch.no_grad()
def exact_loss(model: Model, tokens: torch.Tensor) -> tuple[float, int]:
  """Mean loss over every prediction of the split, in windows of CONTEXT."""
  total, count = 0.0, 0
  for start in range(0, len(tokens) - 1, CONTEXT):
    end = min(start + CONTEXT, len(tokens) - 1)
    losses = model(tokens[start:end][None], tokens[start + 1 : end + 1][None])
    total += float(losses.sum())
    count += losses.numel()
  return total / count, count


def run(text: str, seed: int) -> dict:
  torch.manual_seed(seed)
  chars = sorted(set(text))
  index = {c: i for i, c in enumerate(chars)}
  data = torch.tensor([index[c] for c in text], dtype=torch.long)
  cut = int(len(data) * 0.9)  # nanoGPT's split.
  train, valid = data[:cut], data[cut:]

  model = Model(len(chars))
  params = list(model.parameters())
  optimizer = torch.optim.AdamW(
    [
      {'params': [p for p in params if p.dim() >= 2], 'weight_decay': 0.1},
      {'params': [p for p in params if p.dim() < 2], 'weight_decay': 0.0},
    ],
    lr=LR,
    betas=(0.9, 0.99),
  )
  generator = torch.Generator().manual_seed(seed)
  start = time.time()
  for step in range(STEPS):
    for group in optimizer.param_groups:
      group['lr'] = learning_rate(step)
    loss = model(*random_batch(train, generator)).mean()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    optimizer.step()
  train_s = time.time() - start

  model.eval()
  exact, count = exact_loss(model, valid)
  generator = torch.Generator().manual_seed(1000 + seed)
  with torch.no_grad():
    estimates = [
      float(
        np.mean(
          [model(*random_batch(valid, generator)).mean().item() for _ in range(ESTIMATE_BATCHES)]
        )
      )
      for _ in range(ESTIMATE_REPEATS)
    ]
  return {
    'seed': seed,
    'valid_loss': exact,
    'predictions': count,
    'estimate20_mean': float(np.mean(estimates)),
    'estimate20_std': float(np.std(estimates)),
    'estimate20_min': min(estimates),
    'estimate20_max': max(estimates),
    'train_s': train_s,
    'torch': torch.__version__,
  }


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--data', required=True, help="Karpathy's input.txt")
  parser.add_argument('--seeds', default='0')
  parser.add_argument('--out', required=True, help='JSON lines, appended')
  parser.add_argument('--threads', type=int, default=2)
  args = parser.parse_args()
  torch.set_num_threads(args.threads)
  with open(args.data, encoding='utf-8') as f:
    text = f.read()
  for seed in (int(s) for s in args.seeds.split(',')):
    result = run(text, seed)
    print(json.dumps(result), flush=True)
    with open(args.out, 'a', encoding='utf-8') as f:
      f.write(json.dumps(result) + '\n')


if __name__ == '__main__':
  main()
