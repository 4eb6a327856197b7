"""Infrastructure shared by every layer, importing no other floor:
config, console, errors, fs, limits, names, pids, proc, qemuopt, secrets, sizes, yamlfile."""

