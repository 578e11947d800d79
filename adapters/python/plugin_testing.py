"""What both plugin test suites share: the environment `cargo test -p prip-abi --test
plugins` sets up, the recorded server fixtures, and a reference refinement straight
through libprip to compare the plugins' output with."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

import pytest

from libprip import Refiner

# tests/fixtures of this repository: recordings of real image servers (see its README).
FIXTURES = Path(__file__).resolve().parents[2] / "tests" / "fixtures"


def required_env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        pytest.exit(f"{name} is not set: run these tests with `cargo test -p prip-abi --test plugins`", returncode=2)
    return value


def fixture(rel: str) -> Any:
    """A recording from the repository's tests/fixtures."""
    return json.loads((FIXTURES / rel).read_text())


def direct(prompt: str, seed: int, dialect: str | None = None, **generation: Any) -> str:
    """``prompt`` refined by libprip directly, without any plugin in between."""
    config = {"model": required_env("PRIP_MODEL"), "device": "cpu"}
    request: dict[str, Any] = {"prompt": prompt, "seed": seed}
    if dialect is not None:
        request["dialect"] = dialect
    with Refiner(Path(required_env("PRIP_LIB")), config) as r:
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
