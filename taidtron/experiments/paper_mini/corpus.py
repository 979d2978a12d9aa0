"""An English text corpus from the Python 3.11 documentation as Debian ships it (package `python3.11-doc`).

    meta = build_corpus(fetch_deb(cache_dir), out_dir)   # apt-get download (once), then <out_dir>/pydoc.jsonl
    split_domains(out_dir / "pydoc.jsonl", out_dir, ("tutorial", "howto", "faq"))   # target / general pages

`build_corpus` writes `<out>/pydoc.jsonl`: one document per HTML page of the manual (`{"page": "library/os.html",
"text": ...}`), and `<out>/pydoc.meta.json`: the package version, the .deb's SHA-256, the text's SHA-256, counts and
the licence. `tools/pydoc_corpus.py` is its command line.

Source. `apt-get download python3.11-doc` (Debian 12 "bookworm", ~12.6 MB; any machine with Debian's apt
sources can fetch it, or pass a .deb with --deb). The HTML under usr/share/doc/python3.11/html is read straight from
the .deb with the standard library (ar + tar.xz), so dpkg is not needed.

Text. Only each page's main body (`<div role="main">`) is kept: navigation, sidebars and footers are not. Code
samples (`<pre>`, highlighted blocks) and permalink marks are dropped so the corpus is mostly prose; inline code
stays. Every block element (paragraph, list item, heading, definition, table row) becomes one line with its
whitespace collapsed. Pages without prose (indices, the table of contents, search) are skipped. Documents are
ordered by the SHA-256 of their page path, so megatron's contiguous train/valid/test split of documents is a random
split of pages: the held-out pages are whole pages no model trained on.

Domains. `split_domains` divides the pages by their top-level section of the manual (`tutorial/...`,
`howto/...`): the target domain of the paper-mini transfer variant and the general rest, each in the same hashed
order.

Licence. The Python documentation is licensed under the PSF License Agreement (version 2); examples, recipes and
other code in it are also under the Zero-Clause BSD licence (see the manual's "History and License" page, which is
part of the corpus, and the package's /usr/share/doc/python3.11-doc/copyright). taidtron does not commit the text;
it is built at run time from the fetched package.
"""

from __future__ import annotations

import hashlib
import html.parser
import io
import json
import re
import subprocess
import tarfile
from pathlib import Path

from taidtron.io import atomic_write_bytes, atomic_write_json

PACKAGE = "python3.11-doc"
HTML_ROOT = "usr/share/doc/python3.11/html/"
# What docs/results/paper_mini.md was built from. Debian may publish a newer python3.11-doc (security updates); its
# text can differ, so the metadata says whether a build matches this reference (the results page shows it).
REFERENCE_VERSION = "3.11.2-6+deb12u9"
REFERENCE_TEXT_SHA256 = "4dbcf2b4cb724dc1bf2a69ea1b9caa7ce529f7e57ec051ca2012ffa012e6563b"
LICENCE = (
    "PSF License Agreement version 2 (the Python documentation); examples and code in it also Zero-Clause "
    "BSD. Source: Debian package python3.11-doc."
)
SKIPPED_PAGES = ("contents.html", "search.html", "py-modindex.html", "genindex.html", "download.html")
BLOCK_TAGS = frozenset(
    {
        "p",
        "div",
        "li",
        "h1",
        "h2",
        "h3",
        "h4",
        "h5",
        "h6",
        "dt",
        "dd",
        "tr",
        "table",
        "section",
        "blockquote",
        "caption",
        "figcaption",
        "ul",
        "ol",
        "dl",
    }
)
VOID_TAGS = frozenset({"br", "hr", "img", "meta", "link", "input", "wbr", "col", "area", "base", "source"})


class CorpusError(ValueError):
    """Input the user must fix: a missing or malformed package."""


