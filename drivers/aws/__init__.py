"""AWS driver: images become AMIs through EBS direct snapshots; instances are EC2.

Upload: the image as raw bytes, 512 KiB blocks, all-zero blocks skipped,
``PutSnapshotBlock`` with SHA-256 checksums from a bounded pool (botocore's
adaptive retry absorbs throttling), progress saved in
``$CAPSTAN_ROOT/cache/aws/<digest>.json`` so that a killed upload resumes. The
fallback (``aws_upload: s3``) is a multipart S3 upload and ``ImportSnapshot``.
Everything created is tagged ``capstan:managed`` and reused by image digest. ``run``
uploads an image once per region (the base) and gives each command line a child snapshot
of the base holding the blocks it changes (:mod:`capstan.drivers.aws.child`).
"""

from capstan.drivers.aws.ami import BLOCK, image_drivers, nonzero_blocks
from capstan.drivers.aws.driver import _STATES as _STATES
from capstan.drivers.aws.driver import AwsDriver

__all__ = ["BLOCK", "AwsDriver", "image_drivers", "nonzero_blocks"]
