"""MkDocs hooks for the itda-lens site.

- ``<!-- cli-help: COMMAND -->`` in a page becomes the ``--help`` text of
  ``itda-lens COMMAND`` (``main`` for the top level), taken from the real parser, so the
  CLI reference never drifts from the code.
- The docstrings use reStructuredText roles (``:func:`x```) and ``::`` before literal
  blocks; after mkdocstrings renders them as Markdown, roles naming an ``itda_lens``
  object become links (when that object is documented) and the rest plain code.
"""

from __future__ import annotations

import argparse
import os
import re

_CLI_MARKER = re.compile(r"<!-- cli-help: ([\w-]+) -->")
_ROLE = re.compile(r":(?:py:)?(?:class|func|meth|mod|attr|data|exc|obj|const):<code>(~?)([^<]+)</code>")
_LITERAL = re.compile(r"::</p>")


def _parsers() -> dict[str, argparse.ArgumentParser]:
    from itda_lens.tools import cli

    os.environ["COLUMNS"] = "88"  # argparse wraps help text at the terminal width
    main = cli.command_parser()
    main.prog = "itda-lens"
    found = {"main": main}
    for action in main._actions:
        if isinstance(action, argparse._SubParsersAction):
            found.update(action.choices)
            subparsers = action
    # Commands whose modules provide a parser the top level may not have wired yet.
    extra = {"browse": "itda_lens.tools.browse.cli:add_browse_parser", "compare": "itda_lens.tools.compare.cli:add_compare_parser"}
    for name, target in extra.items():
        if name not in found:
            module, function = target.split(":")
            add = getattr(__import__(module, fromlist=[function]), function)
            found[name] = add(subparsers)
    return found


def on_page_markdown(markdown: str, page, config, files) -> str:
    if not _CLI_MARKER.search(markdown):
        return markdown
    parsers = _parsers()

    def help_text(match: re.Match) -> str:
        name = match.group(1)
        if name not in parsers:
            raise KeyError(f"{page.file.src_path}: no itda-lens command {name!r} (have {sorted(parsers)}).")
        return "```text\n" + parsers[name].format_help().rstrip() + "\n```"

    return _CLI_MARKER.sub(help_text, markdown)


def on_page_content(html: str, page, config, files) -> str:
    def role(match: re.Match) -> str:
        short, target = match.group(1), match.group(2).strip()
        title = target.rsplit(".", 1)[-1] if short else target
        if target.startswith("itda_lens."):
            return f'<autoref optional identifier="{target}"><code>{title}</code></autoref>'
        return f"<code>{title}</code>"

    return _LITERAL.sub(":</p>", _ROLE.sub(role, html))
