"""The documentation site: built strictly by the real MkDocs, every internal link and anchor resolving, the home
page rendering the demo board in a real headless Chromium, the reference pages following the code, no citation of a
file the repository lacks, and an install that prints no setuptools warning."""

from __future__ import annotations

import dataclasses
import functools
import http.server
import os
import re
import shutil
import subprocess
import sys
import threading
import typing
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
from conftest import require, skip_or_fail

from bench.config import RunConfig, hashed
from bench.docs.boards import headline
from bench.docs.config_keys import config_page, field_comments
from bench.docs.methods import methods_page
from bench.docs.pages import reference_pages

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


# ---- the site, built as `make docs` builds it ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    res = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(out)], cwd=REPO,
                         capture_output=True, text=True, timeout=600, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert res.returncode == 0, res.stdout + res.stderr
    assert "WARNING" not in res.stderr, res.stderr
    return out


class _Links(HTMLParser):
    """The ids a page defines and the links (href, src) it holds."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for key, value in attrs:
            if key in ("id", "name") and value:
                self.ids.add(value)
            if key in ("href", "src") and value:
                self.links.append(value)


@functools.cache
def _parsed(path: Path) -> _Links:
    parser = _Links()
    parser.feed(path.read_text(errors="replace"))
    return parser


def broken_links(site: Path) -> list[str]:
    """Every internal link of the built site whose file, or whose anchor in that file, does not exist."""
    broken = []
    for page in sorted(site.rglob("*.html")):
        for link in _parsed(page).links:
            parts = urlsplit(link)
            if parts.scheme or parts.netloc or link.startswith(("mailto:", "data:", "javascript:")):
                continue
            base = site if parts.path.startswith("/") else page.parent  # root-relative (the 404 page's) or relative
            target = (base / unquote(parts.path).lstrip("/")).resolve() if parts.path else page
            if target.is_dir():
                target = target / "index.html"
            if not target.is_file():
                broken.append(f"{page.relative_to(site)}: {link} (no such file)")
            elif parts.fragment and target.suffix == ".html" and unquote(parts.fragment) not in _parsed(target).ids:
                broken.append(f"{page.relative_to(site)}: {link} (no such anchor)")
    return broken


@pytest.mark.subprocess
def test_the_site_builds_strictly_and_no_internal_link_is_broken(site: Path) -> None:
    pages = {p.relative_to(site).as_posix() for p in site.rglob("index.html")}
    for expected in ("index.html", "guides/adding-a-method/index.html", "ref/cli/index.html",
                     "ref/config/index.html", "ref/methods/index.html", "ref/recipes/index.html",
                     "leaderboards/index.html", "leaderboards/synthfer/index.html"):
        assert expected in pages, sorted(pages)
    assert broken_links(site) == []


def test_the_link_checker_finds_a_missing_page_and_a_missing_anchor(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "index.html").write_text('<h2 id="here">x</h2><a href="#here">ok</a><a href="../b/">gone</a>'
                                               '<a href="#nowhere">bad</a><a href="https://example.org/">out</a>')
    assert broken_links(tmp_path) == ["a/index.html: ../b/ (no such file)", "a/index.html: #nowhere (no such anchor)"]


# ---- the home page in a real browser ---------------------------------------------------------------------------

@pytest.fixture
def served(site: Path) -> Iterator[str]:
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def _demo_rows() -> list[list[str]]:
    """The demo board's first table (accuracy), as its cells read in the committed markdown."""
    table = re.search(r"\n(\|.*?)\n\n", headline((REPO / "leaderboards" / "synthfer.md").read_text()), re.S).group(1)
    rows = [[c.strip().replace("**", "") for c in line.strip("|").split("|")] for line in table.splitlines()]
    return [rows[0], *rows[2:]]


@pytest.mark.subprocess
def test_the_home_page_renders_the_demo_board_in_a_headless_browser(served: str, tmp_path: Path) -> None:
    sync_api = require("playwright.sync_api", "the site's browser test drives Chromium with playwright")
    if not Path(CHROMIUM).exists():
        skip_or_fail("no Chromium: apt-get install chromium (CI installs it)")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 2000})
            page.goto(served, wait_until="load")
            shown = page.eval_on_selector_all("article table tr", "rows => rows.map(r => "
                                              "[...r.querySelectorAll('th,td')].map(c => c.innerText.trim()))")
            figure = page.eval_on_selector("article img[src*='leaderboards/synthfer.png']",
                                           "img => [img.complete, img.naturalWidth, img.getBoundingClientRect().width]")
            page.screenshot(path=str(tmp_path / "home.png"), full_page=True)
        finally:
            browser.close()
    assert shown[:len(_demo_rows())] == _demo_rows()
    complete, natural_width, shown_width = figure
    assert complete and natural_width > 0 and shown_width > 100, figure  # the figure loaded and is laid out
    assert (tmp_path / "home.png").stat().st_size > 10_000


# ---- the reference pages follow the code ---------------------------------------------------------------------

