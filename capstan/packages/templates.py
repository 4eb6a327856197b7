"""``meta/run.yaml`` templates that Capstan's own types accept.

Capstan's templates held placeholders (``classpath: <list>``, ``shell: <value>``) that
its YAML decoder rejects for list and boolean keys. Here a required key has an example
value of its type; every optional key is a commented example of its type, so
uncommenting one still gives a valid file, and ``--plain`` (no comments) is the
minimal valid file.
"""

from __future__ import annotations

from typing import Any

from capstan.core.errors import NotFound
from capstan.core.yamlfile import dump
from capstan.packages.runtimes import RUNTIMES

__all__ = ["EXAMPLES", "run_template"]

_MAIN = {"java": "main.Hello", "node": "/server.js", "python": "/main.py"}
#: key -> (help line, example value of the type Capstan decodes it into)
EXAMPLES: dict[str, tuple[str, Any]] = {
    "bootcmd": ("the command OSv runs", "/hello.so"),
    "main": ("the application to run", ""),  # per runtime: _MAIN
    "classpath": ("where classes are found (a list; default: /)", ["/", "/lib"]),
    "xms": ("initial JVM heap", "512m"),
    "xmx": ("maximum JVM heap", "1g"),
    "jvm_args": ("JVM arguments (a list)", ["-Djava.net.preferIPv4Stack=true"]),
    "args": ("the application's arguments (a list)", ["--port", "8000"]),
    "node_args": ("node's own arguments (a list)", ["--max-old-space-size=256"]),
    "python_args": ("python's own arguments (a list)", ["-O"]),
    "shell": ("true runs the interactive interpreter instead of main", False),
}
_COMMON = (
    ("env", "environment variables: soft defaults, 'capstan run --env' overrides them",
     {"PORT": "8000"}),
    ("base", "inherit the boot command of another package's config set (package:set)",
     "com.example.base:default"),
)
_REQUIRED = ("bootcmd", "main")
_INDENT = "    "


def _block(key: str, value: Any, *, commented: bool) -> list[str]:
    lines = dump({key: value}, sort_keys=True).splitlines()
    prefix = _INDENT + ("# " if commented else "")
    return [prefix + line for line in lines]


def run_template(runtime: str, *, plain: bool = False) -> str:
    """The ``meta/run.yaml`` template of *runtime* (*plain*: without comments)."""
    rt = RUNTIMES.get(runtime)
    if rt is None:
        raise NotFound(f"unknown runtime '{runtime}' (one of {', '.join(RUNTIMES)})")
    lines = [f"runtime: {rt.name}", "", "config_set:", "  myconfig1:"]
    for key in rt.keys:
        help_text, example = EXAMPLES[key]
        required = key in _REQUIRED
        if key == "main":
            example = _MAIN[rt.name]
        lines.append(f"{_INDENT}# {'REQUIRED' if required else 'OPTIONAL'}: {help_text}")
        lines += _block(key, example, commented=not required)
    for key, help_text, example in _COMMON:
        lines.append(f"{_INDENT}# OPTIONAL: {help_text}")
        lines += _block(key, example, commented=True)
    lines += ["", "config_set_default: myconfig1", ""]
    if plain:
        lines = [ln for ln in lines if ln.strip() and not ln.strip().startswith("#")]
        lines.append("")
    return "\n".join(lines)
