r"""``batchnorm bench``: the fast path against PyTorch's kernel, hand-written composites and Keras.

Every *case* (a shape, a memory layout, a dtype and a mode) times a set of *candidates* in one
process, interleaved: after a warm-up of each, every round runs each candidate once, in an order
rotated from round to round, so that drifts of the machine (clock, caches, other processes) touch
all candidates alike. A sample is the mean time of a few consecutive calls (enough for about 2 ms,
one call for the large shapes); the report gives the median over rounds and the interquartile
range (IQR).

Candidates:

- ``copy``: ``out.copy_(x)`` into a preallocated tensor, one read and one write of ``x``: the
  machine's bandwidth for this tensor, measured in the same rounds.
- ``native``: ``torch.nn.functional.batch_norm``, PyTorch's kernel; the baseline of every ratio.
- ``plain``, ``renorm``, ``virtual``, ``weights``, ``mask``, ``zero_debias``, ``adjustment``:
  :func:`batchnorm.functional.batch_norm` (fast path, ``fused=None``) with one option at a time;
  ``deferred``: the layer :class:`batchnorm.BatchNormalization` with ``deferred_updates=True``,
  its pending update applied by ``apply_updates()`` after each call.
- ``composite_renorm``, ``composite_ghost``, ``composite_weighted``: what a user would write
  without the library (:mod:`batchnorm.cli._composites`), compared with ``renorm``, ``virtual``
  and ``weights``. They leave out the moving-statistics updates (per-channel work), and the
  ghost composite groups consecutive rows where ``virtual`` uses TensorFlow's strided groups:
  the same amount of work, other groups.
- ``tf_keras_fused``, ``tf_keras``: ``tf_keras.layers.BatchNormalization`` with ``fused=True``
  (rank 4 and 5 only, as in Keras) and ``fused=False``, in a ``tf.function``, only when
  ``tf_keras`` can be imported; it is never a dependency. Channels-last cases give TensorFlow the
  NHWC tensor with ``axis=-1``; its threads follow ``--threads`` (or torch's count).

Inference computes the same thing for every option, so the ``infer`` mode times ``copy``,
``native``, ``plain`` and ``tf_keras*`` only. Every case uses one seeded input, ``x = 1.5 * z +
0.25`` with ``z`` standard normal, and per-channel parameters and statistics near 1 and 0.
Virtual batches hold a quarter of the batch (a half or all of it when 4 does not divide it).

The first warm-up call of each candidate also counts the bytes it saves for backward; the
fastest warm-up call sets how many calls a sample takes. ``--quick`` without ``--rounds`` runs
up to 5 rounds, fewer (at least 3) where a case would take more than about 6 s, so that it
stays near a minute on a 2-core CPU even while an option is slow.

Modes: ``train_fwd`` (a training forward pass with autograd recording, as in a training step),
``train_fwdbwd`` (the same, then ``torch.autograd.grad`` of the output with a fixed upstream
gradient, for the input, ``gamma`` and ``beta``), ``infer`` (inference forward, no autograd).

Memory: by default the run first makes glibc's ``malloc`` keep freed memory
(:func:`batchnorm.cli._allocator.keep_freed_memory`), so a tensor allocated in a timed call
reuses pages instead of faulting fresh ones in; otherwise the page faults, not the kernels,
decide many ratios, and differently from run to run. ``--system-allocator`` measures with the
allocator as it is.

Metrics, per candidate and case:

- ``median_ms``, ``iqr_ms``: over the rounds;
- ``ratio_to_native``: the median over ``native``'s median in the same case;
- ``bandwidth_gbs``: ``passes * x.nbytes / median``, with the passes of the physical bound of
  the mode: 3 for ``train_fwd`` (stats: read; apply: read and write), 8 for ``train_fwdbwd``
  (plus backward reduce: read ``dy`` and ``x``; backward apply: read both, write ``dx``), 2 for
  ``infer`` (read and write); ``fraction_of_bound`` divides it by the copy's bandwidth
  ``2 * x.nbytes / copy median``;
- ``saved_bytes``: the bytes of the distinct storages autograd saves for backward during one
  training forward (``torch.autograd.graph.saved_tensors_hooks``), and ``saved_vs_input``, the
  same over ``x.nbytes``.

The command reports measurements; the acceptance targets are evaluated from its JSON by
``benchmarks/targets.py`` in the source tree.

``--compile`` times every torch candidate ``torch.compile``d (ours, native, the composites;
tf_keras is skipped) and adds ``compiled`` and ``compile_s`` to each row: the first call's
time beyond a compiled call's, with inductor's graph cache off and dynamo's caches emptied for
each case. That is a warm figure: C++ kernels that another candidate (or an earlier run)
already built are found in inductor's code cache. ``benchmarks/compile_time.py`` in the source
tree measures cold compiles, a process and an empty cache each. ``saved_bytes`` is not counted
then.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import numpy as np
import torch

import batchnorm as bn
from batchnorm.cli import _composites
from batchnorm.cli._allocator import keep_freed_memory
from batchnorm.cli._arguments import integer_at_least

if TYPE_CHECKING:
    from batchnorm.cli._arguments import SubParsers

__all__ = [
    "CANDIDATES",
    "Candidate",
    "Case",
    "add_parser",
    "format_case",
    "output_paths",
    "run",
    "saved_tensor_bytes",
]

SCHEMA = "batchnorm-bench/1"
MODES = ("train_fwd", "train_fwdbwd", "infer")
PASSES = {"train_fwd": 3, "train_fwdbwd": 8, "infer": 2}
LAYOUTS = ("NCHW", "channels_last", "dense")
DTYPES = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "float64": torch.float64,
}
DEFAULT_SHAPES = ((32, 64, 56, 56), (64, 256, 14, 14), (8, 32, 112, 112), (4096, 256), (1024, 1024))
DEFAULT_DTYPES = ("float32", "bfloat16")
QUICK_SHAPES = ((32, 64, 56, 56),)
QUICK_DTYPES = ("float32",)
DEFAULT_ROUNDS, QUICK_ROUNDS, QUICK_MIN_ROUNDS = 15, 5, 3
QUICK_CASE_BUDGET_S = 6.0  # --quick (without --rounds): fewer rounds, at least 3, past this
DEFAULT_WARMUP, QUICK_WARMUP = 3, 1
MIN_SAMPLE_S = 0.002  # a sample repeats a call until it lasts about this long (at most 100 calls)
MOMENTUM, EPSILON = 0.99, 1e-3
RENORM_CLIPPING = {"rmin": 1 / 3, "rmax": 3.0, "dmax": 5.0}  # Ioffe (2017)'s final values
GHOST_GROUPS = 4  # virtual batches: batch / 4 rows each (2 or 1 groups if 4 does not divide)


@dataclass(frozen=True)
class Candidate:
    """One implementation timed by the benchmark.

    Attributes:
        name: Its identifier in ``--options``, the table and the JSON.
        implementation: ``"copy"``, ``"native"``, ``"batchnorm"``, ``"composite"`` or
            ``"tf_keras"``.
        description: What exactly is called.
        training_only: Timed in the training modes only (inference is the same for every
            option).
        versus: For composites and tf_keras, the ``batchnorm`` candidate computing the same
            thing (``benchmarks/targets.py`` compares their times).
        ranks: The input ranks it supports; None for all.
    """

    name: str
    implementation: str
    description: str
    training_only: bool = True
    versus: str | None = None
    ranks: tuple[int, ...] | None = None

    def applies_to(self, case: Case) -> bool:
        """Whether this candidate is timed in ``case``."""
        if self.ranks is not None and len(case.shape) not in self.ranks:
            return False
        return case.mode != "infer" or not self.training_only


_FUNCTIONAL = "bn.functional.batch_norm(x, ..., fused=None"
CANDIDATES: dict[str, Candidate] = {
    c.name: c
    for c in (
        Candidate("copy", "copy", "out.copy_(x) into a preallocated tensor", False),
        Candidate("native", "native", "torch.nn.functional.batch_norm (PyTorch's kernel)", False),
        Candidate("plain", "batchnorm", f"{_FUNCTIONAL})", False),
        Candidate(
            "renorm",
            "batchnorm",
            f"{_FUNCTIONAL}, renorm=True, renorm_clipping={{rmin: 1/3, rmax: 3, dmax: 5}}}})",
        ),
        Candidate(
            "virtual",
            "batchnorm",
            f"{_FUNCTIONAL}, virtual_batch_size=batch/4) (TensorFlow's strided ghost batches)",
        ),
        Candidate("weights", "batchnorm", f"{_FUNCTIONAL}, batch_weights=rand(batch))"),
        Candidate(
            "mask",
            "batchnorm",
            f"{_FUNCTIONAL}, mask=) (mask, 80% True, shape of x with 1 on its channel axis)",
        ),
        Candidate("zero_debias", "batchnorm", f"{_FUNCTIONAL}, zero_debias_moving_mean=True)"),
        Candidate(
            "adjustment", "batchnorm", f"{_FUNCTIONAL}, adjustment=) (per-channel scale, bias)"
        ),
        Candidate(
            "deferred",
            "batchnorm",
            "bn.BatchNormalization(deferred_updates=True)(x, training=True), then"
            " layer.apply_updates()",
        ),
        Candidate(
            "composite_renorm",
            "composite",
            "renorm with r/d clipping from x.mean/x.var (batchnorm.cli._composites)",
            versus="renorm",
        ),
        Candidate(
            "composite_ghost",
            "composite",
            "ghost BN by reshape to (G, V, ...), per-group mean/var (batchnorm.cli._composites)",
            versus="virtual",
        ),
        Candidate(
            "composite_weighted",
            "composite",
            "weighted mean/var by broadcasting (batchnorm.cli._composites)",
            versus="weights",
        ),
        Candidate(
            "tf_keras_fused",
            "tf_keras",
            "tf_keras.layers.BatchNormalization(fused=True) in a tf.function (rank 4 and 5)",
            False,
            versus="plain",
            ranks=(4, 5),
        ),
        Candidate(
            "tf_keras",
            "tf_keras",
            "tf_keras.layers.BatchNormalization(fused=False) in a tf.function",
            False,
            versus="plain",
        ),
    )
}
SELECTABLE = tuple(name for name in CANDIDATES if name not in ("copy", "native"))
"""What ``--options`` accepts; ``copy`` and ``native`` are always timed."""


@dataclass(frozen=True)
class Case:
    """What one group of interleaved measurements runs on.

    Attributes:
        shape: The logical shape of ``x``, channels at ``axis``.
        layout: ``"NCHW"`` (channels at axis 1, contiguous), ``"channels_last"`` (axis 1 in
            ``torch.channels_last`` memory format; rank 4) or ``"dense"`` (rank 2, axis -1).
        dtype: The input's dtype name; statistics and parameters are float32 (float64 for
            float64).
        mode: ``"train_fwd"``, ``"train_fwdbwd"`` or ``"infer"``.
    """

    shape: tuple[int, ...]
    layout: str
    dtype: str
    mode: str

    @property
    def axis(self) -> int:
        """The channel axis: -1 for dense inputs, 1 otherwise."""
        return -1 if self.layout == "dense" else 1

    @property
    def channels(self) -> int:
        """The number of channels."""
        return self.shape[self.axis]

    @property
    def training(self) -> bool:
        """Whether the mode is a training mode."""
        return self.mode != "infer"

    @property
    def label(self) -> str:
        """E.g. ``(32,64,56,56) NCHW float32 train_fwdbwd``."""
        dims = ",".join(map(str, self.shape))
        return f"({dims}) {self.layout} {self.dtype} {self.mode}"


def layouts_for(shape: Sequence[int], allowed: Iterable[str] = LAYOUTS) -> list[str]:
    """The layouts a shape is benchmarked in: rank 2 dense, rank 4 NCHW and channels_last.

    Example:
        >>> layouts_for((4096, 256)), layouts_for((8, 3, 4, 4)), layouts_for((8, 3, 4))
        (['dense'], ['NCHW', 'channels_last'], ['NCHW'])
    """
    if len(shape) == 2:
        candidates = ["dense"]
    elif len(shape) == 4:
        candidates = ["NCHW", "channels_last"]
    else:
        candidates = ["NCHW"]
    return [layout for layout in candidates if layout in allowed]


def saved_tensor_bytes(forward: Callable[[], Any]) -> int:
    """The bytes autograd saves for backward while ``forward()`` runs.

    Every tensor saved for backward passes through a ``saved_tensors_hooks`` pack hook; the
    result is the sum of ``nbytes`` over the distinct storages they live in (a view of the
    input counts as the input's whole storage, once).

    Example:
        >>> x = torch.ones(4, 8, requires_grad=True)
        >>> saved_tensor_bytes(lambda: x * 2.0), saved_tensor_bytes(lambda: x.sin())
        (0, 128)
    """
    storages: dict[tuple[str, int], int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        storages[(str(tensor.device), storage.data_ptr())] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        output = forward()
    del output
    return sum(storages.values())


# ---------------------------------------------------------------------------------- inputs


def _ghost_size(batch: int) -> int:
    groups = next(g for g in (GHOST_GROUPS, 2, 1) if batch % g == 0)
    return batch // groups


@dataclass
class _Inputs:
    x: torch.Tensor
    dy: torch.Tensor
    gamma: torch.Tensor
    beta: torch.Tensor
    moving_mean: torch.Tensor
    moving_variance: torch.Tensor
    batch_weights: torch.Tensor
    mask: torch.Tensor
    adjustment: tuple[torch.Tensor, torch.Tensor]
    virtual_batch_size: int

    def ones(self) -> torch.Tensor:
        return torch.ones_like(self.moving_mean)

    def zeros(self) -> torch.Tensor:
        return torch.zeros_like(self.moving_mean)


def _make_inputs(case: Case, device: torch.device, seed: int = 0) -> _Inputs:
    generator = torch.Generator().manual_seed(seed)
    dtype = DTYPES[case.dtype]
    stats_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    shape, channels = case.shape, case.channels

    def random(*size: int, scale: float = 1.0, offset: float = 0.0) -> torch.Tensor:
        values = torch.randn(size, generator=generator, dtype=stats_dtype) * scale + offset
        return values.to(device)

    x = (torch.randn(shape, generator=generator, dtype=stats_dtype) * 1.5 + 0.25).to(dtype)
    dy = torch.randn(shape, generator=generator, dtype=stats_dtype).to(dtype)
    if case.layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
        dy = dy.contiguous(memory_format=torch.channels_last)
    # A mask over every position but the channel: full rank, size 1 on the channel axis.
    mask_shape = [1 if d == case.axis % len(shape) else s for d, s in enumerate(shape)]
    mask = torch.rand(mask_shape, generator=generator) > 0.2
    trailing = (1,) * (len(shape) - 2) if case.axis == 1 else ()
    adjustment = (
        random(channels, scale=0.1, offset=1.0).reshape(channels, *trailing),
        random(channels, scale=0.1).reshape(channels, *trailing),
    )
    inputs = _Inputs(
        x=x.to(device),
        dy=dy.to(device),
        gamma=random(channels, scale=0.2, offset=1.0),
        beta=random(channels, scale=0.2),
        moving_mean=random(channels, scale=0.1, offset=0.25),
        moving_variance=random(channels, scale=0.1, offset=2.0).abs(),
        batch_weights=torch.rand(shape[0], generator=generator, dtype=stats_dtype).to(device),
        mask=mask.to(device),
        adjustment=adjustment,
        virtual_batch_size=_ghost_size(shape[0]),
    )
    if case.training:
        for tensor in (inputs.x, inputs.gamma, inputs.beta):
            tensor.requires_grad_(True)
    return inputs


# ---------------------------------------------------------------------------------- callables


@dataclass
class _Timed:
    """A candidate ready to run: ``call()`` does one timed unit of work."""

    call: Callable[[], Any]
    saves_for_backward: bool = False  # call() runs a training forward with autograd (torch)


def _call_arguments(name: str, case: Case, inputs: _Inputs) -> dict[str, Any]:
    """The keyword arguments of :func:`batchnorm.functional.batch_norm` for candidate ``name``."""
    x = inputs.x
    common: dict[str, Any] = {
        "training": case.training,
        "axis": case.axis,
        "momentum": MOMENTUM,
        "epsilon": EPSILON,
        "fused": None,
    }
    if name == "renorm":
        common |= {
            "renorm": True,
            "renorm_clipping": RENORM_CLIPPING,
            "moving_stddev": inputs.ones(),
            "renorm_mean": inputs.zeros(),
            "renorm_stddev": inputs.ones(),
        }
    elif name == "virtual":
        common["virtual_batch_size"] = inputs.virtual_batch_size
    elif name == "weights":
        common["batch_weights"] = inputs.batch_weights
    elif name == "mask":
        common["mask"] = inputs.mask
    elif name == "zero_debias":
        common |= {
            "zero_debias_moving_mean": True,
            "moving_mean_biased": inputs.zeros(),
            "local_step": torch.zeros((), device=x.device),
        }
    elif name == "adjustment":
        scale, bias = inputs.adjustment
        common["adjustment"] = lambda shape: (scale, bias)
    return common


_ROUTE_ARGUMENTS = (
    "training",
    "axis",
    "fused",
    "renorm",
    "virtual_batch_size",
    "adjustment",
    "batch_weights",
    "mask",
)


def routes_of(name: str, case: Case, inputs: _Inputs) -> str:
    """The routes our candidate ``name`` takes here (:func:`batchnorm.functional.routes`)."""
    arguments = _call_arguments(name, case, inputs)
    chosen = {key: value for key, value in arguments.items() if key in _ROUTE_ARGUMENTS}
    return bn.functional.routes(inputs.x, **chosen)


def _batchnorm_forward(name: str, case: Case, inputs: _Inputs) -> tuple[Callable, tuple]:
    """A training or inference forward of our candidate ``name`` and its differentiable inputs."""
    x, training = inputs.x, case.training
    common = _call_arguments(name, case, inputs)
    if name == "deferred":
        layer = bn.BatchNormalization(
            axis=case.axis,
            momentum=MOMENTUM,
            epsilon=EPSILON,
            deferred_updates=True,
            input_shape=tuple(case.shape[1:]),
            device=x.device,
        )
        layer.train(training)

        def forward_layer() -> torch.Tensor:
            y = layer(x, training=training)
            layer.apply_updates()
            return y

        return forward_layer, (x, layer.gamma, layer.beta)

    mean, variance = inputs.moving_mean, inputs.moving_variance

    def forward() -> torch.Tensor:
        return bn.functional.batch_norm(x, mean, variance, inputs.gamma, inputs.beta, **common)[0]

    return forward, (x, inputs.gamma, inputs.beta)


def _torch_forward(name: str, case: Case, inputs: _Inputs) -> tuple[Callable, tuple]:
    candidate = CANDIDATES[name]
    x, gamma, beta = inputs.x, inputs.gamma, inputs.beta
    params = (x, gamma, beta)
    if candidate.implementation == "batchnorm":
        return _batchnorm_forward(name, case, inputs)
    if name == "native":
        running_mean = inputs.moving_mean.clone()
        running_var = inputs.moving_variance.clone()

        def native() -> torch.Tensor:
            return torch.nn.functional.batch_norm(
                x,
                running_mean,
                running_var,
                gamma,
                beta,
                training=case.training,
                momentum=1 - MOMENTUM,
                eps=EPSILON,
            )

        return native, params
    if name == "composite_renorm":
        renorm_mean, renorm_stddev = inputs.zeros(), inputs.ones()
        clip = RENORM_CLIPPING

        def renorm() -> torch.Tensor:
            return _composites.renorm_batch_norm(
                x, gamma, beta, renorm_mean, renorm_stddev, axis=case.axis, epsilon=EPSILON, **clip
            )

        return renorm, params
    if name == "composite_ghost":
        size = inputs.virtual_batch_size

        def ghost() -> torch.Tensor:
            return _composites.ghost_batch_norm(
                x, gamma, beta, virtual_batch_size=size, axis=case.axis, epsilon=EPSILON
            )

        return ghost, params
    if name == "composite_weighted":
        weights = inputs.batch_weights

        def weighted() -> torch.Tensor:
            return _composites.weighted_batch_norm(
                x, gamma, beta, weights, axis=case.axis, epsilon=EPSILON
            )

        return weighted, params
    raise ValueError(f"candidate={name!r} is not a torch candidate")


def _torch_timed(name: str, case: Case, inputs: _Inputs, compiled: bool = False) -> _Timed:
    """The timed unit of a torch candidate; with ``compiled``, its forward ``torch.compile``d.

    Compiled candidates do not count the bytes they save (the counting hooks would become
    part of what is compiled).
    """
    if name == "copy":
        source = inputs.x.detach()
        out = torch.empty_like(source)

        def copy() -> torch.Tensor:
            return out.copy_(source)

        return _Timed(copy)
    forward, params = _torch_forward(name, case, inputs)
    if compiled:
        forward = torch.compile(forward)
    if case.mode == "infer":

        def infer() -> Any:
            with torch.no_grad():
                return forward()

        return _Timed(infer)
    if case.mode == "train_fwd":
        return _Timed(forward, saves_for_backward=not compiled)
    dy = inputs.dy

    def forward_backward() -> Any:
        return torch.autograd.grad(forward(), params, dy)

    return _Timed(forward_backward, saves_for_backward=not compiled)


class _TensorFlow:
    """``tensorflow`` and ``tf_keras``, imported once, when a tf_keras candidate is asked for."""

    def __init__(self, threads: int) -> None:
        import tensorflow as tf  # optional and heavy: imported only when asked for
        import tf_keras

        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(1)
        except RuntimeError:  # already initialised (a second run in the same process)
            pass
        self.tf, self.keras = tf, tf_keras
        self.version = f"tensorflow {tf.__version__}, tf_keras {tf_keras.__version__}"

    def timed(self, name: str, case: Case, inputs: _Inputs) -> _Timed:
        tf = self.tf
        x = inputs.x.detach().float().cpu().numpy()
        dy = inputs.dy.detach().float().cpu().numpy()
        axis = case.axis
        if case.layout == "channels_last":  # TensorFlow's channels-last is NHWC, axis -1
            x, dy, axis = x.transpose(0, 2, 3, 1), dy.transpose(0, 2, 3, 1), -1
        tf_dtype = {"bfloat16": tf.bfloat16, "float16": tf.float16, "float64": tf.float64}.get(
            case.dtype, tf.float32
        )
        policy = {"bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}.get(
            case.dtype, case.dtype
        )
        layer = self.keras.layers.BatchNormalization(
            axis=axis,
            momentum=MOMENTUM,
            epsilon=EPSILON,
            fused=name == "tf_keras_fused",
            dtype=policy,
        )
        layer.build(x.shape)
        x_tf = tf.constant(x, dtype=tf_dtype)
        dy_tf = tf.constant(dy, dtype=tf_dtype)
        if case.mode == "train_fwdbwd":

            @tf.function
            def step(inputs: Any, upstream: Any) -> Any:
                with tf.GradientTape() as tape:
                    tape.watch(inputs)
                    y = layer(inputs, training=True)
                return tape.gradient(y, [inputs, *layer.trainable_weights], upstream)

            return _Timed(lambda: step(x_tf, dy_tf))
        training = case.training
        forward = tf.function(lambda inputs: layer(inputs, training=training))
        return _Timed(lambda: forward(x_tf))


# ---------------------------------------------------------------------------------- measuring


def _synchronize(device: torch.device) -> Callable[[], None]:
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def _sample(call: Callable[[], Any], repeats: int, sync: Callable[[], None]) -> float:
    sync()
    start = time.perf_counter()
    for _ in range(repeats):
        call()
    sync()
    return (time.perf_counter() - start) / repeats


@dataclass(frozen=True)
class _Settings:
    shapes: tuple[tuple[int, ...], ...]
    layouts: tuple[str, ...]
    dtypes: tuple[str, ...]
    modes: tuple[str, ...]
    candidates: tuple[str, ...]
    rounds: int
    warmup: int
    device: torch.device
    case_budget_s: float | None = None
    compiled: bool = False

    def cases(self) -> list[Case]:
        return [
            Case(tuple(shape), layout, dtype, mode)
            for shape in self.shapes
            for layout in layouts_for(shape, self.layouts)
            for dtype in self.dtypes
            for mode in self.modes
        ]

    def candidates_for(self, case: Case) -> list[str]:
        return [name for name in self.candidates if CANDIDATES[name].applies_to(case)]


class _Progress:
    """``[ 12/240] (32,64,56,56) NCHW float32 train_fwdbwd renorm`` lines on a stream."""

    def __init__(self, stream: TextIO | None, total: int) -> None:
        self.stream, self.total, self.done = stream, total, 0
        self.overwrite = stream is not None and stream.isatty()

    def step(self, text: str) -> None:
        self.done += 1
        self.show(f"[{self.done:>{len(str(self.total))}}/{self.total}] {text}")

    def show(self, text: str) -> None:
        if self.stream is None:
            return
        if self.overwrite:
            self.stream.write(f"\r\033[K{text}")
        else:
            self.stream.write(f"{text}\n")
        self.stream.flush()

    def clear(self) -> None:
        """Erase an overwritten progress line, before a table goes to the same terminal."""
        if self.stream is not None and self.overwrite:
            self.stream.write("\r\033[K")
            self.stream.flush()


def _allowance_bytes(name: str, case: Case, inputs: _Inputs) -> int:
    """What a candidate may save beyond native: per-channel vectors, and its per-example input.

    16 float32 vectors per kept index (channel, times the ghost-batch groups with ``virtual``),
    plus, for ``weights`` and ``mask``, those inputs as float32 weights.
    """
    groups = case.shape[0] // inputs.virtual_batch_size if name == "virtual" else 1
    allowance = 16 * groups * case.channels * 4
    if name == "weights":
        allowance += inputs.batch_weights.numel() * 4
    elif name == "mask":
        allowance += inputs.mask.numel() * 4
    return allowance


def _counting_saved(call: Callable[[], Any], into: dict[str, int], key: str) -> Callable[[], None]:
    """``call`` that stores in ``into[key]`` the bytes it saves for backward."""

    def counting() -> None:
        into[key] = saved_tensor_bytes(call)

    return counting


def _measure_case(
    case: Case,
    settings: _Settings,
    progress: _Progress,
    tensorflow: _TensorFlow | None,
    notes: list[str],
) -> list[dict[str, Any]]:
    inputs = _make_inputs(case, settings.device)
    sync = _synchronize(settings.device)
    ready: dict[str, _Timed] = {}
    repeats: dict[str, int] = {}
    saved: dict[str, int] = {}
    compile_s: dict[str, float] = {}
    per_round = 0.0
    for name in settings.candidates_for(case):
        progress.step(f"{case.label} {name}")
        try:
            if CANDIDATES[name].implementation == "tf_keras":
                assert tensorflow is not None
                timed = tensorflow.timed(name, case, inputs)
            else:
                timed = _torch_timed(name, case, inputs, settings.compiled)
            # The first warm-up call also counts the bytes saved for backward (compiled: it
            # compiles); the fastest warm-up call sets how many calls a sample takes.
            durations = []
            for index in range(max(2 if settings.compiled else 1, settings.warmup)):
                counting = index == 0 and timed.saves_for_backward
                call = _counting_saved(timed.call, saved, name) if counting else timed.call
                durations.append(_sample(call, 1, sync))
        except Exception as error:  # reported in the notes; the run goes on
            if name in ("copy", "native"):
                raise
            notes.append(f"{name} failed on {case.label}: {type(error).__name__}: {error}")
            continue
        ready[name] = timed
        if settings.compiled:  # the first call's time beyond a compiled call's
            compile_s[name] = durations[0] - min(durations[1:])
        fastest = max(min(durations), 1e-9)
        repeats[name] = max(1, min(100, math.ceil(MIN_SAMPLE_S / fastest)))
        per_round += fastest * repeats[name]

    names = list(ready)
    rounds = settings.rounds
    if settings.case_budget_s is not None:  # --quick: fewer rounds for a slow case
        affordable = int(settings.case_budget_s / per_round)
        rounds = max(min(rounds, QUICK_MIN_ROUNDS), min(rounds, affordable))
    samples: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(rounds):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            samples[name].append(_sample(ready[name].call, repeats[name], sync))

    nbytes = inputs.x.numel() * inputs.x.element_size()
    # The same percentile as each row's median, so native's ratio to itself is exactly 1
    # (np.median and np.percentile interpolate two middle samples in different orders).
    medians = {name: float(np.percentile(values, 50)) for name, values in samples.items()}
    copy_bandwidth = 2 * nbytes / medians["copy"]
    rows = []
    for name in names:
        q1, median, q3 = (float(v) for v in np.percentile(samples[name], [25, 50, 75]))
        passes = 2 if name == "copy" else PASSES[case.mode]  # the copy reads and writes once
        bandwidth = passes * nbytes / median
        row: dict[str, Any] = {
            "shape": list(case.shape),
            "layout": case.layout,
            "axis": case.axis,
            "dtype": case.dtype,
            "mode": case.mode,
            "candidate": name,
            "implementation": CANDIDATES[name].implementation,
            "median_ms": median * 1e3,
            "q1_ms": q1 * 1e3,
            "q3_ms": q3 * 1e3,
            "iqr_ms": (q3 - q1) * 1e3,
            "rounds": len(samples[name]),
            "calls_per_sample": repeats[name],
            "ratio_to_native": median / medians["native"],
            "input_bytes": nbytes,
            "bound_passes": passes,
            "bandwidth_gbs": bandwidth / 1e9,
            "copy_bandwidth_gbs": copy_bandwidth / 1e9,
            "fraction_of_bound": bandwidth / copy_bandwidth,
            "saved_bytes": saved.get(name),
            "saved_vs_input": saved[name] / nbytes if name in saved else None,
            "saved_bytes_limit": None,
            "compiled": settings.compiled,
            "compile_s": compile_s.get(name),
            "routes": None,
        }
        if CANDIDATES[name].implementation == "batchnorm":
            row["routes"] = "compiled" if settings.compiled else routes_of(name, case, inputs)
        if CANDIDATES[name].implementation == "batchnorm" and "native" in saved and name in saved:
            row["saved_bytes_limit"] = saved["native"] + _allowance_bytes(name, case, inputs)
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------------- output


def _ms(value: float) -> str:
    if value >= 100:
        return f"{value:.1f}"
    if value >= 10:
        return f"{value:.2f}"
    return f"{value:.3f}"


def format_case(rows: Sequence[dict[str, Any]]) -> str:
    """Format the rows of one case as a table with a title line.

    Example:
        >>> row = {"shape": [8, 4], "layout": "dense", "dtype": "float32", "mode": "infer",
        ...        "candidate": "native", "median_ms": 0.5, "iqr_ms": 0.01,
        ...        "ratio_to_native": 1.0, "bandwidth_gbs": 0.5, "fraction_of_bound": 0.25,
        ...        "saved_vs_input": None, "copy_bandwidth_gbs": 2.0, "bound_passes": 2}
        >>> print(format_case([row]))
        (8,4) dense float32 infer: copy 2.0 GB/s, bound 2 passes
        candidate  median ms  IQR ms  x native  GB/s  % bound  saved/x
        ---------  ---------  ------  --------  ----  -------  -------
        native         0.500   0.010      1.00   0.5      25%        -
    """
    first = rows[0]
    dims = ",".join(map(str, first["shape"]))
    title = (
        f"({dims}) {first['layout']} {first['dtype']} {first['mode']}: copy "
        f"{first['copy_bandwidth_gbs']:.1f} GB/s, bound {PASSES[first['mode']]} passes"
    )
    compiled = bool(first.get("compiled"))
    if compiled:
        title += "; torch.compile'd"
    header = ("candidate", "median ms", "IQR ms", "x native", "GB/s", "% bound")
    header += ("compile s",) if compiled else ("saved/x",)

    def last(row: dict[str, Any]) -> str:
        value = row.get("compile_s") if compiled else row["saved_vs_input"]
        return "-" if value is None else f"{value:.{1 if compiled else 2}f}"

    cells = [
        (
            row["candidate"],
            _ms(row["median_ms"]),
            _ms(row["iqr_ms"]),
            f"{row['ratio_to_native']:.2f}",
            f"{row['bandwidth_gbs']:.1f}",
            f"{100 * row['fraction_of_bound']:.0f}%",
            last(row),
        )
        for row in rows
    ]
    widths = [max(len(line[i]) for line in (header, *cells)) for i in range(len(header))]

    def line(values: Sequence[str]) -> str:
        first_cell = values[0].ljust(widths[0])
        rest = (v.rjust(w) for v, w in zip(values[1:], widths[1:], strict=True))
        return "  ".join((first_cell, *rest)).rstrip()

    table = [title, line(header), line(["-" * w for w in widths]), *(line(c) for c in cells)]
    return "\n".join(table + _routes_lines(rows))


def _routes_lines(rows: Sequence[dict[str, Any]]) -> list[str]:
    """One line per distinct plan among our candidates: the routes and who takes them.

    Example:
        >>> rows = [{"candidate": "plain", "routes": "training=aten infer=aten"},
        ...         {"candidate": "deferred", "routes": "training=aten infer=aten"}]
        >>> print(*_routes_lines(rows))
        routes: training=aten infer=aten (plain, deferred)
    """
    takers: dict[str, list[str]] = {}
    for row in rows:
        if row.get("routes") and row["routes"] != "compiled":
            takers.setdefault(row["routes"], []).append(row["candidate"])
    return [f"routes: {plan} ({', '.join(names)})" for plan, names in takers.items()]


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as file:
            for line in file:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def source_revision() -> str | None:
    """The git commit batchnorm runs from (``-dirty`` with local changes), or None.

    Only for a source checkout (an editable install): the package must be the checkout's
    ``src/batchnorm``, so an installed copy inside some other repository reports None.
    """
    package = Path(bn.__file__).resolve().parent

    def git(*arguments: str) -> str:
        return subprocess.run(
            ["git", "-C", str(package), *arguments],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()

    try:
        if Path(git("rev-parse", "--show-toplevel")).resolve() / "src" / "batchnorm" != package:
            return None
        dirty = git("status", "--porcelain", "--untracked-files=no")
        return git("rev-parse", "--short=12", "HEAD") + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def _version_of(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def environment(device: torch.device) -> dict[str, Any]:
    """What the numbers depend on: versions, threads, CPU, device and date."""
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "batchnorm": bn.__version__,
        "batchnorm_revision": source_revision(),
        "numpy": np.__version__,
        "matplotlib": _version_of("matplotlib"),
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
    }


def write_png(rows: Sequence[dict[str, Any]], path: Path) -> str:
    """Bars of the ratio to native per candidate and case; returns what happened, in words.

    The chart shows ``train_fwdbwd`` in float32 when the run measured them (else the first
    mode and dtype measured). Without matplotlib it writes nothing and says so.
    """
    try:
        import matplotlib  # optional: the "bench" extra

        matplotlib.use("Agg")
        from matplotlib import pyplot
    except ImportError:
        return "matplotlib is not installed (pip install 'batchnorm[bench]'): no PNG written"
    modes = [m for m in MODES if any(r["mode"] == m for r in rows)]
    mode = "train_fwdbwd" if "train_fwdbwd" in modes else modes[0]
    dtypes = list(dict.fromkeys(r["dtype"] for r in rows if r["mode"] == mode))
    dtype = "float32" if "float32" in dtypes else dtypes[0]
    chosen = [r for r in rows if r["mode"] == mode and r["dtype"] == dtype]
    groups = list(dict.fromkeys((tuple(r["shape"]), r["layout"]) for r in chosen))
    names = [
        n
        for n in CANDIDATES
        if n not in ("copy", "native") and any(r["candidate"] == n for r in chosen)
    ]
    ratio = {(tuple(r["shape"]), r["layout"], r["candidate"]): r["ratio_to_native"] for r in chosen}

    width_in = min(16.0, max(7.0, 3.0 + 0.15 * len(groups) * len(names)))
    figure, axes = pyplot.subplots(figsize=(width_in, 5.0))
    width = 0.8 / len(names)
    cmap = pyplot.get_cmap("tab20")
    for index, name in enumerate(names):
        positions = [g + (index - (len(names) - 1) / 2) * width for g in range(len(groups))]
        heights = [ratio.get((shape, layout, name), float("nan")) for shape, layout in groups]
        axes.bar(positions, heights, width, label=name, color=cmap(index % 20))
    axes.axhline(1.0, color="black", linewidth=0.8, label="native = 1")
    axes.set_yscale("log")
    axes.set_xticks(range(len(groups)))
    axes.set_xticklabels([f"{'x'.join(map(str, s))}\n{layout}" for s, layout in groups])
    axes.set_ylabel("time / native plain (lower is faster)")
    axes.set_title(f"batchnorm bench: {mode}, {dtype}")
    axes.legend(fontsize="small", ncol=2, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    pyplot.close(figure)
    return f"chart written to {path}"


def _json_ready(value: Any) -> Any:
    """NaN and infinities become null, so the file is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    return value


# ---------------------------------------------------------------------------------- command


def _settings(args: argparse.Namespace, candidates: tuple[str, ...]) -> _Settings:
    quick = args.quick
    warmup = QUICK_WARMUP if quick else DEFAULT_WARMUP
    return _Settings(
        shapes=args.shapes or (QUICK_SHAPES if quick else DEFAULT_SHAPES),
        layouts=args.layouts or LAYOUTS,
        dtypes=args.dtypes or (QUICK_DTYPES if quick else DEFAULT_DTYPES),
        modes=args.modes or MODES,
        candidates=candidates,
        rounds=args.rounds or (QUICK_ROUNDS if quick else DEFAULT_ROUNDS),
        warmup=warmup if args.warmup is None else args.warmup,
        device=torch.device(args.device),
        case_budget_s=QUICK_CASE_BUDGET_S if quick and args.rounds is None else None,
        compiled=args.compile,
    )


@contextlib.contextmanager
def _compile_cache(compiled: bool) -> Iterator[None]:
    """For a compiled case: dynamo's caches emptied, and room for every candidate.

    The candidates' closures share code objects, so without room dynamo would hit its
    recompile limit and silently run the later ones eagerly. Inductor's graph cache is off,
    so that every compile time is a full one.
    """
    if not compiled:
        yield
        return
    torch._dynamo.reset()
    with (
        torch._dynamo.config.patch(recompile_limit=256, accumulated_recompile_limit=4096),
        torch._inductor.config.patch(fx_graph_cache=False),
    ):
        yield


def output_paths(args: argparse.Namespace) -> tuple[Path, Path]:
    """Where a run with parsed arguments ``args`` writes its JSON report and its PNG chart.

    Example:
        >>> paths = output_paths(argparse.Namespace(out_dir="out", json=None, png="c.png"))
        >>> [path.as_posix() for path in paths]
        ['out/bench.json', 'c.png']
    """
    out_dir = Path(args.out_dir) if args.out_dir else Path.cwd()
    json_path = Path(args.json) if args.json else out_dir / "bench.json"
    png_path = Path(args.png) if args.png else out_dir / "bench.png"
    return json_path, png_path


def run(args: argparse.Namespace) -> int:
    """Run the benchmark with parsed arguments; print tables, write JSON and PNG.

    Returns:
        0; 1 when a candidate failed; 2 when the device is not available.
    """
    started = time.perf_counter()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(f"batchnorm bench: --device {args.device}: CUDA is not available", file=sys.stderr)
        return 2
    allocator = "system allocator as configured" if args.system_allocator else keep_freed_memory()
    notes: list[str] = []
    wanted = args.options or SELECTABLE
    candidates = ["copy", "native", *(name for name in SELECTABLE if name in wanted)]
    tensorflow = None
    if args.compile:
        skipped = [n for n in candidates if CANDIDATES[n].implementation == "tf_keras"]
        if skipped:
            notes.append(f"--compile: {', '.join(skipped)} skipped (torch.compile is for torch)")
        candidates = [n for n in candidates if n not in skipped]
    if any(CANDIDATES[name].implementation == "tf_keras" for name in candidates):
        reason = None
        if device.type != "cpu":
            reason = f"tf_keras rows skipped: they run on the CPU only (device {device})"
        else:
            try:
                tensorflow = _TensorFlow(args.threads or torch.get_num_threads())
            except ImportError as error:
                reason = (
                    f"tf_keras rows skipped: tf_keras cannot be imported ({error}); it is never a"
                    " dependency, install tensorflow and tf_keras to include them"
                )
        if reason is not None:
            notes.append(reason)
            candidates = [n for n in candidates if CANDIDATES[n].implementation != "tf_keras"]
    settings = _settings(args, tuple(candidates))

    threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    json_path, png_path = output_paths(args)
    env = environment(device)
    env["allocator"] = allocator
    if tensorflow is not None:
        env["tf_keras"] = tensorflow.version
    cases = settings.cases()
    rounds_text = f"{settings.rounds} interleaved rounds"
    if settings.case_budget_s is not None:
        rounds_text = (
            f"up to {settings.rounds} interleaved rounds (at least {QUICK_MIN_ROUNDS}; fewer"
            f" where a case would take over {settings.case_budget_s:g} s)"
        )
    units = sum(len(settings.candidates_for(case)) for case in cases)
    progress = _Progress(None if args.quiet else sys.stderr, units)
    print(
        f"batchnorm bench ({env['batchnorm_revision'] or env['batchnorm']}): torch "
        f"{env['torch']}, {env['threads']} threads, "
        f"{env['cpu_model'] or 'unknown CPU'}, device {device}; {rounds_text} after "
        f"{max(1, settings.warmup)} warm-up call(s) per candidate; {allocator}.\n"
        "x native: median / native's median; GB/s: the mode's bound passes (train_fwd 3, "
        "train_fwdbwd 8, infer 2) x the input's bytes / median;\n% bound: that over the copy's "
        "bandwidth; saved/x: bytes saved for backward / the input's bytes.",
        flush=True,
    )
    rows: list[dict[str, Any]] = []
    try:
        for case in cases:
            with _compile_cache(settings.compiled):
                case_rows = _measure_case(case, settings, progress, tensorflow, notes)
            rows.extend(case_rows)
            progress.clear()
            print(f"\n{format_case(case_rows)}", flush=True)
    finally:
        torch.set_num_threads(threads)

    for note in notes:
        print(f"note: {note}")
    png_message = write_png(rows, png_path) if rows else "no rows: no PNG written"
    wall = time.perf_counter() - started
    report = {
        "schema": SCHEMA,
        "environment": env,
        "config": {
            "quick": args.quick,
            "shapes": [list(s) for s in settings.shapes],
            "layouts": list(settings.layouts),
            "dtypes": list(settings.dtypes),
            "modes": list(settings.modes),
            "candidates": list(settings.candidates),
            "rounds": settings.rounds,
            "warmup": settings.warmup,
            "min_sample_s": MIN_SAMPLE_S,
            "momentum": MOMENTUM,
            "epsilon": EPSILON,
            "renorm_clipping": RENORM_CLIPPING,
            "ghost_groups": GHOST_GROUPS,
            "compile": settings.compiled,
        },
        "candidates": {name: CANDIDATES[name].description for name in settings.candidates},
        "bound_passes": PASSES,
        "rows": rows,
        "notes": notes,
        "png": str(png_path) if png_message.startswith("chart written") else None,
        "wall_s": wall,
    }
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(_json_ready(report), indent=1) + "\n", encoding="utf-8")
    print(f"results written to {json_path}; {png_message}; {wall:.0f} s in all", flush=True)
    failed = any(" failed on " in note for note in notes)
    return 1 if failed else 0


