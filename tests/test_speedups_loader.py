"""Which descriptor-call implementation metalio picks, and the build guarantee of CI.

``METALIO_PURE_PYTHON`` forces the reference without importing the
extension; otherwise the extension is used when it is built.  Under CI
(``CI=true``) the C core must be built: a silently failed compile would
otherwise leave every test green on the fallback alone.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import metalio
from metalio import _fdio, _source, _speedups_loader

try:
    from metalio import _speedups as c_core
except ImportError:  # not built
    c_core = None  # type: ignore[assignment]

needs_c = pytest.mark.skipif(c_core is None, reason="metalio._speedups is not built")

_PROBE = (
    "import sys, metalio, metalio._speedups_loader as l; "
    "print(metalio.speedups, 'metalio._speedups' in sys.modules, l.read.__module__)"
)


def probe(pure: str | None) -> list[str]:
    env = dict(os.environ)
    env.pop("METALIO_PURE_PYTHON", None)
    if pure is not None:
        env["METALIO_PURE_PYTHON"] = pure
    result = subprocess.run(
        [sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


@pytest.mark.parametrize("value", ["1", "yes", "true"])
def test_pure_python_env_forces_the_reference(value: str) -> None:
    assert probe(value) == ["python", "False", "metalio._speedups_loader"]


@needs_c
@pytest.mark.parametrize("value", [None, "", "0"])
def test_c_core_is_used_when_built(value: str | None) -> None:
    # METALIO_PURE_PYTHON unset, empty or "0": the C functions are the chosen ones.
    assert probe(value) == ["c", "True", "metalio._speedups"]


def test_speedups_attribute_matches_the_chosen_functions() -> None:
    assert metalio.speedups in ("c", "python")
    assert "speedups" in metalio.__all__
    if metalio.speedups == "c":
        assert _speedups_loader.read is c_core.read
        assert _speedups_loader.writev is c_core.writev
    else:
        assert _speedups_loader.read is _speedups_loader.py_read
        assert _speedups_loader.writev is _speedups_loader.py_writev


def test_ci_builds_the_c_core() -> None:
    # CI must exercise the C core in the main run; the pure run sets the variable.
    if os.environ.get("CI") != "true":
        pytest.skip("only CI promises a compiler")
    if os.environ.get("METALIO_PURE_PYTHON", "") not in ("", "0"):
        pytest.skip("this run is the pure-Python one")
    assert metalio.speedups == "c", "CI ran without the C core: the extension did not build"


@needs_c
def test_constants_agree_with_the_python_side() -> None:
    assert c_core.IOV_MAX == _speedups_loader.IOV_MAX == _fdio.IOV_MAX
    assert c_core.READ_LIMIT == _source.READ_LIMIT


@needs_c
def test_c_functions_are_documented_and_fastcall_builtins() -> None:
    for name in ("read", "readinto", "write", "writev"):
        fn = getattr(c_core, name)
        assert type(fn).__name__ == "builtin_function_or_method"
        assert fn.__doc__ and "None" in fn.__doc__
        assert fn.__text_signature__ is not None  # "(fd, ..., /)": inspect.signature works


@needs_c
def test_c_module_uses_multi_phase_init() -> None:
    # Multi-phase init (PEP 489): the module comes from a spec, and a second
    # load makes a second, independent module object.
    import importlib.util

    spec = c_core.__spec__
    assert spec is not None and spec.origin is not None
    other = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(other)
    assert other is not c_core
    assert other.IOV_MAX == c_core.IOV_MAX


def test_version_names_the_implementation() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "metalio", "--version"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"metalio {metalio.__version__} (speedups: {metalio.speedups})"


_SUBINTERPRETER = """
import sys
code = (
    "import os, metalio._speedups as s\\n"
    "r, w = os.pipe()\\n"
    "os.set_blocking(r, False)\\n"
    "assert s.read(r, 10) is None\\n"
    "os.close(r); os.close(w)\\n"
)
try:
    import _interpreters as interpreters  # 3.13
    interp = interpreters.create()  # isolated: its own GIL
    assert interpreters.exec(interp, code) is None
except ImportError:
    import _xxsubinterpreters as interpreters  # 3.12
    interp = interpreters.create(isolated=True)
    interpreters.run_string(interp, code)
interpreters.destroy(interp)
print("ok")
"""


@needs_c
@pytest.mark.skipif(sys.version_info < (3, 12), reason="per-interpreter GIL is 3.12+")
def test_c_module_loads_in_an_isolated_subinterpreter() -> None:
    # Without its Py_mod_multiple_interpreters slot the import there is an ImportError.
    result = subprocess.run(
        [sys.executable, "-c", _SUBINTERPRETER], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
