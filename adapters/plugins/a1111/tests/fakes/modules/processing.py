"""modules.processing: the processing object as extensions see it, and the parts of
process_images() around it, in the order of A1111 1.10 / Forge f2.0.1v1.10.1:
setup_prompts (prompts, and txt2img's hires prompts, filled before scripts run), the
scripts' process(), init() (txt2img: the "Hires prompt" infotext callable), then per
batch: p.iteration and the batch's slices (p.prompts, p.seeds, ...), the scripts'
before_process_batch(), extra networks taken out of p.prompts / p.hr_prompts, the
scripts' process_batch(), p.prompts restored after sampling, and one create_infotext
per image. create_infotext is called with the batch's lists and the position in the
batch as `index`, which it also uses for list values and passes to callables with its
locals; A1111's own get_hr_prompt indexes the job's p.all_hr_prompts with it."""

from __future__ import annotations

import json
from typing import Any

from modules import extra_networks
from modules.infotext_utils import quote as quote  # the tests' shorthand

VERSION = "f2.0.1v1.10.1-1.10.1"


class StableDiffusionProcessing:
    def __init__(self, prompt: str = "", negative_prompt: str = "", seed: int = -1, subseed: int = -1, batch_size: int = 1, n_iter: int = 1, steps: int = 20, cfg_scale: float = 7.0, width: int = 512, height: int = 512, sampler_name: str | None = None, **_: Any) -> None:
        self.prompt, self.negative_prompt, self.seed, self.subseed = prompt, negative_prompt, seed, subseed
        self.batch_size, self.n_iter, self.steps, self.cfg_scale = batch_size, n_iter, steps, cfg_scale
        self.width, self.height, self.sampler_name = width, height, sampler_name or "Euler"
        self.extra_generation_params: dict[str, Any] = {}
        self.comments: dict[str, int] = {}
        self.scripts: Any = None
        self.script_args: list[Any] = []
        # The job's lists (setup_prompts, process_images), then the batch's.
        self.all_prompts: list[str] = []
        self.all_negative_prompts: list[str] = []
        self.all_seeds: list[int] = []
        self.all_subseeds: list[int] = []
        self.main_prompt = self.main_negative_prompt = ""
        self.iteration = 0
        self.prompts: list[str] = []
        self.negative_prompts: list[str] = []
        self.seeds: list[int] = []
        self.subseeds: list[int] = []
        self.extra_network_data: dict[str, list[Any]] = {}

    def comment(self, text: str) -> None:
        self.comments[text] = 1

    def setup_prompts(self) -> None:
        n = self.batch_size * self.n_iter
        self.all_prompts = n * [self.prompt]
        self.all_negative_prompts = n * [self.negative_prompt]
        self.main_prompt = self.all_prompts[0]
        self.main_negative_prompt = self.all_negative_prompts[0]

    def init(self, all_prompts: list[str], all_seeds: list[int], all_subseeds: list[int]) -> None:
        pass

    def parse_extra_network_prompts(self) -> None:
        self.prompts, self.extra_network_data = extra_networks.parse_prompts(self.prompts)


