"""The slice of gradio 3.41 (A1111/Forge's version) that extension UIs use: layout
blocks as context managers and input components with their real keyword arguments, so
a misspelt argument fails here as it would in the web UI."""

from __future__ import annotations

from typing import Any

# Every component created, in order, with the layout blocks open around it.
created: list[Component] = []
_open: list[Block] = []
# Every gr.Warning shown (a toast in the web UI).
warnings: list[str] = []


def Warning(message: str = "") -> None:  # noqa: N802 - gradio's name
    warnings.append(message)


class Block:
    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs

    def __enter__(self) -> Block:
        _open.append(self)
        return self

    def __exit__(self, *_: object) -> None:
        _open.pop()


class Accordion(Block):
    def __init__(self, label: str | None = None, open: bool = True, *, elem_id: str | None = None, visible: bool = True) -> None:
        super().__init__(label=label, open=open, elem_id=elem_id, visible=visible)
        self.label = label


class Row(Block):
    def __init__(self, *, variant: str = "default", elem_id: str | None = None, visible: bool = True) -> None:
        super().__init__(variant=variant, elem_id=elem_id, visible=visible)


class Component:
    def __init__(self, value: Any, label: str | None, elem_id: str | None, **kwargs: Any) -> None:
        self.value, self.label, self.elem_id, self.kwargs = value, label, elem_id, kwargs
        self.parents = list(_open)
        created.append(self)


class Checkbox(Component):
    def __init__(self, value: bool = False, *, label: str | None = None, info: str | None = None, elem_id: str | None = None, visible: bool = True) -> None:
        super().__init__(value, label, elem_id, info=info, visible=visible)


class Textbox(Component):
    def __init__(self, value: str = "", *, lines: int = 1, max_lines: int = 20, placeholder: str | None = None, label: str | None = None, info: str | None = None, elem_id: str | None = None, visible: bool = True) -> None:
        super().__init__(value, label, elem_id, lines=lines, max_lines=max_lines, placeholder=placeholder, info=info, visible=visible)


class Number(Component):
    def __init__(self, value: float | None = None, *, label: str | None = None, info: str | None = None, precision: int | None = None, minimum: float | None = None, maximum: float | None = None, elem_id: str | None = None, visible: bool = True) -> None:
        super().__init__(value, label, elem_id, info=info, precision=precision, minimum=minimum, maximum=maximum, visible=visible)


class Slider(Component):
    def __init__(self, minimum: float = 0, maximum: float = 100, value: float | None = None, *, step: float | None = None, label: str | None = None, info: str | None = None, elem_id: str | None = None, visible: bool = True) -> None:
        super().__init__(minimum if value is None else value, label, elem_id, minimum=minimum, maximum=maximum, step=step, info=info, visible=visible)
