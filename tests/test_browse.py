"""The atom browser: held-out usage on the real SmolLM2, and the page in real headless Chromium."""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import quote

import pytest
import torch

from itda_lens import ITDA, Provenance, SparseCodes, build
from itda_lens.core.activations import TransformerLensSource
from itda_lens.core.config import BuildSettings
from itda_lens.core.provenance import document_id
from itda_lens.core.text import file_documents, select_split, token_batches
from itda_lens.tools.browse import AtomUsage, atom_usage, browser_data, write_browser
from itda_lens.tools.browse.cli import add_browse_parser, run_browse

HOOK = "blocks.2.hook_resid_post"
CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="needs a Chromium browser on PATH for the headless browser tests (Debian: apt-get install chromium)"
)


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def source(bridge):
    return TransformerLensSource(bridge, [HOOK])


@pytest.fixture(scope="module")
def itda(source, tokenizer, wikitext):
    """A small real dictionary: 2,000 WikiText tokens at an early layer of SmolLM2."""
    batches = token_batches(select_split(file_documents(wikitext), "train"), tokenizer, 64, 8, 2000)
    return build(source, batches, BuildSettings(k=8, threshold=0.2), progress=False).dictionaries[HOOK]


def heldout(tokenizer, wikitext, tokens=1000):
    return token_batches(select_split(file_documents(wikitext), "heldout"), tokenizer, 64, 8, tokens)


@pytest.fixture(scope="module")
def usage(itda, source, tokenizer, wikitext):
    return atom_usage(itda, source, heldout(tokenizer, wikitext), top=4)


# --------------------------------------------------------------------------- usage
def test_usage_matches_the_encoder_on_heldout_text(itda, usage, source, tokenizer, wikitext):
    counts = torch.zeros(itda.n_atoms, dtype=torch.long)
    abs_sums = torch.zeros(itda.n_atoms, dtype=torch.float64)
    best = torch.zeros(itda.n_atoms, dtype=torch.float64)
    tokens = 0
    for batch in heldout(tokenizer, wikitext):
        x = source(batch.tokens)[HOOK][batch.mask]
        dense = itda.dense(itda.encode(x)).double()
        counts += (dense != 0).sum(0)
        abs_sums += dense.abs().sum(0)
        best = torch.maximum(best, dense.abs().max(0).values)
        tokens += len(x)
    assert usage.tokens == tokens == 1000
    assert torch.equal(usage.count, counts)
    assert torch.allclose(usage.abs_sum, abs_sums, rtol=1e-4)
    assert 0 < int((usage.count > 0).sum()) <= itda.n_atoms
    assert 0 < usage.metrics()["fvu"] < 1
    used = torch.nonzero(usage.count)[:, 0]
    assert torch.allclose(usage.top_value[used, 0].abs().double(), best[used], rtol=1e-4)
    for atom in used[:50].tolist():
        contexts = usage.contexts(atom)
        assert 1 <= len(contexts) <= min(4, int(usage.count[atom]))
        magnitudes = [abs(c.value) for c in contexts]
        assert magnitudes == sorted(magnitudes, reverse=True)
        assert all(c.token.strip() or c.token for c in contexts)


def test_top_contexts_merge_across_batches_like_one_pass():
    g = torch.Generator().manual_seed(0)
    n_atoms, n, k = 50, 600, 6
    text = "".join(chr(97 + i % 26) for i in range(n + 10))
    indices = torch.randint(0, n_atoms, (n, k), generator=g)
    values = torch.randn(n, k, generator=g)
    starts = torch.arange(n)
    whole, parts = AtomUsage(n_atoms, top=3), AtomUsage(n_atoms, top=3)
    docs = torch.full((n,), 7)
    whole.add(SparseCodes(indices, values), docs, starts, starts + 1, {7: text})
    for chunk in torch.arange(n).split(97):
        parts.add(SparseCodes(indices[chunk], values[chunk]), docs[chunk], starts[chunk], starts[chunk] + 1, {7: text})
    assert torch.equal(whole.count, parts.count) and torch.allclose(whole.sum, parts.sum)
    assert torch.allclose(whole.top_value.abs(), parts.top_value.abs(), equal_nan=True)
    dense = torch.zeros(n, n_atoms, dtype=torch.float64).scatter_add_(1, indices, values.double())
    assert torch.equal(whole.count, (dense != 0).sum(0))


