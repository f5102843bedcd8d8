"""``BatchNormalization``: the Keras layer, as a ``torch.nn.Module`` that owns the state.

It resolves ``training``, builds its weights on first use, calls
:func:`batchnorm.functional.batch_norm` and commits the statistics that call returns. The math
lives in the functional and the modules below it; this file holds the Keras layer API.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.modules.lazy import LazyModuleMixin
from torch.nn.parameter import UninitializedBuffer, UninitializedParameter, is_lazy

from batchnorm import constraints, initializers, regularizers
from batchnorm._axes import AxisArgument, ChannelLayout, validate_axis_argument
from batchnorm._errors import (
    BatchNormError,
    NonFiniteBatchError,
    SynchronizationError,
    check,
    check_epsilon,
    check_momentum,
    check_optional_bool,
    check_renorm_clipping,
    check_virtual_batch,
    fail,
)
from batchnorm._lanes import lane_key, make_lane, run_lane
from batchnorm._nonfinite import SKIPPED_UPDATES, check_nonfinite
from batchnorm._sync import check_process_group
from batchnorm._tf_rules import tensorflow_can_fuse, tensorflow_runs_fused_kernel
from batchnorm.functional import (
    Options,
    StatisticsUpdate,
    _traced,
    batch_norm_checked,
    check_options,
    check_real_input,
    check_zero_debias_momentum,
)

__all__ = [
    "BatchNormalization",
    "BatchNormalizationV1",
    "PendingUpdate",
    "apply_updates",
    "discard_updates",
]

_DTYPE_NAMES = {
    "float16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "float32": torch.float32,
    "float": torch.float32,
    "float64": torch.float64,
    "double": torch.float64,
}
_MIXED_POLICIES = {"mixed_float16": torch.float16, "mixed_bfloat16": torch.bfloat16}
_STATE_FORMAT_VERSION = 1
_layer_counter = itertools.count()


def _resolve_dtype(dtype: Any) -> tuple[str, torch.dtype, torch.dtype | None]:
    """Keras dtype or policy -> (name, variable dtype, compute dtype or None for the input's).

    16-bit layers keep float32 variables and compute in their 16-bit type, and float64 layers
    compute in float64, as tf_keras does. A float32 layer keeps the input's floating dtype
    (PyTorch's habit; tf_keras would cast a float16 input up to float32).
    """
    if isinstance(dtype, dict):  # a Keras DTypePolicy config
        dtype = dtype.get("config", {}).get("name", dtype)
    if dtype is None:
        return "float32", torch.float32, None
    if isinstance(dtype, torch.dtype):
        dtype = str(dtype).removeprefix("torch.")
    if isinstance(dtype, str) and dtype in _MIXED_POLICIES:
        return dtype, torch.float32, _MIXED_POLICIES[dtype]
    if isinstance(dtype, str) and dtype in _DTYPE_NAMES:
        resolved = _DTYPE_NAMES[dtype]
        name = str(resolved).removeprefix("torch.")
        if resolved in (torch.float16, torch.bfloat16):
            return name, torch.float32, resolved
        return name, resolved, resolved if resolved == torch.float64 else None
    expected = "a floating torch.dtype or one of " + ", ".join(
        sorted([*_DTYPE_NAMES, *_MIXED_POLICIES])
    )
    raise fail("dtype", dtype, expected)


def _next_name() -> str:
    index = next(_layer_counter)
    return "batch_normalization" if index == 0 else f"batch_normalization_{index}"


class BatchNormalization(LazyModuleMixin, nn.Module):
    r"""Batch normalization layer with TensorFlow/Keras semantics (Ioffe and Szegedy, 2015).

    Normalises each channel with the batch statistics in training and with moving statistics
    in inference:

    .. math::

        y = \gamma \frac{x - \mu}{\sqrt{\sigma^2 + \epsilon}} + \beta, \qquad
        m \leftarrow m - (m - \mu)(1 - \text{momentum})

    and likewise for the moving variance (Bessel-corrected or not, see
    ``moving_variance_correction``). The full equations are in
    :func:`batchnorm.functional.batch_norm`.

    Args:
        axis: The channel axis, or a list of axes normalised jointly (Keras rule: statistics
            are reduced over every other axis). Default -1 (channels last); use 1 for NCHW.
        momentum: Moving-average decay in [0, 1], TensorFlow's sense. PyTorch's ``momentum``
            is ``1 - momentum``. Default 0.99.
        epsilon: Added to the variance, >= 0. Default 1e-3 (PyTorch: 1e-5).
        center: Learn an offset ``beta``. Default True.
        scale: Learn a scale ``gamma``. Default True.
        beta_initializer, gamma_initializer, moving_mean_initializer,
            moving_variance_initializer: From :mod:`batchnorm.initializers`: a name, a config
            dict, an instance or a callable ``(shape, dtype=None)``.
        beta_regularizer, gamma_regularizer: From :mod:`batchnorm.regularizers`; their
            penalties are in :attr:`losses`.
        beta_constraint, gamma_constraint: From :mod:`batchnorm.constraints`; applied after an
            optimizer step, never in the forward pass (see :meth:`apply_constraints`).
        renorm: Batch Renormalization (Ioffe, 2017): training normalises with the batch
            moments, then corrects by ``r, d`` from moving renorm statistics, so the output
            stops depending on the batch; adds the weights ``moving_stddev``, ``renorm_mean``
            and ``renorm_stddev``. Works with every other option.
        renorm_clipping: Dict with keys among ``rmin``, ``rmax``, ``dmax`` (floats or 0-d
            tensors you may change between steps); a missing key means no clip.
        renorm_momentum: Decay of the renorm statistics, in [0, 1]. Default 0.99.
        fused: None or True for the fast path, False for the reference path. It selects code,
            not numbers (except through ``moving_variance_correction=None``), and every
            option works on both paths (TensorFlow refuses several with ``fused=True``). The
            attribute :attr:`fused` reports tf_keras' resolved value instead.
        trainable: False freezes the layer: it always runs in inference mode (Keras 2 rule)
            and ``gamma``/``beta`` get ``requires_grad=False``.
        virtual_batch_size: Ghost batch norm: training statistics per group of this many
            examples (it must divide the batch); the weights get TensorFlow's extra leading
            dimension, e.g. ``(1, 1, C)``. Inference accepts any batch size.
        adjustment: Callable taking the input's ``torch.Size`` and returning ``(scale, bias)``
            broadcastable to the input, applied to the normalised value before gamma and beta,
            in training only (not serialized by :meth:`get_config`).
        name: Keras name; unique default ``batch_normalization[_N]``.
        synchronized: Keras' flag for statistics synchronized across replicas: in training,
            every process of ``process_group`` normalises with the moments of the global batch
            (one collective in the forward, one in the backward; see
            :func:`batchnorm.functional.batch_norm`). Outside an initialized
            ``torch.distributed`` group, or in a group of one process, a single process
            computes its own statistics, as TensorFlow does outside a distribution strategy.
        process_group: The ``torch.distributed`` group ``synchronized`` merges over (None:
            the default group). Not serialized by :meth:`get_config`.
        zero_debias_moving_mean: tf-slim's debiased moving mean; adds ``moving_mean_biased``
            and ``local_step``.
        deferred_updates: Keep each training call's moving-statistics update pending in
            :attr:`updates` until :meth:`apply_updates` (tf-slim's ``updates_collections``).
        virtual_batch_layout: ``"strided"`` (TensorFlow: group ``k`` takes rows ``k, k+G,
            ...``) or ``"contiguous"`` (rows ``kV .. kV+V-1``).
        moving_variance_correction: None stores the moving variance TensorFlow would store for
            the same arguments (Bessel-corrected where tf_keras runs its fused kernel: rank 4
            or 5, channels-first or -last axis, float16/32 variables, ``fused`` not False);
            True or False force it.
        nonfinite: What a training batch whose mean or variance is NaN or Inf does to the
            moving statistics: ``"skip"`` (default) leaves every statistic as it was and adds
            one to :attr:`skipped_updates`; ``"propagate"`` updates as TensorFlow does
            (writing the NaN in for good); ``"raise"`` raises
            :class:`batchnorm.NonFiniteBatchError` naming the layer, statistics unchanged.
            The call's output is the batch's own either way (:mod:`batchnorm._nonfinite`).
        input_shape: Input shape without the batch axis; builds the weights at once.
            Otherwise the weights are ``torch.nn.UninitializedParameter`` /
            ``UninitializedBuffer`` until the first call materializes them in place (torch's
            lazy modules: an optimizer created before that call trains them, and
            ``DistributedDataParallel`` refuses the unbuilt layer).
        dtype: Variable dtype or Keras policy: ``"float32"`` (default), ``"float64"``,
            ``"float16"``/``"bfloat16"`` (float32 variables, 16-bit compute and output; the
            input is cast), ``"float64"`` (float64 variables; the input is cast),
            ``"mixed_float16"``/``"mixed_bfloat16"``, or a ``torch.dtype``.
        device: Where to build the weights; default the first input's device.

    Shape:
        Input: any shape of rank >= 2. Output: the input's shape, dtype and memory format
        (with a 16-bit ``dtype`` the input is cast to it first).

    Example:
        >>> layer = BatchNormalization(axis=1, momentum=0.9)
        >>> x = torch.randn(8, 3, 4, 4)
        >>> y = layer(x)                     # training mode: batch statistics, one update
        >>> [w.shape for w in layer.get_weights()]
        [(3,), (3,), (3,), (3,)]
        >>> layer.eval()(x).shape            # inference: the moving statistics
        torch.Size([8, 3, 4, 4])

    """

    _version = _STATE_FORMAT_VERSION
    supports_masking = True  # Keras: the layer consumes a mask and passes it on

    gamma: nn.Parameter | None
    beta: nn.Parameter | None
    moving_mean: torch.Tensor | None
    moving_variance: torch.Tensor | None

    def __init__(
        self,
        axis: AxisArgument = -1,
        momentum: float = 0.99,
        epsilon: float = 1e-3,
        center: bool = True,
        scale: bool = True,
        beta_initializer: Any = "zeros",
        gamma_initializer: Any = "ones",
        moving_mean_initializer: Any = "zeros",
        moving_variance_initializer: Any = "ones",
        beta_regularizer: Any = None,
        gamma_regularizer: Any = None,
        beta_constraint: Any = None,
        gamma_constraint: Any = None,
        renorm: bool = False,
        renorm_clipping: Mapping[str, Any] | None = None,
        renorm_momentum: float = 0.99,
        fused: bool | None = None,
        trainable: bool = True,
        virtual_batch_size: int | None = None,
        adjustment: Callable[[torch.Size], tuple[Any, Any]] | None = None,
        name: str | None = None,
        *,
        synchronized: bool = False,
        process_group: Any = None,
        zero_debias_moving_mean: bool = False,
        deferred_updates: bool = False,
        moving_variance_correction: bool | None = None,
        virtual_batch_layout: str = "strided",
        nonfinite: str = "skip",
        input_shape: Sequence[int | None] | None = None,
        dtype: Any = None,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        self.axis = validate_axis_argument(axis)
        self.momentum = check_momentum(momentum)
        self.epsilon = check_epsilon(epsilon)
        check(isinstance(center, bool), "center", center, "True or False")
        check(isinstance(scale, bool), "scale", scale, "True or False")
        check(isinstance(trainable, bool), "trainable", trainable, "True or False")
        check_optional_bool(fused, "fused")
        check_optional_bool(moving_variance_correction, "moving_variance_correction")
        for flag, value in (
            ("renorm", renorm),
            ("synchronized", synchronized),
            ("zero_debias_moving_mean", zero_debias_moving_mean),
            ("deferred_updates", deferred_updates),
        ):
            check(isinstance(value, bool), flag, value, "True or False")
        self.renorm = renorm
        self.synchronized = synchronized
        self.process_group = check_process_group(process_group)
        self.renorm_clipping = check_renorm_clipping(renorm_clipping)
        self.renorm_momentum = check_momentum(renorm_momentum, "renorm_momentum")
        check_virtual_batch(virtual_batch_size, virtual_batch_layout)
        self.virtual_batch_size = virtual_batch_size
        self.virtual_batch_layout = virtual_batch_layout
        check(
            adjustment is None or callable(adjustment),
            "adjustment",
            adjustment,
            "None or a callable (input shape) -> (scale, bias)",
        )
        self.adjustment = adjustment
        check_zero_debias_momentum(zero_debias_moving_mean, self.momentum)
        self.zero_debias_moving_mean = zero_debias_moving_mean
        self.nonfinite = check_nonfinite(nonfinite)
        self.deferred_updates = deferred_updates
        self._pending: list[PendingUpdate] = []
        check(name is None or isinstance(name, str), "name", name, "a string or None")
        self.center = center
        self.scale = scale
        self._fused = fused
        self.moving_variance_correction = moving_variance_correction
        self.beta_initializer = initializers.get(beta_initializer, argument="beta_initializer")
        self.gamma_initializer = initializers.get(gamma_initializer, argument="gamma_initializer")
        self.moving_mean_initializer = initializers.get(
            moving_mean_initializer, argument="moving_mean_initializer"
        )
        self.moving_variance_initializer = initializers.get(
            moving_variance_initializer, argument="moving_variance_initializer"
        )
        self.beta_regularizer = regularizers.get(beta_regularizer, argument="beta_regularizer")
        self.gamma_regularizer = regularizers.get(gamma_regularizer, argument="gamma_regularizer")
        self.beta_constraint = constraints.get(beta_constraint, argument="beta_constraint")
        self.gamma_constraint = constraints.get(gamma_constraint, argument="gamma_constraint")
        self._dtype_name, self._variable_dtype, self._compute_dtype = _resolve_dtype(dtype)
        self._device = torch.device(device) if device is not None else None
        self.name = name if name is not None else _next_name()
        self._trainable = trainable
        self._layout: ChannelLayout | None = None
        self._build_input_shape: tuple[int | None, ...] | None = None
        self._register_uninitialized_weights()
        if input_shape is not None:
            check(
                isinstance(input_shape, (list, tuple, torch.Size)),
                "input_shape",
                input_shape,
                "a tuple of ints without the batch axis",
            )
            self.build((None, *input_shape))

    # ------------------------------------------------------------------ building
    def _state_names(self) -> tuple[str, ...]:
        """The buffers this configuration has, in Keras order."""
        names = ("moving_mean", "moving_variance")
        if self.renorm:
            names += ("moving_stddev", "renorm_mean", "renorm_stddev")
        if self.zero_debias_moving_mean:
            names += ("moving_mean_biased", "local_step")
        return names

    def _register_uninitialized_weights(self) -> None:
        """Every weight this configuration has, uninitialized (torch's lazy-module tensors).

        They carry a dtype and device that ``.to()``/``.half()`` change before the build, and
        :meth:`build` materializes them in place, so references taken before (an optimizer's)
        stay valid. ``local_step`` is a float32 scalar, as in tf-slim.
        """
        factory = {"device": self._device, "dtype": self._variable_dtype}
        for name, present in (("gamma", self.scale), ("beta", self.center)):
            parameter = UninitializedParameter(requires_grad=self._trainable, **factory)
            self.register_parameter(name, parameter if present else None)
        names = self._state_names()
        for name in _STATE_NAMES:
            dtype = torch.float32 if name == "local_step" else self._variable_dtype
            buffer = UninitializedBuffer(device=self._device, dtype=dtype)
            self.register_buffer(name, buffer if name in names else None)
        # A count, not a weight: in no checkpoint, get_weights or config (and reset by none).
        counter = UninitializedBuffer(device=self._device, dtype=torch.int64)
        self.register_buffer(SKIPPED_UPDATES, counter, persistent=False)

    @property
    def built(self) -> bool:
        """Whether the weights exist (after :meth:`build`, ``input_shape`` or a first call)."""
        return self._layout is not None

    def build(self, input_shape: Sequence[int | None]) -> None:
        """Create the weights for inputs of ``input_shape`` (batch axis included, may be None).

        Only the channel sizes must be known; other sizes may be None. The uninitialized
        weights are materialized in place with their current dtype (``.half()`` before the
        build is honoured) on the constructor's ``device`` (else where the first input is, or
        where ``.to()`` put them).

        Raises:
            BatchNormError: if the layer is already built, the rank is below 2, the axis does
                not fit the rank, a channel size is unknown or an initializer returns the
                wrong shape; no weight is created then.

        Example:
            >>> layer = BatchNormalization(axis=[1, 3])
            >>> layer.build((None, 3, 5, 2))
            >>> tuple(layer.gamma.shape)
            (1, 3, 1, 2)

        """
        self._build(input_shape, device=None)

    def _build(self, input_shape: Sequence[int | None], device: torch.device | None) -> None:
        """:meth:`build`, materializing on ``device`` when given."""
        check(not self.built, "build", tuple(input_shape), "a layer that is not built yet")
        shape = tuple(None if size is None else int(size) for size in input_shape)
        layout = ChannelLayout.from_axis(self.axis, [1 if s is None else s for s in shape])
        if self.virtual_batch_size is not None:
            check(
                0 not in layout.axes,
                "axis",
                self.axis,
                "no batch axis (0) among the channel axes when virtual_batch_size is set",
            )
        for d in layout.axes:
            check(
                shape[d] is not None and shape[d] > 0,
                f"input_shape[{d}]",
                shape[d],
                "a known, positive channel size",
            )
        param_shape = layout.param_shape
        if self.virtual_batch_size is not None:  # TensorFlow's ghost-batch variable shape
            param_shape = (1, 1, *layout.broadcast_shape[1:])
        values = self._initial_values(param_shape)
        target = device or self._device or self.moving_mean.device
        check(
            target.type != "meta" or self.moving_mean.device.type == "meta",
            "inputs.device",
            target,
            "a device with data for an unbuilt layer's first call (torch cannot move an "
            "uninitialized weight to meta); to trace shapes only, build the layer first "
            "(input_shape=...), then layer.to('meta')",
        )
        with torch.no_grad():
            for name, value in values.items():
                weight = getattr(self, name)
                weight.materialize(value.shape, device=target, dtype=weight.dtype)
                weight.copy_(value)
        self._layout = layout
        self._build_input_shape = shape

    def _initial_values(self, param_shape: tuple[int, ...]) -> dict[str, torch.Tensor]:
        """Every weight's initial value (checked before anything is materialized)."""

        def initial(initializer: Any, argument: str) -> torch.Tensor:
            value = initializer(param_shape, dtype=self._variable_dtype)
            tensor = torch.as_tensor(value, dtype=self._variable_dtype)
            check(
                tuple(tensor.shape) == param_shape,
                f"{argument} result shape",
                tuple(tensor.shape),
                f"{param_shape}",
            )
            return tensor

        values = {}
        if self.scale:
            values["gamma"] = initial(self.gamma_initializer, "gamma_initializer")
        if self.center:
            values["beta"] = initial(self.beta_initializer, "beta_initializer")
        mean = initial(self.moving_mean_initializer, "moving_mean_initializer")
        variance = initial(self.moving_variance_initializer, "moving_variance_initializer")
        values |= {"moving_mean": mean, "moving_variance": variance}
        if self.renorm:  # tf_keras: stddevs start at sqrt(moving_variance), renorm_mean at mean
            values |= {
                "moving_stddev": torch.sqrt(variance),
                "renorm_mean": mean,
                "renorm_stddev": torch.sqrt(variance),
            }
        if self.zero_debias_moving_mean:  # tf-slim: both start at zero
            values |= {
                "moving_mean_biased": torch.zeros_like(mean),
                "local_step": torch.zeros((), dtype=torch.float32),
            }
        values[SKIPPED_UPDATES] = torch.zeros((), dtype=torch.int64)
        return values

    def initialize_parameters(
        self,
        inputs: Any,
        training: Any = None,
        mask: Any = None,
        batch_weights: Any = None,
    ) -> None:
        """Build from the first input (torch's lazy-module hook, run before :meth:`forward`).

        The input and ``training`` are checked first, so a call that raises leaves the layer
        unbuilt. A built layer is left as it is.
        """
        if self.built:
            return
        check(isinstance(inputs, torch.Tensor), "inputs", type(inputs).__name__, "a torch.Tensor")
        self._resolve_training(training)
        ChannelLayout.from_axis(self.axis, inputs.shape)
        placed = self._device is not None or any(
            t.device.type != "cpu" for t in itertools.chain(self.parameters(), self.buffers())
        )  # by the constructor or .to(); otherwise the weights follow the input
        self._build(inputs.shape, device=None if placed else inputs.device)

    def __deepcopy__(self, memo: dict[int, Any]) -> BatchNormalization:
        """``copy.deepcopy``, unbuilt layers included.

        torch cannot deep-copy an ``UninitializedBuffer`` (``torch.nn.LazyBatchNorm1d`` fails
        too), so the copy gets fresh uninitialized buffers of the same dtype and device.
        """
        lazy = {n: b for n, b in self._buffers.items() if isinstance(b, UninitializedBuffer)}
        clone = self.__class__.__new__(self.__class__)
        memo[id(self)] = clone
        for name in lazy:
            self._buffers[name] = None
        try:
            clone.__dict__.update(copy.deepcopy(self.__dict__, memo))
        finally:
            self._buffers.update(lazy)
        for name, buffer in lazy.items():
            clone._buffers[name] = UninitializedBuffer(device=buffer.device, dtype=buffer.dtype)
        return clone

    def __prepare_scriptable__(self) -> BatchNormalization:
        """``torch.jit.script`` cannot compile this layer: say so, and what works instead."""
        raise BatchNormError(
            f"torch.jit.script(layer {self.name!r}): TorchScript cannot compile "
            "BatchNormalization (Python dispatch over options and the Keras layer API); use "
            "torch.compile(layer) or torch.export.export(model, ...) instead, both supported"
        )

    def _lazy_load_hook(self, *args: Any) -> None:
        """No-op: :meth:`_load_from_state_dict` builds an unbuilt layer from the saved shape.

        (torch's lazy hook would materialize the tensors without the layout they belong to.)
        """

    # ------------------------------------------------------------------ calling
    def forward(
        self,
        inputs: torch.Tensor,
        training: bool | None = None,
        mask: torch.Tensor | None = None,
        batch_weights: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Normalise ``inputs``.

        Args:
            inputs: A tensor of rank >= 2 whose channel sizes match the built layer.
            training: True for batch statistics and a moving-statistics update, False for
                inference, None to follow ``self.training`` (``train()``/``eval()``). A layer
                with ``trainable=False`` always runs inference (Keras 2 rule; the V1 class in
                :mod:`batchnorm.compat.v1` normalises with batch statistics but skips the
                update instead).
            mask: Boolean tensor of the input's shape without its *last* axis, expanded
                there whatever ``axis`` is (Keras), or of the input's rank and broadcastable
                to it: masked positions do not contribute to the statistics, but are
                normalised with them. Ignored in inference.
            batch_weights: Shape ``(batch,)``, non-negative per-example weights of the
                statistics (tf-slim). Ignored in inference.

        Raises:
            BatchNormError: for a non-tensor, a rank or channel size that does not match the
                built layer, a bad mask or weights; weights and statistics are left unchanged.
        """
        lanes = self.__dict__.get("_lanes")
        key = None
        if (
            lanes is not None
            and mask is None
            and batch_weights is None
            and (training is None or training is True or training is False)
            and isinstance(inputs, torch.Tensor)
            and not _traced()
        ):
            key = lane_key(inputs, training, self.training, self._trainable)
            lane = lanes.get(key)
            if lane is not None:  # (its shape passed the layout's check when it was made)
                output = run_lane(self, lane, inputs)
                if output is not None:
                    return output
        x, normalise, update = self._resolve_call(inputs, training)
        try:
            layout = self._layout.with_batch(x.shape)
            result = batch_norm_checked(
                x,
                self._state(),
                self.gamma,
                self.beta,
                self._call_options(),
                training=normalise,
                batch_weights=batch_weights,
                mask=mask,
                layout=layout,
                state_checked=True,
            )
        except (SynchronizationError, NonFiniteBatchError) as error:  # which layer it was
            raise type(error)(f"layer {self.name!r}: {error}") from error
        if update and result.update is not None:
            if self.deferred_updates:
                self._pending.append(PendingUpdate(self, result.update))
            else:
                self._commit(result.new_stats)
        elif normalise and result.update is not None:  # a frozen V1 layer in training
            self._commit_frozen(result.new_stats)
        if key is not None and key not in lanes:  # this signature's decisions, for next time
            cast = None if x.dtype == inputs.dtype else x.dtype
            options = self._call_options()
            lanes[key] = make_lane(self, x, options, layout, normalise, update, cast)
        return result.output

    def _prepare_call(
        self, inputs: torch.Tensor, training: Any
    ) -> tuple[torch.Tensor, ChannelLayout, bool, bool]:
        """Check ``inputs`` against the layer (building it on first use) and resolve ``training``.

        Returns the input cast to the compute dtype, its layout, whether to normalise with the
        batch statistics, and whether to update the moving statistics. Shared by
        :meth:`forward` and :func:`batchnorm.compat.v1.batch_norm`, which then call the
        functional.
        """
        x, normalise, update = self._resolve_call(inputs, training)
        return x, self._layout.with_batch(x.shape), normalise, update

    def _resolve_call(self, inputs: torch.Tensor, training: Any) -> tuple[torch.Tensor, bool, bool]:
        """:meth:`_prepare_call` without the layout (which a decided call does not need)."""
        if self._layout is None:  # forward() called directly, without the lazy-module hook
            self.initialize_parameters(inputs, training)
        check(isinstance(inputs, torch.Tensor), "inputs", type(inputs).__name__, "a torch.Tensor")
        normalise, update = self._resolve_training(training)
        if not inputs.is_floating_point():
            check_real_input(inputs, "inputs", normalise)
        return self._cast_input(inputs), normalise, update

    def _commit_frozen(self, new_stats: Mapping[str, torch.Tensor]) -> None:
        """Commit what a frozen layer's training call updates (the V1 class: renorm's pair)."""
        frozen = self._frozen_layer_updates
        self._commit({k: v for k, v in new_stats.items() if k in frozen})

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _CALL_OPTION_ATTRIBUTES:  # the checked options are made again on next use
            self.__dict__["_checked_options"] = None
        if name in _CALL_OPTION_ATTRIBUTES or name == "deferred_updates":
            self.__dict__["_lanes"] = {}  # and the calls decided with them (batchnorm._lanes)
        super().__setattr__(name, value)

    def _apply(self, fn: Callable[..., Any], recurse: bool = True) -> BatchNormalization:
        """``nn.Module._apply`` (``.to()``, ``.double()``, ...), forgetting the decided calls."""
        self.__dict__["_lanes"] = {}
        return super()._apply(fn, recurse)

    def _call_options(self) -> Options:
        """The functional's options from this layer's attributes, checked once per change.

        Setting any of them (``layer.momentum = 0.9``) drops the checked copy, so a bad value
        is still refused, by the next call.
        """
        options = self.__dict__.get("_checked_options")
        if options is None:
            options = check_options(
                axis=self.axis,
                momentum=self.momentum,
                epsilon=self.epsilon,
                fused=self._fused,
                moving_variance_correction=self._variance_correction(),
                renorm=self.renorm,
                renorm_clipping=self.renorm_clipping,
                renorm_momentum=self.renorm_momentum,
                virtual_batch_size=self.virtual_batch_size,
                virtual_batch_layout=self.virtual_batch_layout,
                adjustment=self.adjustment,
                zero_debias_moving_mean=self.zero_debias_moving_mean,
                synchronized=self.synchronized,
                process_group=self.process_group,
                nonfinite=self.nonfinite,
            )
            self.__dict__["_checked_options"] = options
        return options

    def _state(self) -> dict[str, torch.Tensor]:
        """The moving statistics by TensorFlow name (only those this configuration has)."""
        buffers = self._buffers  # read directly: Module.__getattr__ costs a microsecond a name
        return {name: buffers[name] for name in _STATE_AND_COUNTER if buffers.get(name) is not None}

    def _cast_input(self, inputs: torch.Tensor) -> torch.Tensor:
        compute = self._current_compute_dtype()
        if compute is not None:
            return inputs.to(compute)
        if not inputs.is_floating_point():
            return inputs.to(self._buffers["moving_mean"].dtype)
        return inputs

    def _variance_correction(self) -> bool | None:
        """``moving_variance_correction`` for the functional (tf_keras never fuses synchronized)."""
        if self.moving_variance_correction is None and self.synchronized:
            return False
        return self.moving_variance_correction

    # Keras 2 (V2) rule: a frozen layer runs inference. The V1 class overrides these.
    _v1_fused_default = False
    _frozen_layer_uses_batch_statistics = False
    _frozen_layer_updates: tuple[str, ...] = ()

    def _resolve_training(self, training: Any) -> tuple[bool, bool]:
        """(normalise with batch statistics?, update the moving statistics?)."""
        if training is None:
            training = self.training
        elif isinstance(training, torch.Tensor):
            check(training.numel() == 1, "training", training, "a bool or a 1-element tensor")
            training = bool(training.item())
        else:
            check(isinstance(training, (bool, int)), "training", training, "None, True or False")
            training = bool(training)
        if not self._trainable:
            return training and self._frozen_layer_uses_batch_statistics, False
        return training, training

    def _commit(self, new_stats: Mapping[str, torch.Tensor]) -> None:
        try:  # (no grad mode needed: the new statistics and the buffers need no gradient)
            for key, value in new_stats.items():
                self._buffers[key].copy_(value)
        except RuntimeError as error:
            if not torch._C._are_functorch_transforms_active():
                raise
            raise BatchNormError(
                f"layer {self.name!r} updates its moving statistics in place in training, "
                "which torch.func transforms refuse for buffers captured from outside them "
                "(torch.nn.BatchNorm* too): use batchnorm.functional.batch_norm, which returns "
                "the new statistics, or call the layer with training=False"
            ) from error

    # ------------------------------------------------------------------ deferred updates
    @property
    def updates(self) -> list[PendingUpdate]:
        """Pending moving-statistics updates (``deferred_updates=True``), oldest first.

        Each is callable: calling it applies that update to the current statistics. Updates
        replay the recorded batch moments on the statistics as they are when applied, so two
        pending updates applied in order equal two immediate updates.
        """
        return list(self._pending)

    def apply_updates(self) -> None:
        """Apply every pending update in order, then forget them.

        With automatic mixed precision, call it only when the optimizer step was taken (the
        scaler did not skip it), and :meth:`discard_updates` otherwise, so a step whose
        gradients overflowed leaves the statistics as they were.

        Example:
            >>> layer = BatchNormalization(momentum=0.5, deferred_updates=True)
            >>> _ = layer(torch.tensor([[2.0], [4.0]]), training=True)
            >>> layer.moving_mean.tolist(), len(layer.updates)
            ([0.0], 1)
            >>> layer.apply_updates()
            >>> layer.moving_mean.tolist(), len(layer.updates)
            ([1.5], 0)
        """
        pending, self._pending = self._pending, []
        for update in pending:
            update()

    def discard_updates(self) -> None:
        """Forget every pending update; the statistics stay exactly as they are."""
        self._pending = []

    # ------------------------------------------------------------------ Keras layer API
    @property
    def trainable(self) -> bool:
        """Keras' switch: False means inference always and no gradient for gamma and beta."""
        return self._trainable

    @trainable.setter
    def trainable(self, value: bool) -> None:
        check(isinstance(value, bool), "trainable", value, "True or False")
        self._trainable = value
        for parameter in (self.gamma, self.beta):
            if parameter is not None:  # an attribute, which uninitialized parameters accept
                parameter.requires_grad = value

    def _converted_dtype(self) -> torch.dtype | None:
        """The weights' dtype when ``.to()``/``.half()``/... changed it since construction."""
        current = self._buffers["moving_mean"].dtype
        return None if current == self._variable_dtype else current

    def _current_compute_dtype(self) -> torch.dtype | None:
        """The dtype inputs are cast to (None: the input's own), following ``.to()``."""
        converted = self._converted_dtype()
        if converted is None:
            return self._compute_dtype
        return None if converted == torch.float32 else converted

    @property
    def dtype(self) -> str:
        """Keras' ``layer.dtype``: the dtype policy's variable dtype, by name.

        ``"float32"`` for float32 and mixed policies; ``"float16"``/``"bfloat16"``/
        ``"float64"`` for those policies (as tf_keras says, although a 16-bit layer keeps its
        weights in float32, as tf_keras does). After ``.to(dtype)``, ``.half()`` or
        ``.double()`` it is the weights' new dtype.

        Example:
            >>> layer = BatchNormalization(input_shape=(2,))
            >>> layer.dtype, layer.double().dtype
            ('float32', 'float64')
        """
        converted = self._converted_dtype()
        if converted is not None:
            return str(converted).removeprefix("torch.")
        if self._dtype_name in _MIXED_POLICIES:
            return "float32"
        return self._dtype_name

    @property
    def compute_dtype(self) -> str | None:
        """The dtype inputs are cast to, or None when the input's own dtype is kept."""
        compute = self._current_compute_dtype()
        return None if compute is None else str(compute).removeprefix("torch.")

    @property
    def fused(self) -> bool | None:
        """tf_keras' ``layer.fused``: whether TensorFlow would run its fused kernel.

        Before the build: the ``fused`` argument where fusion is possible, else False (the V1
        class turns None into True). After the build: True or False, TensorFlow's decision
        for the built rank (:func:`batchnorm._tf_rules.tensorflow_runs_fused_kernel`; False
        where TensorFlow would refuse ``fused=True``). Our code path follows the argument, not
        this value; setting the attribute sets the argument.

        Example:
            >>> layer = BatchNormalization(axis=1)
            >>> layer.fused is None, layer.build((None, 3, 4, 4)), layer.fused
            (True, None, True)
        """
        options = {
            "renorm": self.renorm,
            "virtual_batch_size": self.virtual_batch_size,
            "adjustment": self.adjustment,
            "synchronized": self.synchronized,
        }
        if self._layout is not None:
            dtype = self._buffers["moving_mean"].dtype
            return tensorflow_runs_fused_kernel(
                self.axis, self._layout.rank, self._fused, dtype, **options
            )
        if self._fused is None and self._v1_fused_default:
            return True
        possible = tensorflow_can_fuse(self.axis, self._variable_dtype, **options)
        return self._fused if possible else False

    @fused.setter
    def fused(self, value: bool | None) -> None:
        check_optional_bool(value, "fused")
        self._fused = value

    def _named_weights(self) -> list[tuple[str, torch.Tensor]]:
        """(TensorFlow name, tensor) of every weight in Keras order; none before the build."""
        if not self.built:
            return []
        names = ("gamma", "beta", *_STATE_NAMES)
        return [(n, getattr(self, n)) for n in names if getattr(self, n) is not None]

    @property
    def weight_names(self) -> list[str]:
        """TensorFlow's names of :attr:`weights`, in the same order.

        Example:
            >>> BatchNormalization(center=False, input_shape=(2,)).weight_names
            ['gamma', 'moving_mean', 'moving_variance']
        """
        return [name for name, _ in self._named_weights()]

    @property
    def weights(self) -> list[torch.Tensor]:
        """All weights in Keras order: gamma, beta, moving_mean, moving_variance (if present)."""
        return [tensor for _, tensor in self._named_weights()]

    variables = weights

    @property
    def trainable_weights(self) -> list[torch.Tensor]:
        """``[gamma, beta]`` (those present) when trainable and built, else ``[]``."""
        if not self._trainable or not self.built:
            return []
        return [t for t in (self.gamma, self.beta) if t is not None]

    trainable_variables = trainable_weights

    @property
    def non_trainable_weights(self) -> list[torch.Tensor]:
        """The moving statistics, preceded by gamma and beta when the layer is frozen."""
        trainable = {id(t) for t in self.trainable_weights}
        return [t for t in self.weights if id(t) not in trainable]

    non_trainable_variables = non_trainable_weights

    def _require_built(self, what: str) -> None:
        if not self.built:
            raise BatchNormError(
                f"{what} needs the weights, but layer {self.name!r} is not built; call it once, "
                "call build(input_shape), or pass input_shape= to the constructor"
            )

    def get_weights(self) -> list[np.ndarray]:
        """The weights as numpy arrays, in Keras order (see :attr:`weights`); ``[]`` unbuilt.

        Example:
            >>> layer = BatchNormalization(center=False, input_shape=(3,))
            >>> [w.tolist() for w in layer.get_weights()]
            [[1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]]

        """
        return [t.detach().cpu().numpy().copy() for t in self.weights]

    def set_weights(self, weights: Sequence[Any]) -> None:
        """Set the weights from arrays in :meth:`get_weights` order; shapes must match exactly.

        An unbuilt layer has no weights: it accepts ``[]`` (as Keras does) and nothing else.

        Raises:
            BatchNormError: on a wrong count, shape or dtype kind (not real numbers); no weight
                is changed then.

        Example:
            >>> layer = BatchNormalization(input_shape=(2,))
            >>> layer.set_weights([[2.0, 2.0], [0.0, 1.0], [0.5, 0.5], [4.0, 4.0]])
            >>> layer.moving_variance.tolist()
            [4.0, 4.0]

        """
        named = self._named_weights()
        expected = f"a list of {len(named)} arrays for {[n for n, _ in named]}"
        if not self.built:
            expected = f"[] (layer {self.name!r} is not built, so it has no weights yet)"
        check(
            isinstance(weights, (list, tuple)) and len(weights) == len(named),
            "len(weights)",
            len(weights) if isinstance(weights, (list, tuple)) else type(weights).__name__,
            expected,
        )
        values = []
        for index, ((weight_name, target), value) in enumerate(zip(named, weights, strict=True)):
            array = np.asarray(value.detach().cpu() if isinstance(value, torch.Tensor) else value)
            check(
                tuple(array.shape) == tuple(target.shape),
                f"weights[{index}].shape ({weight_name})",
                tuple(array.shape),
                f"{tuple(target.shape)}",
            )
            check(
                array.dtype.kind in "fiu",  # real numbers (not bool, complex, strings, objects)
                f"weights[{index}].dtype ({weight_name})",
                str(array.dtype),
                "a real number dtype (float or int)",
            )
            values.append(torch.as_tensor(array, dtype=target.dtype, device=target.device))
        with torch.no_grad():
            for (_, target), value in zip(named, values, strict=True):
                target.copy_(value)

    def count_params(self) -> int:
        """Number of scalars in all weights, moving statistics included (Keras counts them).

        Example:
            >>> BatchNormalization(input_shape=(5,)).count_params()
            20

        """
        self._require_built("count_params()")
        return sum(t.numel() for t in self.weights)

    @property
    def losses(self) -> list[torch.Tensor]:
        """Regularization penalties on gamma then beta, recomputed (differentiable) each read.

        Example:
            >>> layer = BatchNormalization(gamma_regularizer="l2", input_shape=(4,))
            >>> [round(loss.item(), 4) for loss in layer.losses]
            [0.04]

        """
        penalties: list[torch.Tensor] = []
        if not self.built:
            return penalties
        if self.gamma is not None and self.gamma_regularizer is not None:
            penalties.append(self.gamma_regularizer(self.gamma))
        if self.beta is not None and self.beta_regularizer is not None:
            penalties.append(self.beta_regularizer(self.beta))
        return penalties

    def apply_constraints(self) -> None:
        """Project gamma and beta onto their constraints, in place.

        Call after each optimizer step, or let :func:`batchnorm.constraints.
        register_optimizer_hook` do it. TensorFlow's optimizers do the same after their update.

        Example:
            >>> layer = BatchNormalization(gamma_constraint="non_neg", input_shape=(3,))
            >>> layer.set_weights([[-1.0, 2.0, -3.0], [0.0] * 3, [0.0] * 3, [1.0] * 3])
            >>> layer.apply_constraints()
            >>> layer.gamma.tolist()
            [0.0, 2.0, 0.0]

        """
        if not self.built:
            return
        pairs = ((self.gamma, self.gamma_constraint), (self.beta, self.beta_constraint))
        with torch.no_grad():
            for parameter, constraint in pairs:
                if parameter is not None and constraint is not None:
                    parameter.copy_(constraint(parameter))

    def compute_output_shape(self, input_shape: Sequence[int | None]) -> tuple[int | None, ...]:
        """The output shape: the input's.

        Example:
            >>> BatchNormalization().compute_output_shape((None, 4))
            (None, 4)

        """
        return tuple(input_shape)

    def compute_mask(self, inputs: torch.Tensor, mask: torch.Tensor | None = None) -> Any:
        """The output mask: the input mask, passed through unchanged."""
        return mask

    # ------------------------------------------------------------------ config
    def get_config(self) -> dict[str, Any]:
        """A JSON-serializable dict from which :meth:`from_config` rebuilds an equal layer.

        Keys follow tf_keras; ``axis`` is the raw value before build and the list of
        normalised axes after build, as in tf_keras; the renorm keys appear only with
        ``renorm=True`` and ``virtual_batch_size`` only when set, as in tf_keras. Our own
        options appear only when they differ from their defaults. ``adjustment`` is code, so
        it is never serialized (as in tf_keras): pass it again to :meth:`from_config`'s result.

        Example:
            >>> config = BatchNormalization(axis=1, name="bn").get_config()
            >>> config["axis"], config["momentum"], config["gamma_initializer"]["class_name"]
            (1, 0.99, 'Ones')

        """
        axis: Any = self.axis if isinstance(self.axis, int) else list(self.axis)
        if self._layout is not None:
            axis = list(self._layout.axes)
        config: dict[str, Any] = {
            "name": self.name,
            "trainable": self._trainable,
            "dtype": self._policy_name(),
            "axis": axis,
            "momentum": self.momentum,
            "epsilon": self.epsilon,
            "center": self.center,
            "scale": self.scale,
            **{
                name: registry.serialize(getattr(self, name), argument=name)
                for registry, names in (
                    (initializers, _INITIALIZER_ARGUMENTS),
                    (regularizers, ("beta_regularizer", "gamma_regularizer")),
                    (constraints, ("beta_constraint", "gamma_constraint")),
                )
                for name in names
            },
        }
        if self.renorm:  # tf_keras lists the renorm keys only when renorm is on
            config["renorm"] = True
            config["renorm_clipping"] = {
                key: float(value) for key, value in self.renorm_clipping.items()
            }
            config["renorm_momentum"] = self.renorm_momentum
        if self.virtual_batch_size is not None:
            config["virtual_batch_size"] = self.virtual_batch_size
        if self.virtual_batch_layout != "strided":
            config["virtual_batch_layout"] = self.virtual_batch_layout
        if self.zero_debias_moving_mean:
            config["zero_debias_moving_mean"] = True
        if self.deferred_updates:
            config["deferred_updates"] = True
        if self.nonfinite != "skip":
            config["nonfinite"] = self.nonfinite
        if self.synchronized:  # as in Keras 3 (tf_keras never writes it)
            config["synchronized"] = True
        if self._fused is not None:
            config["fused"] = self._fused
        if self.moving_variance_correction is not None:
            config["moving_variance_correction"] = self.moving_variance_correction
        return config

    def _policy_name(self) -> str:
        """``get_config()["dtype"]``: the policy's name, or the weights' dtype once converted."""
        converted = self._converted_dtype()
        return self._dtype_name if converted is None else str(converted).removeprefix("torch.")

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> BatchNormalization:
        """Rebuild a layer from a config: ours, tf_keras' or Keras 3's; never runs code.

        Takes what :meth:`get_config` of this class, of ``tf_keras.layers.BatchNormalization``
        or of ``keras.layers.BatchNormalization`` returns, including tf_keras'
        ``batch_input_shape`` (a layer made with ``input_shape=``; the result is built for it),
        dtype policies as strings or ``DTypePolicy``/``Policy`` dicts, and Keras 3's
        ``synchronized``. Keras' serialized form of a layer (``{"class_name":
        "BatchNormalization", "config": {...}, "build_config": {...}}``, as in a model's
        config) is accepted too, and its ``build_config`` builds the layer.

        Raises:
            BatchNormError: for keys this layer does not know, or a serialized layer of
                another class.

        Example:
            >>> layer = BatchNormalization(momentum=0.9, gamma_regularizer="l2")
            >>> BatchNormalization.from_config(layer.get_config()).get_config()["momentum"]
            0.9
            >>> tf_keras_config = {"name": "bn", "batch_input_shape": [None, 3], "axis": [1]}
            >>> BatchNormalization.from_config(tf_keras_config).moving_mean.tolist()
            [0.0, 0.0, 0.0]

        """
        check(isinstance(config, dict), "config", type(config).__name__, "a dict")
        build_shape = None
        if "class_name" in config and "config" in config:  # Keras' serialized layer
            check(
                config["class_name"] == "BatchNormalization",
                "config['class_name']",
                config["class_name"],
                "'BatchNormalization'",
            )
            build_shape = (config.get("build_config") or {}).get("input_shape")
            config = config["config"]
            check(isinstance(config, dict), "config['config']", type(config).__name__, "a dict")
        options = dict(config)
        build_shape = options.pop("batch_input_shape", build_shape)
        known = set(_CONFIG_KEYS)
        unknown = sorted(set(options) - known)
        check(not unknown, "config keys", unknown, f"keys among {sorted(known)}")
        layer = cls(**options)
        if build_shape is not None:
            check(
                isinstance(build_shape, (list, tuple)),
                "batch_input_shape",
                build_shape,
                "a list of sizes, the batch axis first (None where unknown)",
            )
            layer.build(build_shape)
        return layer

    # ------------------------------------------------------------------ state_dict
    def get_extra_state(self) -> dict[str, Any]:
        """Versioned build information saved in ``state_dict`` under ``_extra_state``."""
        shape = None if self._build_input_shape is None else list(self._build_input_shape)
        return {"format_version": _STATE_FORMAT_VERSION, "build_input_shape": shape}

    def _save_to_state_dict(
        self, destination: dict[str, Any], prefix: str, keep_vars: bool
    ) -> None:
        """Torch's lazy-module saving (uninitialized tensors as they are), plus the extra state.

        (``LazyModuleMixin`` replaces ``nn.Module``'s method and drops ``_extra_state``.) The
        legacy ONNX exporter reads every state entry as a tensor: it gets none.
        """
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if not torch.onnx.is_in_onnx_export():  # the legacy exporter takes tensors only
            destination[prefix + "_extra_state"] = self.get_extra_state()

    def set_extra_state(self, state: Any) -> None:
        """Check the saved layout version; the weights themselves load as usual."""
        problem = _extra_state_problem(state)
        if problem is not None:
            raise BatchNormError(problem)

    def load_state_dict(
        self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False
    ) -> Any:
        """Torch's ``load_state_dict``, all or nothing: every entry is checked before any loads.

        Raises:
            BatchNormError: (a ValueError) naming every missing, unexpected (with ``strict``)
                or mis-shaped entry, or a bad ``_extra_state``; the layer is left unchanged.

        Example:
            >>> layer = BatchNormalization(axis=1, input_shape=(3,))
            >>> twin = BatchNormalization(axis=1, input_shape=(3,))
            >>> twin.load_state_dict(layer.state_dict())
            <All keys matched successfully>
        """
        check(
            isinstance(state_dict, Mapping),
            "state_dict",
            type(state_dict).__name__,
            "a mapping of names to tensors (module.state_dict())",
        )
        problems = self._checkpoint_problems(state_dict, "", strict)
        if strict:
            known = set(self.state_dict())
            problems += [f"unexpected key {key!r}" for key in state_dict if key not in known]
        if problems:
            raise fail(
                f"state_dict for layer {self.name!r}",
                "; ".join(problems),
                f"the entries of this layer's own state_dict(): {sorted(self.state_dict())}",
            )
        return super().load_state_dict(state_dict, strict, assign)

    def _checkpoint_problems(
        self, state_dict: Mapping[str, Any], prefix: str, strict: bool
    ) -> list[str]:
        """What keeps ``state_dict`` (this layer's entries under ``prefix``) from loading whole."""
        problems = []
        own = {**self._parameters, **{n: b for n, b in self._buffers.items() if n in _STATE_NAMES}}
        for name, tensor in own.items():
            if tensor is None:
                continue
            if prefix + name not in state_dict:
                if strict:
                    problems.append(f"missing key {name!r}")
                continue
            value = state_dict[prefix + name]
            if not isinstance(value, torch.Tensor):
                problems.append(f"{name!r} is a {type(value).__name__}, not a tensor")
            elif value.is_complex() or value.dtype == torch.bool:
                problems.append(f"{name!r} has dtype {value.dtype}, not a real number type")
            elif not is_lazy(tensor) and value.shape != tensor.shape:
                shape, expected = tuple(value.shape), tuple(tensor.shape)
                problems.append(f"{name!r} has shape {shape}, this layer's is {expected}")
        extra = state_dict.get(prefix + "_extra_state")
        if extra is None:
            if strict:
                problems.append("missing key '_extra_state'")
        elif (problem := _extra_state_problem(extra)) is not None:
            problems.append(problem)
        return problems

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        """Build an unbuilt layer from the saved build shape first, so loading can fill it.

        All or nothing also inside a model's ``load_state_dict``: where one of this layer's
        entries cannot load (missing under ``strict``, mis-shaped), none of them does, and torch
        reports why.
        """
        problems = self._checkpoint_problems(state_dict, prefix, strict)
        if problems:
            error_msgs.extend(f"layer {self.name!r} ({prefix or 'top'}): {p}" for p in problems)
            return
        extra = state_dict.get(prefix + "_extra_state")
        if not self.built and isinstance(extra, dict) and extra.get("build_input_shape"):
            self.build(extra["build_input_shape"])
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def extra_repr(self) -> str:
        """Constructor arguments that differ from the defaults, for ``print(layer)``."""
        parts = [f"name={self.name!r}", f"axis={self.axis}", f"momentum={self.momentum}"]
        parts.append(f"epsilon={self.epsilon}")
        if not self.center:
            parts.append("center=False")
        if not self.scale:
            parts.append("scale=False")
        if not self._trainable:
            parts.append("trainable=False")
        if self._fused is not None:
            parts.append(f"fused={self._fused}")
        return ", ".join(parts)


_INITIALIZER_ARGUMENTS = (
    "beta_initializer",
    "gamma_initializer",
    "moving_mean_initializer",
    "moving_variance_initializer",
)
# The attributes :meth:`BatchNormalization._call_options` reads.
_CALL_OPTION_ATTRIBUTES = frozenset(
    {
        "axis",
        "momentum",
        "epsilon",
        "_fused",
        "moving_variance_correction",
        "synchronized",
        "process_group",
        "renorm",
        "renorm_clipping",
        "renorm_momentum",
        "virtual_batch_size",
        "virtual_batch_layout",
        "adjustment",
        "zero_debias_moving_mean",
        "nonfinite",
    }
)


def _extra_state_problem(state: Any) -> str | None:
    """Why ``state`` is not this library's ``_extra_state``, or None where it is."""
    if isinstance(state, dict) and state.get("format_version") == _STATE_FORMAT_VERSION:
        return None
    return (
        f"state_dict['_extra_state']={state!r}; expected a dict with format_version "
        f"{_STATE_FORMAT_VERSION}"
    )


_STATE_NAMES = (
    "moving_mean",
    "moving_variance",
    "moving_stddev",
    "renorm_mean",
    "renorm_stddev",
    "moving_mean_biased",
    "local_step",
)
_STATE_AND_COUNTER = (*_STATE_NAMES, SKIPPED_UPDATES)


class PendingUpdate:
    """A deferred moving-statistics update of one layer; call it to apply it.

    Holds the batch moments of one training call (see
    :class:`batchnorm.functional.StatisticsUpdate`); applying recomputes the new statistics
    from the layer's statistics at that moment, then removes itself from the layer's pending
    list if it is still there.
    """

    def __init__(self, layer: BatchNormalization, update: StatisticsUpdate) -> None:
        self.layer = layer
        self.update = update

    def __call__(self) -> None:
        """Apply the update to the layer's current statistics."""
        self.layer._commit(self.update.apply_to(self.layer._state()))
        if self in self.layer._pending:
            self.layer._pending.remove(self)

    def __repr__(self) -> str:
        return f"PendingUpdate(layer={self.layer.name!r})"


def apply_updates(model: nn.Module) -> int:
    """Apply the pending updates of every :class:`BatchNormalization` in ``model``.

    Returns the number of updates applied.

    Example:
        >>> model = nn.Sequential(BatchNormalization(deferred_updates=True), nn.ReLU())
        >>> _ = model(torch.randn(4, 3))
        >>> apply_updates(model)
        1
    """
    applied = 0
    for module in model.modules():
        if isinstance(module, BatchNormalization):
            applied += len(module._pending)
            module.apply_updates()
    return applied


def discard_updates(model: nn.Module) -> int:
    """Drop the pending updates of every :class:`BatchNormalization` in ``model``.

    Returns the number of updates dropped; the statistics stay exactly as they were.

    Example:
        >>> model = nn.Sequential(BatchNormalization(deferred_updates=True))
        >>> _ = model(torch.randn(4, 3))
        >>> discard_updates(model), model[0].moving_mean.tolist()
        (1, [0.0, 0.0, 0.0])
    """
    dropped = 0
    for module in model.modules():
        if isinstance(module, BatchNormalization):
            dropped += len(module._pending)
            module.discard_updates()
    return dropped


class BatchNormalizationV1(BatchNormalization):
    """The V1 layer (``tf.compat.v1.keras.layers`` / ``tf.layers``): seeds 000 and 001.

    Identical to :class:`BatchNormalization` except for one rule: with ``trainable=False``
    a training call still normalises with the batch statistics, but does not update the
    moving statistics (TensorFlow's V1 "frozen layer"). With renorm, TensorFlow still moves
    ``renorm_mean`` and ``renorm_stddev`` in that case (measured), and so do we. ``fused``
    never raises here, as in TensorFlow's V1 class, which falls back silently where fusion is
    impossible.

    Example:
        >>> layer = BatchNormalizationV1(trainable=False, input_shape=(1,))
        >>> layer(torch.tensor([[1.0], [3.0]]), training=True).flatten().round().tolist()
        [-1.0, 1.0]
        >>> layer.moving_mean.tolist()
        [0.0]
    """

    _v1_fused_default = True
    _frozen_layer_uses_batch_statistics = True
    _frozen_layer_updates = ("renorm_mean", "renorm_stddev")


_CONFIG_KEYS = (
    "axis",
    "momentum",
    "epsilon",
    "center",
    "scale",
    "beta_initializer",
    "gamma_initializer",
    "moving_mean_initializer",
    "moving_variance_initializer",
    "beta_regularizer",
    "gamma_regularizer",
    "beta_constraint",
    "gamma_constraint",
    "fused",
    "trainable",
    "name",
    "moving_variance_correction",
    "dtype",
    "renorm",
    "renorm_clipping",
    "renorm_momentum",
    "virtual_batch_size",
    "virtual_batch_layout",
    "adjustment",
    "synchronized",
    "zero_debias_moving_mean",
    "deferred_updates",
    "nonfinite",
)
