"""Build metalio's optional C core, ``metalio._speedups``; pyproject.toml holds the metadata.

The extension is optional: without a working C compiler the install still
succeeds, with one warning, and metalio runs on its pure-Python code (see
docs/speedups.md).  Environment, read at build time:

* ``METALIO_PURE_PYTHON=1`` builds no extension at all.
* ``METALIO_STRICT_BUILD=1`` (CI, ``make speedups``) adds ``-Wall -Wextra
  -Werror -O2`` and makes a failed build an error instead of a warning, so a
  warning or a missing compiler cannot pass unnoticed.
"""

from __future__ import annotations

import os
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


def _flag(name: str) -> bool:
    return os.environ.get(name, "") not in ("", "0")


PURE = (
    _flag("METALIO_PURE_PYTHON") or sys.platform == "win32" or sys.implementation.name != "cpython"
)
STRICT = _flag("METALIO_STRICT_BUILD")

_WARNING = """
********************************************************************************
WARNING: metalio's optional C core (metalio._speedups) could not be built:
    {error}
metalio is installed and works on its pure-Python code (metalio.speedups ==
"python"); install a C compiler and the Python headers, then reinstall, to get
the C core.  METALIO_PURE_PYTHON=1 skips the build without this warning.
********************************************************************************
"""


class OptionalBuildExt(build_ext):
    """``build_ext`` that turns a failed compile into one warning (unless strict)."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # no compiler configured at all (DistutilsPlatformError)
            self._failed(exc)

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:  # CompileError, LinkError, DistutilsExecError, OSError
            self._failed(exc)

    def _failed(self, exc: Exception) -> None:
        if STRICT:
            raise exc
        sys.stderr.write(_WARNING.format(error=f"{type(exc).__name__}: {exc}"))
        sys.stderr.flush()


def _extensions() -> list[Extension]:
    if PURE:
        return []
    flags = ["-O2"]
    if STRICT:
        flags += ["-Wall", "-Wextra", "-Werror"]
    return [
        Extension(
            "metalio._speedups",
            sources=[
                "src/metalio/_speedups.c",
                "src/metalio/_speedups_stream.c",
                "src/metalio/_speedups_stream_type.c",
                "src/metalio/_speedups_epoch.c",
            ],
            depends=["src/metalio/_speedups.h"],
            extra_compile_args=flags,
        )
    ]


setup(ext_modules=_extensions(), cmdclass={"build_ext": OptionalBuildExt})
