"""Fakes of the A1111/Forge host for the extension's tests (tests/fakes: gradio, and
modules.scripts / processing / shared). The extension script is loaded as the web UI
loads scripts and refines with the real libprip_abi through the prip-refiner package
(see plugin_testing for which one).

Run through `cargo test -p prip-abi --test plugins`, which builds the library and a
tiny model and sets PRIP_LIB and PRIP_MODEL.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Iterator

import pytest

EXTENSION_DIR = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent / "fakes"))
sys.path.insert(0, str(EXTENSION_DIR.parents[1] / "python"))

from plugin_testing import required_env, use_library  # noqa: E402


@pytest.fixture
def webui(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A fresh web UI: the extension's scripts loaded and their UIs built."""
    yield load_webui(monkeypatch)
    binding = sys.modules.get("prip_binding")
    if binding is not None:
        binding.unload()


def load_webui(monkeypatch: pytest.MonkeyPatch) -> Any:
    """The fixture's web UI, for tests that change the Python environment (remove the
    prip-refiner package, say) before the scripts load."""
    import gradio
    from modules import scripts, shared

    monkeypatch.setattr(gradio, "created", [])
    monkeypatch.setattr(gradio, "warnings", [])
    monkeypatch.setattr(shared, "cmd_opts", type(shared.cmd_opts)(prip_model=required_env("PRIP_MODEL"), prip_device="cpu", prip_lib=None))
    monkeypatch.delenv("PRIP_DEVICE", raising=False)
    use_library(monkeypatch)
    classes: list[Any] = []
    for path in sorted((EXTENSION_DIR / "scripts").glob("*.py")):
        classes += scripts.load_scripts(str(path))
    return scripts.ScriptRunner(classes)
