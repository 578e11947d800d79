"""PRIP Prompt Refiner for AUTOMATIC1111 and Forge: an always-visible accordion that,
when enabled, refines the prompts of every generation (and the hires-fix prompts) with
the Rust refiner through its C ABI, before extra networks are parsed.

From the API: "alwayson_scripts": {"prip prompt refiner": {"args": [true, "", 40, 0.7, -1, true]}}
with the arguments in the order of ui() below. Every image's infotext says what happened:
"PRIP: refined", or "PRIP: not refined: <why>".
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any, Callable, NamedTuple

import gradio as gr
from modules import scripts, shared

EXTENSION_DIR = Path(__file__).resolve().parents[1]
if str(EXTENSION_DIR) not in sys.path:
    sys.path.insert(0, str(EXTENSION_DIR))

import prip_binding  # noqa: E402 - needs the extension folder on sys.path
from prip_binding import PripError  # noqa: E402

log = logging.getLogger("prip")
TITLE = "PRIP Prompt Refiner"
MAX_SEED = (1 << 64) - 1


def option(name: str) -> str | None:
    """--prip-model / --prip-device / --prip-lib (preload.py), else $PRIP_MODEL ...
    The device is auto unless set; one that fails falls back to the CPU, and the job
    says so."""
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

    def process(self, p: Any, enabled: Any, system: Any, max_new_tokens: Any, creativity: Any, seed: Any, hires: Any) -> None:
        """The arguments come from the UI or, as any JSON, from alwayson_scripts; nothing
        here raises: on any failure the prompts stay as written and the infotext says why."""
        try:
            if not switch("enabled", enabled):
                return
            refine_prompts(p, settings(system, max_new_tokens, creativity, seed, hires))
        except PripError as e:
            fail(p, str(e))
        except Exception as e:  # noqa: BLE001 - a plugin must never fail the user's generation
            fail(p, f"internal error: {e!r}")

    def before_process_batch(self, p: Any, *args: Any, **kwargs: Any) -> None:
        # txt2img's init() runs after process() and sets A1111's own "Hires prompt",
        # which reads p.all_hr_prompts at the position in the batch: every batch after
        # the first would show the first batch's hires prompts. Ours reads the image's.
        if "PRIP" in p.extra_generation_params and getattr(p, "enable_hr", False) and getattr(p, "all_hr_prompts", None):
            p.extra_generation_params["Hires prompt"] = hires_prompt


class ArgumentError(PripError):
    """An argument of the extension that is not what ui() gives."""


# The web UI's API copies alwayson_scripts args item by item, so args sent as one string
# ("args": "true") arrive as its characters: the switch gets "t".
SPLIT_STRING = "; were the args sent as a string? the web UI splits one into its characters: send a list, e.g. [true]"


def switch(name: str, value: Any) -> bool:
    """A checkbox: true/false, or "true"/"false" in any case (as some API clients send)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    hint = SPLIT_STRING if name == "enabled" and isinstance(value, str) and len(value) == 1 else ""
    raise ArgumentError(f"{name} must be true or false, not {value!r}{hint}")


def number(value: Any) -> Any:
    """A number as given, or parsed from a string; anything else as it is."""
    if isinstance(value, str):
        for kind in (int, float):
            try:
                return kind(value.strip())
            except ValueError:
                pass
    return value


def integer(name: str, value: Any, low: int, high: int) -> int:
    n = number(value)
    if isinstance(n, float) and n.is_integer():
        n = int(n)
    if isinstance(n, bool) or not isinstance(n, int) or not low <= n <= high:
        raise ArgumentError(f"{name} must be an integer from {low} to {high}, not {value!r}")
    return n


def real(name: str, value: Any, low: float, high: float) -> float:
    n = number(value)
    # NaN is in no range.
    if isinstance(n, bool) or not isinstance(n, (int, float)) or not low <= n <= high:
        raise ArgumentError(f"{name} must be a number from {low} to {high}, not {value!r}")
    return float(n)


# A NamedTuple, not a dataclass: the web UI loads scripts without registering them in
# sys.modules, which dataclasses need.
class Settings(NamedTuple):
    system: str
    max_new_tokens: int
    creativity: float
    # None: each image's own seed.
    seed: int | None
    hires: bool


def settings(system: Any, max_new_tokens: Any, creativity: Any, seed: Any, hires: Any) -> Settings:
    if not isinstance(system, str):
        raise ArgumentError(f"system must be a string, not {system!r}")
    fixed = integer("seed", seed, -1, MAX_SEED)
    return Settings(
        system.strip(),
        integer("max_new_tokens", max_new_tokens, 1, 256),
        real("creativity", creativity, 0.0, 2.0),
        None if fixed == -1 else fixed,
        switch("hires", hires),
    )


