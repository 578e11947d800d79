"""Refine prompts from Python through libprip_abi with ctypes.

    python3 examples/python/refine.py target/release/libprip_abi.so '{"model": "default"}' "a cat"
"""

from __future__ import annotations

import ctypes
import json
import sys

ABI_MAJOR = 1
OK = 0


class Prip:
    """A refiner opened through the C ABI; close() or use as a context manager."""

    def __init__(self, library: str, config: dict[str, object]) -> None:
        lib = ctypes.CDLL(library)
        lib.prip_abi_version.restype = ctypes.c_uint32
        lib.prip_last_error.restype = ctypes.c_char_p
        lib.prip_open.argtypes = [ctypes.c_char_p, ctypes.POINTER(ctypes.c_uint64)]
        lib.prip_refine.argtypes = [ctypes.c_uint64, ctypes.c_char_p, ctypes.POINTER(ctypes.c_void_p)]
        lib.prip_refine_batch.argtypes = lib.prip_refine.argtypes
        lib.prip_string_free.argtypes = [ctypes.c_void_p]
        lib.prip_close.argtypes = [ctypes.c_uint64]
        major = lib.prip_abi_version() >> 16
        if major != ABI_MAJOR:
            raise RuntimeError(f"{library} has ABI major {major}, expected {ABI_MAJOR}")
        self._lib = lib
        handle = ctypes.c_uint64()
        self._check(lib.prip_open(json.dumps(config).encode(), ctypes.byref(handle)))
        self._handle = handle.value

    def _check(self, status: int) -> None:
        if status != OK:
            raise RuntimeError(self._lib.prip_last_error().decode())

    def _call(self, fn: ctypes._CFuncPtr, payload: object) -> object:
        out = ctypes.c_void_p()
        self._check(fn(self._handle, json.dumps(payload).encode(), ctypes.byref(out)))
        try:
            return json.loads(ctypes.string_at(out.value).decode())
        finally:
            self._lib.prip_string_free(out)

    def refine(self, prompt: str, seed: int | None = None) -> dict[str, object]:
        request: dict[str, object] = {"prompt": prompt}
        if seed is not None:
            request["seed"] = seed
        result = self._call(self._lib.prip_refine, request)
        assert isinstance(result, dict)
        return result

    def refine_batch(self, prompts: list[str], seed: int | None = None) -> list[dict[str, object]]:
        requests = [{"prompt": p, "seed": seed} if seed is not None else {"prompt": p} for p in prompts]
        result = self._call(self._lib.prip_refine_batch, requests)
        assert isinstance(result, dict)
        return list(result["results"])

    def close(self) -> None:
        self._check(self._lib.prip_close(self._handle))

    def __enter__(self) -> Prip:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def main() -> int:
    if len(sys.argv) < 4:
        print(f"usage: {sys.argv[0]} LIBRARY CONFIG_JSON PROMPT...", file=sys.stderr)
        return 2
    with Prip(sys.argv[1], json.loads(sys.argv[2])) as prip:
        for result in prip.refine_batch(sys.argv[3:], seed=7):
            print(result.get("refined", result.get("error")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