def test_every_config_key_is_described() -> None:
    hints = typing.get_type_hints(RunConfig)
    nested = {name for name, hint in hints.items() if dataclasses.is_dataclass(hint)}
    assert nested == {"data", "model", "optim", "augment", "train"}
    for cls in (RunConfig, *(hints[name] for name in sorted(nested))):
        notes = field_comments(cls)
        missing = [f.name for f in dataclasses.fields(cls) if f.name not in nested and not notes.get(f.name)]
        assert missing == [], f"{cls.__name__}: keys without a comment to document them: {missing}"


def test_a_new_config_key_shows_up_on_the_configuration_page() -> None:
    @dataclasses.dataclass
    class WithNewKey(RunConfig):
        # how many widgets a run frobnicates
        widgets: int = hashed(3)

    text = config_page(WithNewKey)
    row = next(ln for ln in text.splitlines() if ln.startswith("| `widgets` |"))
    assert row == "| `widgets` | an integer | `3` | yes | how many widgets a run frobnicates |"
    assert "| `data.budget` | a number | `0.1` | yes |" in text
    assert "| `optim.lr` | a number in (0, inf) | `0.03` | yes |" in text


def test_a_new_method_shows_up_on_the_methods_page(install_plugin) -> None:
    install_plugin("ferbench-widget", "widget_method", '''
from dataclasses import dataclass
from bench.method import Method, MethodArgs, Probability, StepOutput, arg
from bench.registry import register_method

@dataclass
class WidgetArgs(MethodArgs):
    tau: Probability = arg(0.7, "the widget threshold")

@register_method("widget")
class Widget(Method):
    """A method that exists only in this test."""
    views = ("weak", "strong")
    Args = WidgetArgs
    reference = "Nobody 2026"

    def training_step(self, model, batch, ctx):
        return StepOutput(model(batch.labeled["weak"]).sum(), {})
''')
    text = methods_page()
    assert "| [`widget`](#widget) | Nobody 2026 | ferbench-widget 0.1 |" in text
    section = text[text.index("## `widget` {#widget}"):]
    assert "| unlabeled views | weak, strong |" in section
    assert "| `tau` | a number in [0, 1] | `0.7` | the widget threshold |" in section


def test_every_command_and_option_is_on_the_command_line_page() -> None:
    from bench.cli import COMMANDS, build_parser

    text = reference_pages()["ref/cli.md"]
    parser = build_parser()
    names = re.findall(r"^## `ferbench (\S+)`", text, re.M)
    assert len(names) == len(COMMANDS) and "check-method" in names and "sweep" in names
    assert "## `ferbench data` {#data}" in text and "### `ferbench data prepare` {#data-prepare}" in text
    for action in parser._actions[-1].choices["sweep"]._actions:
        for flag in action.option_strings:
            assert flag in text, flag


# ---- nothing cites a file the repository does not hold ----------------------------------------------------------

def test_every_cited_reference_path_exists_in_the_repository() -> None:
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    cited = re.compile(r"[\w./-]*reference/[\w./-]*\.md")
    missing = []
    for name in tracked:
        path = REPO / name
        if path.suffix in (".png", ".pt", ".pth", ".whl") or not path.is_file():
            continue
        for match in cited.findall(path.read_text(errors="replace")):
            if not (REPO / match).exists() and not (REPO / "docs" / match).exists():
                missing.append(f"{name}: {match}")
    assert missing == []


# ---- a quiet install --------------------------------------------------------------------------------------------

@pytest.mark.subprocess
def test_building_the_package_and_its_editable_install_print_no_setuptools_warning(tmp_path: Path) -> None:
    """`make demo` installs with `pip install -e`: setuptools' build of the wheel and of the editable wheel, run
    through its PEP 517 backend on a copy of the tracked files, warn of nothing (pip --quiet shows exactly these)."""
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    src = tmp_path / "src"
    for name in tracked:
        if (REPO / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, src / name)
    for hook in ("build_wheel", "build_editable"):
        out = tmp_path / hook
        out.mkdir()
        res = subprocess.run([sys.executable, "-W", "default", "-c",
                              f"from setuptools import build_meta; print(build_meta.{hook}({str(out)!r}))"],
                             cwd=src, capture_output=True, text=True, timeout=600,
                             env={k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"})
        assert res.returncode == 0, res.stderr[-3000:]
        warned = [ln for ln in (res.stdout + res.stderr).splitlines() if re.search(r"warn|!!", ln, re.I)]
        assert warned == [], f"{hook}:\n" + "\n".join(warned)
    wheel = next((tmp_path / "build_wheel").glob("*.whl"))
    listing = subprocess.run([sys.executable, "-m", "zipfile", "-l", str(wheel)], capture_output=True, text=True,
                             check=True).stdout
    assert "bench/configs/recipes/adacm.yaml" in listing and "methods/fixmatch.py" in listing
    assert "bench/docs/hook.py" in listing and "__pycache__" not in listing