def test_an_atom_chosen_twice_counts_once_with_its_summed_coefficient():
    usage = AtomUsage(4, top=2)
    codes = SparseCodes(torch.tensor([[1, 1, 2], [3, 1, 1]]), torch.tensor([[1.0, 2.0, 0.0], [0.5, -1.0, 1.0]]))
    usage.add(codes, torch.tensor([5, 5]), torch.tensor([0, 2]), torch.tensor([1, 3]), {5: "abcdef"})
    assert usage.count.tolist() == [0, 1, 0, 1]
    assert usage.sum.tolist() == [0.0, 3.0, 0.0, 0.5]
    assert [(c.value, c.token, c.after) for c in usage.contexts(1)] == [(3.0, "a", "bcdef")]
    with pytest.raises(ValueError, match="spans for 1"):
        usage.add(codes, torch.tensor([5]), torch.tensor([0]), torch.tensor([1]), {5: "abcdef"})


def test_usage_needs_the_dictionarys_hook(itda, bridge, tokenizer, wikitext):
    with pytest.raises(ValueError, match="make it with hooks="):
        atom_usage(itda, TransformerLensSource(bridge, ["blocks.1.hook_resid_post"]), heldout(tokenizer, wikitext, 64))


# --------------------------------------------------------------------------- the page
def embedded_json(page: str) -> dict:
    match = re.search(r'<script id="itda-data" type="application/json">(.*?)</script>', page, re.DOTALL)
    assert match, "the page holds no data"
    return json.loads(match.group(1))


def test_page_is_self_contained_and_escapes_text(itda, usage, tmp_path):
    path = write_browser(itda, tmp_path / "atoms.html", usage)
    page = path.read_text(encoding="utf-8")
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page), "the page must not load anything from the network"
    data = embedded_json(page)
    assert data == json.loads(json.dumps(browser_data(itda, usage)))
    assert len(data["atoms"]["token"]) == itda.n_atoms == data["meta"]["n_atoms"]
    assert data["usage"]["count"] == usage.count.tolist()

    nasty = Provenance(*(torch.zeros(2, dtype=torch.long) for _ in range(5)), ["</script>", "<b>"], ["a & b", "<!--"], ["x", "y"])
    small = ITDA.from_atoms(torch.randn(2, 4), k=1, provenance=nasty)
    data = embedded_json(write_browser(small, tmp_path / "nasty.html").read_text(encoding="utf-8"))
    assert data["atoms"]["token"] == ["</script>", "<b>"] and data["usage"] is None


def test_page_errors_name_the_fix(itda, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        write_browser(itda, tmp_path / "missing" / "atoms.html")
    with pytest.raises(ValueError, match="measure it with this dictionary"):
        browser_data(itda, AtomUsage(itda.n_atoms + 1))


def test_cli_writes_the_page_next_to_the_dictionary(itda, tmp_path, capsys):
    itda.save(tmp_path / "dict")
    parser = argparse.ArgumentParser(prog="itda-lens")
    add_browse_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["browse", str(tmp_path / "dict"), "--no-usage", "--json"])
    assert args.max_tokens == 20_000 and args.split == "heldout"
    result = run_browse(args)
    assert result["out"] == str(tmp_path / "dict" / "browser.html") and result["n_atoms"] == itda.n_atoms
    assert embedded_json(Path(result["out"]).read_text(encoding="utf-8"))["atoms"]["token"] == itda.provenance.token
    assert "atom browser written to" in capsys.readouterr().out


