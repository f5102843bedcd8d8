"""``batchnorm demo``: small networks trained with and without batch normalization.

The data are the UCI hand-written digits bundled with the package (``data/digits.npz``: 1797
images of 8x8 pixel counts 0..16, see ``data/README.md``), scaled to [0, 1]. Every fifth image is
held out for testing (360 images); the other 1437 are the training set.

Two networks are trained, each once without and once with :class:`batchnorm.BatchNormalization`
after every hidden layer (the layer before a batch norm has no bias, since ``beta`` replaces it):

- ``MLP``: flatten, 64 -> 128 -> 128 -> 10, ReLU; batch norm with ``axis=-1`` (channels last).
- ``CNN``: NCHW input (N, 1, 8, 8), three 3x3 convolutions with 16, 32, 32 channels, ReLU, a 2x2
  max pool after the second, global average pooling, linear 32 -> 10; batch norm with
  ``axis=1`` (channels first).

All four runs use SGD with momentum 0.9, learning rate 0.2 and batches of 32, and the same seed
for the initial weights and for the order of the batches. The learning rate is on the high side
for these networks without normalization, so that the effect of batch normalization is visible
within a few epochs.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, TextIO

import numpy as np
import torch
from torch import nn

import batchnorm as bn
from batchnorm.cli._arguments import integer_at_least

if TYPE_CHECKING:
    from batchnorm.cli._arguments import SubParsers

__all__ = [
    "Digits",
    "Result",
    "add_parser",
    "format_table",
    "load_digits",
    "make_cnn",
    "make_mlp",
    "run",
    "split_digits",
    "train",
]

DEFAULT_EPOCHS = 15
LEARNING_RATE = 0.2
SGD_MOMENTUM = 0.9
BATCH_SIZE = 32
TARGET_ACCURACY = 0.95
# Keras's default momentum of 0.99 averages the moving statistics over about 100 steps; with 45
# steps per epoch, the early epochs' test accuracy (inference mode, moving statistics) would then
# mostly measure how far the average lags. 0.9 averages over about 10 steps.
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-3


@dataclass(frozen=True)
class Digits:
    """The demo's data, split into a training and a test set.

    Attributes:
        train_images: ``float32`` tensor of shape (1437, 8, 8), values in [0, 1].
        train_labels: ``int64`` tensor of shape (1437,), digits 0..9.
        test_images: ``float32`` tensor of shape (360, 8, 8), values in [0, 1].
        test_labels: ``int64`` tensor of shape (360,), digits 0..9.

    """

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor


@dataclass(frozen=True)
class Result:
    """What one training run measured.

    Attributes:
        name: The variant, e.g. ``"MLP + BN"``.
        epochs: How many epochs were run.
        final_train_loss: Mean cross-entropy over the whole training set after the last epoch,
            in inference mode.
        test_accuracy: Fraction of test images classified correctly after the last epoch, in
            inference mode.
        epochs_to_target: The first epoch (counted from 1) after which the test accuracy was at
            least ``TARGET_ACCURACY``; ``None`` if no epoch reached it.
        wall_time: Seconds spent training, including one test-set evaluation per epoch.

    """

    name: str
    epochs: int
    final_train_loss: float
    test_accuracy: float
    epochs_to_target: int | None
    wall_time: float


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """Load the bundled digits.

    Returns:
        ``(images, labels)``: ``uint8`` arrays of shapes (1797, 8, 8) and (1797,).

    Example:
        >>> images, labels = load_digits()
        >>> images.shape, images.dtype.name, int(images.max()), labels.shape
        ((1797, 8, 8), 'uint8', 16, (1797,))

    """
    path = resources.files("batchnorm").joinpath("data").joinpath("digits.npz")
    with path.open("rb") as file, np.load(file) as archive:
        return archive["images"], archive["labels"]


def split_digits(images: np.ndarray, labels: np.ndarray) -> Digits:
    """Scale the images to [0, 1] and hold out every fifth one for testing.

    Args:
        images: ``uint8`` array (N, 8, 8) of pixel counts 0..16.
        labels: Integer array (N,).

    Returns:
        The split as tensors; the split does not depend on any seed.

    Example:
        >>> data = split_digits(*load_digits())
        >>> tuple(data.train_images.shape), tuple(data.test_images.shape)
        ((1437, 8, 8), (360, 8, 8))

    """
    scaled = torch.from_numpy(images.astype(np.float32) / 16.0)
    targets = torch.from_numpy(labels.astype(np.int64))
    test = torch.arange(len(targets)) % 5 == 0
    return Digits(scaled[~test], targets[~test], scaled[test], targets[test])


def _batch_norm(channel_axis: int) -> bn.BatchNormalization:
    return bn.BatchNormalization(axis=channel_axis, momentum=BN_MOMENTUM, epsilon=BN_EPSILON)


def make_mlp(batch_norm: bool) -> nn.Sequential:
    """Build the MLP 64 -> 128 -> 128 -> 10 for images of shape (N, 8, 8).

    Args:
        batch_norm: Put a ``BatchNormalization(axis=-1)`` after each hidden linear layer.

    Returns:
        The network, initialized from torch's global random generator.

    Example:
        >>> make_mlp(batch_norm=True)(torch.zeros(4, 8, 8)).shape
        torch.Size([4, 10])

    """
    layers: list[nn.Module] = [nn.Flatten()]
    width = 64
    for out in (128, 128):
        layers.append(nn.Linear(width, out, bias=not batch_norm))
        if batch_norm:
            layers.append(_batch_norm(-1))
        layers.append(nn.ReLU())
        width = out
    layers.append(nn.Linear(width, 10))
    return nn.Sequential(*layers)


def make_cnn(batch_norm: bool) -> nn.Sequential:
    """Build the small CNN for images of shape (N, 8, 8), run as NCHW (N, 1, 8, 8).

    Args:
        batch_norm: Put a ``BatchNormalization(axis=1)`` after each convolution.

    Returns:
        The network, initialized from torch's global random generator.

    Example:
        >>> make_cnn(batch_norm=True)(torch.zeros(4, 8, 8)).shape
        torch.Size([4, 10])

    """

    def block(channels_in: int, channels_out: int) -> list[nn.Module]:
        conv = nn.Conv2d(channels_in, channels_out, 3, padding=1, bias=not batch_norm)
        return [conv, _batch_norm(1), nn.ReLU()] if batch_norm else [conv, nn.ReLU()]

    return nn.Sequential(
        nn.Unflatten(1, (1, 8)),
        *block(1, 16),
        *block(16, 32),
        nn.MaxPool2d(2),
        *block(32, 32),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 10),
    )


def _accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    return (model(images).argmax(dim=1) == labels).float().mean().item()


def train(
    name: str,
    make_model: Callable[[bool], nn.Module],
    batch_norm: bool,
    data: Digits,
    *,
    epochs: int,
    seed: int,
    progress: TextIO | None = None,
) -> Result:
    """Train one variant and measure it.

    The global random state of torch is left as it was: the model is built under
    ``torch.random.fork_rng`` and the batches are drawn from a generator of their own.

    Args:
        name: The variant's name, used in the progress lines and the result.
        make_model: :func:`make_mlp` or :func:`make_cnn`.
        batch_norm: Passed to ``make_model``.
        data: The split data.
        epochs: Number of passes over the training set, at least 1.
        seed: Seeds the initial weights and the order of the batches.
        progress: Where to write one line per epoch; ``None`` (default) writes nothing.

    Returns:
        The measurements.

    Example:
        >>> data = split_digits(*load_digits())
        >>> result = train("MLP + BN", make_mlp, True, data, epochs=1, seed=0)
        >>> result.name, result.epochs, 0.0 <= result.test_accuracy <= 1.0
        ('MLP + BN', 1, True)

    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = make_model(batch_norm)
        # BatchNormalization creates its weights at the first call. Build them before the
        # optimizer collects the parameters, in inference mode so no statistic is updated.
        model.eval()
        with torch.no_grad():
            model(data.train_images[:2])
    optimizer = torch.optim.SGD(model.parameters(), lr=LEARNING_RATE, momentum=SGD_MOMENTUM)
    order = torch.Generator().manual_seed(seed)
    count = len(data.train_labels)

    epochs_to_target = None
    accuracy = 0.0
    start = time.perf_counter()
    for epoch in range(1, epochs + 1):
        model.train()
        loss_sum = 0.0
        for batch in torch.randperm(count, generator=order).split(BATCH_SIZE):
            loss = nn.functional.cross_entropy(
                model(data.train_images[batch]), data.train_labels[batch]
            )
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            loss_sum += loss.item() * len(batch)
        model.eval()
        with torch.no_grad():
            accuracy = _accuracy(model, data.test_images, data.test_labels)
        if epochs_to_target is None and accuracy >= TARGET_ACCURACY:
            epochs_to_target = epoch
        if progress is not None:
            print(
                f"{name:<8}  epoch {epoch:>{len(str(epochs))}}/{epochs}"
                f"  train loss {loss_sum / count:7.4f}  test accuracy {accuracy:6.1%}"
                f"  {time.perf_counter() - start:6.1f} s",
                file=progress,
                flush=True,
            )
    wall_time = time.perf_counter() - start

    with torch.no_grad():
        final_loss = nn.functional.cross_entropy(model(data.train_images), data.train_labels).item()
    return Result(name, epochs, final_loss, accuracy, epochs_to_target, wall_time)


