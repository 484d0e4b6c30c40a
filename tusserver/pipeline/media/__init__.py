"""Media in the pipeline: probe, validate, thumbnail and strip location, in a sandbox.

- :mod:`.sandbox`: runs a child with CPU, memory and wall-time limits (``run_limited``)
- :mod:`.worker`: the child itself (Pillow, ffprobe, ffmpeg), one per file
- :mod:`.probe`: which files are probed and the facts stored (``MediaFacts``)
- :mod:`.thumbnails`: thumbnail keys in the object store
- :mod:`.step`: the pipeline step (``MediaProcessor``) and tool detection (``MediaTools``)
"""

from .probe import MediaFacts, probe_kind, shape_of
from .sandbox import Limits, Outcome, SandboxResult, run_limited
from .step import MediaOutcome, MediaProcessor, MediaTools
from .thumbnails import THUMBNAIL_SIZES, delete_thumbnails, store_thumbnails, thumbnail_key

__all__ = [
    "THUMBNAIL_SIZES",
    "Limits",
    "MediaFacts",
    "MediaOutcome",
    "MediaProcessor",
    "MediaTools",
    "Outcome",
    "SandboxResult",
    "delete_thumbnails",
    "probe_kind",
    "run_limited",
    "shape_of",
    "store_thumbnails",
    "thumbnail_key",
]
