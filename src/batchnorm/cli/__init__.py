"""The ``batchnorm`` command line: ``python -m batchnorm COMMAND`` or the ``batchnorm`` script.

Each subcommand lives in its own module (``demo``); :mod:`batchnorm.cli.__main__` dispatches.
The command line uses only the public package ``batchnorm``, as a user's program would.
"""