def format_table(results: Sequence[Result]) -> str:
    """Format results as a plain-text table, one row per variant.

    Args:
        results: The runs to show, in order.

    Returns:
        The table, lines joined by newlines, without a trailing newline.

    Example:
        >>> print(format_table([Result("MLP", 15, 0.1234, 0.925, None, 1.25),
        ...                     Result("MLP + BN", 15, 0.0012, 0.9806, 3, 1.5)]))
        variant   final train loss  test accuracy  epochs to 95%  wall time
        --------  ----------------  -------------  -------------  ---------
        MLP                 0.1234          92.5%            >15      1.2 s
        MLP + BN            0.0012          98.1%              3      1.5 s

    """
    target = f"epochs to {TARGET_ACCURACY:.0%}"
    header = ("variant", "final train loss", "test accuracy", target, "wall time")
    rows = [
        (
            result.name,
            f"{result.final_train_loss:.4f}",
            f"{result.test_accuracy:.1%}",
            f">{result.epochs}"
            if result.epochs_to_target is None
            else f"{result.epochs_to_target}",
            f"{result.wall_time:.1f} s",
        )
        for result in results
    ]
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = (cell.rjust(width) for cell, width in zip(cells[1:], widths[1:], strict=True))
        return "  ".join((first, *rest)).rstrip()

    return "\n".join([line(header), line(["-" * width for width in widths]), *map(line, rows)])


