"""Python glue over libprip_abi (plugin-abi/include/prip.h), shared by the ComfyUI node
and the A1111/Forge extension (each links this file) and the Python example.

Everything crosses the C ABI as JSON; this module only finds the library, checks its
version, and turns status codes into ``PripError``.
"""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

ABI_MAJOR = 1
# prip_rewrite arrived in ABI 1.1; "dialect" in requests and "outcome" in results in 1.2.
ABI_MINOR = 2
LIBRARY_NAME = {"win32": "prip_abi.dll", "darwin": "libprip_abi.dylib"}.get(sys.platform, "libprip_abi.so")


class PripError(Exception):
    """A one-line reason the refiner could not do what was asked."""


def repo_root(start: Path) -> Path | None:
    """The PRIP checkout that holds ``start`` (symlinks resolved), if any."""
    for parent in start.resolve().parents:
        if (parent / "plugin-abi" / "Cargo.toml").is_file():
            return parent
    return None


def candidates(plugin_dir: Path) -> list[Path]:
    """Where a library is looked for, in order: the plugin's lib/ folder, then the
    release and debug builds of the PRIP checkout the plugin lives in."""
    found = [plugin_dir / "lib" / LIBRARY_NAME]
    root = repo_root(Path(__file__))
    if root is not None:
        found += [root / "target" / profile / LIBRARY_NAME for profile in ("release", "debug")]
    return found


def find_library(plugin_dir: Path, explicit: str | None = None) -> Path:
    """``explicit`` or $PRIP_LIB when given (and then only it), else the first of
    ``candidates`` that exists."""
    if explicit or os.environ.get("PRIP_LIB"):
        name, given = ("the library option", explicit) if explicit else ("PRIP_LIB", os.environ["PRIP_LIB"])
        if not Path(given).is_file():
            raise PripError(f"{name} is {given}, which is not a file")
        return Path(given)
    tried = candidates(plugin_dir)
    for path in tried:
        if path.is_file():
            return path
    raise PripError(
        f"no {LIBRARY_NAME} found (looked at {', '.join(str(p) for p in tried)}); "
        "build it with `cargo build --release -p prip-abi` in a PRIP checkout or set PRIP_LIB"
    )


def build_library() -> Path:
    """Builds the release library of the checkout this file lives in."""
    root = repo_root(Path(__file__))
    if root is None:
        raise PripError(f"{__file__} is not inside a PRIP checkout, so there is nothing to build")
    try:
        subprocess.run(["cargo", "build", "--release", "--locked", "-p", "prip-abi", "--lib"], cwd=root, check=True)
    except (OSError, subprocess.CalledProcessError) as e:
        raise PripError(f"building libprip_abi in {root} failed: {e}") from e
    return root / "target" / "release" / LIBRARY_NAME


class Refiner:
    """An open refiner in libprip_abi. Safe to share between threads."""

    def __init__(self, library: Path, config: dict[str, Any]) -> None:
        try:
            lib = ctypes.CDLL(str(library))
            lib.prip_abi_version.restype = ctypes.c_uint32
            version = lib.prip_abi_version()
        except (OSError, AttributeError) as e:
            raise PripError(f"{library} is not a usable PRIP library: {e}") from e
        major, minor = version >> 16, version & 0xFFFF
        if major != ABI_MAJOR or minor < ABI_MINOR:
            raise PripError(
                f"{library} implements PRIP ABI {major}.{minor}, this plugin needs "
                f"{ABI_MAJOR}.{ABI_MINOR} or a later {ABI_MAJOR}.x; rebuild the library"
            )
        call: list[Any] = [ctypes.c_uint64, ctypes.c_char_p, ctypes.POINTER(ctypes.c_void_p)]
        lib.prip_last_error.restype = ctypes.c_char_p
        lib.prip_open.argtypes = [ctypes.c_char_p, ctypes.POINTER(ctypes.c_uint64)]
        lib.prip_refine_batch.argtypes = call
        lib.prip_rewrite.argtypes = call
        lib.prip_string_free.argtypes = [ctypes.c_void_p]
        lib.prip_close.argtypes = [ctypes.c_uint64]
        self.library = library
        self._lib = lib
        handle = ctypes.c_uint64()
        self._check(lib.prip_open(json.dumps(config).encode(), ctypes.byref(handle)))
        self._handle: int | None = handle.value

    def _check(self, status: int) -> None:
        if status != 0:
            raise PripError(self._lib.prip_last_error().decode(errors="replace"))

    def _call(self, fn: Any, payload: object) -> dict[str, Any]:
        if self._handle is None:
            raise PripError("the refiner was unloaded")
        out = ctypes.c_void_p()
        self._check(fn(self._handle, json.dumps(payload).encode(), ctypes.byref(out)))
        # A successful call always sets out.
        assert out.value is not None
        try:
            result: dict[str, Any] = json.loads(ctypes.string_at(out.value).decode())
        finally:
            self._lib.prip_string_free(out)
        return result

    def refine(self, requests: list[dict[str, Any]], generation: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """Refines ``[{"prompt", "seed"?, "system"?}]`` as one batch; each result has
        ``refined``, ``seed``, ``system``..., or ``error`` for a prompt that failed."""
        batch: dict[str, Any] = {"requests": requests}
        if generation:
            batch["generation"] = generation
        return list(self._call(self._lib.prip_refine_batch, batch)["results"])

    def rewrite(self, protocol: str, body: Any, **options: Any) -> dict[str, Any]:
        """Refines the prompts inside an image server's request body; see prip_rewrite."""
        return self._call(self._lib.prip_rewrite, {"protocol": protocol, "body": body, **options})

    def close(self) -> None:
        if self._handle is not None:
            self._lib.prip_close(self._handle)
            self._handle = None

    def __enter__(self) -> Refiner:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


class Cache:
    """One refiner kept loaded between uses, reopened when its settings change."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._key: tuple[str, str] | None = None
        self._refiner: Refiner | None = None

    def get(self, plugin_dir: Path, config: dict[str, Any], library_path: str | None = None) -> Refiner:
        with self._lock:
            library = find_library(plugin_dir, library_path)
            key = (str(library), json.dumps(config, sort_keys=True))
            if self._refiner is None or self._key != key:
                self._close()
                self._refiner = Refiner(library, config)
                self._key = key
            return self._refiner

    def loaded(self) -> bool:
        return self._refiner is not None

    def unload(self) -> bool:
        """Frees the model; true when one was loaded."""
        with self._lock:
            was = self._refiner is not None
            self._close()
            return was

    def _close(self) -> None:
        if self._refiner is not None:
            self._refiner.close()
        self._refiner, self._key = None, None
