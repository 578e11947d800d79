"""prip-refiner: libprip_abi (PRIP-rs's C ABI, plugin-abi/include/prip.h), built for this
platform and shipped inside this package, and its typed ctypes binding. The ComfyUI
node, the A1111/Forge extension and the Python example run on it.

Everything crosses the C ABI as JSON; this module only loads the library, checks its
platform and ABI version, turns status codes into ``PripError``, and reopens a refiner
on the CPU when the requested device fails.
"""

from __future__ import annotations

import ctypes
import json
import os
import platform
import sys
import threading
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, TypeVar

ABI_MAJOR = 1
# prip_rewrite arrived in ABI 1.1; "dialect" in requests and "outcome" in results in 1.2.
ABI_MINOR = 2
LIBRARY_NAME = {"win32": "prip_abi.dll", "darwin": "libprip_abi.dylib"}.get(sys.platform, "libprip_abi.so")
DISTRIBUTION = "prip-refiner"
try:
    __version__ = metadata.version(DISTRIBUTION)
except metadata.PackageNotFoundError:
    # Imported from a checkout's adapters/python/src without installing it.
    __version__ = "(source tree)"

# e_machine of the ELF header, for naming the CPU a library was built for.
ELF_MACHINES = {0x03: "x86", 0x3E: "x86_64", 0x28: "arm", 0xB7: "aarch64", 0xF3: "riscv64", 0x15: "ppc64"}

T = TypeVar("T")


class PripError(Exception):
    """A one-line reason the refiner could not do what was asked."""


def this_platform() -> str:
    """The OS and CPU of this Python, as ``linux-x86_64``."""
    return f"{sys.platform}-{platform.machine().lower()}"


def built_for(library: Path) -> str:
    """The OS and CPU a shared library was built for, read from its header."""
    with open(library, "rb") as f:
        head = f.read(20)
    if head[:4] == b"\x7fELF" and len(head) == 20:
        machine = int.from_bytes(head[18:20], "little" if head[5] == 1 else "big")
        return f"linux-{ELF_MACHINES.get(machine, f'machine {machine:#x}')}"
    if head[:4] in (b"\xcf\xfa\xed\xfe", b"\xce\xfa\xed\xfe", b"\xca\xfe\xba\xbe"):
        return "darwin"
    if head[:2] == b"MZ":
        return "win32"
    return "no known platform (not a shared library)"


def bundled_library() -> Path:
    """The library this package was built with."""
    return Path(__file__).resolve().parent / "prip_abi" / LIBRARY_NAME


def find_library(explicit: str | None = None, bundled: bool = False) -> Path:
    """``explicit`` or $PRIP_LIB when given (and then only it), else (or with
    ``bundled``) the library inside this package."""
    if not bundled and (explicit or os.environ.get("PRIP_LIB")):
        name, given = ("the library option", explicit) if explicit else ("PRIP_LIB", os.environ["PRIP_LIB"])
        if not Path(given).is_file():
            raise PripError(f"{name} is {given}, which is not a file")
        return Path(given)
    library = bundled_library()
    if not library.is_file():
        raise PripError(
            f"{DISTRIBUTION} {__version__} has no {LIBRARY_NAME} in {library.parent}: install the "
            f"{DISTRIBUTION} wheel built for {this_platform()} (in a checkout: pip install -e adapters/python)"
        )
    return library


def require(major: int, minor: int, requirement: str) -> None:
    """Raises PripError unless this binding speaks PRIP ABI ``major.minor`` or a later
    ``major.x``; ``requirement`` is what the caller asks pip for."""
    if ABI_MAJOR != major or ABI_MINOR < minor:
        raise PripError(
            f"this plugin needs {DISTRIBUTION} with PRIP ABI {major}.{minor} or a later {major}.x, but "
            f"{DISTRIBUTION} {__version__} has {ABI_MAJOR}.{ABI_MINOR}: pip install --upgrade '{requirement}'"
        )


def load(library: Path) -> ctypes.CDLL:
    """Opens the library and checks that it speaks this binding's ABI; the error says
    what it was built for, or which version it is, and what to install instead."""
    try:
        lib = ctypes.CDLL(str(library))
    except OSError as e:
        made_for = built_for(library) if library.is_file() else None
        if made_for is not None and made_for != this_platform():
            raise PripError(
                f"{library} is built for {made_for} and this Python runs on {this_platform()}: "
                f"install the {DISTRIBUTION} wheel built for {this_platform()}"
            ) from e
        raise PripError(f"{library} cannot be loaded: {e}") from e
    try:
        lib.prip_abi_version.restype = ctypes.c_uint32
        version = lib.prip_abi_version()
    except AttributeError as e:
        raise PripError(f"{library} is not a PRIP library: {e}") from e
    major, minor = version >> 16, version & 0xFFFF
    if major != ABI_MAJOR or minor < ABI_MINOR:
        fix = (
            f"reinstall {DISTRIBUTION}"
            if library == bundled_library()
            else f"unset PRIP_LIB to use the library inside {DISTRIBUTION}, or build one from the same PRIP release"
        )
        raise PripError(
            f"{library} implements PRIP ABI {major}.{minor}; {DISTRIBUTION} {__version__} needs "
            f"{ABI_MAJOR}.{ABI_MINOR} or a later {ABI_MAJOR}.x: {fix}"
        )
    return lib


