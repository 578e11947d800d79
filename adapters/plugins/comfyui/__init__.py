"""PRIP prompt refiner for ComfyUI: the "PRIP Prompt Refiner" node and an optional auto
mode that refines the positive prompts of every queued workflow.

Install: link or copy this folder into ComfyUI/custom_nodes/ (see the PRIP README).
"""

from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
from .server_hooks import install

WEB_DIRECTORY = "./web"

install()

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
