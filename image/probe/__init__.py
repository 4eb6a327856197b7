"""Data package: the probe loader and probe kernel, their nasm sources and assembled bytes."""
