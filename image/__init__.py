"""Host-side OSv disk images: layout, ROFS, command line, formats, inspection.

Installed as ``capstan.image``. The main entry points are
:func:`capstan.image.compose.compose` and :class:`capstan.image.inspect.OsvImage`.
"""

import logging

if __name__ != "capstan.image":  # image/ on sys.path would load every module a second time
    raise ImportError(f"image/ is the package capstan.image, not {__name__}: import it as "
                      "capstan.image (the repository root must not be on sys.path)")

logging.getLogger(__name__).addHandler(logging.NullHandler())
