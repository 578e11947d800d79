"""modules.shared: the parsed command line (with the extension's preload options)."""

from types import SimpleNamespace

cmd_opts = SimpleNamespace(prip_model=None, prip_device=None, prip_lib=None)
