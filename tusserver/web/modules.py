"""The web UI's JavaScript modules: which files ``app.js`` imports, and the page's import map.

The UI is native ES modules with no build step: ``app.js`` imports ``./app-router.js`` and so
on. The page links ``app.js?v=<hash>`` (cached for a year), but the browser resolves the
imports inside it to plain ``/static/app-router.js``. So that every module is cached the same
way, the page carries an import map from each plain URL to its hashed URL (and a
``modulepreload`` link for it, so the browser fetches them all at once instead of one level of
imports after another). The map is an inline script: its sha256 goes into the page's CSP.

Only static imports of sibling files (``from './name.js'`` / ``import './name.js'``) are
followed; that is all the UI uses.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Callable, Sequence

__all__ = ["import_map_html", "imports_of", "module_graph"]

#: ``import ... from './x.js'``, ``import './x.js'`` and ``export ... from './x.js'`` at the
#: start of a line (the modules keep their imports at the top, one statement per line or a
#: ``{ ... }`` list over several lines).
_IMPORT = re.compile(
    r"""^[ \t]*(?:import|export)\b[^'";]*?['"]\./([A-Za-z0-9][A-Za-z0-9_.-]*\.js)['"]""",
    re.MULTILINE,
)


def imports_of(source: str) -> list[str]:
    """The sibling modules a module imports (file names, in order, without repeats)."""
    seen: dict[str, None] = {}
    for match in _IMPORT.finditer(source):
        seen.setdefault(match.group(1), None)
    return list(seen)


def module_graph(
    entry: str, imports: Callable[[str], Sequence[str] | None]
) -> tuple[list[str], list[str]]:
    """Every module reachable from ``entry`` (breadth first, ``entry`` excluded) and the
    imported names that are not there (``imports(name)`` gives what a module imports, or None
    when it does not exist; it may block: call this in a thread)."""
    found: list[str] = []
    missing: list[str] = []
    queue = [entry]
    seen = {entry}
    while queue:
        name = queue.pop(0)
        deps = imports(name)
        if name != entry:
            (found if deps is not None else missing).append(name)
        for dep in deps or ():
            if dep not in seen:
                seen.add(dep)
                queue.append(dep)
    return found, missing


def import_map_html(urls: dict[str, str]) -> tuple[str, str]:
    """The import map (plain URL -> hashed URL) and modulepreload links for ``urls``, and the
    CSP source that allows that inline map (``'sha256-...'``)."""
    if not urls:
        return "", ""
    text = json.dumps({"imports": urls}, separators=(",", ":"), sort_keys=True)
    # The map is inside <script>: JSON escapes nothing there, so refuse what could end it
    # (our URLs are /static/<flat name>?v=<hex>, so this never happens).
    if "<" in text:
        raise ValueError("an import map URL contains '<'")
    digest = base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode("ascii")
    links = "".join(f'\n  <link rel="modulepreload" href="{url}">' for url in sorted(urls.values()))
    return f'<script type="importmap">{text}</script>{links}', f"'sha256-{digest}'"
