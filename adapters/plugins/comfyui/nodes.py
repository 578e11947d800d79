"""The "PRIP Prompt Refiner" node: plain prompt in, keyword-rich prompt out."""

from __future__ import annotations

import logging
import os
from typing import Any

from . import binding
from .binding import PripError

log = logging.getLogger("prip")


def notify(message: str) -> None:
    """Logs and shows a toast in the browser (web/prip.js)."""
    log.warning(message)
    try:
        from server import PromptServer

        PromptServer.instance.send_sync("prip.status", {"message": message})
    except Exception:  # noqa: BLE001 - outside a running server there is no UI to tell
        pass


def open_config() -> dict[str, Any]:
    """How the refiner is opened: $PRIP_MODEL (a packaged name or a checkpoint folder)
    and $PRIP_DEVICE (auto, cpu, cuda:N). A device that fails falls back to the CPU
    with a toast."""
    return {"model": os.environ.get("PRIP_MODEL", "default"), "device": os.environ.get("PRIP_DEVICE", "auto")}


def generation(max_new_tokens: int | None, creativity: float | None) -> dict[str, Any]:
    """The node's knobs as the refiner's generation options; creativity is the
    sampling temperature."""
    options: dict[str, Any] = {}
    if max_new_tokens is not None:
        options["max_new_tokens"] = max_new_tokens
    if creativity is not None:
        options["temperature"] = creativity
    return options


class PripPromptRefiner:
    """Refines a prompt with PRIP; wire its output into CLIPTextEncode or any text input."""

    CATEGORY = "conditioning/prip"
    DESCRIPTION = "Rewrites a plain prompt into the keyword-rich language image models render best."
    RETURN_TYPES = ("STRING", "INT")
    RETURN_NAMES = ("prompt", "seed")
    OUTPUT_TOOLTIPS = ("The refined prompt (the input when disabled or when refining failed).", "The seed used.")
    FUNCTION = "refine"
    # Set when the last run fell back to the original prompt, so the next queue runs
    # the node again instead of reusing the cached fallback.
    failed_last = False

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "text": ("STRING", {"multiline": True, "dynamicPrompts": True, "tooltip": "The prompt to refine."}),
                "seed": (
                    "INT",
                    {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "control_after_generate": True,
                     "tooltip": "The same seed always refines a prompt the same way."},
                ),
                "enabled": ("BOOLEAN", {"default": True, "tooltip": "Off passes the text through."}),
                "system": ("STRING", {"default": "", "tooltip": "A generation system the model has a LoRA for; empty for its default."}),
                "max_new_tokens": ("INT", {"default": 40, "min": 1, "max": 256, "tooltip": "Most tokens to add."}),
                "creativity": ("FLOAT", {"default": 0.7, "min": 0.0, "max": 2.0, "step": 0.05, "tooltip": "Sampling temperature; 0 always picks the likeliest words."}),
            }
        }

    @classmethod
    def IS_CHANGED(cls, **_: Any) -> Any:
        return float("nan") if cls.failed_last else ""

    def refine(
        self, text: str, seed: int, enabled: bool, system: str, max_new_tokens: int, creativity: float
    ) -> dict[str, Any]:
        if not enabled:
            return {"ui": {"prip": ["PRIP: off"]}, "result": (text, seed)}
        # ComfyUI renders `#` as text: no comments to keep details out of.
        request: dict[str, Any] = {"prompt": text, "seed": seed, "dialect": "comfyui"}
        if system.strip():
            request["system"] = system.strip()
        try:
            options = generation(max_new_tokens, creativity)
            result = binding.run(open_config(), lambda refiner: refiner.refine([request], options)[0], notify)
            if "error" in result:
                raise PripError(result["error"])
        except Exception as e:  # noqa: BLE001 - PripError, or anything else: never fail the user's queue
            type(self).failed_last = True
            reason = str(e) if isinstance(e, PripError) else f"internal error: {e!r}"
            message = f"PRIP: not refined, the prompt is used as written: {reason}"
            log.warning(message)
            return {"ui": {"prip": [message], "prip_failed": [True]}, "result": (text, seed)}
        type(self).failed_last = False
        # Why nothing was added, when nothing was: budget_full, model_stopped, filtered.
        outcome = result.get("outcome", "refined")
        said = "refined" if outcome == "refined" else f"not refined: {outcome}"
        return {"ui": {"prip": [f"PRIP: {said} (seed {seed}, system {result['system']})"]}, "result": (result["refined"], seed)}


NODE_CLASS_MAPPINGS = {"PripPromptRefiner": PripPromptRefiner}
NODE_DISPLAY_NAME_MAPPINGS = {"PripPromptRefiner": "PRIP Prompt Refiner"}
