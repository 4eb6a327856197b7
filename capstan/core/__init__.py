"""Infrastructure shared by every layer: names, QEMU option escaping, files, YAML."""