class _MainText(html.parser.HTMLParser):
    """Collects the text inside `<div role="main">`, one line per block element, without code blocks, scripts or
    permalink marks."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[tuple[str, bool]] = []  # open elements inside main: (tag, skipping before it opened)
        self.inside = False
        self.skipping = False
        self.lines: list[str] = []
        self.current: list[str] = []

    def _break(self) -> None:
        line = re.sub(r"\s+", " ", "".join(self.current)).strip()
        if line:
            self.lines.append(line)
        self.current = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if not self.inside:
            if tag == "div" and attributes.get("role") == "main":
                self.inside, self.stack = True, []
            return
        if tag in VOID_TAGS:
            self.handle_startendtag(tag, attrs)
            return
        classes = (attributes.get("class") or "").split()
        self.stack.append((tag, self.skipping))
        if tag in ("pre", "script", "style") or "highlight" in classes or "headerlink" in classes:
            self.skipping = True
        if tag in BLOCK_TAGS:
            self._break()

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if self.inside and tag in ("br", "hr"):
            self._break()

    def handle_endtag(self, tag: str) -> None:
        if not self.inside or tag in VOID_TAGS:
            return
        if not any(open_tag == tag for open_tag, _ in self.stack):
            if tag == "div":  # the main div itself closes
                self._break()
                self.inside = False
            return
        while self.stack:  # close what HTML left open inside this element
            open_tag, self.skipping = self.stack.pop()
            if open_tag == tag:
                break
        if tag in BLOCK_TAGS:
            self._break()

    def handle_data(self, data: str) -> None:
        if self.inside and not self.skipping:
            self.current.append(data)


def page_text(html_source: str) -> str:
    """The prose of one Sphinx HTML page: one line per block, whitespace collapsed, code blocks dropped."""
    parser = _MainText()
    parser.feed(html_source)
    parser.close()
    parser._break()
    return "\n".join(parser.lines)


def _ar_members(data: bytes) -> dict[str, bytes]:
    """Members of a Unix ar archive (a .deb is one)."""
    if not data.startswith(b"!<arch>\n"):
        raise CorpusError("not a .deb (ar) archive; pass the python3.11-doc .deb file.")
    members, offset = {}, 8
    while offset + 60 <= len(data):
        header = data[offset : offset + 60]
        name = header[:16].decode().strip().rstrip("/")
        size = int(header[48:58].decode().strip())
        members[name] = data[offset + 60 : offset + 60 + size]
        offset += 60 + size + (size % 2)
    return members


def read_deb(deb: Path) -> tuple[str, dict[str, str]]:
    """(package version, {page path under the HTML root: HTML source}) from the python3.11-doc .deb."""
    members = _ar_members(deb.read_bytes())
    control_name = next((n for n in members if n.startswith("control.tar")), None)
    data_name = next((n for n in members if n.startswith("data.tar")), None)
    if control_name is None or data_name is None:
        raise CorpusError(f"{deb} has no control/data archive; is it a Debian package?")
    with tarfile.open(fileobj=io.BytesIO(members[control_name])) as tar:
        control = tar.extractfile(next(m for m in tar.getmembers() if m.name.endswith("control"))).read().decode()
    fields = dict(line.split(": ", 1) for line in control.splitlines() if ": " in line and not line[0].isspace())
    if fields.get("Package") != PACKAGE:
        raise CorpusError(f"{deb} is package {fields.get('Package')!r}, not {PACKAGE}.")
    pages = {}
    with tarfile.open(fileobj=io.BytesIO(members[data_name])) as tar:
        for member in tar.getmembers():
            name = member.name.removeprefix("./")
            if member.isfile() and name.startswith(HTML_ROOT) and name.endswith(".html"):
                pages[name[len(HTML_ROOT) :]] = tar.extractfile(member).read().decode("utf-8")
    if not pages:
        raise CorpusError(f"{deb} holds no HTML under /{HTML_ROOT}.")
    return fields["Version"], pages


def keep_page(path: str) -> bool:
    """Pages with prose: not indices, the table of contents, search, or Sphinx's own directories."""
    name = path.rsplit("/", 1)[-1]
    return not (path.startswith("_") or name.startswith("genindex") or path in SKIPPED_PAGES)


