"""Walk the web UI's ES module graph the way a browser does, through HTTP.

Used by tests/web/test_modules.py (against the app in-process) and tests/web/test_wheel.py
(against ``tusserver serve`` installed from the wheel), so a module that is imported but not
served (a file left out of the package, a typo in an import) fails a test.

The imports of each module are read with a regex of its own (any ``from '...'`` or
``import '...'``), not with the server's parser, so a statement the server's import map would
miss is caught too.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from urllib.parse import urljoin, urlsplit

#: GET url -> (status, body, headers with lower-case names)
Fetch = Callable[[str], Awaitable[tuple[int, bytes, dict[str, str]]]]

#: An import or export statement at the start of a line, up to its ``;``.
_STATEMENT = re.compile(r"^(?:import|export)\b[^;]*;", re.M)
#: The module it names: ``... from '<spec>';`` or ``import '<spec>';``.
_FROM = re.compile(r"""(?:\bfrom|^import)\s*['"]([^'"]+)['"]\s*;$""")
_DYNAMIC = re.compile(r"(?<![\w$.])import\s*\(")
_COMMENT = re.compile(r"/\*.*?\*/|^\s*//[^\n]*", re.S | re.M)
_IMPORT_MAP = re.compile(r'<script type="importmap">(.*?)</script>', re.S)
_ENTRY = re.compile(r'<script type="module" src="([^"]+)"></script>')


@dataclass
class Graph:
    entry: str  # the entry module's URL in the page
    import_map: dict[str, str]  # plain URL -> hashed URL
    map_text: str  # the inline map, as the page has it (its hash is in the CSP)
    preloads: list[str]  # modulepreload hrefs
    modules: dict[str, bytes] = field(default_factory=dict)  # path (no query) -> body
    fetched: dict[str, dict[str, str]] = field(default_factory=dict)  # fetched URL -> headers
    imports: dict[str, list[str]] = field(default_factory=dict)  # path -> imported paths
    failures: list[str] = field(default_factory=list)  # what a browser would not have loaded

    def csp_source(self) -> str:
        digest = hashlib.sha256(self.map_text.encode("utf-8")).digest()
        return f"'sha256-{base64.b64encode(digest).decode()}'"


def specifiers(source: str) -> list[str]:
    """Every module specifier of a JS module's import/export statements (comments removed);
    a dynamic ``import(...)`` is refused (the import map and this walk do not follow it)."""
    code = _COMMENT.sub("", source)
    assert not _DYNAMIC.search(code), "dynamic import(): not followed by the import map"
    found = (_FROM.search(m.group(0)) for m in _STATEMENT.finditer(code))
    return [m.group(1) for m in found if m]


async def walk(page_html: str, fetch: Fetch) -> Graph:
    """Load the page's entry module and everything it imports, resolving like a browser:
    relative to the importing module's URL, then through the page's import map."""
    entry = _ENTRY.search(page_html)
    assert entry, "the page has no <script type=module src=...>"
    found = _IMPORT_MAP.search(page_html)
    map_text = found.group(1) if found else ""
    import_map: dict[str, str] = json.loads(map_text)["imports"] if map_text else {}
    preloads = re.findall(r'<link rel="modulepreload" href="([^"]+)">', page_html)
    graph = Graph(entry.group(1), import_map, map_text, preloads)
    queue = [graph.entry]
    seen = {urlsplit(graph.entry).path}
    while queue:
        url = queue.pop(0)
        path = urlsplit(url).path
        status, body, headers = await fetch(url)
        graph.fetched[url] = headers
        ctype = headers.get("content-type", "")
        if status != 200 or not ctype.startswith("text/javascript"):
            graph.failures.append(f"{url}: {status} {ctype}")
            continue
        graph.modules[path] = body
        graph.imports[path] = []
        for spec in specifiers(body.decode("utf-8")):
            if not spec.startswith(("./", "../", "/")):
                graph.failures.append(f"{path}: bare specifier {spec!r} (no build step here)")
                continue
            target = urlsplit(urljoin(url, spec)).path
            graph.imports[path].append(target)
            if target not in seen:
                seen.add(target)
                queue.append(import_map.get(target, target))
    return graph