class StableDiffusionProcessingTxt2Img(StableDiffusionProcessing):
    def __init__(self, enable_hr: bool = False, hr_prompt: str = "", hr_negative_prompt: str = "", denoising_strength: float = 0.75, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.enable_hr, self.hr_prompt, self.hr_negative_prompt = enable_hr, hr_prompt, hr_negative_prompt
        self.denoising_strength = denoising_strength
        self.all_hr_prompts: list[str] = []
        self.all_hr_negative_prompts: list[str] = []
        self.hr_prompts: list[str] = []
        self.hr_negative_prompts: list[str] = []
        self.hr_extra_network_data: dict[str, list[Any]] = {}

    def setup_prompts(self) -> None:
        super().setup_prompts()
        if not self.enable_hr:
            return
        if self.hr_prompt == "":
            self.hr_prompt = self.prompt
        if self.hr_negative_prompt == "":
            self.hr_negative_prompt = self.negative_prompt
        self.all_hr_prompts = self.batch_size * self.n_iter * [self.hr_prompt]
        self.all_hr_negative_prompts = self.batch_size * self.n_iter * [self.hr_negative_prompt]

    def init(self, all_prompts: list[str], all_seeds: list[int], all_subseeds: list[int]) -> None:
        if not self.enable_hr:
            return
        self.extra_generation_params["Denoising strength"] = self.denoising_strength

        def get_hr_prompt(p: Any, index: int, prompt_text: str, **kwargs: Any) -> str | None:
            hr_prompt: str = p.all_hr_prompts[index]
            return hr_prompt if hr_prompt != prompt_text else None

        def get_hr_negative_prompt(p: Any, index: int, negative_prompt: str, **kwargs: Any) -> str | None:
            hr_negative_prompt: str = p.all_hr_negative_prompts[index]
            return hr_negative_prompt if hr_negative_prompt != negative_prompt else None

        self.extra_generation_params["Hires prompt"] = get_hr_prompt
        self.extra_generation_params["Hires negative prompt"] = get_hr_negative_prompt

    def parse_extra_network_prompts(self) -> None:
        super().parse_extra_network_prompts()
        if self.enable_hr:
            batch = slice(self.iteration * self.batch_size, (self.iteration + 1) * self.batch_size)
            self.hr_prompts = self.all_hr_prompts[batch]
            self.hr_negative_prompts = self.all_hr_negative_prompts[batch]
            self.hr_prompts, self.hr_extra_network_data = extra_networks.parse_prompts(self.hr_prompts)


def create_infotext(p: Any, all_prompts: list[str], all_seeds: list[int], all_subseeds: list[int], comments: Any = None, iteration: int = 0, position_in_batch: int = 0, use_main_prompt: bool = False, index: int | None = None, all_negative_prompts: list[str] | None = None) -> str:
    if use_main_prompt:
        index = 0
    elif index is None:
        index = position_in_batch + iteration * p.batch_size
    if all_negative_prompts is None:
        all_negative_prompts = p.all_negative_prompts
    prompt_text = p.main_prompt if use_main_prompt else all_prompts[index]
    negative_prompt = p.main_negative_prompt if use_main_prompt else all_negative_prompts[index]
    generation_params: dict[str, Any] = {
        "Steps": p.steps,
        "Sampler": p.sampler_name,
        "CFG scale": p.cfg_scale,
        "Seed": p.all_seeds[0] if use_main_prompt else all_seeds[index],
        "Size": f"{p.width}x{p.height}",
        "Denoising strength": p.extra_generation_params.get("Denoising strength"),
        **p.extra_generation_params,
        "Version": VERSION,
    }
    # The web UI reports a value that raises and leaves it out; here it fails the test,
    # as the extension's values must not raise.
    for key, value in generation_params.items():
        if isinstance(value, list):
            generation_params[key] = value[index]
        elif callable(value):
            generation_params[key] = value(**locals())
    text = ", ".join(k if k == v else f"{k}: {quote(v)}" for k, v in generation_params.items() if v is not None)
    negative_text = f"\nNegative prompt: {negative_prompt}" if negative_prompt else ""
    return f"{prompt_text}{negative_text}\n{text}".strip()


def process_images(p: StableDiffusionProcessing) -> dict[str, Any]:
    """Runs the job and answers what the API answers: Processed.js() as a dict (and, as
    the JSON string the API sends, under "info"), plus "comments", which the web UI shows
    under the images but the API's info does not carry."""
    p.setup_prompts()
    seed = p.seed if p.seed != -1 else 3919858964
    subseed = p.subseed if p.subseed != -1 else 3665911004
    p.all_seeds = [int(seed) + x for x in range(len(p.all_prompts))]
    p.all_subseeds = [int(subseed) + x for x in range(len(p.all_prompts))]
    if p.scripts is not None:
        p.scripts.process(p)
    p.init(p.all_prompts, p.all_seeds, p.all_subseeds)
    infotexts = []
    for n in range(p.n_iter):
        p.iteration = n
        batch = slice(n * p.batch_size, (n + 1) * p.batch_size)
        p.prompts, p.negative_prompts = p.all_prompts[batch], p.all_negative_prompts[batch]
        p.seeds, p.subseeds = p.all_seeds[batch], p.all_subseeds[batch]
        if p.scripts is not None:
            p.scripts.before_process_batch(p, batch_number=n, prompts=p.prompts, seeds=p.seeds, subseeds=p.subseeds)
        p.parse_extra_network_prompts()
        if p.scripts is not None:
            p.scripts.process_batch(p, batch_number=n, prompts=p.prompts, seeds=p.seeds, subseeds=p.subseeds)
            # (sampling) then, after postprocess_batch:
            p.prompts, p.negative_prompts = p.all_prompts[batch], p.all_negative_prompts[batch]
        for i in range(len(p.prompts)):
            infotexts.append(create_infotext(p, p.prompts, p.seeds, p.subseeds, index=i, all_negative_prompts=p.negative_prompts))
    processed = {
        "prompt": p.all_prompts[0],
        "all_prompts": p.all_prompts,
        "negative_prompt": p.all_negative_prompts[0],
        "all_negative_prompts": p.all_negative_prompts,
        "seed": p.all_seeds[0],
        "all_seeds": p.all_seeds,
        "subseed": p.all_subseeds[0],
        "all_subseeds": p.all_subseeds,
        "extra_generation_params": p.extra_generation_params,
        "index_of_first_image": 0,
        "infotexts": infotexts,
        "version": VERSION,
    }
    info = json.dumps(processed, default=lambda o: None)
    return {**json.loads(info), "info": info, "comments": "".join(f"{c}\n" for c in p.comments)}
