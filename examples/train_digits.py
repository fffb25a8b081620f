"""Train a small neighbourhood-attention vision model on scikit-learn's digits, on the CPU.

The 1,797 8x8 digit images ship with scikit-learn (no download).  The model:

    3x3 conv stem (one token per pixel, 8x8 tokens, C channels) + learned position embedding
    -> NA blocks: LayerNorm -> NeighborhoodAttention2D (3x3 window; dilation 1 then 2, as in DiNAT)
                  -> residual; LayerNorm -> MLP -> residual
    -> LayerNorm -> mean over tokens -> linear classifier (10 classes)

The training step (forward, backward, AdamW update) is one `mx.compile`d function; the model and
optimizer state are captured as its inputs and outputs, as the MLX compile docs describe.

    python examples/train_digits.py                  # default tier (auto)
    python examples/train_digits.py --backend pure   # force a tier

It prints the test accuracy and the wall time.  With the defaults (fixed seed) it reaches >= 95%
test accuracy on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from functools import partial

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np

try:
    from tqdm import tqdm
except ImportError:  # the progress bar is a nicety; training does not need it
    tqdm = None

try:
    import natten_mlx
except ImportError:  # running from a source checkout without an install: use the tree
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import natten_mlx
from natten_mlx import NeighborhoodAttention2D


class NABlock(nn.Module):
    def __init__(self, dim: int, heads: int, kernel_size: int, dilation: int, mlp_ratio: int = 2):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = NeighborhoodAttention2D(embed_dim=dim, num_heads=heads,
                                            kernel_size=kernel_size, dilation=dilation)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(),
                                 nn.Linear(mlp_ratio * dim, dim))

    def __call__(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class DigitsNAT(nn.Module):
    """[B, 8, 8, 1] images -> [B, 10] logits."""

    def __init__(self, dim: int = 32, heads: int = 4, kernel_size: int = 3,
                 dilations=(1, 2), num_classes: int = 10):
        super().__init__()
        self.stem = nn.Conv2d(1, dim, kernel_size=3, padding=1)     # NHWC in MLX
        self.pos = mx.zeros((8, 8, dim))
        self.blocks = [NABlock(dim, heads, kernel_size, d) for d in dilations]
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def __call__(self, x):
        x = nn.gelu(self.stem(x)) + self.pos
        for blk in self.blocks:
            x = blk(x)
        x = self.norm(x).mean(axis=(1, 2))
        return self.head(x)


def load_data(seed: int):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.images.astype(np.float32) / 16.0)[..., None]   # [N, 8, 8, 1] in [0, 1]
    y = digits.target.astype(np.int32)
    return train_test_split(x, y, test_size=0.2, random_state=seed, stratify=y)


def accuracy(model, x, y, batch: int = 256) -> float:
    correct = 0
    for i in range(0, len(x), batch):
        logits = model(mx.array(x[i:i + batch]))
        correct += int((mx.argmax(logits, axis=-1) == mx.array(y[i:i + batch])).sum().item())
    return correct / len(x)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backend", default="auto", choices=["auto", "pure", "nanobind", "fast_metal"],
                    help="natten_mlx tier (default auto)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "gpu"])
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--dim", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--limit-steps", type=int, default=0,
                    help="stop after this many steps (0 = no limit; for smoke tests)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = ap.parse_args(argv)

    if args.device == "gpu" and not mx.is_available(mx.gpu):
        print("train_digits: error: --device gpu but MLX sees no GPU", file=sys.stderr)
        return 2
    mx.set_default_device(mx.gpu if args.device == "gpu" else mx.cpu)
    natten_mlx.set_backend(args.backend)
    mx.random.seed(args.seed)
    rng = np.random.default_rng(args.seed)

    x_train, x_test, y_train, y_test = load_data(args.seed)
    model = DigitsNAT(dim=args.dim)
    mx.eval(model.parameters())
    n_params = sum(v.size for _, v in nn.utils.tree_flatten(model.parameters()))

    steps_per_epoch = len(x_train) // args.batch_size      # drop the ragged tail: one shape
    total_steps = steps_per_epoch * args.epochs
    if args.limit_steps:
        total_steps = min(total_steps, args.limit_steps)
    warmup = min(50, max(1, total_steps // 10))
    schedule = optim.join_schedules(
        [optim.linear_schedule(1e-5, args.lr, warmup),
         optim.cosine_decay(args.lr, max(1, total_steps - warmup), 1e-5)], [warmup])
    optimizer = optim.AdamW(learning_rate=schedule, weight_decay=0.05)

    def loss_fn(model, x, y):
        return nn.losses.cross_entropy(model(x), y, reduction="mean")

    loss_and_grad = nn.value_and_grad(model, loss_fn)
    state = [model.state, optimizer.state]

    @partial(mx.compile, inputs=state, outputs=state)
    def train_step(x, y):
        loss, grads = loss_and_grad(model, x, y)
        optimizer.update(model, grads)
        return loss

    print(f"digits: {len(x_train)} train / {len(x_test)} test images; model {n_params:,} "
          f"parameters; natten_mlx backend {natten_mlx.get_backend()!r}; device {args.device}")
    bar = None
    if tqdm is not None and not args.no_progress:
        bar = tqdm(total=total_steps, unit="step", dynamic_ncols=True)
    t0 = time.perf_counter()
    step = 0
    test_acc = 0.0
    for epoch in range(args.epochs):
        model.train()
        order = rng.permutation(len(x_train))
        losses = []
        for i in range(steps_per_epoch):
            if step >= total_steps:
                break
            idx = order[i * args.batch_size:(i + 1) * args.batch_size]
            loss = train_step(mx.array(x_train[idx]), mx.array(y_train[idx]))
            mx.eval(state)
            losses.append(loss.item())
            step += 1
            if bar is not None:
                bar.update(1)
                bar.set_postfix(epoch=epoch + 1, loss=f"{losses[-1]:.3f}", test_acc=f"{test_acc:.3f}")
        model.eval()
        test_acc = accuracy(model, x_test, y_test)
        if bar is not None:
            bar.set_postfix(epoch=epoch + 1, loss=f"{np.mean(losses):.3f}", test_acc=f"{test_acc:.3f}")
        else:
            print(f"epoch {epoch + 1:3d}  loss {np.mean(losses):.4f}  test acc {test_acc:.4f}")
        if step >= total_steps:
            break
    if bar is not None:
        bar.close()
    wall = time.perf_counter() - t0
    print(f"final test accuracy: {test_acc * 100:.2f}% ({int(round(test_acc * len(x_test)))}/"
          f"{len(x_test)}) after {step} steps; wall time {wall:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
