"""The PRIP extension inside a fake A1111/Forge, refining with the real libprip_abi."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import EXTENSION_DIR
import libprip
from modules import infotext_utils, processing, scripts
from plugin_testing import direct, fixture, spy_refine

PROMPT = "a (red:1.2) fox <lora:foxy:0.8> in the snow"


def txt2img(runner: scripts.ScriptRunner, args: list[Any] | None, entry: dict[str, Any] | None = None, **changes: Any) -> dict[str, Any]:
    """POST /sdapi/v1/txt2img with the recorded hires request, PRIP's args under
    alwayson_scripts (absent when None), or its whole ``entry`` there."""
    request = fixture("a1111/txt2img_hires_response.json")["parameters"]
    request.update({"prompt": PROMPT, "hr_prompt": "", "alwayson_scripts": {}, **changes})
    if args is not None:
        entry = {"args": args}
    if entry is not None:
        request["alwayson_scripts"] = {"prip prompt refiner": entry}
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
    # The reason reaches API clients too: Forge's info has no comments.
    assert 'PRIP: "not refined: ' in info["infotexts"][0]
    assert "PRIP seed" not in info["infotexts"][0]

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


def parsed(info: dict[str, Any], i: int) -> dict[str, Any]:
    """Image ``i``'s infotext as the web UI reads it back (PNG info, API `infotext`)."""
    return infotext_utils.parse_generation_parameters(info["infotexts"][i])


def api_info(info: dict[str, Any]) -> dict[str, Any]:
    """The `info` an API client gets."""
    answer: dict[str, Any] = json.loads(info["info"])
    return answer


def test_the_fake_answers_the_info_the_recorded_server_does(webui: scripts.ScriptRunner) -> None:
    recorded = json.loads(fixture("a1111/txt2img_hires_response.json")["info"])
    assert "comments" not in recorded
    assert set(api_info(txt2img(webui, None))) <= set(recorded)


@pytest.mark.parametrize(
    "entry",
    [
        # What `prip serve` writes into a body it refined, in full and short.
        {"args": [False, "", 40, 0.7, -1, True], "prip_refined": True},
        {"args": [False], "prip_refined": True},
        {"args": ["false"]},
        {"args": ["FALSE", "", 40, 0.7, -1, True]},
    ],
)
def test_switched_off_nothing_is_refined(webui: scripts.ScriptRunner, monkeypatch: pytest.MonkeyPatch, entry: dict[str, Any]) -> None:
    seen = spy_refine(monkeypatch, libprip.Refiner)
    info = txt2img(webui, None, entry=entry)
    assert seen == []
    assert info["all_prompts"] == [PROMPT, PROMPT]
    assert info["p"].all_hr_prompts == [PROMPT, PROMPT]
    assert all("PRIP" not in text for text in info["infotexts"])
    assert info["comments"] == ""


def test_switches_and_numbers_may_come_as_strings(webui: scripts.ScriptRunner) -> None:
    info = txt2img(webui, ["TRUE", " ", "8", "0.7", "42", "false"])
    refined = direct(PROMPT, 42, max_new_tokens=8, temperature=0.7)
    assert info["all_prompts"] == [refined, refined]
    assert info["p"].all_hr_prompts == [PROMPT, PROMPT]
    assert [parsed(info, i)["PRIP"] for i in range(2)] == ["refined", "refined"]


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (["yes"], "enabled must be true or false, not 'yes'"),
        ([1], "enabled must be true or false, not 1"),
        ([None], "enabled must be true or false, not None"),
        ([True, None], "system must be a string, not None"),
        ([True, "", "abc"], "max_new_tokens must be an integer from 1 to 256, not 'abc'"),
        ([True, "", 0], "max_new_tokens must be an integer from 1 to 256, not 0"),
        ([True, "", 257], "max_new_tokens must be an integer from 1 to 256, not 257"),
        ([True, "", 8.5], "max_new_tokens must be an integer from 1 to 256, not 8.5"),
        ([True, "", True], "max_new_tokens must be an integer from 1 to 256, not True"),
        ([True, "", 8, "abc"], "creativity must be a number from 0.0 to 2.0, not 'abc'"),
        ([True, "", 8, 2.5], "creativity must be a number from 0.0 to 2.0, not 2.5"),
        ([True, "", 8, float("nan")], "creativity must be a number from 0.0 to 2.0, not nan"),
        ([True, "", 8, 0.7, "abc"], "seed must be an integer from -1 to 18446744073709551615, not 'abc'"),
        ([True, "", 8, 0.7, -2], "seed must be an integer from -1 to 18446744073709551615, not -2"),
        ([True, "", 8, 0.7, 1.5], "seed must be an integer from -1 to 18446744073709551615, not 1.5"),
        ([True, "", 8, 0.7, -1, "yes"], "hires must be true or false, not 'yes'"),
    ],
)
def test_a_bad_argument_keeps_the_prompts_and_every_image_says_why(
    webui: scripts.ScriptRunner, monkeypatch: pytest.MonkeyPatch, args: list[Any], reason: str
) -> None:
    seen = spy_refine(monkeypatch, libprip.Refiner)
    info = txt2img(webui, args)
    assert seen == []
    assert info["all_prompts"] == [PROMPT, PROMPT]
    assert info["p"].all_hr_prompts == [PROMPT, PROMPT]
    for i in range(2):
        assert parsed(info, i)["PRIP"] == f"not refined: {reason}"
    assert api_info(info)["extra_generation_params"]["PRIP"] == f"not refined: {reason}"
    assert info["comments"] == f"PRIP: not refined, the prompts are used as written: {reason}\n"


