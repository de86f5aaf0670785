"""Finetuning and evaluation speed of tf_efficientnet_lite0 on this machine's CPU threads.

Prints three tables:
1. training throughput (forward + backward + SGD step with the recipe's optimiser, loss and
   clipping) and inference throughput on in-memory batches, per input size;
2. an end-to-end ``finetune()`` with the default ``FinetuneConfig`` on real Fashion-MNIST PNGs
   (data loading and augmentation included), the number that decides whether ``make run`` fits;
3. the frozen-feature learners on 5,000 x 1280-d train and 10,000 test features.

Other processes on the machine slow every number down, the more so when OpenMP threads spin-wait
for a descheduled sibling: the header prints the load average and OMP_WAIT_POLICY (PASSIVE
avoids the spinning).

The throughput table uses random weights (speed does not depend on them); the end-to-end run
uses the packaged ImageNet weights when the features package provides them, so its accuracy means
something.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/finetune_speed.py [--sizes 128 224] [--quick]
"""

from __future__ import annotations

import argparse
import gzip
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import timm
import torch
from PIL import Image
from timm.optim import create_optimizer_v2
from torch import nn

from bilaf.training import (
    FinetuneConfig,
    eval_transform,
    evaluate_finetuned,
    finetune,
    knn_probe,
    linear_probe,
)

ARCH = "tf_efficientnet_lite0"
FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
MEAN = STD = (0.5, 0.5, 0.5)


def _timed(step, repeats: int) -> float:
    """Median seconds of ``step()`` over ``repeats`` runs after two warm-up runs."""
    for _ in range(2):
        step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def throughput_table(sizes: list[int], batch_size: int, repeats: int) -> None:
    print(
        f"## {ARCH} throughput, batch {batch_size}, {torch.get_num_threads()} torch threads, "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}, "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
    )
    print("| input px | train img/s (fwd+bwd+step) | train ms/batch | eval img/s |")
    print("|---|---|---|---|")
    for size in sizes:
        model = timm.create_model(ARCH, pretrained=False, num_classes=10, drop_path_rate=0.1)
        optimizer = create_optimizer_v2(model, opt="sgd", lr=0.01, weight_decay=1e-4, momentum=0.9)
        criterion = nn.CrossEntropyLoss(label_smoothing=0.1)
        images = torch.randn(batch_size, 3, size, size)
        targets = torch.randint(0, 10, (batch_size,))

        def train_step() -> None:
            model.train()
            loss = criterion(model(images), targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 2.0)
            optimizer.step()

        def eval_step() -> None:
            model.eval()
            with torch.inference_mode():
                model(images)

        train_s = _timed(train_step, repeats)
        eval_s = _timed(eval_step, repeats)
        print(f"| {size} | {batch_size / train_s:.1f} | {1000 * train_s:.0f} | {batch_size / eval_s:.1f} |")


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path) as handle:
        data = handle.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _classifier(num_classes: int) -> tuple[nn.Module, str]:
    """The project's packaged pretrained classifier when the features package provides it."""
    torch.manual_seed(0)
    try:
        from bilaf.features.backbones import create_classifier
    except ImportError:
        return timm.create_model(ARCH, pretrained=False, num_classes=num_classes), "random"
    return create_classifier(ARCH, num_classes, "packaged"), "packaged ImageNet"


def end_to_end_table(train_count: int, test_count: int, config: FinetuneConfig) -> None:
    images = _read_idx(FASHION_MNIST / "train-images-idx3-ubyte.gz")
    labels = _read_idx(FASHION_MNIST / "train-labels-idx1-ubyte.gz").astype(np.int64)
    chosen = np.random.default_rng(0).choice(len(images), train_count + test_count, replace=False)
    with tempfile.TemporaryDirectory() as folder:
        paths = []
        for index in chosen:
            path = Path(folder) / f"{index}.png"
            Image.fromarray(images[index]).save(path)
            paths.append(path)
        train_paths, test_paths = paths[:train_count], paths[train_count:]
        train_labels, test_labels = labels[chosen[:train_count]], labels[chosen[train_count:]]
        model, weights = _classifier(10)
        start = time.perf_counter()
        result = finetune(model, train_paths, train_labels, mean=MEAN, std=STD, config=config)
        train_s = time.perf_counter() - start
        start = time.perf_counter()
        metrics = evaluate_finetuned(
            result.model,
            test_paths,
            test_labels,
            eval_transform(config.image_size, MEAN, STD),
            num_classes=10,
        )
        eval_s = time.perf_counter() - start
    mean_ips = np.mean([epoch.images_per_second for epoch in result.history])
    print(
        f"\n## finetune() end to end on {train_count} Fashion-MNIST PNGs "
        f"({config.epochs} epochs, {config.image_size} px, batch {config.batch_size}, "
        f"{weights} weights)"
    )
    print("| train images | epochs | train wall s | mean train img/s | eval img/s | est. s per 10k test | test top-1 |")
    print("|---|---|---|---|---|---|---|")
    print(
        f"| {train_count} | {config.epochs} | {train_s:.1f} | {mean_ips:.1f} | "
        f"{test_count / eval_s:.1f} | {10_000 * eval_s / test_count:.0f} | "
        f"{metrics.accuracy:.3f} ({test_count} images) |"
    )


def frozen_learners_table(train_count: int, test_count: int, dim: int) -> None:
    """Real class structure at the pipeline's size: Fashion-MNIST pixels through a fixed random
    ReLU projection to ``dim`` features (a stand-in for backbone features; no backbone pass)."""
    rng = np.random.default_rng(0)
    projection = rng.normal(scale=784**-0.5, size=(784, dim)).astype(np.float32)

    def features(kind: str, count: int) -> tuple[np.ndarray, np.ndarray]:
        images = _read_idx(FASHION_MNIST / f"{kind}-images-idx3-ubyte.gz")
        labels = _read_idx(FASHION_MNIST / f"{kind}-labels-idx1-ubyte.gz").astype(np.int64)
        chosen = rng.choice(len(images), count, replace=False)
        pixels = images[chosen].reshape(count, -1).astype(np.float32) / 255
        return np.maximum(pixels @ projection, 0), labels[chosen]

    train_x, train_y = features("train", train_count)
    test_x, test_y = features("t10k", test_count)
    print(
        f"\n## frozen-feature learners, {train_count} train x {dim}-d, {test_count} test "
        "(Fashion-MNIST, random ReLU features)"
    )
    print("| learner | seconds | test top-1 |")
    print("|---|---|---|")
    for name, learner in (("linear probe (C=10)", linear_probe), ("kNN (k=20)", knn_probe)):
        start = time.perf_counter()
        metrics = learner(train_x, train_y, test_x, test_y, num_classes=10)
        print(f"| {name} | {time.perf_counter() - start:.2f} | {metrics.accuracy:.3f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[FinetuneConfig().image_size, 224])
    parser.add_argument("--batch-size", type=int, default=FinetuneConfig().batch_size)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--train-images", type=int, default=250)
    parser.add_argument("--test-images", type=int, default=500)
    parser.add_argument("--quick", action="store_true", help="skip the end-to-end finetune (about 2 minutes)")
    args = parser.parse_args()
    throughput_table(args.sizes, args.batch_size, args.repeats)
    if not FASHION_MNIST.is_dir():
        print(f"\n(real-data tables skipped: {FASHION_MNIST} not found; `make env` installs it)")
        return
    if not args.quick:
        end_to_end_table(args.train_images, args.test_images, FinetuneConfig())
    frozen_learners_table(5000, 10_000, 1280)


if __name__ == "__main__":
    main()
