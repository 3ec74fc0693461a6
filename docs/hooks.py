"""MkDocs hooks: pages generated at build time, so they cannot drift from the code.

- ``cli.md``: the command-line reference, the help text of ``ngffreg`` and of each of its
  commands, formatted by the same argparse parser ``ngffreg --help`` uses;
- ``api/*.md``: one API reference page per module of ``src/ngffreg`` (rendered from the
  docstrings by mkdocstrings), added to the navigation under "API reference";
- ``notebooks/*.ipynb``: the notebooks of the repository's ``notebooks/`` folder (rendered
  by mkdocs-jupyter, without executing them), added under "Notebooks".
"""

from __future__ import annotations

import argparse
import contextlib
import html
import os
import re
from pathlib import Path

from mkdocs.plugins import event_priority
from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "ngffreg"
NOTEBOOKS = ROOT / "notebooks"
#: Width of the generated help text (argparse reads $COLUMNS).
HELP_COLUMNS = "88"
#: A Sphinx role as the docstrings write it (``:func:`~ngffreg.image.units```), once
#: rendered to HTML by Markdown: ``:func:<code>~ngffreg.image.units</code>``.
SPHINX_ROLE = re.compile(
    r":(?:py:)?(?:func|class|meth|mod|attr|data|exc|obj|const):<code>(~?)([\w.]+)</code>")


def _modules() -> list[str]:
    """Dotted names of the package's public modules, in file order."""
    names = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        parts = rel.parts
        if any(p.startswith("_") for p in parts) and parts[-1] != "__init__":
            continue
        if parts[-1] == "__init__":
            # a package page only where the package itself holds an API (re-exports)
            if len(parts) > 2 and "__all__" not in path.read_text(encoding="utf-8"):
                continue
            parts = parts[:-1]
        names.append(".".join(parts))
    return sorted(names, key=lambda n: (n != "ngffreg", n.count(".") > 1, n))


def _notebooks() -> list[Path]:
    return sorted(NOTEBOOKS.glob("*.ipynb"))


def _api_page(module: str) -> str:
    if module == "ngffreg":
        return _package_page()
    return f"# {module}\n\n::: {module}\n"


def _package_page() -> str:
    """The top-level page: the package docstring, then every name ``ngffreg`` exports,
    linked to where it is documented, then every module."""
    import inspect

    import ngffreg

    rows = []
    for name in ngffreg.__all__:
        obj = getattr(ngffreg, name)
        if inspect.ismodule(obj):
            rows.append(f"| [`ngffreg.{name}`]({obj.__name__}.md) | module |")
        elif inspect.isclass(obj) or inspect.isfunction(obj):
            kind = "class" if inspect.isclass(obj) else "function"
            rows.append(f"| [`ngffreg.{name}`][{obj.__module__}.{obj.__qualname__}] | {kind} |")
    modules = "".join(f"- [`{m}`]({m}.md)\n" for m in _modules() if m != "ngffreg")
    return ("# ngffreg\n\n::: ngffreg\n    options:\n      members: false\n"
            "      show_submodules: false\n\n"
            "## Top-level names\n\n| name | kind |\n|---|---|\n" + "\n".join(rows)
            + "\n\n## Modules\n\n" + modules)


def _cli_page() -> str:
    from ngffreg.cli import _parser

    with _columns(HELP_COLUMNS):
        parser = _parser()
        sections = [("ngffreg", parser.format_help())]
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                sections += [(f"ngffreg {name}", sub.format_help())
                             for name, sub in action.choices.items()]
    out = ["# Command line\n\n",
           "Generated from the command's own argument parser when the documentation is "
           "built: the text below is what `ngffreg --help` and `ngffreg COMMAND --help` "
           "print. Exit status 2 means bad input or an unwritable output, with a message "
           "that says what to do.\n\n"]
    for title, text in sections:
        out.append(f"## `{title}`\n\n```text\n{text.rstrip()}\n```\n\n")
    return "".join(out)


