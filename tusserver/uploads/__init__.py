"""Upload lifecycle: the service behind the tus handlers, locks and the expiry sweeper."""

from .locks import InProcessLocker, Locker
from .service import UploadService, UploadStatus
from .sweeper import Sweeper

__all__ = ["InProcessLocker", "Locker", "Sweeper", "UploadService", "UploadStatus"]
