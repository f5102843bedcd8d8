"""batchnorm: TensorFlow/Keras ``BatchNormalization``, complete and faithful, in PyTorch.

Example:
    >>> import torch
    >>> import batchnorm as bn
    >>> layer = bn.BatchNormalization(axis=1)
    >>> layer(torch.randn(4, 3, 8, 8)).shape
    torch.Size([4, 3, 8, 8])

"""

from batchnorm import compat, constraints, convert, functional, initializers, regularizers
from batchnorm._errors import BatchNormError, NonFiniteBatchError, SynchronizationError
from batchnorm.convert import convert_sync_batchnorm
from batchnorm.layer import BatchNormalization, apply_updates, discard_updates

__all__ = [
    "BatchNormError",
    "BatchNormalization",
    "apply_updates",
    "compat",
    "constraints",
    "convert",
    "convert_sync_batchnorm",
    "discard_updates",
    "functional",
    "initializers",
    "NonFiniteBatchError",
    "regularizers",
    "SynchronizationError",
]

__version__ = "0.1.0"
