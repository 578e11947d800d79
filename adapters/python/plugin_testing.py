"""What both plugin test suites share: the environment `cargo test -p prip-abi --test
plugins` sets up, the recorded server fixtures, and a reference refinement straight
through libprip to compare the plugins' output with."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from libprip import Refiner


def required_env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        pytest.exit(f"{name} is not set: run these tests with `cargo test -p prip-abi --test plugins`", returncode=2)
    return value


def fixture(rel: str) -> Any:
    """A recording from ../shared/fixtures (PRIP_FIXTURES)."""
    return json.loads((Path(required_env("PRIP_FIXTURES")) / rel).read_text())


def direct(prompt: str, seed: int, **generation: Any) -> str:
    """``prompt`` refined by libprip directly, without any plugin in between."""
    config = {"model": required_env("PRIP_MODEL"), "device": "cpu"}
    with Refiner(Path(required_env("PRIP_LIB")), config) as r:
        result = r.refine([{"prompt": prompt, "seed": seed}], generation or None)[0]
    refined: str = result["refined"]
    return refined