@contextlib.contextmanager
def _columns(value: str):
    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = value
    try:
        yield
    finally:
        if old is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = old


def _per_name_parameters() -> None:
    """Document each name of a grouped numpydoc entry (``fixed, moving : path``) with its
    own type and default.

    griffe's numpy parser gives every name of such an entry the first name's annotation
    and default (``coarse_level`` would show ``downsample_factor``'s default of 4); the
    signature has the right ones, so they are taken from there. The parser is wrapped,
    not copied; a griffe without this function fails the build here rather than
    documenting wrong defaults.
    """
    from griffe._internal.docstrings import numpy as numpy_docstrings

    original = numpy_docstrings._read_parameters
    if getattr(original, "ngffreg_per_name", False):
        return

    def read_parameters(lines, docstring, *, offset, **options):
        parameters, new_offset = original(lines, docstring, offset=offset, **options)
        signature = getattr(docstring.parent, "parameters", None)
        for i, parameter in enumerate(parameters):
            shared = [q for q in parameters[max(i - 1, 0):i + 2] if q is not parameter
                      and q.description and q.description is parameter.description]
            if shared and signature is not None and parameter.name in signature:
                parameter.annotation = signature[parameter.name].annotation
                parameter.value = signature[parameter.name].default
        return parameters, new_offset

    read_parameters.ngffreg_per_name = True
    numpy_docstrings._read_parameters = read_parameters


def on_config(config, **kwargs):
    """Add the generated pages to the navigation (and fix grouped parameters)."""
    _per_name_parameters()
    nav = list(config["nav"] or [])
    nav.append({"Command line": "cli.md"})
    nav.append({"Notebooks": [f"notebooks/{p.name}" for p in _notebooks()]})
    groups: dict[str, list] = {}
    api: list = []
    for module in _modules():
        parts = module.split(".")
        if len(parts) > 2:  # ngffreg.io.read -> under "ngffreg.io"
            group = ".".join(parts[:2])
            if group not in groups:
                groups[group] = []
                api.append({group: groups[group]})
            groups[group].append({module: f"api/{module}.md"})
        elif module in groups:
            groups[module].insert(0, {module: f"api/{module}.md"})
        else:
            entry = {module: f"api/{module}.md"}
            if len(parts) == 2 and any(m.startswith(module + ".") for m in _modules()):
                groups[module] = [entry]
                api.append({module: groups[module]})
            else:
                api.append(entry)
    nav.append({"API reference": api})
    config["nav"] = nav
    return config


@event_priority(100)  # before mkdocs-jupyter, which picks up the notebooks
def on_files(files, config, **kwargs):
    """Generate the CLI and API pages and add the notebooks."""
    files.append(File.generated(config, "cli.md", content=_cli_page()))
    for module in _modules():
        files.append(File.generated(config, f"api/{module}.md", content=_api_page(module)))
    for path in _notebooks():
        # a real source folder (the repository root), not File.generated: mkdocs-jupyter
        # finds the notebook through src_dir
        files.append(File(f"{NOTEBOOKS.name}/{path.name}", src_dir=str(ROOT),
                          dest_dir=config["site_dir"],
                          use_directory_urls=config["use_directory_urls"]))
    return files


def on_page_content(html_text, page, **kwargs):
    """The docstrings' Sphinx roles become links where the target is documented (an
    optional cross-reference: mkdocs-autorefs links it when it finds it, and leaves plain
    code, without a warning, when it does not). A name without a module is looked up in
    the module of the API page."""
    src = page.file.src_uri
    module = src[4:-3] if src.startswith("api/") and src.endswith(".md") else None

    def link(match: re.Match) -> str:
        short, target = match[1], match[2]
        title = target.rsplit(".", 1)[-1] if short else target
        identifier = target
        if not target.startswith("ngffreg") and module is not None:
            identifier = f"{module}.{target}"
        return (f'<autoref identifier="{html.escape(identifier)}" optional>'
                f"<code>{html.escape(title)}</code></autoref>")

    return SPHINX_ROLE.sub(link, html_text)
