"""The PRIP node package inside a fake ComfyUI, refining with the real libprip_abi
through the prip-refiner package."""

from __future__ import annotations

import contextlib
import copy
import os
import platform
import sys
import types
from pathlib import Path

import prip_refiner
import pytest
from conftest import execute, load_comfy, node_info
from plugin_testing import INSTALLED, direct, fixture, spy_refine


def inputs(**changes: object) -> dict[str, object]:
    base: dict[str, object] = {
        "text": "a little cat running in the woods",
        "seed": 7,
        "enabled": True,
        "system": "",
        "max_new_tokens": 8,
        "creativity": 0.7,
    }
    base.update(changes)
    return base


def test_the_node_registers_like_a_comfyui_node_and_feeds_text_inputs(comfy: types.SimpleNamespace) -> None:
    mappings = comfy.package.NODE_CLASS_MAPPINGS
    assert list(mappings) == ["PripPromptRefiner"]
    assert comfy.package.NODE_DISPLAY_NAME_MAPPINGS["PripPromptRefiner"] == "PRIP Prompt Refiner"
    assert (Path(comfy.package.__file__).parent / comfy.package.WEB_DIRECTORY / "prip.js").is_file()
    info = node_info(mappings["PripPromptRefiner"], "PripPromptRefiner", "PRIP Prompt Refiner")
    recorded = fixture("comfyui/object_info.json")
    assert set(info) == set(recorded["CLIPTextEncode"])
    assert info["input_order"]["required"] == ["text", "seed", "enabled", "system", "max_new_tokens", "creativity"]
    assert info["output"] == ["STRING", "INT"]
    # The refined STRING fits CLIPTextEncode's text and the seed fits KSampler's seed.
    assert recorded["CLIPTextEncode"]["input"]["required"]["text"][0] == info["output"][0]
    assert recorded["KSampler"]["input"]["required"]["seed"][0] == info["output"][1]
    assert info["input"]["required"]["seed"][1]["max"] == recorded["KSampler"]["input"]["required"]["seed"][1]["max"]


def test_the_node_refines_reproducibly(comfy: types.SimpleNamespace) -> None:
    node = comfy.package.NODE_CLASS_MAPPINGS["PripPromptRefiner"]
    (refined, seed), ui = execute(node, inputs())
    assert seed == 7
    assert refined.startswith("a little cat running in the woods")
    assert refined == direct("a little cat running in the woods", 7, max_new_tokens=8, temperature=0.7)
    assert ui["prip"][0].startswith("PRIP: refined (seed 7")
    (again, _), _ = execute(node, inputs())
    assert again == refined
    assert node.IS_CHANGED(**inputs()) == node.IS_CHANGED(**inputs())
    # Disabled: the text passes through untouched.
    (text, seed), _ = execute(node, inputs(enabled=False, seed=3))
    assert (text, seed) == ("a little cat running in the woods", 3)


def test_the_model_loads_once_and_can_be_unloaded(comfy: types.SimpleNamespace) -> None:
    node = comfy.package.NODE_CLASS_MAPPINGS["PripPromptRefiner"]
    refiners = comfy.binding.REFINERS
    execute(node, inputs())
    first = refiners._refiner
    execute(node, inputs(text="a dog", seed=9))
    assert refiners._refiner is first
    answer = comfy.server.call("POST", "/prip/unload")
    assert answer.data == {"unloaded": True}
    assert not refiners.loaded()
    assert comfy.server.call("POST", "/prip/unload").data == {"unloaded": False}
    (refined, _), _ = execute(node, inputs())
    assert refined.startswith("a little cat")
    assert refiners.loaded()


