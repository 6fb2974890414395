"""The optional C part of scpfleet (everything else is in pyproject.toml).

``storage._speedups`` is the metadata walk's common case in C. It is optional: where
it cannot be compiled (no C compiler, no Python headers) the install goes on and
storage/_meta.py runs its pure-Python walk, which gives the same results.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "storage._speedups",
            ["storage/_speedups.c"],
            optional=True,
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter", "-Wno-missing-field-initializers"],
        )
    ]
)