def run(args: argparse.Namespace) -> int:
    """Run the demo with parsed arguments (``epochs``, ``seed``, ``quiet``) and print the table.

    Training runs on one CPU thread; torch's previous thread count is restored afterwards.

    Returns:
        0.

    """
    data = split_digits(*load_digits())
    progress = None if args.quiet else sys.stderr
    print(
        f"batchnorm demo: UCI hand-written digits, {len(data.train_labels)} training and "
        f"{len(data.test_labels)} test images of 8x8 pixels.\n"
        f"SGD (learning rate {LEARNING_RATE}, momentum {SGD_MOMENTUM}), batches of {BATCH_SIZE}, "
        f"{args.epochs} epochs, seed {args.seed}, 1 CPU thread.\n"
        f"+ BN: bn.BatchNormalization(momentum={BN_MOMENTUM}, epsilon={BN_EPSILON}) after each "
        "hidden layer.\n",
        flush=True,
    )
    variants = [("MLP", make_mlp), ("CNN", make_cnn)]
    # These batches are tiny: one thread is as fast as several, is not slowed down by other
    # processes competing for the cores, and makes the numbers independent of the core count.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        results = [
            train(
                f"{name} + BN" if batch_norm else name,
                make_model,
                batch_norm,
                data,
                epochs=args.epochs,
                seed=args.seed,
                progress=progress,
            )
            for name, make_model in variants
            for batch_norm in (False, True)
        ]
    finally:
        torch.set_num_threads(threads)
    if progress is not None:
        print(file=progress, flush=True)
    print(format_table(results))
    print(
        "\nfinal train loss: mean cross-entropy over the training set after the last epoch; it"
        " and the\ntest accuracy are measured in inference mode (moving statistics); wall time"
        " includes one\ntest evaluation per epoch.",
        flush=True,
    )
    return 0


def add_parser(commands: SubParsers) -> argparse.ArgumentParser:
    """Register the ``demo`` subcommand.

    Args:
        commands: The subparsers of the top-level parser.

    Returns:
        The ``demo`` parser; it sets ``run`` to :func:`run`.

    """
    parser = commands.add_parser(
        "demo",
        help="train small networks on bundled digits with and without batch norm",
        description="Train an MLP and a small CNN on the bundled UCI hand-written digits, each"
        " without and with batch normalization, and print a table that compares the runs.",
    )
    parser.add_argument(
        "--epochs",
        type=integer_at_least(1, "a positive integer"),
        default=DEFAULT_EPOCHS,
        help=f"passes over the training set per run (default {DEFAULT_EPOCHS})",
    )
    parser.add_argument(
        "--seed",
        type=integer_at_least(0, "a non-negative integer"),
        default=0,
        help="seed of the initial weights and of the batch order (default 0)",
    )
    parser.add_argument("--quiet", action="store_true", help="print no per-epoch progress")
    parser.set_defaults(run=run)
    return parser
