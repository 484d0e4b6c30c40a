"""tusserver: resumable media uploads (tus 1.0.0) on aiohttp.

The public names are loaded on first use (PEP 562), so that importing one module of the
package (``tusserver.errors``, ``tusserver.protocol.headers``) does not load the whole
service, its database layer and the ``auth`` package that itself imports parts of it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from .app import create_app, create_tus_subapp
    from .config import TusServerConfig, load_config
    from .errors import HookRejection
    from .events import CreateContext, Hooks
    from .http_io import HANDLER_ARGS

__all__ = [
    "HANDLER_ARGS",
    "CreateContext",
    "HookRejection",
    "Hooks",
    "TusServerConfig",
    "__version__",
    "create_app",
    "create_tus_subapp",
    "load_config",
]

_WHERE = {
    "HANDLER_ARGS": "http_io",
    "create_app": "app",
    "create_tus_subapp": "app",
    "TusServerConfig": "config",
    "load_config": "config",
    "HookRejection": "errors",
    "CreateContext": "events",
    "Hooks": "events",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'tusserver' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
