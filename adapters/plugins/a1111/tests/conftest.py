"""Fakes of the A1111/Forge host for the extension's tests (tests/fakes: gradio, and
modules.scripts / processing / shared). The extension script is loaded as the web UI
loads scripts and refines with the real libprip_abi.

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

from plugin_testing import required_env  # noqa: E402


@pytest.fixture
def webui(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A fresh web UI: the extension's scripts loaded and their UIs built."""
    import gradio
    from modules import scripts, shared

    monkeypatch.setattr(gradio, "created", [])
    monkeypatch.setattr(shared, "cmd_opts", type(shared.cmd_opts)(prip_model=required_env("PRIP_MODEL"), prip_device="cpu", prip_lib=None))
    monkeypatch.setenv("PRIP_LIB", required_env("PRIP_LIB"))
    classes: list[Any] = []
    for path in sorted((EXTENSION_DIR / "scripts").glob("*.py")):
        classes += scripts.load_scripts(str(path))
    runner = scripts.ScriptRunner(classes)
    yield runner
    for script in runner.alwayson_scripts:
        # The web UI does not register script modules in sys.modules; reach the
        # module's refiner cache through the class.
        type(script).process.__globals__["REFINERS"].unload()
