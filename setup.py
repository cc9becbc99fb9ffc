# The C hot loop: one module, one C file per engine family; everything else is in pyproject.toml.
from setuptools import Extension, setup

setup(ext_modules=[Extension("workloads._hotloop", ["workloads/_hotloop.c", "workloads/_hotloop_uring.c",
                                                   "workloads/_hotloop_mmap.c", "workloads/_hotloop_append.c"],
                                 depends=["workloads/_hotloop.h"], extra_compile_args=["-O2"])])
