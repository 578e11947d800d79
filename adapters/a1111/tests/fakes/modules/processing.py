"""modules.processing: the processing object as extensions see it in process(), and the
parts of process_images() around it: prompts and seeds set up before scripts run, the
hires prompts of txt2img, per-batch slicing, and create_infotext's formatting (list
values indexed per batch, callables called with its locals, values quoted)."""

from __future__ import annotations

import json
from typing import Any


def quote(text: Any) -> Any:
    """infotext_utils.quote."""
    if "," not in str(text) and "\n" not in str(text) and ":" not in str(text):
        return text
    return json.dumps(text, ensure_ascii=False)


class StableDiffusionProcessing:
    def __init__(self, prompt: str = "", negative_prompt: str = "", seed: int = -1, batch_size: int = 1, n_iter: int = 1, steps: int = 20, cfg_scale: float = 7.0, width: int = 512, height: int = 512, sampler_name: str | None = None, **_: Any) -> None:
        self.prompt, self.negative_prompt, self.seed = prompt, negative_prompt, seed
        self.batch_size, self.n_iter, self.steps, self.cfg_scale = batch_size, n_iter, steps, cfg_scale
        self.width, self.height, self.sampler_name = width, height, sampler_name or "Euler"
        self.extra_generation_params: dict[str, Any] = {}
        self.comments: dict[str, int] = {}
        self.scripts: Any = None
        self.script_args: list[Any] = []

    def comment(self, text: str) -> None:
        self.comments[text] = 1

    def setup_prompts(self) -> None:
        n = self.batch_size * self.n_iter
        self.all_prompts = [self.prompt] * n
        self.all_negative_prompts = [self.negative_prompt] * n
        self.main_prompt = self.all_prompts[0]
        self.main_negative_prompt = self.all_negative_prompts[0]


class StableDiffusionProcessingTxt2Img(StableDiffusionProcessing):
    def __init__(self, enable_hr: bool = False, hr_prompt: str = "", hr_negative_prompt: str = "", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.enable_hr, self.hr_prompt, self.hr_negative_prompt = enable_hr, hr_prompt, hr_negative_prompt

    def setup_prompts(self) -> None:
        super().setup_prompts()
        if not self.enable_hr:
            return
        self.hr_prompt = self.hr_prompt or self.prompt
        self.hr_negative_prompt = self.hr_negative_prompt or self.negative_prompt
        self.all_hr_prompts = [self.hr_prompt] * len(self.all_prompts)
        self.all_hr_negative_prompts = [self.hr_negative_prompt] * len(self.all_prompts)

        def get_hr_prompt(p: Any, index: int, prompt_text: str, **kwargs: Any) -> str | None:
            hr_prompt: str = p.all_hr_prompts[index]
            return hr_prompt if hr_prompt != prompt_text else None

        self.extra_generation_params["Hires prompt"] = get_hr_prompt


def create_infotext(p: Any, all_prompts: list[str], all_seeds: list[int], index: int, all_negative_prompts: list[str]) -> str:
    prompt_text = all_prompts[index]
    negative_prompt = all_negative_prompts[index]
    generation_params: dict[str, Any] = {
        "Steps": p.steps,
        "Sampler": p.sampler_name,
        "CFG scale": p.cfg_scale,
        "Seed": all_seeds[index],
        "Size": f"{p.width}x{p.height}",
        **p.extra_generation_params,
        "Version": "f2.0.1v1.10.1-1.10.1",
    }
    for key, value in generation_params.items():
        if isinstance(value, list):
            generation_params[key] = value[index]
        elif callable(value):
            generation_params[key] = value(**locals())
    text = ", ".join(k if k == v else f"{k}: {quote(v)}" for k, v in generation_params.items() if v is not None)
    negative_text = f"\nNegative prompt: {negative_prompt}" if negative_prompt else ""
    return f"{prompt_text}{negative_text}\n{text}".strip()


def process_images(p: StableDiffusionProcessing) -> dict[str, Any]:
    """The info the API returns: prompts and seeds after the scripts, and infotexts."""
    p.setup_prompts()
    seed = p.seed if p.seed != -1 else 3919858964
    p.all_seeds = [int(seed) + x for x in range(len(p.all_prompts))]
    if p.scripts is not None:
        p.scripts.process(p)
    infotexts = []
    for n in range(p.n_iter):
        batch = slice(n * p.batch_size, (n + 1) * p.batch_size)
        prompts, seeds, negatives = p.all_prompts[batch], p.all_seeds[batch], p.all_negative_prompts[batch]
        for i in range(len(prompts)):
            infotexts.append(create_infotext(p, prompts, seeds, i, negatives))
    return {
        "prompt": p.all_prompts[0],
        "all_prompts": p.all_prompts,
        "seed": p.all_seeds[0],
        "all_seeds": p.all_seeds,
        "infotexts": infotexts,
        "comments": "".join(f"{c}\n" for c in p.comments),
    }