@pytest.mark.parametrize(
    ("variable", "value", "reason"),
    [
        ("PRIP_LIB", "/no/such/libprip_abi.so", "PRIP_LIB is /no/such/libprip_abi.so, which is not a file"),
        ("PRIP_MODEL", "/no/such/model", "/no/such/model"),
    ],
)
def test_a_missing_library_or_model_keeps_the_prompt_and_says_why(
    comfy: types.SimpleNamespace, monkeypatch: pytest.MonkeyPatch, variable: str, value: str, reason: str
) -> None:
    node = comfy.package.NODE_CLASS_MAPPINGS["PripPromptRefiner"]
    # PRIP_LIB is unset when the installed package's own library is under test.
    good = os.environ.get(variable)
    monkeypatch.setenv(variable, value)
    (text, seed), ui = execute(node, inputs())
    assert (text, seed) == ("a little cat running in the woods", 7)
    assert ui["prip_failed"] == [True]
    message = ui["prip"][0]
    assert message.startswith("PRIP: not refined, the prompt is used as written: ")
    assert reason in message and "\n" not in message
    # The fallback is not cached: once fixed, the node runs and refines again.
    assert node.IS_CHANGED(**inputs()) != node.IS_CHANGED(**inputs())
    if good is None:
        monkeypatch.delenv(variable)
    else:
        monkeypatch.setenv(variable, good)
    (text, _), ui = execute(node, inputs())
    assert text != "a little cat running in the woods" and "prip_failed" not in ui
    assert node.IS_CHANGED(**inputs()) == node.IS_CHANGED(**inputs())


def test_auto_mode_is_off_by_default(comfy: types.SimpleNamespace) -> None:
    body = fixture("comfyui/prompt_request_txt2img_api.json")
    assert len(comfy.server.on_prompt_handlers) == 1
    assert comfy.server.trigger_on_prompt(copy.deepcopy(body)) == body
    assert comfy.server.call("GET", "/prip/auto").data["enabled"] is False


def test_auto_mode_refines_the_positive_prompts_of_queued_workflows(comfy: types.SimpleNamespace) -> None:
    answer = comfy.server.call("POST", "/prip/auto", {"enabled": True, "seed": 7, "max_new_tokens": 8})
    assert answer.status == 200 and answer.data["enabled"] is True
    body = fixture("comfyui/prompt_request_txt2img_api.json")
    queued = comfy.server.trigger_on_prompt(copy.deepcopy(body))
    positive = queued["prompt"]["6"]["inputs"]["text"]
    assert positive == direct("a (red:1.2) fox, embedding:foo", 7, max_new_tokens=8)
    assert positive != body["prompt"]["6"]["inputs"]["text"]
    assert queued["prompt"]["7"]["inputs"]["text"] == "blurry"
    queued["prompt"]["6"]["inputs"]["text"] = body["prompt"]["6"]["inputs"]["text"]
    # Marked refined, so `prip serve` or another handler does not refine it again.
    assert "extra_data" not in body and queued.pop("extra_data") == {"prip": {"refined": True}}
    assert queued == body

    # A workflow that already uses the node is left alone.
    with_node = copy.deepcopy(body)
    with_node["prompt"]["20"] = {"class_type": "PripPromptRefiner", "inputs": inputs()}
    with_node["prompt"]["6"]["inputs"]["text"] = ["20", 0]
    assert comfy.server.trigger_on_prompt(copy.deepcopy(with_node)) == with_node


def test_auto_mode_never_fails_the_queue(comfy: types.SimpleNamespace, monkeypatch: pytest.MonkeyPatch) -> None:
    comfy.server.call("POST", "/prip/auto", {"enabled": True})
    monkeypatch.setenv("PRIP_MODEL", "/no/such/model")
    body = fixture("comfyui/prompt_request_txt2img_api.json")
    assert comfy.server.trigger_on_prompt(copy.deepcopy(body)) == body
    event, data = comfy.server.sent[-1]
    assert event == "prip.status"
    assert data["message"].startswith("PRIP auto mode: prompts used as written: ")
    # Bodies that are not workflows pass through.
    assert comfy.server.trigger_on_prompt({"prompt": "not a graph"}) == {"prompt": "not a graph"}


