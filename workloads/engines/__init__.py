"""How each I/O is issued. Adding an engine = one module, one import line here, one YAML file."""
from . import fio, null, sync  # noqa: F401  (register themselves)
from . import mmap  # noqa: F401
from .base import REGISTRY, Engine, get  # noqa: F401
