"""``python -m capstan`` and the ``capstan`` console script."""

import gc
import sys


def main() -> int:
    """Run the CLI with the cyclic garbage collector paused while it imports (start-up
    allocates much and frees little: about 8% of it); it is back on before the command
    runs (:meth:`capstan.shell.CapstanApp.run_subcommand`)."""
    gc.disable()
    from capstan.shell import main as cli

    return cli()


if __name__ == "__main__":
    sys.exit(main())
