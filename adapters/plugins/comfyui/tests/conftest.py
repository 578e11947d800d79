"""Fakes of the ComfyUI host for the node package's tests: the `server` module's
PromptServer (routes, on-prompt handlers, send_sync), aiohttp.web's json_response, and
the node registry's view of a node (/object_info). The package itself is imported the
way ComfyUI imports a custom node folder, and calls the real libprip_abi through the
prip-refiner package (see plugin_testing for which one).

Run through `cargo test -p prip-abi --test plugins`, which builds the library and a
tiny model and sets PRIP_LIB and PRIP_MODEL.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

PACKAGE_DIR = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PACKAGE_DIR.parents[1] / "python"))

from plugin_testing import required_env, use_library  # noqa: E402

MODULE_NAME = "prip_under_test"


class Routes:
    """aiohttp's RouteTableDef as custom nodes use it: decorators by method and path."""

    def __init__(self) -> None:
        self.handlers: dict[tuple[str, str], Callable[..., Any]] = {}

    def _add(self, method: str, path: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        def register(fn: Callable[..., Any]) -> Callable[..., Any]:
            self.handlers[(method, path)] = fn
            return fn

        return register

    def get(self, path: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        return self._add("GET", path)

    def post(self, path: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        return self._add("POST", path)


@dataclass
class Response:
    data: Any
    status: int = 200


class Request:
    def __init__(self, body: Any) -> None:
        self.body = body

    async def json(self) -> Any:
        if isinstance(self.body, str):
            try:
                return json.loads(self.body)
            except json.JSONDecodeError as e:
                raise ValueError(str(e)) from e
        return self.body


@dataclass
class PromptServer:
    instance: Any = None
    routes: Routes = field(default_factory=Routes)
    on_prompt_handlers: list[Callable[[dict[str, Any]], dict[str, Any]]] = field(default_factory=list)
    sent: list[tuple[str, Any]] = field(default_factory=list)

    def add_on_prompt_handler(self, handler: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
        self.on_prompt_handlers.append(handler)

    def send_sync(self, event: str, data: Any, sid: str | None = None) -> None:
        self.sent.append((event, data))

    def trigger_on_prompt(self, json_data: dict[str, Any]) -> dict[str, Any]:
        """What ComfyUI's server runs for every POST /prompt. The server logs and skips
        a handler that raises; here that fails the test, as the plugin must not raise."""
        for handler in self.on_prompt_handlers:
            json_data = handler(json_data)
        return json_data

    def call(self, method: str, path: str, body: Any = None) -> Response:
        result: Response = asyncio.run(self.routes.handlers[(method, path)](Request(body)))
        return result


def node_info(cls: type, name: str, display_name: str) -> dict[str, Any]:
    """The /object_info entry ComfyUI's server builds for a node class."""
    inputs = cls.INPUT_TYPES()
    return {
        "input": inputs,
        "input_order": {k: list(v.keys()) for k, v in inputs.items()},
        "output": list(cls.RETURN_TYPES),
        "output_is_list": [False] * len(cls.RETURN_TYPES),
        "output_name": list(getattr(cls, "RETURN_NAMES", cls.RETURN_TYPES)),
        "name": name,
        "display_name": display_name,
        "description": getattr(cls, "DESCRIPTION", ""),
        "python_module": f"custom_nodes.{MODULE_NAME}",
        "category": cls.CATEGORY,
        "output_node": getattr(cls, "OUTPUT_NODE", False),
        "output_tooltips": list(getattr(cls, "OUTPUT_TOOLTIPS", [])),
    }


def execute(cls: type, inputs: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Validates inputs against INPUT_TYPES as ComfyUI's validate_inputs does, calls the
    node's FUNCTION, and splits a {"ui", "result"} answer as get_output_data does."""
    required = cls.INPUT_TYPES()["required"]
    assert set(inputs) == set(required), f"inputs {sorted(inputs)} vs {sorted(required)}"
    for name, (kind, opts) in required.items():
        value = inputs[name]
        python_type = {"STRING": str, "INT": int, "FLOAT": (int, float), "BOOLEAN": bool}[kind]
        assert isinstance(value, python_type), f"{name}: {value!r} is not {kind}"
        if "min" in opts:
            assert value >= opts["min"], name
        if "max" in opts:
            assert value <= opts["max"], name
    out = getattr(cls(), cls.FUNCTION)(**inputs)
    if isinstance(out, dict):
        return tuple(out["result"]), out.get("ui", {})
    return tuple(out), {}


@pytest.fixture
def comfy(monkeypatch: pytest.MonkeyPatch) -> Iterator[types.SimpleNamespace]:
    """A fake ComfyUI with the package loaded from its folder, as custom_nodes are."""
    yield from load_comfy(monkeypatch)


def load_comfy(monkeypatch: pytest.MonkeyPatch) -> Iterator[types.SimpleNamespace]:
    """The fixture's body, for tests that change the Python environment (remove the
    prip-refiner package, say) before the node package is imported."""
    server = PromptServer()
    PromptServer.instance = server
    server_module = types.ModuleType("server")
    server_module.PromptServer = PromptServer  # type: ignore[attr-defined]
    web = types.ModuleType("aiohttp.web")
    web.json_response = lambda data, status=200: Response(data, status)  # type: ignore[attr-defined]
    aiohttp = types.ModuleType("aiohttp")
    aiohttp.web = web  # type: ignore[attr-defined]
    for name, module in [("server", server_module), ("aiohttp", aiohttp), ("aiohttp.web", web)]:
        monkeypatch.setitem(sys.modules, name, module)
    use_library(monkeypatch)
    monkeypatch.setenv("PRIP_MODEL", required_env("PRIP_MODEL"))
    monkeypatch.setenv("PRIP_DEVICE", "cpu")
    monkeypatch.delenv("PRIP_AUTO", raising=False)

    # nodes.py's load_custom_node: spec from the folder's __init__.py, named after it.
    spec = importlib.util.spec_from_file_location(MODULE_NAME, PACKAGE_DIR / "__init__.py")
    assert spec is not None and spec.loader is not None
    package = importlib.util.module_from_spec(spec)
    sys.modules[MODULE_NAME] = package
    spec.loader.exec_module(package)
    try:
        yield types.SimpleNamespace(
            server=server,
            package=package,
            nodes=sys.modules[f"{MODULE_NAME}.nodes"],
            hooks=sys.modules[f"{MODULE_NAME}.server_hooks"],
            binding=sys.modules[f"{MODULE_NAME}.binding"],
        )
    finally:
        sys.modules[f"{MODULE_NAME}.binding"].unload()
        for name in [n for n in sys.modules if n == MODULE_NAME or n.startswith(MODULE_NAME + ".")]:
            del sys.modules[name]
