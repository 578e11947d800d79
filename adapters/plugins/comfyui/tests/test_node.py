"""The PRIP node package inside a fake ComfyUI, refining with the real libprip_abi."""

from __future__ import annotations

import copy
import os
import types
from pathlib import Path

import pytest
from conftest import execute, node_info
from plugin_testing import direct, fixture, spy_refine


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
    refiners = comfy.nodes.REFINERS
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
    good = os.environ[variable]
    monkeypatch.setenv(variable, value)
    (text, seed), ui = execute(node, inputs())
    assert (text, seed) == ("a little cat running in the woods", 7)
    assert ui["prip_failed"] == [True]
    message = ui["prip"][0]
    assert message.startswith("PRIP: not refined, the prompt is used as written: ")
    assert reason in message and "\n" not in message
    # The fallback is not cached: once fixed, the node runs and refines again.
    assert node.IS_CHANGED(**inputs()) != node.IS_CHANGED(**inputs())
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
    seen = spy_refine(monkeypatch, comfy.libprip.Refiner)
    text = "a cat # on a mat"
    (refined, _), ui = execute(node, inputs(text=text))
    assert [r["dialect"] for r in seen[0]] == ["comfyui"]
    assert "prip_failed" not in ui
    assert refined == direct(text, 7, dialect="comfyui", max_new_tokens=8, temperature=0.7)


@pytest.mark.parametrize("outcome", ["budget_full", "model_stopped", "filtered"])
def test_the_node_says_why_nothing_was_added(comfy: types.SimpleNamespace, monkeypatch: pytest.MonkeyPatch, outcome: str) -> None:
    node = comfy.package.NODE_CLASS_MAPPINGS["PripPromptRefiner"]
    spy_refine(monkeypatch, comfy.libprip.Refiner, outcome=outcome)
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
