"""The paper-mini corpus (taidtron/experiments/paper_mini/corpus.py, command line tools/pydoc_corpus.py): the Python
documentation .deb -> one prose document per page, reproducibly, without dpkg; its target and general domains.

A small .deb is built here with the layout Debian uses (ar archive: debian-binary, control.tar.xz, data.tar.xz;
Sphinx HTML under usr/share/doc/python3.11/html), so these tests need no network.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest

from taidtron.experiments.paper_mini import corpus as pydoc_corpus
from tests.support import run_cli

PAGE = """<!DOCTYPE html><html><head><title>{title}</title><script>var x = 1;</script></head><body>
<div class="related" role="navigation"><ul><li>index</li><li>modules</li></ul></div>
<div class="document"><div class="documentwrapper"><div class="bodywrapper">
<div class="body" role="main">
<section id="s"><h1>{title}<a class="headerlink" href="#s">\u00b6</a></h1>
<p>First   paragraph, wrapped
over two lines with <code class="xref"><span class="pre">inline()</span></code> code.</p>
<hr class="docutils" />
<div class="highlight-python3 notranslate"><div class="highlight"><pre>print("dropped")</pre></div></div>
<dl class="py function"><dt>spam(<em>x</em>)</dt><dd><p>Return &amp; keep x.<br/>Second line.</p></dd></dl>
<ul><li><p>item one</p></li><li>item two</li></ul>
</section>
</div></div></div></div>
<div class="footer">\u00a9 Copyright 2001-2026, Python Software Foundation. Last updated on October 07, 2026.</div>
</body></html>"""


def ar_archive(members: dict[str, bytes]) -> bytes:
    out = bytearray(b"!<arch>\n")
    for name, data in members.items():
        out += f"{name:<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(data):<10}`\n".encode() + data
        if len(data) % 2:
            out += b"\n"
    return bytes(out)


def tar_xz(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:xz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def make_deb(path: Path, pages: dict[str, str], package: str = "python3.11-doc") -> Path:
    control = f"Package: {package}\nVersion: 3.11.2-6+test1\nArchitecture: all\nDescription: docs\n more\n"
    root = "./usr/share/doc/python3.11/html/"
    data = {root + name: html.encode() for name, html in pages.items()}
    data["./usr/share/doc/python3.11-doc/copyright"] = b"PSF"
    path.write_bytes(
        ar_archive(
            {
                "debian-binary": b"2.0\n",
                "control.tar.xz": tar_xz({"./control": control.encode()}),
                "data.tar.xz": tar_xz(data),
            }
        )
    )
    return path


PAGES = {
    "library/spam.html": PAGE.format(title="spam - Spam things"),
    "tutorial/eggs.html": PAGE.format(title="Eggs tutorial"),
    "whatsnew/3.11.html": PAGE.format(title="What is new"),
    "genindex-A.html": PAGE.format(title="Index A"),
    "contents.html": PAGE.format(title="Contents"),
    "search.html": PAGE.format(title="Search"),
    "_static/x.html": PAGE.format(title="static"),
}


def test_page_text_keeps_the_main_body_prose_one_line_per_block():
    text = pydoc_corpus.page_text(PAGES["library/spam.html"])
    assert text.splitlines() == [
        "spam - Spam things",
        "First paragraph, wrapped over two lines with inline() code.",
        "spam(x)",
        "Return & keep x.",
        "Second line.",
        "item one",
        "item two",
    ]


def test_corpus_has_one_document_per_prose_page_in_hashed_order_with_its_checksum(tmp_path):
    deb = make_deb(tmp_path / "python3.11-doc_3.11.2-6+test1_all.deb", PAGES)
    meta = pydoc_corpus.build_corpus(deb, tmp_path / "out")
    corpus = tmp_path / "out" / "pydoc.jsonl"
    docs = [json.loads(line) for line in corpus.read_text().splitlines()]
    expected = sorted(
        ["library/spam.html", "tutorial/eggs.html", "whatsnew/3.11.html"],
        key=lambda p: hashlib.sha256(p.encode()).hexdigest(),
    )
    assert [d["page"] for d in docs] == expected  # indices, contents, search and _static are left out
    assert meta["documents"] == 3 and meta["version"] == "3.11.2-6+test1" and not meta["matches_reference"]
    assert meta["text_sha256"] == hashlib.sha256(corpus.read_bytes()).hexdigest()
    assert meta["deb_sha256"] == hashlib.sha256(deb.read_bytes()).hexdigest()
    assert json.loads((tmp_path / "out" / "pydoc.meta.json").read_text()) == meta
    assert "PSF" in meta["licence"]
    # the same .deb gives byte-identical text; max_pages keeps the first pages of the same order
    again = pydoc_corpus.build_corpus(deb, tmp_path / "again")
    assert again["text_sha256"] == meta["text_sha256"]
    two = pydoc_corpus.build_corpus(deb, tmp_path / "two", max_pages=2)
    assert [json.loads(x)["page"] for x in (tmp_path / "two" / "pydoc.jsonl").read_text().splitlines()] == expected[
        :2
    ] and two["max_pages"] == 2


def test_cli_builds_from_a_given_deb_and_rejects_bad_input_with_exit_2(tmp_path):
    deb = make_deb(tmp_path / "doc.deb", PAGES)
    proc = run_cli("tools/pydoc_corpus.py", "--out", str(tmp_path / "out"), "--deb", str(deb))
    assert "3 pages" in proc.stdout and (tmp_path / "out" / "pydoc.jsonl").is_file()
    not_a_deb = tmp_path / "junk.deb"
    not_a_deb.write_bytes(b"hello")
    other = make_deb(tmp_path / "other.deb", PAGES, package="python3-foo")
    for args, message in (
        (["--deb", str(tmp_path / "missing.deb")], "does not exist"),
        (["--deb", str(not_a_deb)], "not a .deb"),
        (["--deb", str(other)], "not python3.11-doc"),
        (["--deb", str(deb), "--max-pages", "0"], "must be >= 1"),
    ):
        proc = run_cli("tools/pydoc_corpus.py", "--out", str(tmp_path / "bad"), *args, expect_ok=False)
        assert proc.returncode == 2 and message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, (
            proc.stderr
        )


def test_domains_split_the_pages_by_section_in_the_corpus_order(tmp_path):
    deb = make_deb(tmp_path / "doc.deb", PAGES)
    pydoc_corpus.build_corpus(deb, tmp_path)
    summary = pydoc_corpus.split_domains(tmp_path / "pydoc.jsonl", tmp_path, ("tutorial", "howto"))
    pages = {
        name: [json.loads(line)["page"] for line in (tmp_path / f"{name}.jsonl").read_text().splitlines()]
        for name in ("general", "target")
    }
    assert pages["target"] == ["tutorial/eggs.html"]
    order = [json.loads(line)["page"] for line in (tmp_path / "pydoc.jsonl").read_text().splitlines()]
    assert pages["general"] == [p for p in order if not p.startswith("tutorial/")]
    assert summary["target"]["documents"] == 1 and summary["general"]["sections"] == ["library", "whatsnew"]
    with pytest.raises(pydoc_corpus.CorpusError, match="no pages in section"):
        pydoc_corpus.split_domains(tmp_path / "pydoc.jsonl", tmp_path, ("faq",))