def test_auto_mode_settings_are_checked(comfy: types.SimpleNamespace) -> None:
    answer = comfy.server.call("POST", "/prip/auto", {"enabeld": True})
    assert answer.status == 400
    assert "unknown auto mode setting 'enabeld'" in answer.data["error"]
    assert comfy.server.call("POST", "/prip/auto", {"enabled": "yes"}).status == 400
    assert comfy.server.call("POST", "/prip/auto", {"seed": True}).status == 400
    assert comfy.server.call("POST", "/prip/auto", {"seed": -1}).status == 400
    assert comfy.server.call("POST", "/prip/auto", {"max_new_tokens": 0}).status == 400
    assert comfy.server.call("POST", "/prip/auto", {"enabled": True, "max_new_tokens": -5}).status == 400
    # The node's upper bounds hold too.
    too_long = comfy.server.call("POST", "/prip/auto", {"max_new_tokens": 257})
    assert too_long.status == 400
    assert "'max_new_tokens' must be in [1, 256], not 257" in too_long.data["error"]
    assert comfy.server.call("POST", "/prip/auto", {"creativity": 2.5}).status == 400
    assert comfy.server.call("POST", "/prip/auto", {"creativity": 2.0, "max_new_tokens": 256}).status == 200
    assert comfy.server.call("POST", "/prip/auto", "[1, 2]").status == 400
    assert comfy.server.call("POST", "/prip/auto", "{not json").status == 400
    assert comfy.server.call("GET", "/prip/auto").data["enabled"] is False


def test_the_node_reads_prompts_as_comfyui_does(comfy: types.SimpleNamespace, monkeypatch: pytest.MonkeyPatch) -> None:
    # ComfyUI has no comments: `#` is text the model may write around.
    node = comfy.package.NODE_CLASS_MAPPINGS["PripPromptRefiner"]
    seen = spy_refine(monkeypatch, prip_refiner.Refiner)
    text = "a cat # on a mat"
    (refined, _), ui = execute(node, inputs(text=text))
    assert [r["dialect"] for r in seen[0]] == ["comfyui"]
    assert "prip_failed" not in ui
    assert refined == direct(text, 7, dialect="comfyui", max_new_tokens=8, temperature=0.7)


@pytest.mark.parametrize("outcome", ["budget_full", "model_stopped", "filtered"])
def test_the_node_says_why_nothing_was_added(comfy: types.SimpleNamespace, monkeypatch: pytest.MonkeyPatch, outcome: str) -> None:
    node = comfy.package.NODE_CLASS_MAPPINGS["PripPromptRefiner"]
    spy_refine(monkeypatch, prip_refiner.Refiner, outcome=outcome)
    (text, seed), ui = execute(node, inputs())
    assert (text, seed) == ("a little cat running in the woods", 7)
    assert ui["prip"][0].startswith(f"PRIP: not refined: {outcome} (seed 7")
    # Not a failure: the same inputs give the same answer, so ComfyUI may cache it.
    assert "prip_failed" not in ui
    assert node.IS_CHANGED(**inputs()) == node.IS_CHANGED(**inputs())


def test_auto_mode_leaves_a_workflow_the_proxy_refined(comfy: types.SimpleNamespace) -> None:
    # `prip serve` in front of ComfyUI marks what it refined; the handler sees it too.
    comfy.server.call("POST", "/prip/auto", {"enabled": True, "seed": 7, "max_new_tokens": 8})
    body = fixture("comfyui/prompt_request_txt2img_api.json")
    body.setdefault("extra_data", {})["prip"] = {"refined": True}
    assert comfy.server.trigger_on_prompt(copy.deepcopy(body)) == body