def test_a_reason_with_commas_colons_and_quotes_reads_back_from_the_infotext(
    webui: scripts.ScriptRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    from modules import shared

    model = '/no/such/model, really: "this one"'
    monkeypatch.setattr(shared.cmd_opts, "prip_model", model)
    info = txt2img(webui, [True, "", 8, 0.7, -1, True])
    for i, text in enumerate(info["infotexts"]):
        assert len(text.split("\n")) == 3
        back = parsed(info, i)
        assert back["PRIP"].startswith("not refined: ") and model in back["PRIP"]
        assert (back["Prompt"], back["Negative prompt"]) == (PROMPT, "blurry")
        assert (back["Seed"], back["Version"]) == (str(info["all_seeds"][i]), processing.VERSION)


def test_when_nothing_was_added_the_infotext_says_why(webui: scripts.ScriptRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    spy_refine(monkeypatch, libprip.Refiner, outcome="budget_full")
    info = txt2img(webui, [True, "", 8, 0.7, -1, True])
    assert info["all_prompts"] == [PROMPT, PROMPT]
    assert [parsed(info, i)["PRIP"] for i in range(2)] == ["not refined: budget_full"] * 2
    assert api_info(info)["extra_generation_params"]["PRIP"] == "not refined: budget_full"


def test_each_image_says_its_own_outcome(webui: scripts.ScriptRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    stopped = 3919858964 + 3
    spy_refine(monkeypatch, libprip.Refiner, outcome="model_stopped", where=lambda r: r["seed"] == stopped)
    info = txt2img(webui, [True, "", 8, 0.7, -1, True], n_iter=3, enable_hr=False)
    assert info["all_seeds"][3] == stopped and info["all_prompts"][3] == PROMPT
    said = [parsed(info, i)["PRIP"] for i in range(6)]
    assert said == ["refined"] * 3 + ["not refined: model_stopped"] + ["refined"] * 2


def test_prompts_are_read_as_a1111_reads_them(webui: scripts.ScriptRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    # A1111/Forge strip `#` comments to the end of the line: details must not land there.
    seen = spy_refine(monkeypatch, libprip.Refiner)
    prompt = "a fox # in the snow"
    info = txt2img(webui, [True, "", 8, 0.7, 42, True], prompt=prompt, enable_hr=False)
    assert {r["dialect"] for r in seen[0]} == {"a1111"}
    assert info["all_prompts"][0] == direct(prompt, 42, dialect="a1111", max_new_tokens=8, temperature=0.7)


def test_every_batch_shows_its_own_hires_prompt(webui: scripts.ScriptRunner) -> None:
    info = txt2img(webui, [True, "", 8, 0.7, -1, True], hr_prompt="a fox, detailed", n_iter=3)
    p, seeds = info["p"], info["all_seeds"]
    assert len(info["infotexts"]) == 6
    assert p.all_hr_prompts[2] != p.all_hr_prompts[0]
    for i in range(6):
        back = parsed(info, i)
        assert back["Prompt"] == info["all_prompts"][i]
        assert back["Hires prompt"] == p.all_hr_prompts[i]
        assert p.all_hr_prompts[i].startswith("a fox, detailed") and p.all_hr_prompts[i] != "a fox, detailed"
        assert back["PRIP seed"] == str(seeds[i])
    # The callers that pass the job's lists (params.txt, images saved before the hires
    # pass) see the image they ask for too.
    job = processing.create_infotext(p, p.all_prompts, p.all_seeds, p.all_subseeds, iteration=2, position_in_batch=1)
    assert infotext_utils.parse_generation_parameters(job)["Hires prompt"] == p.all_hr_prompts[5]


def test_hires_prompts_equal_to_the_prompts_stay_unmentioned_in_every_batch(webui: scripts.ScriptRunner) -> None:
    info = txt2img(webui, [True, "", 8, 0.7, -1, True], n_iter=3)
    assert info["p"].all_hr_prompts == info["all_prompts"]
    assert info["all_prompts"][2] != info["all_prompts"][0]
    assert all("Hires prompt" not in text for text in info["infotexts"])

