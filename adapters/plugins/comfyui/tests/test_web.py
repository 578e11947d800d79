"""web/prip.js run for real under node, in a fake ComfyUI front end (tests/fakes/scripts:
the setting store and fetchApi answering /prip/auto like server_hooks.py)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

PACKAGE_DIR = Path(__file__).resolve().parents[1]
FAKES = Path(__file__).resolve().parent / "fakes"


def open_page(tmp_path: Path, server: bool, saved: bool | None, changes: list[bool]) -> dict[str, Any]:
    """Loads prip.js as ComfyUI serves it (/extensions/prip/prip.js beside /scripts/) and
    reports the calls it made on load and after each of the user's ``changes``."""
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not installed: web/prip.js is tested under node (apt-get install nodejs)")
    (tmp_path / "package.json").write_text('{"type": "module"}')
    shutil.copytree(FAKES / "scripts", tmp_path / "scripts")
    (tmp_path / "extensions" / "prip").mkdir(parents=True)
    shutil.copy(PACKAGE_DIR / "web" / "prip.js", tmp_path / "extensions" / "prip" / "prip.js")
    shutil.copy(FAKES / "page.mjs", tmp_path / "page.mjs")
    scenario = json.dumps({"server": server, "saved": saved, "changes": changes})
    run = subprocess.run([node, "page.mjs", scenario], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    result: dict[str, Any] = json.loads(run.stdout)
    return result


def posts(calls: list[dict[str, Any]]) -> list[Any]:
    return [c["body"] for c in calls if c["method"] == "POST"]


@pytest.mark.parametrize("saved", [None, False])
def test_opening_the_page_shows_the_servers_auto_mode_and_never_switches_it(tmp_path: Path, saved: bool | None) -> None:
    # Auto mode is on at the server (PRIP_AUTO=1 or an API call); the browser has the
    # default (off) or an old saved "off".
    page = open_page(tmp_path, server=True, saved=saved, changes=[])
    assert page["loaded"]["calls"] == [{"method": "GET", "route": "/prip/auto"}]
    assert page["loaded"]["setting"] is True
    assert page["loaded"]["server"] is True
    assert page["toasts"] == []


def test_opening_the_page_with_auto_mode_off_leaves_it_off(tmp_path: Path) -> None:
    page = open_page(tmp_path, server=False, saved=True, changes=[])
    assert posts(page["loaded"]["calls"]) == []
    assert page["loaded"]["setting"] is False and page["loaded"]["server"] is False


def test_a_change_by_the_user_is_sent_once_and_only_when_it_changes_the_server(tmp_path: Path) -> None:
    page = open_page(tmp_path, server=True, saved=None, changes=[False, False, True])
    off, same, on = page["changes"]
    assert posts(off["calls"]) == [{"enabled": False}]
    assert off["server"] is False and off["setting"] is False
    assert same["calls"] == []
    assert posts(on["calls"]) == [{"enabled": True}]
    assert on["server"] is True and on["setting"] is True
