"""modules.extra_networks: `<lora:name:0.8>` and the like are taken out of the prompts
the model is conditioned on, batch by batch."""

from __future__ import annotations

import re
from typing import Any

re_extra_net = re.compile(r"<(\w+):([^>]+)>")


def parse_prompts(prompts: list[str]) -> tuple[list[str], dict[str, list[Any]]]:
    res: list[str] = []
    extra_data: dict[str, list[Any]] = {}
    for prompt in prompts:
        for m in re_extra_net.finditer(prompt):
            extra_data.setdefault(m.group(1), []).append(m.group(2).split(":"))
        res.append(re_extra_net.sub("", prompt))
    return res, extra_data