class Refiner:
    """An open refiner in libprip_abi. Safe to share between threads."""

    def __init__(self, library: Path | None = None, config: dict[str, Any] | None = None) -> None:
        """Opens ``config`` (``{"model", "device", "system", "fetch", "home",
        "generation"}``, every key optional) in ``library``, by default $PRIP_LIB or the
        bundled one."""
        self.library = library if library is not None else find_library()
        self.config: dict[str, Any] = dict(config or {})
        lib = load(self.library)
        call: list[Any] = [ctypes.c_uint64, ctypes.c_char_p, ctypes.POINTER(ctypes.c_void_p)]
        lib.prip_last_error.restype = ctypes.c_char_p
        lib.prip_open.argtypes = [ctypes.c_char_p, ctypes.POINTER(ctypes.c_uint64)]
        lib.prip_refine_batch.argtypes = call
        lib.prip_rewrite.argtypes = call
        lib.prip_string_free.argtypes = [ctypes.c_void_p]
        lib.prip_close.argtypes = [ctypes.c_uint64]
        self._lib = lib
        handle = ctypes.c_uint64()
        self._check(lib.prip_open(json.dumps(self.config).encode(), ctypes.byref(handle)))
        self._handle: int | None = handle.value

    @property
    def device(self) -> str:
        """The device asked for: auto, cpu or cuda:N."""
        return str(self.config.get("device", "auto"))

    @property
    def closed(self) -> bool:
        return self._handle is None

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
        """Refines ``[{"prompt", "seed"?, "system"?, "dialect"?}]`` as one batch; each
        result has ``refined``, ``outcome``, ``seed``, ``system``..., or ``error`` for a
        prompt that failed."""
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
    """One refiner kept loaded between uses, reopened when its settings change.

    A refiner that cannot open or run on the device asked for (no CUDA in the library,
    a driver too old, a GPU out of memory) is reopened on the CPU when the CPU does what
    the device could not; ``on_fallback`` gets a one-line notice, and the CPU refiner is
    kept for these settings until ``unload``. What fails on the CPU too is not the
    device's fault: that error is raised.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._key: tuple[str, str] | None = None
        self._refiner: Refiner | None = None

    def get(self, config: dict[str, Any], library: str | None = None, on_fallback: Callable[[str], None] | None = None) -> Refiner:
        with self._lock:
            path = find_library(library)
            key = (str(path), json.dumps(config, sort_keys=True))
            if self._refiner is None or self._key != key:
                self._close()
                try:
                    refiner = Refiner(path, config)
                except PripError as failed:
                    if str(config.get("device", "auto")) == "cpu":
                        raise
                    refiner = Refiner(path, {**config, "device": "cpu"})
                    notify(on_fallback, str(config.get("device", "auto")), failed)
                self._refiner, self._key = refiner, key
            return self._refiner

    def run(
        self,
        config: dict[str, Any],
        call: Callable[[Refiner], T],
        library: str | None = None,
        on_fallback: Callable[[str], None] | None = None,
    ) -> T:
        """``call`` with the cached refiner; when it fails off the CPU, once more on the CPU."""
        refiner = self.get(config, library, on_fallback)
        try:
            return call(refiner)
        except PripError as failed:
            # Unloaded meanwhile (by another thread): not the device's fault either.
            if refiner.device == "cpu" or refiner.closed:
                raise
            cpu = Refiner(refiner.library, {**refiner.config, "device": "cpu"})
            try:
                result = call(cpu)
            except BaseException:
                cpu.close()
                raise
            with self._lock:
                if self._refiner is refiner:
                    refiner.close()
                    self._refiner = cpu
                else:
                    cpu.close()
            notify(on_fallback, refiner.device, failed)
            return result

    def loaded(self) -> bool:
        return self._refiner is not None

    def unload(self) -> bool:
        """Frees the model; true when one was loaded. The next use tries the device again."""
        with self._lock:
            was = self._refiner is not None
            self._close()
            return was

    def _close(self) -> None:
        if self._refiner is not None:
            self._refiner.close()
        self._refiner, self._key = None, None


def notify(on_fallback: Callable[[str], None] | None, device: str, failed: PripError) -> None:
    if on_fallback is not None:
        on_fallback(f"PRIP runs on the CPU: device {device} failed: {' '.join(str(failed).split())}")
