"""modules.infotext_utils: how infotext values are quoted when written and read back
when an image's parameters are pasted or sent to the API as `infotext`."""

from __future__ import annotations

import json
import re
from typing import Any

re_param = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')


def quote(text: Any) -> Any:
    if "," not in str(text) and "\n" not in str(text) and ":" not in str(text):
        return text
    return json.dumps(text, ensure_ascii=False)


def unquote(text: str) -> Any:
    if len(text) == 0 or text[0] != '"' or text[-1] != '"':
        return text
    try:
        return json.loads(text)
    except Exception:
        return text


def parse_generation_parameters(x: str) -> dict[str, Any]:
    """The prompt, negative prompt and parameters of an infotext (without the web UI's
    defaults for missing keys, styles and settings overrides)."""
    res: dict[str, Any] = {}
    prompt, negative_prompt, done_with_prompt = "", "", False
    *lines, lastline = x.strip().split("\n")
    if len(re_param.findall(lastline)) < 3:
        lines.append(lastline)
        lastline = ""
    for line in lines:
        line = line.strip()
        if line.startswith("Negative prompt:"):
            done_with_prompt = True
            line = line[16:].strip()
        if done_with_prompt:
            negative_prompt += ("" if negative_prompt == "" else "\n") + line
        else:
            prompt += ("" if prompt == "" else "\n") + line
    res["Prompt"], res["Negative prompt"] = prompt, negative_prompt
    for k, v in re_param.findall(lastline):
        if v[0] == '"' and v[-1] == '"':
            v = unquote(v)
        res[k] = v
    return res
