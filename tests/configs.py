"""The shared table of option combinations every oracle runs over (PyTorch ``module_inputs`` style).

Each :class:`Config` is one way to call batch norm; tests parametrize over :data:`CONFIGS` with
``ids=config_id`` so a failure names the combination.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass(frozen=True)
class Config:
    shape: tuple[int, ...]
    axis: Any = -1
    center: bool = True
    scale: bool = True
    momentum: float = 0.9
    epsilon: float = 1e-3
    channels_last: bool = False
    input_dtype: torch.dtype = torch.float32
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> str:
        parts = ["x".join(map(str, self.shape)), f"axis{self.axis}".replace(" ", "")]
        if not self.center:
            parts.append("nocenter")
        if not self.scale:
            parts.append("noscale")
        if self.momentum != 0.9:
            parts.append(f"m{self.momentum}")
        if self.epsilon != 1e-3:
            parts.append(f"eps{self.epsilon}")
        if self.channels_last:
            parts.append("cl")
        if self.input_dtype != torch.float32:
            parts.append(str(self.input_dtype)[6:])
        parts += [f"{k}={v}" for k, v in self.extra.items()]
        return "-".join(parts)

    def make_input(self, generator: torch.Generator) -> torch.Tensor:
        """Random input with a different offset and spread per position of the kept axes."""
        x = torch.randn(self.shape, generator=generator, dtype=torch.float64)
        rank = len(self.shape)
        axes = [self.axis] if isinstance(self.axis, int) else list(self.axis)
        keep = [
            self.shape[a % rank] if a % rank in [b % rank for b in axes] else 1 for a in range(rank)
        ]
        offset = torch.rand(keep, generator=generator, dtype=torch.float64) * 6 - 3
        spread = torch.rand(keep, generator=generator, dtype=torch.float64) * 2.5 + 0.5
        x = (x * spread + offset).to(self.input_dtype)
        if self.channels_last:
            fmt = torch.channels_last if rank == 4 else torch.channels_last_3d
            x = x.contiguous(memory_format=fmt)
        return x


def _shape_for(config: Config, x: torch.Tensor) -> tuple[tuple[int, ...], list[int]]:
    rank = x.dim()
    axes = [config.axis] if isinstance(config.axis, int) else list(config.axis)
    axes = sorted(a % rank for a in axes)
    param = (
        (x.shape[axes[0]],)
        if len(axes) == 1
        else tuple(x.shape[d] if d in axes else 1 for d in range(rank))
    )
    return param, axes


def option_kwargs(config: Config) -> dict[str, Any]:
    """The plain-valued options of ``config.extra`` (shared by the functional and the layer)."""
    return {k: v for k, v in config.extra.items() if k not in CALL_TENSORS}


# ``extra`` keys that stand for tensors made per input: batch_weights ("int" or "float"),
# mask (True), adjustment ("channel" or "element").
CALL_TENSORS = ("batch_weights", "mask", "adjustment")


def call_tensors(config: Config, x: torch.Tensor, generator: torch.Generator) -> dict[str, Any]:
    """batch_weights / mask / adjustment for ``x`` as ``config.extra`` asks, seeded."""
    made: dict[str, Any] = {}
    batch = x.shape[0]
    kind = config.extra.get("batch_weights")
    if kind == "int":
        made["batch_weights"] = torch.randint(0, 4, (batch,), generator=generator).double()
        made["batch_weights"][0] = 2.0  # never all zero
    elif kind == "float":
        made["batch_weights"] = torch.rand(batch, generator=generator, dtype=torch.float64)
    if config.extra.get("mask"):  # Keras' form: the input's shape without its last axis
        mask = torch.rand(x.shape[:-1], generator=generator) > 0.3
        mask.view(-1)[0] = True
        made["mask"] = mask
    kind = config.extra.get("adjustment")
    if kind is not None:
        _, axes = _shape_for(config, x)
        rank = x.dim()
        if kind == "channel":
            shape = tuple(x.shape[d] if d in axes else 1 for d in range(rank))
        else:
            shape = tuple(x.shape)
        scale = torch.rand(shape, generator=generator, dtype=torch.float64) + 0.5
        bias = torch.randn(shape, generator=generator, dtype=torch.float64)
        made["adjustment"] = lambda input_shape: (scale, bias)
    return made


def state_tensors(
    config: Config, x: torch.Tensor, generator: torch.Generator, *, ghost_shape: bool = False
) -> dict[str, torch.Tensor | None]:
    """Random moving statistics, gamma and beta (and renorm / zero-debias state) for ``x``."""
    param, _ = _shape_for(config, x)
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32

    def rand(low: float, high: float) -> torch.Tensor:
        return (torch.rand(param, generator=generator) * (high - low) + low).to(dtype)

    state: dict[str, torch.Tensor | None] = {
        "moving_mean": rand(-1, 1),
        "moving_variance": rand(0.5, 2.0),
        "gamma": rand(0.5, 1.5) if config.scale else None,
        "beta": rand(-1, 1) if config.center else None,
    }
    if config.extra.get("renorm"):
        state["moving_stddev"] = rand(0.7, 1.4)
        state["renorm_mean"] = rand(-1, 1)
        state["renorm_stddev"] = rand(0.7, 1.4)
    if config.extra.get("zero_debias_moving_mean"):
        state["moving_mean_biased"] = rand(-1, 1)
        state["local_step"] = torch.tensor(3.0)
    return state


CLIP = {"rmin": 0.9, "rmax": 1.1, "dmax": 0.2}

CONFIGS: list[Config] = [
    Config((8, 5)),
    Config((8, 5), center=False),
    Config((8, 5), scale=False),
    Config((8, 5), center=False, scale=False),
    Config((4, 6, 3)),
    Config((4, 6, 3), axis=1),
    Config((4, 6, 3), axis=[1, 2]),
    Config((4, 3, 5, 6), axis=1),
    Config((4, 3, 5, 6), axis=-1),
    Config((4, 3, 5, 6), axis=1, channels_last=True),
    Config((4, 3, 5, 6), axis=-3, channels_last=True),
    Config((4, 3, 5, 6), axis=[1, 3]),
    Config((4, 3, 5, 6), axis=[3, 1]),
    Config((4, 3, 5, 6), axis=[1, 2]),
    Config((4, 3, 5, 6), axis=2),
    Config((4, 3, 5, 6), axis=0),
    Config((2, 3, 4, 3, 5), axis=1),
    Config((2, 3, 4, 3, 5), axis=-1),
    Config((2, 3, 4, 3, 5), axis=1, channels_last=True),
    Config((1, 4), epsilon=0.1),
    Config((1, 3, 1, 1), axis=1),
    Config((4, 3, 5, 6), axis=1, epsilon=1e-8, momentum=0.0),
    Config((4, 3, 5, 6), axis=1, momentum=1.0),
    Config((8, 5), input_dtype=torch.float64),
    Config((4, 3, 5, 6), axis=1, input_dtype=torch.float64),
    Config((4, 3, 5, 6), axis=1, input_dtype=torch.bfloat16),
    Config((4, 3, 5, 6), axis=-1, input_dtype=torch.float16),
    Config((16, 7), input_dtype=torch.float16),
    # TensorFlow's training extensions, alone ...
    Config((8, 5), extra={"renorm": True}),
    Config((8, 5), extra={"renorm": True, "renorm_clipping": CLIP, "renorm_momentum": 0.7}),
    Config((4, 3, 5, 6), axis=1, extra={"renorm": True, "renorm_clipping": CLIP}),
    Config((8, 5), extra={"virtual_batch_size": 2}),
    Config((8, 5), extra={"virtual_batch_size": 4, "virtual_batch_layout": "contiguous"}),
    Config((6, 3, 4, 5), axis=1, extra={"virtual_batch_size": 3}),
    Config((6, 3, 4, 5), axis=1, channels_last=True, extra={"virtual_batch_size": 2}),
    Config((4, 6, 3), axis=[1, 2], extra={"virtual_batch_size": 2}),
    Config((8, 5), extra={"adjustment": "channel"}),
    Config((4, 3, 5, 6), axis=1, extra={"adjustment": "element"}),
    Config((8, 5), extra={"batch_weights": "float"}),
    Config((4, 3, 5, 6), axis=1, extra={"batch_weights": "int"}),
    Config((4, 6, 3), extra={"mask": True}),
    Config((4, 3, 5, 6), axis=-1, channels_last=True, extra={"mask": True}),
    Config((8, 5), extra={"zero_debias_moving_mean": True}),
    # ... and together, including the combinations TensorFlow refuses.
    Config((8, 5), extra={"renorm": True, "renorm_clipping": CLIP, "virtual_batch_size": 4}),
    Config((8, 4, 3), axis=1, extra={"virtual_batch_size": 2, "adjustment": "element"}),
    Config((8, 5), extra={"renorm": True, "renorm_clipping": CLIP, "batch_weights": "float"}),
    Config((8, 5), extra={"renorm": True, "zero_debias_moving_mean": True}),
    Config((8, 5), extra={"renorm": True, "adjustment": "channel", "mask": True}),
    Config(
        (8, 3, 2, 2),
        axis=1,
        extra={"virtual_batch_size": 4, "batch_weights": "int", "renorm": True},
    ),
    Config(
        (8, 6, 3), extra={"virtual_batch_size": 2, "mask": True, "zero_debias_moving_mean": True}
    ),
]


def config_id(config: Config) -> str:
    return config.id