# --------------------------------------------------------------------------- in Chromium
class _DomRows(HTMLParser):
    """Rows of the atom list (atom id and highlighted token), the match count, the
    detail pane's text and the <body> attributes, from a dumped DOM."""

    def __init__(self):
        super().__init__()
        self.rows: list[tuple[int, str]] = []
        self.body: dict[str, str] = {}
        self.matches = ""
        self.detail = ""
        self._in: str | None = None
        self._atom: int | None = None
        self._depth = 0

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        classes = (attrs.get("class") or "").split()
        if tag == "body":
            self.body = attrs
        elif tag == "div" and "row" in classes and "data-atom" in attrs and "display: none" not in (attrs.get("style") or ""):
            self._atom = int(attrs["data-atom"])
        elif tag == "mark" and "tok" in classes and self._atom is not None:
            self._in = "mark"
        elif tag == "span" and attrs.get("id") == "matches":
            self._in = "matches"
        elif tag == "aside" and attrs.get("id") == "detail":
            self._in, self._depth = "detail", 1
        elif self._in == "detail":
            self._depth += 1

    def handle_endtag(self, tag):
        if self._in == "mark" and tag == "mark":
            self._in, self._atom = None, None
        elif self._in == "matches" and tag == "span":
            self._in = None
        elif self._in == "detail":
            self._depth -= 1
            if self._depth == 0:
                self._in = None

    def handle_data(self, data):
        if self._in == "mark":
            self.rows.append((self._atom, data))
        elif self._in == "matches":
            self.matches += data
        elif self._in == "detail":
            self.detail += data


def chromium(page: Path, profile: Path, *args: str, fragment: str = "") -> subprocess.CompletedProcess:
    command = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
        f"--user-data-dir={profile}", "--window-size=1400,860", "--virtual-time-budget=5000",
        *args, page.resolve().as_uri() + fragment,
    ]
    run = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, f"chromium failed ({run.returncode}): {run.stderr[-2000:]}"
    return run


def dump_dom(page: Path, tmp_path: Path, fragment: str = "") -> _DomRows:
    dom = _DomRows()
    dom.feed(chromium(page, tmp_path / "profile", "--dump-dom", fragment=fragment).stdout)
    assert dom.body.get("data-ready") == "1", "the page's script did not finish"
    return dom


def shown(token: str) -> str:
    """A token as the page shows it."""
    return token.replace("\n", "↵").replace("\t", "→") if token else "∅"


@needs_chromium
def test_browser_shows_atoms_with_highlighted_tokens(itda, usage, tmp_path):
    from PIL import Image

    page = write_browser(itda, tmp_path / "atoms.html", usage)
    screenshot = tmp_path / "browser.png"
    chromium(page, tmp_path / "profile", f"--screenshot={screenshot}")
    image = Image.open(screenshot).convert("RGB")
    assert image.size == (1400, 860)
    pixels = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).reshape(-1, 3).to(torch.int16)
    highlight = ((pixels - torch.tensor([255, 213, 79])).abs().max(1).values <= 12).sum().item()
    assert highlight > 1500, f"only {highlight} pixels of the token highlight colour in the screenshot"
    assert len({tuple(p) for p in pixels[::7].tolist()}) > 200, "the screenshot looks blank"

    dom = dump_dom(page, tmp_path)
    assert 20 <= len(dom.rows) <= 80, "the list should draw the visible rows only"
    assert [atom for atom, _ in dom.rows] == list(range(len(dom.rows)))
    assert all(text == shown(itda.provenance.token[atom]) for atom, text in dom.rows)
    assert dom.matches == f"{itda.n_atoms:,} atoms"
    assert "Atom #0" in dom.detail and "Top held-out contexts" in dom.detail


