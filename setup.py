# The C hot loop (workloads/_hotloop.c); everything else is declared in pyproject.toml.
from setuptools import Extension, setup

setup(ext_modules=[Extension("workloads._hotloop", ["workloads/_hotloop.c"], extra_compile_args=["-O2"])])
