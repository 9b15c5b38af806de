"""Embedding throughput (images/s) of the bundled model and of ViT-B-32 / ViT-L-14.

Run:  .venv/bin/python bench/models.py [--budget 20] [--models bundled ViT-B-32 ViT-L-14]

ViT models use random weights (no network): throughput does not depend on the values. Each
model runs at its own input size on pre-made tensors, fp32 on the CPU (bf16 when on a GPU),
batch sizes 1..256; a batch size whose predicted time exceeds the per-model budget is
skipped and reported as such. A convolutional image tower on a CPU is loaded with
channels-last weights (``models.loading.fast_layout``); ``--contiguous`` puts them back in
the default layout, to compare (run both, alternately: a layout changed within one process
keeps part of the other's speed).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np
import torch

from marscope_stac.models.loading import load_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--models", nargs="+", default=["bundled", "ViT-B-32", "ViT-L-14"])
    ap.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 8, 32, 128, 256])
    ap.add_argument("--budget", type=float, default=20.0, help="seconds per model")
    ap.add_argument("--device", default="auto")
    ap.add_argument(
        "--contiguous", action="store_true", help="weights in the default contiguous layout"
    )
    ap.add_argument(
        "--train",
        action="store_true",
        help="also time a training step of the image tower (forward, backward, AdamW)",
    )
    ap.add_argument("--train-batch", type=int, default=128, help="batch of --train")
    args = ap.parse_args()
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, device {args.device}")
    for name in args.models:
        cm = load_model(name, device=args.device)
        if args.contiguous:
            cm.model.visual.to(memory_format=torch.contiguous_format)
            name = f"{name} (contiguous)"
        _measure(cm, name, args)
        if args.train:
            _train_step(cm, name, args.train_batch)


def _train_step(cm: Any, name: str, batch: int = 128, repeats: int = 5) -> None:
    """Print the median time of a training step of the image tower (weights restored after)."""
    net = cm.model
    saved = {k: v.clone() for k, v in net.visual.state_dict().items()}
    opt = torch.optim.AdamW(net.visual.parameters(), lr=1e-6)
    x = torch.rand(batch, 3, cm.image_size, cm.image_size)
    net.train()
    times = []
    for k in range(repeats + 2):  # two warm-up steps
        t0 = time.perf_counter()
        loss = net.encode_image(x).float().pow(2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
        if k >= 2:
            times.append(time.perf_counter() - t0)
    net.eval()
    net.visual.load_state_dict(saved)
    print(f"{name:10s} training step (batch {batch}): {sorted(times)[len(times) // 2]:.3f} s")


def _measure(cm: Any, name: str, args: argparse.Namespace) -> None:
    """Print one model's images/s per batch size."""
    n_params = sum(p.numel() for p in cm.model.parameters()) / 1e6
    x_all = np.random.default_rng(0).uniform(
        0, 1, (max(args.batch_sizes), cm.image_size, cm.image_size)
    )
    x_all = x_all.astype(np.float32)
    cm.encode_images(x_all[:1])  # warm-up
    per_image = None
    spent = 0.0
    row = []
    for bs in args.batch_sizes:
        if per_image is not None and spent + per_image * bs * 2 > args.budget:
            row.append(f"bs {bs}: skipped (budget)")
            continue
        x = torch.as_tensor(x_all[:bs])
        t0 = time.perf_counter()
        reps = 0
        while True:
            cm.encode_images(x, batch_size=bs)
            reps += 1
            dt = time.perf_counter() - t0
            if dt > min(3.0, args.budget / 4) or reps >= 20:
                break
        spent += dt
        rate = reps * bs / dt
        per_image = 1.0 / rate
        row.append(f"bs {bs}: {rate:7.1f} img/s")
    print(f"{name:10s} {n_params:6.1f} M params, {cm.image_size} px | " + " | ".join(row))


if __name__ == "__main__":
    main()
