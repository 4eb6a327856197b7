"""OSv packages: manifests and .mpm archives (manifest), run configurations
(runtimes)."""
