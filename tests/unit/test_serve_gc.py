"""``tusserver serve`` freezes the collector's objects once its app has started, and
collects its youngest generation less often."""

from __future__ import annotations

import gc
from pathlib import Path

from aiohttp import web

from tusserver import TusServerConfig
from tusserver.cli import _GC_YOUNG_THRESHOLD, _freezing_startup_objects


async def test_what_exists_once_started_is_out_of_the_collectors_sight(tmp_path: Path) -> None:
    started: list[int] = []

    def factory(config: TusServerConfig) -> web.Application:
        app = web.Application()

        async def start(_app: web.Application) -> None:
            started.append(gc.get_freeze_count())  # the app's own startup runs first

        app.on_startup.append(start)
        return app

    app = _freezing_startup_objects(factory)(TusServerConfig(data_dir=tmp_path))
    app.freeze()
    before = gc.get_freeze_count()
    thresholds = gc.get_threshold()
    gc.set_threshold(700, *thresholds[1:])  # CPython's default, whatever ran before
    try:
        await app.startup()
        assert started == [before]
        # Everything alive now (this test's objects included) is frozen.
        assert gc.get_freeze_count() > before
        tracked = [o for o in gc.get_objects() if o is app]  # (frozen ones are not listed)
        assert tracked == [], "the started app is still walked by the collector"
        assert gc.get_threshold() == (_GC_YOUNG_THRESHOLD, *thresholds[1:])
        assert _GC_YOUNG_THRESHOLD > 700
    finally:
        await app.cleanup()
        gc.unfreeze()
        gc.set_threshold(*thresholds)
