"""The atom browser as one self-contained HTML file.

The page embeds the dictionary's atoms (token, source context, provenance) and, when
given, their held-out usage (:class:`~itda_lens.tools.browse.usage.AtomUsage`) as JSON, with
its CSS and JavaScript inline: no network, no external files, so it opens from the file
system. Only the visible rows are drawn, so it stays fast for tens of thousands of atoms.
"""

from __future__ import annotations

import json
import math
from importlib.resources import files
from pathlib import Path
from typing import Any

from itda_lens.core.itda import ITDA
from itda_lens.tools.browse.usage import AtomUsage

#: Characters of each atom's source text kept before and after its token.
SOURCE_CHARS = (120, 80)
#: Characters of each top held-out context shown before and after its token.
USAGE_CHARS = (60, 40)


def _resource(name: str) -> str:
    return files("itda_lens.tools.browse").joinpath(name).read_text(encoding="utf-8")


def _round(values: list[float], digits: int = 4) -> list[float]:
    return [round(v, digits) if math.isfinite(v) else 0.0 for v in values]


def browser_data(itda: ITDA, usage: AtomUsage | None = None, title: str | None = None) -> dict[str, Any]:
    """The JSON the page embeds: ``meta``, ``docs`` (document ids as hex), ``atoms``
    (columns of provenance) and ``usage`` (columns of statistics, the held-out
    documents that hold top contexts, and per atom its top contexts as
    ``[coefficient, document, char_start, char_end]``; ``None`` without usage)."""
    if usage is not None and usage.n_atoms != itda.n_atoms:
        raise ValueError(f"the usage counts {usage.n_atoms} atoms but the dictionary has {itda.n_atoms}; measure it with this dictionary.")
    p, cfg = itda.provenance, itda.config
    doc_ids = p.doc.tolist()
    docs = sorted({d for d in doc_ids if d != -1})
    doc_index = {d: i for i, d in enumerate(docs)}
    before_chars, after_chars = SOURCE_CHARS
    atoms = {
        "token": list(p.token),
        "before": [text[-before_chars:] for text in p.before],
        "after": [text[:after_chars] for text in p.after],
        "doc": [doc_index.get(d, -1) for d in doc_ids],
        "index": p.token_index.tolist(),
        "start": p.char_start.tolist(),
        "end": p.char_end.tolist(),
    }
    built = cfg.build or {}
    meta = {
        "title": title or " · ".join(str(x) for x in (cfg.model, cfg.hook) if x) or "ITDA dictionary",
        "model": cfg.model,
        "hook": cfg.hook,
        "n_atoms": itda.n_atoms,
        "d_model": itda.d_model,
        "k": itda.k,
        "threshold": cfg.threshold,
        "built_tokens": built.get("tokens"),
    }
    data: dict[str, Any] = {"meta": meta, "docs": [f"{d & (2**64 - 1):016x}" for d in docs], "atoms": atoms, "usage": None}
    if usage is not None:
        spans = usage.top_spans()
        texts = sorted({doc for atom in spans for _, doc, _, _ in atom})
        text_index = {doc: i for i, doc in enumerate(texts)}
        fvu = usage.metrics().get("fvu", float("nan"))
        data["usage"] = {
            "tokens": usage.tokens,
            "used": int((usage.count > 0).sum()),
            "fvu": fvu if math.isfinite(fvu) else None,
            "count": usage.count.tolist(),
            "mean_abs": _round(usage.mean_abs.tolist()),
            "mean": _round(usage.mean.tolist()),
            "texts": [usage.documents[doc] for doc in texts],
            "top": [[[round(v, 4), text_index[doc], start, end] for v, doc, start, end in atom] for atom in spans],
            "context_chars": list(USAGE_CHARS),
        }
    return data


def render_html(data: dict[str, Any]) -> str:
    """The page for :func:`browser_data`'s output."""
    # "<" escaped so no text can close the <script> element that holds the JSON.
    payload = json.dumps(data, ensure_ascii=False, separators=(",", ":")).replace("<", "\\u003c")
    title = data["meta"]["title"].replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    page = _resource("template.html")
    for key, value in (("__CSS__", _resource("browser.css")), ("__JS__", _resource("browser.js")), ("__TITLE__", title)):
        page = page.replace(key, value)
    return page.replace("__DATA__", payload)


def write_browser(itda: ITDA, path: str | Path, usage: AtomUsage | None = None, title: str | None = None) -> Path:
    """Write the atom browser for ``itda`` (with held-out ``usage`` if given) to ``path``,
    one HTML file that opens offline."""
    path = Path(path)
    if not path.parent.exists():
        raise FileNotFoundError(f"cannot write {path}: its folder {path.parent} does not exist.")
    path.write_text(render_html(browser_data(itda, usage, title)), encoding="utf-8")
    return path
