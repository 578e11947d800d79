"""modules.scripts: the Script base class, and the runner that builds always-on
scripts' UIs, maps API alwayson_scripts args onto them and calls their process(),
before_process_batch() and process_batch() hooks, as the web UI's ScriptRunner and
api.init_script_args do."""

from __future__ import annotations

import importlib.util
import os
import re
from typing import Any

import gradio

AlwaysVisible = object()


class Script:
    args_from: int | None = None
    args_to: int | None = None
    is_img2img = False
    infotext_fields: list[tuple[Any, Any]] | None = None

    def title(self) -> str:
        raise NotImplementedError

    def show(self, is_img2img: bool) -> Any:
        return True

    def ui(self, is_img2img: bool) -> list[Any]:
        return []

    def process(self, p: Any, *args: Any) -> None:
        pass

    def before_process_batch(self, p: Any, *args: Any, **kwargs: Any) -> None:
        pass

    def process_batch(self, p: Any, *args: Any, **kwargs: Any) -> None:
        pass

    def elem_id(self, item_id: str) -> str:
        tabname = ("img2img" if self.is_img2img else "txt2img") + "_" if self.show(self.is_img2img) is AlwaysVisible else ""
        title = re.sub(r"[^a-z_0-9]", "", re.sub(r"\s", "_", self.title().lower()))
        return f"script_{tabname}{title}_{item_id}"


def load_scripts(path: str) -> list[type[Script]]:
    """script_loading.load_module + register_scripts_from_module."""
    spec = importlib.util.spec_from_file_location(os.path.basename(path), path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return [c for c in module.__dict__.values() if isinstance(c, type) and issubclass(c, Script) and c is not Script]


class ScriptRunner:
    def __init__(self, classes: list[type[Script]], is_img2img: bool = False) -> None:
        self.alwayson_scripts: list[Script] = []
        # inputs[0] is the index of the selected (non always-on) script.
        self.inputs: list[Any] = [None]
        for cls in classes:
            script = cls()
            script.is_img2img = is_img2img
            if script.show(is_img2img) is AlwaysVisible:
                script.args_from = len(self.inputs)
                self.inputs.extend(script.ui(is_img2img))
                script.args_to = len(self.inputs)
                self.alwayson_scripts.append(script)

    def default_args(self) -> list[Any]:
        return [0] + [c.value for c in self.inputs[1:]]

    def api_args(self, alwayson_scripts: dict[str, Any]) -> list[Any]:
        """api.init_script_args: defaults, then each named script's args in order."""
        args = self.default_args()
        for name, entry in alwayson_scripts.items():
            script = next((s for s in self.alwayson_scripts if s.title().lower() == name.lower()), None)
            if script is None:
                raise LookupError(f"always on script {name} not found")
            assert script.args_from is not None and script.args_to is not None
            given = entry.get("args", [])
            for i in range(min(script.args_to - script.args_from, len(given))):
                args[script.args_from + i] = given[i]
        return args

    # The web UI reports an exception from a script's hook in its log and goes on; here
    # it fails the test, as the extension must not raise.
    def process(self, p: Any) -> None:
        for script in self.alwayson_scripts:
            script.process(p, *p.script_args[script.args_from : script.args_to])

    def before_process_batch(self, p: Any, **kwargs: Any) -> None:
        for script in self.alwayson_scripts:
            script.before_process_batch(p, *p.script_args[script.args_from : script.args_to], **kwargs)

    def process_batch(self, p: Any, **kwargs: Any) -> None:
        for script in self.alwayson_scripts:
            script.process_batch(p, *p.script_args[script.args_from : script.args_to], **kwargs)


def components() -> list[Any]:
    return list(gradio.created)
