"""A small convolutional network on scikit-learn's handwritten digits, as in the article.

The article imagines a convolutional network telling cats, dogs and birds apart; here one
tells the ten digits apart (the 8x8 images that ship with scikit-learn, no download).  It is
trained with ``crossentropy.torch.CrossEntropyLoss(base=2)``, so the loss it prints is in
bits, the article's unit.  About 98% test accuracy in well under a minute on a laptop CPU.

    python examples/digits_cnn.py
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

import crossentropy.torch as cet


def load(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The digits as (N, 1, 8, 8) float tensors in [0, 1], split 75/25."""
    X, y = load_digits(return_X_y=True)
    Xtr, Xte, ytr, yte = train_test_split(X / 16.0, y, test_size=0.25, random_state=seed,
                                          stratify=y)
    def t(a: np.ndarray) -> torch.Tensor:
        return torch.tensor(a, dtype=torch.float32).reshape(-1, 1, 8, 8)
    return t(Xtr), t(Xte), torch.tensor(ytr), torch.tensor(yte)


def make_model() -> nn.Module:
    """conv 3x3 (16) - ReLU - conv 3x3 (32) - ReLU - max-pool 2 - dense 64 - dense 10."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * 4 * 4, 64), nn.ReLU(),
        nn.Linear(64, 10),
    )


def train(epochs: int = 12, batch: int = 32, lr: float = 2e-3, seed: int = 0,
          limit: int | None = None, verbose: bool = True) -> dict[str, list[float]]:
    """Train; return the history: mean training loss in bits per epoch, test accuracy.

    Entry 0 of each list is the untrained network; entry k is after epoch k.
    `limit` keeps only the first `limit` training images (the shortened test run).
    """
    torch.manual_seed(seed)
    Xtr, Xte, ytr, yte = load(seed)
    if limit is not None:
        Xtr, ytr = Xtr[:limit], ytr[:limit]
    model = make_model()
    loss_fn = cet.CrossEntropyLoss(base=2)  # bits, as in the article
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.eval()
    with torch.no_grad():  # epoch 0: the untrained network
        hist: dict[str, list[float]] = {
            "loss_bits": [float(loss_fn(model(Xtr), ytr))],
            "test_accuracy": [float((model(Xte).argmax(dim=1) == yte).float().mean())],
        }
    g = torch.Generator().manual_seed(seed)
    for epoch in range(1, epochs + 1):
        model.train()
        order = torch.randperm(len(ytr), generator=g)
        total = 0.0
        for start in range(0, len(order), batch):
            idx = order[start:start + batch]
            opt.zero_grad()
            loss = loss_fn(model(Xtr[idx]), ytr[idx])
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        model.eval()
        with torch.no_grad():
            acc = float((model(Xte).argmax(dim=1) == yte).float().mean())
        hist["loss_bits"].append(total / len(ytr))
        hist["test_accuracy"].append(acc)
        if verbose:
            print(f"epoch {epoch:3d}  loss {total / len(ytr):.4f} bits  test accuracy {acc:.4f}")
    return hist


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=12)
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    hist = train(epochs=args.epochs)
    print(f"final test accuracy {hist['test_accuracy'][-1]:.4f} "
          f"in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
