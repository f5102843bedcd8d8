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
]


def config_id(config: Config) -> str:
    return config.id
