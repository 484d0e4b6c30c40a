"""tusserver: resumable media uploads (tus 1.0.0) on aiohttp."""

__version__ = "0.1.0"

from .app import create_app, create_tus_subapp
from .config import TusServerConfig, load_config
from .events import CreateContext, HookRejection, Hooks

__all__ = [
    "CreateContext",
    "HookRejection",
    "Hooks",
    "TusServerConfig",
    "__version__",
    "create_app",
    "create_tus_subapp",
    "load_config",
]