def fetch_deb(cache_dir: Path) -> Path:
    """The python3.11-doc .deb in cache_dir, downloaded with `apt-get download` when absent."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    found = sorted(cache_dir.glob(f"{PACKAGE}_*.deb"))
    if found:
        return found[-1]
    try:
        proc = subprocess.run(
            ["apt-get", "download", PACKAGE], cwd=cache_dir, capture_output=True, text=True, timeout=600
        )
    except FileNotFoundError:
        raise CorpusError(
            f"apt-get is not available to fetch {PACKAGE}; download the .deb from a Debian 12 mirror "
            f"(pool/main/p/python3.11/) and pass it with --deb."
        ) from None
    found = sorted(cache_dir.glob(f"{PACKAGE}_*.deb"))
    if proc.returncode != 0 or not found:
        raise CorpusError(
            f"apt-get download {PACKAGE} failed ({proc.stderr.strip().splitlines()[-1:]}); run "
            f"`apt-get update` or pass a .deb with --deb."
        )
    return found[-1]


def build_corpus(deb: Path, out_dir: Path, max_pages: int | None = None) -> dict:
    """Write `<out_dir>/pydoc.jsonl` and `pydoc.meta.json` from the .deb (atomically); return the metadata. An
    existing corpus built from the same .deb and max_pages is reused. `max_pages`: only the first that many pages
    in the hashed order (a small corpus for pipeline tests)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    corpus, meta_path = out_dir / "pydoc.jsonl", out_dir / "pydoc.meta.json"
    deb_sha256 = hashlib.sha256(deb.read_bytes()).hexdigest()
    if corpus.is_file() and meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        if (
            meta.get("deb_sha256") == deb_sha256
            and meta.get("max_pages") == max_pages
            and hashlib.sha256(corpus.read_bytes()).hexdigest() == meta.get("text_sha256")
        ):
            return meta
    version, pages = read_deb(deb)
    documents = []
    for path in sorted(pages, key=lambda p: hashlib.sha256(p.encode()).hexdigest()):
        if max_pages is not None and len(documents) >= max_pages:
            break
        if keep_page(path):
            text = page_text(pages[path])
            if text.strip():
                documents.append({"page": path, "text": text})
    payload = "".join(json.dumps(doc, ensure_ascii=False) + "\n" for doc in documents).encode("utf-8")
    text_sha256 = hashlib.sha256(payload).hexdigest()
    meta = {
        "package": PACKAGE,
        "version": version,
        "deb": deb.name,
        "deb_sha256": deb_sha256,
        "text_sha256": text_sha256,
        "matches_reference": text_sha256 == REFERENCE_TEXT_SHA256,
        "max_pages": max_pages,
        "documents": len(documents),
        "characters": sum(len(d["text"]) for d in documents),
        "bytes": len(payload),
        "licence": LICENCE,
    }
    atomic_write_bytes(corpus, payload)
    atomic_write_json(meta_path, meta, indent=1)
    return meta


def page_section(page: str) -> str:
    """The top-level section of the manual a page belongs to (`tutorial`, `library`, ...; `""` for root pages)."""
    return page.split("/", 1)[0] if "/" in page else ""


def split_domains(corpus: Path, out_dir: Path, target_sections: tuple[str, ...]) -> dict[str, dict]:
    """Write `<out_dir>/target.jsonl` (the pages of `target_sections`) and `general.jsonl` (every other page), each in
    the corpus's order (atomically); return {domain: {"documents", "characters", "sections"}}."""
    domains: dict[str, list[str]] = {"general": [], "target": []}
    summary = {name: {"documents": 0, "characters": 0, "sections": set()} for name in domains}
    for line in corpus.read_text(encoding="utf-8").splitlines():
        page = json.loads(line)
        section = page_section(page["page"])
        name = "target" if section in target_sections else "general"
        domains[name].append(line + "\n")
        summary[name]["documents"] += 1
        summary[name]["characters"] += len(page["text"])
        summary[name]["sections"].add(section or "(root)")
    for name, lines in domains.items():
        atomic_write_bytes(out_dir / f"{name}.jsonl", "".join(lines).encode("utf-8"))
        summary[name]["sections"] = sorted(summary[name]["sections"])
    if not summary["target"]["documents"]:
        raise CorpusError(
            f"the corpus has no pages in section(s) {', '.join(target_sections)}; name sections it holds "
            f"({', '.join(summary['general']['sections'])}) or build it from more pages."
        )
    return summary
