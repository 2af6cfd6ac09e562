"""The config keys' reference for ``--help``: name, type, default and doc of every field of
:class:`src.config.Config`, read from the class itself.

The comments in ``src/config.py`` are the one source of the docs: a field's doc is the comment
block right above it (up to a section line ``# ---- ...``) followed by its end-of-line comment and
the ``#   `` continuation lines under it. :func:`key_docs` parses them with :mod:`tokenize`;
``tests/test_config_help.py`` checks that every field has one.
"""

from __future__ import annotations

import dataclasses
import inspect
import io
import re
import textwrap
import tokenize
import typing
from typing import Dict, List

from src.config import Config

OVERRIDE_SYNTAX = ('config keys: set them in the YAML recipe (--config_path) or on the command line as '
                   '--key value (or --key=value). Values are read as YAML: --img_height 256, --keep_ratio false, '
                   '--mask_rois_per_image null, lists in brackets: --coco_classes "[background, widget]", '
                   '--anchor_ratios "[0.5, 1.0, 2.0]".')
_SECTION = re.compile(r"#\s*-{3,}")
_FIELD = re.compile(r"^\s*([a-z_][a-z0-9_]*)\s*:")


def _comment_text(token: str) -> str:
    return token.lstrip("#").strip()


def key_docs() -> Dict[str, str]:
    """{field name: one-paragraph doc} parsed from the comments of the Config class source."""
    source = textwrap.dedent(inspect.getsource(Config))
    fields = {f.name for f in dataclasses.fields(Config)}
    lines = source.splitlines()
    comments: Dict[int, str] = {}  # line number -> comment token
    code_lines = set()
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string
        elif tok.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER):
            code_lines.add(tok.start[0])
    docs: Dict[str, str] = {}
    pending: List[str] = []  # comment block above the next field
    current = None  # the field whose continuation comments may follow
    for number, line in enumerate(lines, start=1):
        comment = comments.get(number)
        if number in code_lines:
            match = _FIELD.match(line)
            if match and match.group(1) in fields:
                current = match.group(1)
                parts = pending + ([_comment_text(comment)] if comment else [])
                docs[current] = " ".join(p for p in parts if p)
            else:
                current = None
            pending = []
        elif comment is not None:
            if _SECTION.match(comment.strip()):
                pending, current = [], None
            elif current is not None and re.match(r"#\s{2,}", comment.strip()):
                docs[current] = f"{docs[current]} {_comment_text(comment)}".strip()
            else:
                current = None
                pending.append(_comment_text(comment))
        else:  # blank line
            pending, current = [], None
    return docs


def _type_name(hint) -> str:
    origin = typing.get_origin(hint)
    if origin is typing.Union:
        inner = [h for h in typing.get_args(hint) if h is not type(None)]
        return f"{_type_name(inner[0])} or null"
    if origin in (list, List):
        return f"list of {_type_name(typing.get_args(hint)[0])}"
    return getattr(hint, "__name__", str(hint))


def _default_text(field: dataclasses.Field) -> str:
    if field.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        value = field.default_factory()  # type: ignore[misc]
    else:
        value = field.default
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return "[" + ", ".join(str(v) for v in value) + "]"
    return str(value)


def config_keys_help(width: int = 100) -> str:
    """Text listing every config key with its type, default and doc, after the override syntax."""
    hints = typing.get_type_hints(Config)
    docs = key_docs()
    out = textwrap.wrap(OVERRIDE_SYNTAX, width) + [""]
    for field in dataclasses.fields(Config):
        out.append(f"  --{field.name} ({_type_name(hints[field.name])}, default {_default_text(field)})")
        out.extend(textwrap.wrap(docs.get(field.name, ""), width, initial_indent=" " * 6, subsequent_indent=" " * 6,
                                 break_on_hyphens=False))
    return "\n".join(out)