def one_line(text: str) -> str:
    return " ".join(text.split())


def fail(p: Any, reason: str) -> None:
    """The prompts stay as written; the reason goes to every image's infotext (what API
    clients get back), under the image in the web UI, and to the log."""
    reason = one_line(reason)
    message = f"PRIP: not refined, the prompts are used as written: {reason}"
    log.warning(message)
    p.comment(message)
    p.extra_generation_params["PRIP"] = f"not refined: {reason}"


def fell_back(p: Any, message: str) -> None:
    """The refiner runs on the CPU because the device asked for failed: said in the
    log, under the image (the job's comments), and as a toast where gradio has them."""
    message = one_line(message)
    log.warning(message)
    p.comment(message)
    warning = getattr(gr, "Warning", None)
    if warning is not None:
        try:
            warning(message)
        except Exception:  # noqa: BLE001 - outside a web UI request there is no toast to show
            pass


def refine_prompts(p: Any, s: Settings) -> None:
    """Refines p.all_prompts (and p.all_hr_prompts) in place as one batch. A prompt and
    its hires prompt that were equal stay equal: same text and seed refine the same."""
    lists = [p.all_prompts]
    if s.hires and getattr(p, "enable_hr", False) and getattr(p, "all_hr_prompts", None):
        lists.append(p.all_hr_prompts)
    seeds = [s.seed if s.seed is not None else p.all_seeds[i] for i in range(len(p.all_prompts))]
    places: dict[tuple[str, int], list[tuple[int, int]]] = {}
    for which, prompts in enumerate(lists):
        for i, text in enumerate(prompts):
            places.setdefault((text, seeds[i]), []).append((which, i))
    # A1111/Forge strip `#` comments: details must land outside them.
    requests: list[dict[str, Any]] = [{"prompt": text, "seed": seed, "dialect": "a1111"} for text, seed in places]
    if s.system:
        for r in requests:
            r["system"] = s.system
    config = {"model": option("model") or "default", "device": option("device") or "auto"}
    generation = {"max_new_tokens": s.max_new_tokens, "temperature": s.creativity}
    results = prip_binding.run(config, lambda refiner: refiner.refine(requests, generation), option("lib"), lambda m: fell_back(p, m))
    # What each image's infotext says: its prompt's outcome, and its hires prompt's
    # when that differs.
    said: list[list[str]] = [["", ""] for _ in p.all_prompts]
    used_system = None
    for key, result in zip(places, results):
        if "error" in result:
            status = f"not refined: {one_line(result['error'])}"
            p.comment(f"PRIP: not refined, the prompt is used as written: {key[0][:60]!r}: {one_line(result['error'])}")
        else:
            outcome = result.get("outcome", "refined")
            status = "refined" if outcome == "refined" else f"not refined: {outcome}"
            used_system = result["system"]
        for which, i in places[key]:
            lists[which][i] = result.get("refined", lists[which][i])
            said[i][which] = status
    statuses = [main if hires in ("", main) else f"{main}; hires prompt {hires}" for main, hires in said]
    p.extra_generation_params["PRIP"] = statuses[0] if len(set(statuses)) == 1 else per_image(statuses)
    if used_system is None:
        return
    p.main_prompt = p.all_prompts[0]
    # A plain value when every image has the same (a fixed seed, or one image): the API's
    # info.extra_generation_params then carries it; a callable there reads null.
    p.extra_generation_params["PRIP seed"] = seeds[0] if len(set(seeds)) == 1 else image_seed
    p.extra_generation_params["PRIP system"] = used_system


def job_index(p: Any, index: int, all_prompts: list[str], use_main_prompt: bool = False, **_: Any) -> int:
    """The image's place in the job. create_infotext's `index` is the place in the batch
    when it writes an image's infotext (all_prompts is then the batch's p.prompts), and
    the place in the job when it is given the job's lists (params.txt, images saved
    before hires fix)."""
    if use_main_prompt or len(all_prompts) == len(p.all_prompts):
        return index
    return int(p.iteration) * int(p.batch_size) + index


def per_image(values: list[str]) -> Callable[..., str]:
    def value(**infotext: Any) -> str:
        return values[job_index(**infotext)]

    return value


def hires_prompt(p: Any, prompt_text: str, **infotext: Any) -> str | None:
    """A1111's get_hr_prompt, at the image's place in the job."""
    hr: str = p.all_hr_prompts[job_index(p, **infotext)]
    return hr if hr != prompt_text else None


def image_seed(p: Any, **infotext: Any) -> int:
    seed: int = p.all_seeds[job_index(p, **infotext)]
    return seed
