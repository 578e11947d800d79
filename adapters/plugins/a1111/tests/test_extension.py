"""The PRIP extension inside a fake A1111/Forge, refining with the real libprip_abi
through the prip-refiner package."""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import gradio
import prip_refiner
import pytest
from conftest import EXTENSION_DIR, load_webui
from modules import infotext_utils, processing, scripts, shared
from plugin_testing import INSTALLED, direct, fixture, library, spy_refine

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


def load_install(monkeypatch: pytest.MonkeyPatch, pip_status: int = 0) -> tuple[types.ModuleType, list[list[str]]]:
    """install.py as a module, with the pip commands it would run recorded (and
    answered with ``pip_status``) instead of run."""
    spec = importlib.util.spec_from_file_location("prip_install_under_test", EXTENSION_DIR / "install.py")
    assert spec is not None and spec.loader is not None
    install = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(install)
    ran: list[list[str]] = []

    def run(command: list[str], **_: Any) -> subprocess.CompletedProcess[str]:
        ran.append(command)
        return subprocess.CompletedProcess(command, pip_status)

    monkeypatch.setattr(install, "subprocess", types.SimpleNamespace(run=run))
    return install, ran


def test_install_keeps_a_usable_package(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    # The library under test stands for the package's own (in a source tree there is none).
    under_test = library()
    monkeypatch.setattr(prip_refiner, "bundled_library", lambda: under_test)
    install, ran = load_install(monkeypatch)
    assert install.main() == 0
    assert ran == []
    assert capsys.readouterr().out == f"PRIP: using prip-refiner {prip_refiner.__version__}\n"
    if INSTALLED:
        # As the web UI runs it: in its own Python process, with the installed package.
        out = subprocess.run([sys.executable, str(EXTENSION_DIR / "install.py")], capture_output=True, text=True, check=True)
        assert out.stdout == f"PRIP: using prip-refiner {prip_refiner.__version__}\n"


def test_install_installs_a_missing_package_with_pip(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "prip_refiner", None)
    monkeypatch.delitem(sys.modules, "prip_binding", raising=False)
    install, ran = load_install(monkeypatch)
    assert install.main() == 0
    assert ran == [[sys.executable, "-m", "pip", "install", "--upgrade", "--force-reinstall", "prip-refiner>=0.1,<0.2"]]
    assert "PRIP: the prip-refiner package is not installed" in capsys.readouterr().out
    # PRIP_WHEEL names a wheel file (or any requirement); when pip fails, the web UI
    # still starts, told what to do.
    wheel = "/wheels/prip_refiner-0.1.0-py3-none-manylinux_2_34_x86_64.whl"
    monkeypatch.setenv("PRIP_WHEEL", wheel)
    install, ran = load_install(monkeypatch, pip_status=1)
    assert install.main() == 0
    assert ran[0][-1] == wheel
    assert f"PRIP: pip could not install {wheel}. Set PRIP_WHEEL to the prip-refiner wheel built for this platform" in capsys.readouterr().out


def test_install_replaces_a_package_built_for_another_platform(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    foreign = tmp_path / prip_refiner.LIBRARY_NAME
    built_for = foreign_library(foreign)
    monkeypatch.setattr(prip_refiner, "bundled_library", lambda: foreign)
    install, ran = load_install(monkeypatch)
    assert install.main() == 0
    assert len(ran) == 1 and "--force-reinstall" in ran[0]
    assert f"is built for {built_for} and this Python runs on {prip_refiner.this_platform()}" in capsys.readouterr().out


def foreign_library(path: Path) -> str:
    """Writes the start of a shared library built for another CPU; returns its platform."""
    machine, code = ("x86_64", 0x3E) if platform.machine().lower() in ("aarch64", "arm64") else ("aarch64", 0xB7)
    path.write_bytes(b"\x7fELF\x02\x01\x01" + bytes(9) + (3).to_bytes(2, "little") + code.to_bytes(2, "little") + bytes(44))
    return f"linux-{machine}"


def test_the_device_is_passed_through_auto_by_default(webui: scripts.ScriptRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shared.cmd_opts, "prip_device", None)
    info = txt2img(webui, [True, "", 8, 0.7, -1, False], enable_hr=False)
    assert all(refined.startswith(PROMPT + ",") for refined in info["all_prompts"])
    refiner = sys.modules["prip_binding"].REFINERS._refiner
    assert refiner.device == "auto"
    assert refiner.library == library()
    assert "PRIP runs on the CPU" not in info["comments"] and gradio.warnings == []


def test_a_device_that_cannot_open_falls_back_to_the_cpu_and_says_so(webui: scripts.ScriptRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shared.cmd_opts, "prip_device", "cuda:99")
    info = txt2img(webui, [True, "", 8, 0.7, -1, False], enable_hr=False)
    assert all(refined.startswith(PROMPT + ",") for refined in info["all_prompts"])
    [warning] = gradio.warnings
    assert warning.startswith("PRIP runs on the CPU: device cuda:99 failed: ")
    assert warning in info["comments"]
    assert 'PRIP: refined' in info["infotexts"][0]


def test_a_device_that_fails_while_refining_falls_back_to_the_cpu(webui: scripts.ScriptRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shared.cmd_opts, "prip_device", "auto")
    real = prip_refiner.Refiner.refine

    def out_of_memory(self: prip_refiner.Refiner, *args: Any, **kwargs: Any) -> Any:
        if self.device != "cpu":
            raise prip_refiner.PripError("cuda:0: out of memory refining a batch of 2; lower the batch size")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(prip_refiner.Refiner, "refine", out_of_memory)
    info = txt2img(webui, [True, "", 8, 0.7, -1, False], enable_hr=False)
    assert all(refined.startswith(PROMPT + ",") for refined in info["all_prompts"])
    assert gradio.warnings == ["PRIP runs on the CPU: device auto failed: cuda:0: out of memory refining a batch of 2; lower the batch size"]


def test_without_the_package_prompts_stay_and_the_infotext_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "prip_refiner", None)
    monkeypatch.delitem(sys.modules, "prip_binding", raising=False)
    runner = load_webui(monkeypatch)
    info = txt2img(runner, [True, "", 8, 0.7, -1, True])
    assert info["all_prompts"] == [PROMPT, PROMPT]
    status = parsed(info, 0)["PRIP"]
    assert status.startswith("not refined: the prip-refiner package is not installed")
    assert "install.py to pip install it" in status and "PRIP_WHEEL" in status


def test_a_package_too_old_for_the_extension_keeps_prompts_and_says_what_to_install(webui: scripts.ScriptRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prip_refiner, "ABI_MINOR", 1)
    info = txt2img(webui, [True, "", 8, 0.7, -1, True])
    assert info["all_prompts"] == [PROMPT, PROMPT]
    assert parsed(info, 0)["PRIP"].endswith("has 1.1: pip install --upgrade 'prip-refiner>=0.1,<0.2'")


def test_a_wheel_for_another_platform_keeps_prompts_and_says_which_to_install(
    webui: scripts.ScriptRunner, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    foreign = tmp_path / prip_refiner.LIBRARY_NAME
    built_for = foreign_library(foreign)
    monkeypatch.setattr(prip_refiner, "bundled_library", lambda: foreign)
    monkeypatch.delenv("PRIP_LIB", raising=False)
    info = txt2img(webui, [True, "", 8, 0.7, -1, True])
    assert info["all_prompts"] == [PROMPT, PROMPT]
    here = prip_refiner.this_platform()
    assert parsed(info, 0)["PRIP"].endswith(f"is built for {built_for} and this Python runs on {here}: install the prip-refiner wheel built for {here}")


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
    seen = spy_refine(monkeypatch, prip_refiner.Refiner)
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
    seen = spy_refine(monkeypatch, prip_refiner.Refiner)
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
    spy_refine(monkeypatch, prip_refiner.Refiner, outcome="budget_full")
    info = txt2img(webui, [True, "", 8, 0.7, -1, True])
    assert info["all_prompts"] == [PROMPT, PROMPT]
    assert [parsed(info, i)["PRIP"] for i in range(2)] == ["not refined: budget_full"] * 2
    assert api_info(info)["extra_generation_params"]["PRIP"] == "not refined: budget_full"


def test_each_image_says_its_own_outcome(webui: scripts.ScriptRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    stopped = 3919858964 + 3
    spy_refine(monkeypatch, prip_refiner.Refiner, outcome="model_stopped", where=lambda r: r["seed"] == stopped)
    info = txt2img(webui, [True, "", 8, 0.7, -1, True], n_iter=3, enable_hr=False)
    assert info["all_seeds"][3] == stopped and info["all_prompts"][3] == PROMPT
    said = [parsed(info, i)["PRIP"] for i in range(6)]
    assert said == ["refined"] * 3 + ["not refined: model_stopped"] + ["refined"] * 2


def test_prompts_are_read_as_a1111_reads_them(webui: scripts.ScriptRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    # A1111/Forge strip `#` comments to the end of the line: details must not land there.
    seen = spy_refine(monkeypatch, prip_refiner.Refiner)
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


def test_args_sent_as_a_string_say_to_send_a_list(webui: scripts.ScriptRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    # The web UI's API copies alwayson_scripts args item by item, so a string arrives as
    # its characters (seen on Forge f2.0.1v1.10.1: "args": "yes" gave the switch 'y').
    seen = spy_refine(monkeypatch, prip_refiner.Refiner)
    info = txt2img(webui, None, entry={"args": "yes"})
    assert seen == []
    assert info["all_prompts"] == [PROMPT, PROMPT]
    reason = "enabled must be true or false, not 'y'; were the args sent as a string? the web UI splits one into its characters: send a list, e.g. [true]"
    assert [parsed(info, i)["PRIP"] for i in range(2)] == [f"not refined: {reason}"] * 2
    assert api_info(info)["extra_generation_params"]["PRIP"] == f"not refined: {reason}"
    # A list with a wrong switch says only what is wrong.
    assert parsed(txt2img(webui, ["yes"]), 0)["PRIP"] == "not refined: enabled must be true or false, not 'yes'"


def test_the_api_info_carries_the_prip_seed_when_every_image_has_the_same(webui: scripts.ScriptRunner) -> None:
    # Forge f2.0.1v1.10.1 answered "PRIP seed": null in info.extra_generation_params for
    # a one-image job (a callable there is written as null).
    one = txt2img(webui, [True, "", 8, 0.7, -1, True], batch_size=1, enable_hr=False)
    [seed] = one["all_seeds"]
    assert api_info(one)["extra_generation_params"]["PRIP seed"] == seed
    assert parsed(one, 0)["PRIP seed"] == str(seed)
    fixed = txt2img(webui, [True, "", 8, 0.7, 42, True])
    assert api_info(fixed)["extra_generation_params"]["PRIP seed"] == 42
    # Images with their own seeds: each infotext says its own.
    several = txt2img(webui, [True, "", 8, 0.7, -1, True])
    assert [parsed(several, i)["PRIP seed"] for i in range(2)] == [str(s) for s in several["all_seeds"]]
