"""Data package: pycapstan's default configuration and example applications."""
