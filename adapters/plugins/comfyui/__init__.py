"""PRIP prompt refiner for ComfyUI: the "PRIP Prompt Refiner" node and an optional auto
mode that refines the positive prompts of every queued workflow.

Install: copy (or link) this folder into ComfyUI/custom_nodes/ and pip install its
requirements.txt (the prip-refiner package) in ComfyUI's Python; see the PRIP README.
"""

from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
from .server_hooks import install

WEB_DIRECTORY = "./web"

install()

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
