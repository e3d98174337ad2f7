"""A small HTML page builder on top of dominate (images in rows, headers between)."""

from __future__ import annotations

from pathlib import Path

import dominate
from dominate.tags import a, br, h3, img, meta, p, table, td, tr
from dominate.util import text

from util.io import write_text_atomic


class HTML:
    """Build ``<web_dir>/<filename>``; images are referenced relative to ``web_dir``."""

    def __init__(
        self, web_dir: str | Path, title: str, refresh: int = 0, filename: str = "index.html"
    ) -> None:
        self.web_dir = Path(web_dir)
        self.img_dir = self.web_dir / "images"
        self.img_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.web_dir / filename
        self.doc = dominate.document(title=title)
        if refresh > 0:
            with self.doc.head:
                meta(http_equiv="refresh", content=str(refresh))

    def add_header(self, title: str) -> None:
        with self.doc:
            h3(title)

    def add_text(self, content: str) -> None:
        with self.doc:
            p(content)

    def add_images(self, paths: list[str], captions: list[str], width: int = 256) -> None:
        """One table row of images; ``paths`` are relative to ``web_dir``."""
        with self.doc:
            with table(border=1, style="table-layout: fixed;"):
                with tr():
                    for path, caption in zip(paths, captions, strict=True):
                        with td(style="word-wrap: break-word;", halign="center", valign="top"):
                            with p():
                                with a(href=path):
                                    img(style=f"width:{width}px", src=path)
                                br()
                                text(caption)

    def save(self) -> Path:
        write_text_atomic(self.path, self.doc.render())
        return self.path
