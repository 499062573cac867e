"""Checks every internal link of the built site: the target file exists and has the anchor.

    python docs/_ext/check_links.py site

MkDocs validates the links written in the Markdown pages; this also checks the HTML that the
theme and mkdocstrings generate (cross-references, the navigation, the table of contents).
Exits with status 1 and lists the broken links when there are any.
"""

from __future__ import annotations

import html.parser
import pathlib
import sys
import urllib.parse


class _Page(html.parser.HTMLParser):

  def __init__(self):
    super().__init__()
    self.links: list[str] = []
    self.ids: set[str] = set()

  def handle_starttag(self, tag, attrs):
    for name, value in attrs:
      if name == "id" and value:
        self.ids.add(value)
      if value and ((name == "href" and tag in ("a", "link")) or
                    (name == "src" and tag in ("img", "script"))):
        self.links.append(value)


def _parse(path: pathlib.Path) -> _Page:
  page = _Page()
  page.feed(path.read_text(encoding="utf-8"))
  return page


def broken_links(site: pathlib.Path) -> list[str]:
  """Returns 'page: link (why)' for each internal link whose target or anchor is missing."""
  pages = {p: _parse(p) for p in site.rglob("*.html")}
  broken = []
  for page, parsed in sorted(pages.items()):
    for link in parsed.links:
      url = urllib.parse.urlsplit(link)
      if url.scheme or url.netloc or link.startswith(("mailto:", "javascript:")):
        continue  # external
      path = urllib.parse.unquote(url.path)
      # a path from the server's root (the 404 page's links, served for any missing path)
      base = site if path.startswith("/") else page.parent
      target = (base / path.lstrip("/")).resolve() if path else page
      if target.is_dir():
        target = target / "index.html"
      where = f"{page.relative_to(site)}: {link}"
      if not target.exists():
        broken.append(f"{where} (no file {target.relative_to(site.resolve())})"
                      if target.is_relative_to(site.resolve()) else f"{where} (outside the site)")
        continue
      if url.fragment and target.suffix == ".html":
        ids = pages[target].ids if target in pages else _parse(target).ids
        if urllib.parse.unquote(url.fragment) not in ids:
          broken.append(f"{where} (no anchor #{url.fragment})")
  return broken


def main(argv: list[str]) -> int:
  site = pathlib.Path(argv[0] if argv else "site").resolve()
  pages = list(site.rglob("*.html"))
  if not pages:
    print(f"no HTML pages under {site}")
    return 1
  broken = broken_links(site)
  for line in broken:
    print(line)
  print(f"{len(pages)} pages, {len(broken)} broken internal links")
  return 1 if broken else 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
