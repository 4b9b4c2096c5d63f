"""The gate's readout (METHOD §3): standardised features, one logistic unit, balanced BCE.

Runs in any process that fits a gate (training uses torch on CPU); scoring is plain numpy so the
API server and vLLM workers never need autograd. Deterministic under ``seed``: initialisation
draws from a local ``torch.Generator``, never from the global RNG.
"""

from __future__ import annotations

import math

import numpy as np
import torch


class LogisticReadout:
    """w . z_std + b on features standardised with the training mean and std (ddof=0).

    Defaults are the paper's: AdamW lr 0.05, weight decay 0.01, 80 full-batch epochs, seed 0,
    class-balanced BCE with pos_weight = n_harmless / n_harmful. Parameters are kept in float32.
    """

    def __init__(
        self, lr: float = 0.05, weight_decay: float = 0.01, epochs: int = 80, seed: int = 0
    ) -> None:
        self.lr = lr
        self.weight_decay = weight_decay
        self.epochs = epochs
        self.seed = seed
        self.mean_: np.ndarray | None = None
        self.std_: np.ndarray | None = None
        self.coef_: np.ndarray | None = None
        self.intercept_: float | None = None

    def fit(self, z: np.ndarray, y: np.ndarray) -> LogisticReadout:
        """Fit on features ``z`` (n, r) and labels ``y`` (n,) with 1 = harmful."""
        x = np.asarray(z, dtype=np.float64)
        labels = np.asarray(y).reshape(-1)
        if x.ndim != 2 or x.shape[0] != labels.size:
            raise ValueError(f"need features (n, r) and n labels, got {x.shape} and {labels.shape}")
        if not np.all((labels == 0) | (labels == 1)):
            raise ValueError("labels must be 0 (harmless) or 1 (harmful)")
        n_pos = int((labels == 1).sum())
        n_neg = labels.size - n_pos
        if n_pos == 0 or n_neg == 0:
            raise ValueError("the readout needs both harmful (1) and harmless (0) examples")

        mean = x.mean(axis=0)
        std = x.std(axis=0)
        std = np.where(std > 0, std, 1.0)
        self.mean_ = mean.astype(np.float32)
        self.std_ = std.astype(np.float32)

        xs = torch.from_numpy(((x - self.mean_) / self.std_).astype(np.float32))
        target = torch.from_numpy(labels.astype(np.float32))
        r = x.shape[1]
        gen = torch.Generator().manual_seed(self.seed)
        bound = 1.0 / math.sqrt(r)  # torch.nn.Linear's default init range
        w = (torch.rand(r, generator=gen) * 2 - 1) * bound
        b = (torch.rand(1, generator=gen) * 2 - 1) * bound
        w.requires_grad_(True)
        b.requires_grad_(True)
        loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=torch.tensor(n_neg / n_pos))
        opt = torch.optim.AdamW([w, b], lr=self.lr, weight_decay=self.weight_decay)
        for _ in range(self.epochs):
            opt.zero_grad()
            loss = loss_fn(xs @ w + b, target)
            loss.backward()
            opt.step()
        self.coef_ = w.detach().numpy().astype(np.float32).copy()
        self.intercept_ = float(b.detach()[0])
        return self

    def decision_function(self, z: np.ndarray) -> np.ndarray:
        """Logits w . (z - mean) / std + b for features (n, r) or (r,), computed in float64."""
        if self.coef_ is None:
            raise RuntimeError("LogisticReadout is not fitted: call fit(z, y) first")
        x = np.asarray(z, dtype=np.float64)
        return ((x - self.mean_) / self.std_) @ self.coef_.astype(np.float64) + self.intercept_