def test_the_device_is_passed_through_auto_by_default(comfy: types.SimpleNamespace, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PRIP_DEVICE")
    node = comfy.package.NODE_CLASS_MAPPINGS["PripPromptRefiner"]
    (refined, _), ui = execute(node, inputs())
    assert "prip_failed" not in ui
    refiner = comfy.binding.REFINERS._refiner
    assert refiner.device == "auto"
    # The library under test: the installed package's own in CI's wheel test.
    assert refiner.library == (prip_refiner.bundled_library() if INSTALLED else Path(os.environ["PRIP_LIB"]))
    # auto on a machine without a GPU is the CPU, with nothing to tell.
    assert comfy.server.sent == []


def test_a_device_that_cannot_open_falls_back_to_the_cpu_with_a_toast(comfy: types.SimpleNamespace, monkeypatch: pytest.MonkeyPatch) -> None:
    # No such GPU here (and no CUDA in this build): the open fails, the CPU runs it.
    monkeypatch.setenv("PRIP_DEVICE", "cuda:99")
    node = comfy.package.NODE_CLASS_MAPPINGS["PripPromptRefiner"]
    (refined, _), ui = execute(node, inputs())
    assert "prip_failed" not in ui
    assert refined == direct("a little cat running in the woods", 7, max_new_tokens=8, temperature=0.7)
    [(event, data)] = comfy.server.sent
    assert event == "prip.status"
    assert data["message"].startswith("PRIP runs on the CPU: device cuda:99 failed: ")
    assert "\n" not in data["message"]
    assert comfy.binding.REFINERS._refiner.device == "cpu"
    # Told once: the CPU refiner is kept for these settings ...
    execute(node, inputs(seed=8))
    assert len(comfy.server.sent) == 1
    # ... until it is unloaded; then the device is tried again.
    comfy.server.call("POST", "/prip/unload")
    execute(node, inputs())
    assert len(comfy.server.sent) == 2


def test_a_device_that_fails_while_refining_falls_back_to_the_cpu(comfy: types.SimpleNamespace, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PRIP_DEVICE", "auto")
    real = prip_refiner.Refiner.refine

    def out_of_memory(self: prip_refiner.Refiner, *args: object, **kwargs: object) -> object:
        if self.device != "cpu":
            raise prip_refiner.PripError("cuda:0: out of memory refining a batch of 1; lower the batch size")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(prip_refiner.Refiner, "refine", out_of_memory)
    node = comfy.package.NODE_CLASS_MAPPINGS["PripPromptRefiner"]
    (refined, _), ui = execute(node, inputs())
    assert refined == direct("a little cat running in the woods", 7, max_new_tokens=8, temperature=0.7)
    assert "prip_failed" not in ui
    assert comfy.server.sent == [("prip.status", {"message": "PRIP runs on the CPU: device auto failed: cuda:0: out of memory refining a batch of 1; lower the batch size"})]
    # Auto mode goes through the same refiner, now on the CPU.
    comfy.server.call("POST", "/prip/auto", {"enabled": True, "seed": 7, "max_new_tokens": 8})
    queued = comfy.server.trigger_on_prompt(fixture("comfyui/prompt_request_txt2img_api.json"))
    assert queued["prompt"]["6"]["inputs"]["text"] == direct("a (red:1.2) fox, embedding:foo", 7, max_new_tokens=8)
    assert len(comfy.server.sent) == 1


def test_what_fails_on_the_cpu_too_is_reported_not_blamed_on_the_device(comfy: types.SimpleNamespace, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PRIP_DEVICE", "cuda:99")
    monkeypatch.setenv("PRIP_MODEL", "/no/such/model")
    node = comfy.package.NODE_CLASS_MAPPINGS["PripPromptRefiner"]
    (text, _), ui = execute(node, inputs())
    assert text == "a little cat running in the woods"
    assert "/no/such/model" in ui["prip"][0] and "cuda" not in ui["prip"][0]
    assert comfy.server.sent == []


def test_without_the_package_the_node_loads_keeps_prompts_and_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    # None in sys.modules makes `import prip_refiner` fail as if it were not installed.
    monkeypatch.setitem(sys.modules, "prip_refiner", None)
    with contextlib.contextmanager(load_comfy)(monkeypatch) as comfy:
        node = comfy.package.NODE_CLASS_MAPPINGS["PripPromptRefiner"]
        (text, seed), ui = execute(node, inputs())
        assert (text, seed) == ("a little cat running in the woods", 7)
        message = ui["prip"][0]
        assert message.startswith("PRIP: not refined, the prompt is used as written: the prip-refiner package is not installed")
        assert f"pip install -r {comfy.binding.REQUIREMENTS_TXT}" in message
        comfy.server.call("POST", "/prip/auto", {"enabled": True})
        body = fixture("comfyui/prompt_request_txt2img_api.json")
        assert comfy.server.trigger_on_prompt(copy.deepcopy(body)) == body
        assert "the prip-refiner package is not installed" in comfy.server.sent[-1][1]["message"]
        assert comfy.server.call("POST", "/prip/unload").data == {"unloaded": False}


def test_a_package_too_old_for_the_node_keeps_prompts_and_says_what_to_install(comfy: types.SimpleNamespace, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prip_refiner, "ABI_MINOR", 1)
    node = comfy.package.NODE_CLASS_MAPPINGS["PripPromptRefiner"]
    (text, _), ui = execute(node, inputs())
    assert text == "a little cat running in the woods" and ui["prip_failed"] == [True]
    assert ui["prip"][0].endswith(
        f"this plugin needs prip-refiner with PRIP ABI 1.2 or a later 1.x, but prip-refiner {prip_refiner.__version__} "
        "has 1.1: pip install --upgrade 'prip-refiner>=0.1,<0.2'"
    )


def test_a_library_of_another_abi_version_keeps_prompts_and_names_both(comfy: types.SimpleNamespace, monkeypatch: pytest.MonkeyPatch) -> None:
    # The binding asks for more than the library has, as with an old PRIP_LIB build.
    monkeypatch.setattr(prip_refiner, "ABI_MINOR", 99)
    node = comfy.package.NODE_CLASS_MAPPINGS["PripPromptRefiner"]
    (text, _), ui = execute(node, inputs())
    assert text == "a little cat running in the woods" and ui["prip_failed"] == [True]
    message = ui["prip"][0]
    assert "implements PRIP ABI 1.2; prip-refiner" in message and "needs 1.99 or a later 1.x" in message
    assert ("reinstall prip-refiner" if INSTALLED else "unset PRIP_LIB") in message


def foreign_library(path: Path) -> str:
    """Writes the start of a shared library built for another CPU; returns its platform."""
    machine, code = ("x86_64", 0x3E) if platform.machine().lower() in ("aarch64", "arm64") else ("aarch64", 0xB7)
    path.write_bytes(b"\x7fELF\x02\x01\x01" + bytes(9) + (3).to_bytes(2, "little") + code.to_bytes(2, "little") + bytes(44))
    return f"linux-{machine}"


def test_a_wheel_for_another_platform_keeps_prompts_and_says_which_to_install(
    comfy: types.SimpleNamespace, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    foreign = tmp_path / prip_refiner.LIBRARY_NAME
    built_for = foreign_library(foreign)
    # As if the package held the library of another platform's wheel.
    monkeypatch.setattr(prip_refiner, "bundled_library", lambda: foreign)
    monkeypatch.delenv("PRIP_LIB", raising=False)
    node = comfy.package.NODE_CLASS_MAPPINGS["PripPromptRefiner"]
    (text, _), ui = execute(node, inputs())
    assert text == "a little cat running in the woods" and ui["prip_failed"] == [True]
    here = prip_refiner.this_platform()
    assert ui["prip"][0].endswith(
        f"{foreign} is built for {built_for} and this Python runs on {here}: install the prip-refiner wheel built for {here}"
    )


def test_the_requirement_is_the_same_everywhere() -> None:
    import tomllib

    package = Path(__file__).resolve().parents[1]
    requirement = (package / "binding.py").read_text().split('REQUIREMENT = "')[1].split('"')[0]
    lines = [line for line in (package / "requirements.txt").read_text().splitlines() if line and not line.startswith("#")]
    assert lines == [requirement]
    assert tomllib.loads((package / "pyproject.toml").read_text())["project"]["dependencies"] == [requirement]
    a1111 = package.parent / "a1111" / "prip_binding.py"
    assert f'REQUIREMENT = "{requirement}"' in a1111.read_text()