@needs_chromium
def test_browser_search_by_token_and_by_text(itda, usage, tmp_path):
    page = write_browser(itda, tmp_path / "atoms.html", usage)
    words = [t for t in itda.provenance.token if t.strip().isalpha()]
    token = max(set(words), key=words.count)
    want = [i for i, t in enumerate(itda.provenance.token) if t.strip().lower() == token.strip().lower()]
    dom = dump_dom(page, tmp_path, "#q=" + quote(token.strip()) + "&sort=count")
    assert dom.matches == f"{len(want)} atom" + ("s" if len(want) != 1 else "")
    assert {atom for atom, _ in dom.rows} <= set(want) and len(dom.rows) == min(len(want), len(dom.rows))
    if len(want) <= 20:
        assert {atom for atom, _ in dom.rows} == set(want)
    counts = [int(usage.count[atom]) for atom, _ in dom.rows]
    assert counts == sorted(counts, reverse=True)

    word = "the"
    dom = dump_dom(page, tmp_path, f"#q={word}&mode=text&atom={want[-1]}")
    n_text = int(dom.matches.split()[0].replace(",", ""))
    in_source = sum(word in (b + t + a).lower() for b, t, a in zip(itda.provenance.before, itda.provenance.token, itda.provenance.after))
    assert in_source <= n_text <= itda.n_atoms
    assert f"Atom #{want[-1]}" in dom.detail


@needs_chromium
def test_browser_stays_fast_for_25k_atoms(tmp_path, wikitext):
    text = wikitext.read_text(encoding="utf-8")[:200_000]
    doc = document_id(text)
    spans = [m.span() for m in re.finditer(r"\S+", text)]
    n_atoms, g = 25_000, torch.Generator().manual_seed(0)
    pick = torch.randint(0, len(spans), (n_atoms,), generator=g).tolist()

    def column(values):
        return torch.tensor(values, dtype=torch.long)

    starts, ends = column([spans[i][0] for i in pick]), column([spans[i][1] for i in pick])
    provenance = Provenance(
        column([doc] * n_atoms), column(pick), starts, ends, torch.zeros(n_atoms, dtype=torch.long),
        [text[s:e] for s, e in zip(starts.tolist(), ends.tolist())],
        [text[max(0, s - 160) : s] for s in starts.tolist()], [text[e : e + 160] for e in ends.tolist()],
    )
    itda = ITDA.from_atoms(torch.randn(n_atoms, 16, generator=g), k=8, provenance=provenance)
    usage = AtomUsage(n_atoms, top=5)
    tokens = torch.randint(0, len(spans), (20_000,), generator=g).tolist()
    usage.add(
        SparseCodes(torch.randint(0, n_atoms, (20_000, 8), generator=g), torch.randn(20_000, 8, generator=g)),
        column([doc] * len(tokens)), column([spans[i][0] for i in tokens]), column([spans[i][1] for i in tokens]), {doc: text},
    )
    page = write_browser(itda, tmp_path / "big.html", usage)
    assert page.stat().st_size < 20e6
    dom = dump_dom(page, tmp_path, "#sort=count&atom=24999")
    assert dom.matches == "25,000 atoms"
    assert len(dom.rows) <= 80, f"{len(dom.rows)} rows drawn; the list must draw only what is visible"
    assert "Atom #24999" in dom.detail
    assert float(dom.body["data-render-ms"]) < 5000


# --------------------------------------------------------------------------- plots
def test_attribution_plot_writes_a_png(tmp_path):
    from PIL import Image

    from itda_lens.tools.plots import attribution_plot

    path = attribution_plot([12, 400, 7], [0.8, -0.5, 0.01], [" the", "lobster\n", "x" * 90], tmp_path / "attribution.png")
    width, height = Image.open(path).size
    assert width > 600 and height > 150
    with pytest.raises(ValueError, match="as many scores and labels as atoms"):
        attribution_plot([1, 2], [0.1], ["a", "b"], tmp_path / "bad.png")
