"""The PRIP extension inside a fake A1111/Forge, refining with the real libprip_abi."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import EXTENSION_DIR
from modules import processing, scripts
from plugin_testing import direct, fixture

PROMPT = "a (red:1.2) fox <lora:foxy:0.8> in the snow"


def txt2img(runner: scripts.ScriptRunner, args: list[Any] | None, **changes: Any) -> dict[str, Any]:
    """POST /sdapi/v1/txt2img with the recorded hires request, PRIP's args under
    alwayson_scripts (absent when None)."""
    request = fixture("a1111/txt2img_hires_response.json")["parameters"]
    request.update({"prompt": PROMPT, "hr_prompt": "", "alwayson_scripts": {}, **changes})
    if args is not None:
        request["alwayson_scripts"] = {"prip prompt refiner": {"args": args}}
    p = processing.StableDiffusionProcessingTxt2Img(**{k: v for k, v in request.items() if k in ("prompt", "negative_prompt", "seed", "batch_size", "n_iter", "steps", "cfg_scale", "width", "height", "sampler_name", "enable_hr", "hr_prompt", "hr_negative_prompt")})
    p.scripts = runner
    p.script_args = runner.api_args(request["alwayson_scripts"])
    info = processing.process_images(p)
    info["p"] = p
    return info


def test_the_ui_is_an_always_visible_accordion_with_an_enable_switch(webui: scripts.ScriptRunner) -> None:
    [script] = webui.alwayson_scripts
    assert script.title() == "PRIP Prompt Refiner"
    controls = webui.inputs[script.args_from : script.args_to]
    assert [c.label for c in controls] == ["Enable", "System", "Max new tokens", "Creativity", "Seed (-1: each image's seed)", "Refine the hires fix prompts too"]
    assert all(c.parents[0].label == "PRIP Prompt Refiner" for c in controls)
    assert controls[0].value is False
    assert controls[0].elem_id == "script_txt2img_prip_prompt_refiner_enabled"
    assert script.infotext_fields == [(controls[1], "PRIP system")]


def test_off_by_default_nothing_changes(webui: scripts.ScriptRunner) -> None:
    info = txt2img(webui, None)
    assert info["all_prompts"] == [PROMPT, PROMPT]
    assert "PRIP" not in info["infotexts"][0]


def test_the_api_refines_every_image_and_its_hires_prompt_and_the_infotext_remembers(webui: scripts.ScriptRunner) -> None:
    info = txt2img(webui, [True, "", 8, 0.7, -1, True])
    seeds = info["all_seeds"]
    expected = [direct(PROMPT, s, max_new_tokens=8, temperature=0.7) for s in seeds]
    assert info["all_prompts"] == expected
    assert expected[0] != expected[1] and all(e.startswith(PROMPT) for e in expected)
    p = info["p"]
    assert p.main_prompt == expected[0]
    # Hires prompts equal to the prompts are refined the same way, so no "Hires prompt".
    assert p.all_hr_prompts == expected
    for i, text in enumerate(info["infotexts"]):
        first, _, params = text.partition("\n")
        assert first == expected[i] and "<lora:foxy:0.8>" in first
        assert f"PRIP: refined, PRIP seed: {seeds[i]}, PRIP system: base" in params
        assert "Hires prompt" not in params


def test_a_separate_hires_prompt_is_refined_and_shown(webui: scripts.ScriptRunner) -> None:
    info = txt2img(webui, [True, "", 8, 0.7, 42, True], hr_prompt="a fox, detailed")
    p = info["p"]
    hires = direct("a fox, detailed", 42, max_new_tokens=8, temperature=0.7)
    assert p.all_hr_prompts == [hires, hires]
    assert info["all_prompts"] == [direct(PROMPT, 42, max_new_tokens=8, temperature=0.7)] * 2
    assert f"Hires prompt: {processing.quote(hires)}" in info["infotexts"][1]
    assert "PRIP seed: 42," in info["infotexts"][1]


def test_hires_prompts_can_be_left_alone(webui: scripts.ScriptRunner) -> None:
    info = txt2img(webui, [True, "", 8, 0.7, 42, False])
    assert info["p"].all_hr_prompts == [PROMPT, PROMPT]
    assert info["all_prompts"][0] != PROMPT
    assert f"Hires prompt: {processing.quote(PROMPT)}" in info["infotexts"][0]


def test_a_failing_refiner_keeps_the_prompts_and_says_why(webui: scripts.ScriptRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    from modules import shared

    monkeypatch.setattr(shared.cmd_opts, "prip_model", "/no/such/model")
    info = txt2img(webui, [True, "", 8, 0.7, -1, True])
    assert info["all_prompts"] == [PROMPT, PROMPT]
    assert info["p"].all_hr_prompts == [PROMPT, PROMPT]
    assert info["comments"].startswith("PRIP: not refined, the prompts are used as written: ")
    assert "/no/such/model" in info["comments"]
    assert "PRIP" not in info["infotexts"][0]

    # A prompt the refiner refuses is kept; the other images are refined.
    monkeypatch.setattr(shared.cmd_opts, "prip_model", os.environ["PRIP_MODEL"])
    info = txt2img(webui, [True, "", 8, 0.7, -1, True], prompt="x" * (1 << 20), enable_hr=False)
    assert info["all_prompts"] == ["x" * (1 << 20)] * 2
    assert "PRIP: not refined" in info["comments"]


def test_install_finds_the_library_and_explains_when_it_cannot(tmp_path: Path) -> None:
    env = {**os.environ}
    found = subprocess.run([sys.executable, str(EXTENSION_DIR / "install.py")], env=env, capture_output=True, text=True, check=True)
    assert found.stdout.strip() == f"PRIP: using {os.environ['PRIP_LIB']}"
    # A copy outside any PRIP checkout, with no library: it says so and still exits 0,
    # so the web UI starts and the extension keeps prompts as written.
    copy = tmp_path / "prip"
    shutil.copytree(EXTENSION_DIR, copy, symlinks=False, ignore=shutil.ignore_patterns("tests"))
    env.pop("PRIP_LIB")
    alone = subprocess.run([sys.executable, str(copy / "install.py")], env=env, capture_output=True, text=True, check=True)
    assert "no libprip_abi.so found" in alone.stdout
    assert "is not inside a PRIP checkout" in alone.stdout
