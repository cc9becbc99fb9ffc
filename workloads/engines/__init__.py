"""How each I/O is issued. Adding an engine = one module, one import line here, one YAML file."""
from . import fio, mmap, null, sync, uring  # noqa: F401  (register themselves)
from .base import REGISTRY, Engine, get  # noqa: F401
