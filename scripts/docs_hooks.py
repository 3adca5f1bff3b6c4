"""MkDocs hooks for sitq's site (mkdocs.yml): the pages are written to be read on GitHub and
in a clone, with relative links, and this makes the same links work in the built site.

- The home page is README.md and the changelog page is CHANGELOG.md, read from the repository
  root (neither is copied into docs/).
- A page may link to a file of the repository outside docs/ (``../examples/fastapi_app.py``,
  ``../benchmarks/peers/README.md``): each such file is published as a page of its own under
  ``repo/``, showing its text (a Markdown file rendered, anything else as a code block), so the
  site holds everything its pages link to and needs no network.
- Every relative link is rewritten from where its page lives in the repository to where its
  target lives in the site.

A link whose target does not exist is left as it is, so that ``mkdocs build --strict`` reports
it and fails.
"""

from __future__ import annotations

import posixpath
import re
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from mkdocs.structure.files import File, Files, InclusionLevel

ROOT = Path(__file__).resolve().parent.parent
DOCS = "docs"

# Repository files shown as pages of their own, at these paths of the site.
PAGES = {"README.md": "index.md", "CHANGELOG.md": "changelog.md"}
PUBLISHED = "repo"

_FENCE = re.compile(r"^\s*(`{3,}|~{3,})")
_CODE_SPAN = re.compile(r"(`+)(?:.+?)\1")
_LINK = re.compile(r"(!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\()(<[^>]*>|[^()\s]+)(\s+\"[^\"]*\")?\)")
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
_LANGUAGES = {".py": "python", ".sh": "bash", ".toml": "toml", ".yml": "yaml", ".json": "json"}

# Site path of each page -> its path in the repository (filled by on_files).
_origin: dict[str, str] = {}
# Repository path -> site path, for the files published from outside docs/.
_published: dict[str, str] = {}


def _outside_code(text: str) -> list[tuple[bool, str]]:
    """``text`` cut into pieces, each marked True where it may hold links (not code)."""
    pieces: list[tuple[bool, str]] = []
    fence: str | None = None
    for line in text.splitlines(keepends=True):
        opened = _FENCE.match(line)
        if fence is not None:
            pieces.append((False, line))
            if opened and opened.group(1)[0] == fence[0] and len(opened.group(1)) >= len(fence):
                fence = None
            continue
        if opened:
            fence = opened.group(1)
            pieces.append((False, line))
            continue
        start = 0
        for span in _CODE_SPAN.finditer(line):
            pieces.append((True, line[start : span.start()]))
            pieces.append((False, span.group(0)))
            start = span.end()
        pieces.append((True, line[start:]))
    return pieces


def _targets(text: str) -> list[str]:
    """The link targets written in ``text``, outside code."""
    found = []
    for prose, piece in _outside_code(text):
        if prose:
            found.extend(m.group(2).strip("<>") for m in _LINK.finditer(piece))
    return found


def _repo_path(origin: str, target: str) -> tuple[str, str] | None:
    """The repository path a relative link of the file at ``origin`` names, and its
    ``#anchor`` part; ``None`` for an absolute URL, an anchor alone, or a path leaving the
    repository."""
    if _SCHEME.match(target) or target.startswith(("#", "/")):
        return None
    path, sep, anchor = target.partition("#")
    if not path:
        return None
    resolved = posixpath.normpath(posixpath.join(posixpath.dirname(origin), unquote(path)))
    if resolved == ".." or resolved.startswith("../"):
        return None
    return resolved, sep + anchor


def _site_path(repo_path: str) -> str | None:
    """Where the repository file ``repo_path`` is in the site, if it is there."""
    if repo_path == DOCS:
        return None
    if repo_path.startswith(DOCS + "/"):
        return repo_path[len(DOCS) + 1 :]
    return PAGES.get(repo_path) or _published.get(repo_path)


def _publish_path(repo_path: str) -> str:
    """The site path a repository file outside docs/ is published at."""
    if (ROOT / repo_path).is_dir():
        return f"{PUBLISHED}/{repo_path}/index.md"
    if repo_path.endswith(".md"):
        return f"{PUBLISHED}/{repo_path}"
    return f"{PUBLISHED}/{repo_path}.md"


def _published_text(repo_path: str) -> str:
    """The page showing the repository file (or folder) ``repo_path``."""
    source = ROOT / repo_path
    if source.is_dir():
        names = sorted(
            p.name + ("/" if p.is_dir() else "")
            for p in source.iterdir()
            if not p.name.startswith((".", "__pycache__"))
        )
        items = "\n".join(f"- [{name}]({name})" for name in names)
        return f"# {repo_path}/\n\n{items}\n"
    text = source.read_text(encoding="utf-8")
    if repo_path.endswith(".md"):
        return text
    language = _LANGUAGES.get(source.suffix, "text")
    fence = "`" * max([3, *(len(m.group(0)) + 1 for m in re.finditer(r"`{3,}", text))])
    return f"# {repo_path}\n\n{fence}{language}\n{text.rstrip()}\n{fence}\n"


def on_files(files: Files, config: Any) -> Files:
    """Add the home and changelog pages, and publish what pages link to outside docs/."""
    _origin.clear()
    _published.clear()
    for file in files.documentation_pages():
        _origin[file.src_uri] = f"{DOCS}/{file.src_uri}"
    texts: dict[str, str] = {}
    for repo_path, site_path in PAGES.items():
        if files.get_file_from_path(site_path) is None:
            texts[repo_path] = (ROOT / repo_path).read_text(encoding="utf-8")
            files.append(File.generated(config, site_path, content=texts[repo_path]))
            _origin[site_path] = repo_path
    # Follow links from page to page, publishing each repository file they reach.
    pending = [(origin, (ROOT / origin).read_text(encoding="utf-8")) for origin in _origin.values()]
    while pending:
        origin, text = pending.pop()
        for target in _targets(text):
            found = _repo_path(origin, target)
            if found is None:
                continue
            repo_path = found[0]
            if repo_path in PAGES or repo_path.startswith(DOCS + "/") or repo_path in _published:
                continue
            if not (ROOT / repo_path).exists():
                continue
            site_path = _publish_path(repo_path)
            _published[repo_path] = site_path
            _origin[site_path] = repo_path
            page = _published_text(repo_path)
            file = File.generated(config, site_path, content=page)
            file.inclusion = InclusionLevel.NOT_IN_NAV
            files.append(file)
            if (ROOT / repo_path).is_dir():
                # A folder's page lists its files with links relative to the folder.
                pending.append((f"{repo_path}/index.md", page))
                _origin[site_path] = f"{repo_path}/index.md"
            else:
                pending.append((repo_path, page))
    return files


def on_page_markdown(markdown: str, page: Any, config: Any, files: Files) -> str:
    """Rewrite the page's relative links from its place in the repository to the site's."""
    site_path = page.file.src_uri
    origin = _origin.get(site_path, f"{DOCS}/{site_path}")

    def rewrite(match: re.Match[str]) -> str:
        target = match.group(2).strip("<>")
        found = _repo_path(origin, target)
        if found is None:
            return match.group(0)
        repo_path, anchor = found
        if not (ROOT / repo_path).exists():
            return match.group(0)  # left as written, for MkDocs to report
        new = _site_path(repo_path)
        if new is None:
            return match.group(0)
        relative = posixpath.relpath(new, posixpath.dirname(site_path) or ".")
        return f"{match.group(1)}{relative}{anchor}{match.group(3) or ''})"

    return "".join(
        _LINK.sub(rewrite, piece) if prose else piece for prose, piece in _outside_code(markdown)
    )
