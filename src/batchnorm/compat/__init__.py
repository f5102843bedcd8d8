"""TensorFlow 1.x APIs: :mod:`batchnorm.compat.v1` (``tf.contrib.layers.batch_norm``, V1 layer).

Example:
    >>> from batchnorm.compat import v1
    >>> v1.UPDATE_OPS
    'update_ops'

"""

from batchnorm.compat import v1

__all__ = ["v1"]
