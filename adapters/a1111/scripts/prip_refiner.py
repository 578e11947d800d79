"""PRIP Prompt Refiner for AUTOMATIC1111 and Forge: an always-visible accordion that,
when enabled, refines the prompts of every generation (and the hires-fix prompts) with
the Rust refiner through its C ABI, before extra networks are parsed.

From the API: "alwayson_scripts": {"prip prompt refiner": {"args": [true, "", 40, 0.7, -1, true]}}
with the arguments in the order of ui() below.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

import gradio as gr
from modules import scripts, shared

EXTENSION_DIR = Path(__file__).resolve().parents[1]
if str(EXTENSION_DIR) not in sys.path:
    sys.path.insert(0, str(EXTENSION_DIR))

from libprip import Cache, PripError  # noqa: E402 - needs the extension folder on sys.path

# One refiner for the whole web UI: loading the model is the expensive part.
REFINERS = Cache()
log = logging.getLogger("prip")
TITLE = "PRIP Prompt Refiner"


def option(name: str) -> str | None:
    """--prip-model / --prip-device / --prip-lib (preload.py), else $PRIP_MODEL ..."""
    value = getattr(shared.cmd_opts, f"prip_{name}", None)
    return value or os.environ.get(f"PRIP_{name.upper()}")


class PripScript(scripts.Script):
    def title(self) -> str:
        return TITLE

    def show(self, is_img2img: bool) -> Any:
        return scripts.AlwaysVisible

    def ui(self, is_img2img: bool) -> list[Any]:
        with gr.Accordion(TITLE, open=False):
            enabled = gr.Checkbox(label="Enable", value=False, elem_id=self.elem_id("enabled"))
            with gr.Row():
                system = gr.Textbox(label="System", value="", placeholder="the model's default", elem_id=self.elem_id("system"))
                seed = gr.Number(label="Seed (-1: each image's seed)", value=-1, precision=0, elem_id=self.elem_id("seed"))
            with gr.Row():
                max_new_tokens = gr.Slider(label="Max new tokens", minimum=1, maximum=256, step=1, value=40, elem_id=self.elem_id("max_new_tokens"))
                creativity = gr.Slider(label="Creativity", minimum=0.0, maximum=2.0, step=0.05, value=0.7, elem_id=self.elem_id("creativity"))
            hires = gr.Checkbox(label="Refine the hires fix prompts too", value=True, elem_id=self.elem_id("hires"))
        # Pasting an image's parameters brings back the system; not the switch, since
        # the pasted prompt is already refined.
        self.infotext_fields = [(system, "PRIP system")]
        return [enabled, system, max_new_tokens, creativity, seed, hires]

    def process(
        self, p: Any, enabled: bool, system: str, max_new_tokens: float, creativity: float, seed: float, hires: bool
    ) -> None:
        if not enabled:
            return
        fixed_seed = int(seed) if seed is not None and int(seed) >= 0 else None
        try:
            refine_prompts(p, (system or "").strip(), int(max_new_tokens), float(creativity), fixed_seed, bool(hires))
        except PripError as e:
            fail(p, str(e))
        except Exception as e:  # noqa: BLE001 - a plugin must never fail the user's generation
            fail(p, f"internal error: {e!r}")


def fail(p: Any, reason: str) -> None:
    """The prompts stay as written; the reason shows under the image and in the log."""
    message = f"PRIP: not refined, the prompts are used as written: {reason}"
    log.warning(message)
    p.comment(message)


def refine_prompts(p: Any, system: str, max_new_tokens: int, creativity: float, seed: int | None, hires: bool) -> None:
    """Refines p.all_prompts (and p.all_hr_prompts) in place as one batch. A prompt and
    its hires prompt that were equal stay equal: same text and seed refine the same."""
    lists = [p.all_prompts]
    if hires and getattr(p, "enable_hr", False) and getattr(p, "all_hr_prompts", None):
        lists.append(p.all_hr_prompts)
    seeds = [seed if seed is not None else p.all_seeds[i] for i in range(len(p.all_prompts))]
    places: dict[tuple[str, int], list[tuple[list[str], int]]] = {}
    for prompts in lists:
        for i, text in enumerate(prompts):
            places.setdefault((text, seeds[i]), []).append((prompts, i))
    requests: list[dict[str, Any]] = [{"prompt": text, "seed": s} for text, s in places]
    if system:
        for r in requests:
            r["system"] = system
    config = {"model": option("model") or "default", "device": option("device") or "auto"}
    refiner = REFINERS.get(EXTENSION_DIR, config, option("lib"))
    results = refiner.refine(requests, {"max_new_tokens": max_new_tokens, "temperature": creativity})
    used_system = None
    for key, result in zip(places, results):
        if "error" in result:
            fail(p, f"{key[0][:60]!r}: {result['error']}")
            continue
        used_system = result["system"]
        for prompts, i in places[key]:
            prompts[i] = result["refined"]
    if used_system is None:
        return
    p.main_prompt = p.all_prompts[0]
    p.extra_generation_params["PRIP"] = "refined"
    # Called by create_infotext per image (lists there are indexed per batch, not per job).
    p.extra_generation_params["PRIP seed"] = seed if seed is not None else image_seed
    p.extra_generation_params["PRIP system"] = used_system


def image_seed(all_seeds: list[int], index: int, **_: Any) -> int:
    return all_seeds[index]
