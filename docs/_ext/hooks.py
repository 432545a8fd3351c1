"""MkDocs hook: the benchmark plots of bench/results in the site.

The pages link them as ``../bench/results/NAME.png`` (right on GitHub and in an editor); the
site copies those files and the links are rewritten to their copies. (A page of docs/ left
out of the nav fails ``mkdocs build --strict`` through ``validation.nav.omitted_files``.)
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[2]
IMAGE = re.compile(r"\]\(\.\./(bench/results/[\w.-]+\.png)\)")


def on_files(files: Files, config: Any) -> Files:
    for png in sorted((ROOT / "bench" / "results").glob("*.png")):
        rel = png.relative_to(ROOT).as_posix()
        files.append(
            File(rel, src_dir=str(ROOT), dest_dir=config["site_dir"],
                 use_directory_urls=config["use_directory_urls"])
        )
    return files


def on_page_markdown(markdown: str, page: Any, **kwargs: Any) -> str:
    # ../bench/results/x.png from docs/PAGE.md -> the copy at bench/results/x.png of the site
    depth = page.file.src_uri.count("/")
    return IMAGE.sub(lambda m: "](" + "../" * depth + m.group(1) + ")", markdown)
