"""Google Compute Engine driver: images become GCE images, instances are VMs (``-p gce``).

Upload: the image (with a run's command line written into an overlay first) becomes
the ``.tar.gz`` Compute Engine imports (``disk.raw``, sparse, oldgnu tar), sent to
``gce_bucket`` with a resumable upload, then ``images.insert`` and a wait on the
operation; the object is deleted afterwards. Images are labelled ``capstan-managed``
and with the image's SHA-256, so the same bytes reuse the same image. Credentials come
from Google's standard chain (``GOOGLE_APPLICATION_CREDENTIALS``, gcloud's application
default credentials, the metadata server) and are never logged.
"""

from capstan.drivers.gce.driver import _STATES as _STATES
from capstan.drivers.gce.driver import GceDriver

__all__ = ["GceDriver"]
