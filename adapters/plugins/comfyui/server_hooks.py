"""What the package adds to ComfyUI's server: the auto mode's on-prompt handler, and
routes to unload the refiner and to switch auto mode."""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass
from typing import Any

from . import binding
from .binding import PripError
from .nodes import PripPromptRefiner, generation, notify, open_config

log = logging.getLogger("prip")


@dataclass
class AutoMode:
    """Refines the positive prompts of every queued workflow, found by the same
    protocol code as `prip serve`; off unless $PRIP_AUTO=1 or the UI setting turns it on."""

    enabled: bool = os.environ.get("PRIP_AUTO", "") in ("1", "true", "yes")
    seed: int | None = None
    system: str = ""
    max_new_tokens: int | None = None
    creativity: float | None = None

    def update(self, changes: dict[str, Any]) -> None:
        """Applies the known keys of a JSON object; raises ValueError on a bad one."""
        for key, value in changes.items():
            if key not in SETTING_TYPES:
                raise ValueError(f"unknown auto mode setting {key!r}")
            # bool is an int in Python, but never a valid seed or token count.
            if not isinstance(value, SETTING_TYPES[key]) or (isinstance(value, bool) and key != "enabled"):
                raise ValueError(f"auto mode setting {key!r} cannot be {value!r}")
            # The node's bounds, so a bad value fails here and not on the next queued
            # workflow.
            spec = NODE_INPUTS.get(key, ("", {}))[1]
            low, high = spec.get("min"), spec.get("max")
            if value is not None and ((low is not None and value < low) or (high is not None and value > high)):
                raise ValueError(f"auto mode setting {key!r} must be in [{low}, {high}], not {value!r}")
        for key, value in changes.items():
            setattr(self, key, value)

    def on_prompt(self, json_data: dict[str, Any]) -> dict[str, Any]:
        """ComfyUI's on-prompt hook: never raises; on any failure the workflow is queued
        as it was and the UI is told why."""
        if not self.enabled:
            return json_data
        workflow = json_data.get("prompt")
        if not isinstance(workflow, dict):
            return json_data
        # A workflow that refines with the node already should not be refined twice.
        if any(isinstance(n, dict) and n.get("class_type") == "PripPromptRefiner" for n in workflow.values()):
            return json_data
        options: dict[str, Any] = {"generation": generation(self.max_new_tokens, self.creativity)}
        if self.seed is not None:
            options["seed"] = self.seed
        if self.system.strip():
            options["system"] = self.system.strip()
        try:
            out = binding.run(open_config(), lambda refiner: refiner.rewrite("comfyui", json_data, **options), notify)
        except PripError as e:
            notify(f"PRIP auto mode: prompts used as written: {e}")
            return json_data
        except Exception as e:  # noqa: BLE001 - a plugin must never fail the user's queue
            notify(f"PRIP auto mode: prompts used as written: internal error: {e!r}")
            return json_data
        for failure in out["errors"]:
            notify(f"PRIP auto mode: node input {failure['id']} used as written: {failure['error']}")
        body: dict[str, Any] = out["body"]
        return body


NODE_INPUTS: dict[str, Any] = PripPromptRefiner.INPUT_TYPES()["required"]

SETTING_TYPES: dict[str, tuple[type, ...]] = {
    "enabled": (bool,),
    "seed": (int, type(None)),
    "system": (str,),
    "max_new_tokens": (int, type(None)),
    "creativity": (int, float, type(None)),
}

AUTO = AutoMode()


def install() -> None:
    """Registers the hook and routes on the running server; a no-op outside ComfyUI."""
    try:
        from aiohttp import web
        from server import PromptServer
    except ImportError:
        return
    server = PromptServer.instance
    server.add_on_prompt_handler(AUTO.on_prompt)
    routes = server.routes

    @routes.post("/prip/unload")
    async def unload(_request: Any) -> Any:
        return web.json_response({"unloaded": binding.unload()})

    @routes.get("/prip/auto")
    async def get_auto(_request: Any) -> Any:
        return web.json_response(asdict(AUTO))

    @routes.post("/prip/auto")
    async def set_auto(request: Any) -> Any:
        try:
            changes = await request.json()
            if not isinstance(changes, dict):
                raise ValueError("expected a JSON object")
            AUTO.update(changes)
        except ValueError as e:
            return web.json_response({"error": str(e)}, status=400)
        return web.json_response(asdict(AUTO))
