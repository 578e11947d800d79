"""What both plugin test suites share: the environment `cargo test -p prip-abi --test
plugins` sets up, the recorded server fixtures, the prip-refiner package under test, and
a reference refinement straight through it to compare the plugins' output with.

The suites run against one of two prip-refiner packages:
- by default, the working tree's binding (adapters/python/src) with the library of this
  build, $PRIP_LIB, as `cargo test` runs them;
- with PRIP_TEST_PACKAGE=installed, the package installed in this Python (CI's wheel
  test: a fresh virtualenv without cargo) and the library inside it; $PRIP_LIB is
  ignored, and a package imported from this checkout fails the run.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Callable

import pytest

REPO = Path(__file__).resolve().parents[2]
SOURCE = REPO / "adapters" / "python" / "src"
INSTALLED = os.environ.get("PRIP_TEST_PACKAGE") == "installed"
if not INSTALLED:
    sys.path.insert(0, str(SOURCE))

import prip_refiner  # noqa: E402
from prip_refiner import Refiner  # noqa: E402

if INSTALLED and SOURCE in Path(prip_refiner.__file__).resolve().parents:
    pytest.exit(f"PRIP_TEST_PACKAGE=installed, but prip_refiner comes from the source tree: {prip_refiner.__file__}", returncode=2)

# tests/fixtures of this repository: recordings of real image servers (see its README).
FIXTURES = REPO / "tests" / "fixtures"


def required_env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        pytest.exit(f"{name} is not set: run these tests with `cargo test -p prip-abi --test plugins`", returncode=2)
    return value


def library() -> Path:
    """The library under test: the installed package's own, or $PRIP_LIB."""
    return prip_refiner.bundled_library() if INSTALLED else Path(required_env("PRIP_LIB"))


def use_library(monkeypatch: pytest.MonkeyPatch) -> None:
    """The plugins find the library under test: through $PRIP_LIB, or, for the
    installed package, inside it with $PRIP_LIB unset."""
    if INSTALLED:
        monkeypatch.delenv("PRIP_LIB", raising=False)
    else:
        monkeypatch.setenv("PRIP_LIB", str(library()))


def fixture(rel: str) -> Any:
    """A recording from the repository's tests/fixtures."""
    return json.loads((FIXTURES / rel).read_text())


def direct(prompt: str, seed: int, dialect: str | None = None, **generation: Any) -> str:
    """``prompt`` refined by libprip directly, without any plugin in between."""
    config = {"model": required_env("PRIP_MODEL"), "device": "cpu"}
    request: dict[str, Any] = {"prompt": prompt, "seed": seed}
    if dialect is not None:
        request["dialect"] = dialect
    with Refiner(library(), config) as r:
        result = r.refine([request], generation or None)[0]
    refined: str = result["refined"]
    return refined


def spy_refine(
    monkeypatch: pytest.MonkeyPatch, refiner: Any, outcome: str | None = None, where: Callable[[dict[str, Any]], bool] = lambda _: True
) -> list[list[dict[str, Any]]]:
    """Records the requests of every ``refiner.refine`` call (the plugin's copy of the
    Refiner class); with ``outcome``, the library's answers to the requests ``where``
    selects become that outcome with nothing added, as when the model stops at once."""
    seen: list[list[dict[str, Any]]] = []
    real = refiner.refine

    def refine(self: Any, requests: list[dict[str, Any]], generation: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        seen.append(json.loads(json.dumps(requests)))
        results: list[dict[str, Any]] = real(self, requests, generation)
        if outcome is not None:
            results = [
                {**r, "refined": r["prompt"], "details": [], "outcome": outcome} if "error" not in r and where(q) else r
                for q, r in zip(requests, results)
            ]
        return results

    monkeypatch.setattr(refiner, "refine", refine)
    return seen
