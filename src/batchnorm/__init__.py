"""batchnorm: TensorFlow/Keras BatchNormalization for PyTorch."""