# ---------------------------------------------------------------------------------- parser


def _shapes(text: str) -> tuple[tuple[int, ...], ...]:
    shapes = []
    for item in text.split(","):
        try:
            shape = tuple(int(d) for d in item.strip().lower().split("x"))
        except ValueError:
            shape = ()
        if len(shape) < 2 or min(shape) < 1:
            raise argparse.ArgumentTypeError(
                f"{item!r} is not a shape like 32x64x56x56 (rank >= 2, positive sizes)"
            )
        shapes.append(shape)
    return tuple(shapes)


def _names(choices: Sequence[str]) -> Callable[[str], tuple[str, ...]]:
    def parse(text: str) -> tuple[str, ...]:
        names = tuple(name.strip() for name in text.split(",") if name.strip())
        unknown = [name for name in names if name not in choices]
        if unknown or not names:
            raise argparse.ArgumentTypeError(
                f"{text!r}: expected a comma-separated list of {', '.join(choices)}"
            )
        return names

    return parse


def add_parser(commands: SubParsers) -> argparse.ArgumentParser:
    """Register the ``bench`` subcommand.

    Args:
        commands: The subparsers of the top-level parser.

    Returns:
        The ``bench`` parser; it sets ``run`` to :func:`run`.
    """
    parser = commands.add_parser(
        "bench",
        help="time the fast path against torch's batch_norm, composites and tf_keras",
        description="Time batchnorm's fast path, option by option, against"
        " torch.nn.functional.batch_norm, hand-written composites and (when installed) tf_keras,"
        " interleaved in one process; print tables, write JSON and a PNG chart.",
    )
    shapes = ", ".join("x".join(map(str, s)) for s in DEFAULT_SHAPES)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="one shape (32x64x56x56, both layouts), float32, fewer rounds: under a minute",
    )
    parser.add_argument(
        "--shapes",
        type=_shapes,
        help=f"comma-separated shapes, channels at axis 1 (rank 2: axis -1); default {shapes}",
    )
    parser.add_argument(
        "--layouts",
        type=_names(LAYOUTS),
        help="of NCHW, channels_last (rank 4), dense (rank 2); default all that apply",
    )
    parser.add_argument(
        "--dtypes", type=_names(tuple(DTYPES)), help="input dtypes; default float32,bfloat16"
    )
    parser.add_argument("--modes", type=_names(MODES), help=f"default {','.join(MODES)}")
    parser.add_argument(
        "--options",
        type=_names(SELECTABLE),
        help=f"candidates besides copy and native; default all: {','.join(SELECTABLE)}",
    )
    parser.add_argument(
        "--rounds",
        type=integer_at_least(1, "a positive integer"),
        help=f"interleaved rounds per case (default {DEFAULT_ROUNDS}, --quick {QUICK_ROUNDS})",
    )
    parser.add_argument(
        "--warmup",
        type=integer_at_least(0, "a non-negative integer"),
        help=f"warm-up calls per candidate (default {DEFAULT_WARMUP}, --quick {QUICK_WARMUP})",
    )
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]")
    parser.add_argument(
        "--threads",
        type=integer_at_least(1, "a positive integer"),
        help="torch CPU threads (default: torch's)",
    )
    parser.add_argument("--out-dir", help="where bench.json and bench.png go (default: .)")
    parser.add_argument("--json", help="the JSON file (default OUT_DIR/bench.json)")
    parser.add_argument("--png", help="the PNG chart (default OUT_DIR/bench.png)")
    parser.add_argument(
        "--system-allocator",
        action="store_true",
        help="leave glibc's malloc as configured; by default it keeps freed memory, so that"
        " fresh pages (page faults) do not blur the timings",
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile every torch candidate (ours, native, composites) and time the"
        " compiled calls; the tables add each one's compile time (its first call beyond a"
        " compiled call)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    parser.set_defaults(run=run)
    return parser
