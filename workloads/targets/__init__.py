"""Where the bytes go. Adding a target = one module, one import line here, one YAML file."""
from . import device, local  # noqa: F401  (register local, tmpfs, device)
from . import file  # noqa: F401  (register file: existing files, read in place)
from . import s3  # noqa: F401  (register s3: a bucket through boto3)
from .base import REGISTRY, Mount, Placement, block_device, get, mount_of  # noqa: F401
