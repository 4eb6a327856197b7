"""Host-side OSv disk images: layout, ROFS, command line, formats, inspection.

Installed as ``capstan.image``. The main entry points are
:func:`capstan.image.compose.compose` and :class:`capstan.image.inspect.OsvImage`.
"""

import logging

logging.getLogger(__name__).addHandler(logging.NullHandler())
