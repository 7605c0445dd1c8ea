"""MkDocs hook (mkdocs.yml `hooks:`): adds the generated pages to the site as it is built, so the reference and the
boards always say what the code and the committed records say. A marker line in a hand-written page,
`<!-- ferbench:demo-board -->`, is replaced by the demo board's headline."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

from bench.docs.pages import generated_pages, home_board

REPO = Path(__file__).resolve().parents[2]
MARKER = "<!-- ferbench:demo-board -->"


def on_files(files: Files, config: Any) -> Files:
    for path, content in generated_pages(REPO).items():
        files.append(File.generated(config, path, content=content))
    return files


def on_page_markdown(markdown: str, page: Any, config: Any, files: Files) -> str:
    if MARKER in markdown:
        prefix = "../" * page.file.src_uri.count("/") + "leaderboards/"
        markdown = markdown.replace(MARKER, home_board(REPO, prefix))
    return markdown
