"""pycapstan: build and run OSv unikernels.

The command-line tool is ``capstan``; the same services are a Python API:
:mod:`capstan.image` composes and inspects disks, :mod:`capstan.drivers`
runs them.
"""

__version__ = "0.1.0"  # the one place it is set; pyproject.toml reads it

__all__ = ["__version__"]
