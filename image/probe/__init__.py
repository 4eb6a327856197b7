"""Data package: the probe loader, its nasm source and its assembled bytes."""
