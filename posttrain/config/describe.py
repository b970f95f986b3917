"""Every config key with its type, choices, default and meaning, read from the schema itself.

The schema (``posttrain.config.sections``, ``posttrain.config.reward``) is the one source:
names, types and defaults come from the dataclasses, and each key's description is the
comment on its line in the source (or, failing that, the comment block just above it), so
a key documented where it is defined shows up in ``posttrain config keys`` and in each
command's ``--help`` without being written twice. Reading the comments needs the source
files; where they are missing (a byte-code-only install) the descriptions are empty and
everything else still works.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import functools
import inspect
import io
import textwrap
import tokenize
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal

from posttrain.config.sections import Config
from posttrain.errors import ConfigError

TOP = "top level"  # the section name of Config's own scalar keys (name, output_dir, seed, threads)

# A summary for the sections whose dataclass has no docstring to take one from.
_SUMMARIES = {
    TOP: "the run's name, where it writes, its seed",
    "model": "the model to train: a directory, a .gguf, a Hub id, or the tiny model built from model.tiny",
    "data": "the task (built-in arithmetic or your JSONL) and SFT data selection",
    "train": "steps, batch sizes, sequence length, clipping, checkpoints, packing, memory",
    "optim": "AdamW and its learning-rate schedule",
    "sampling": "how training rollouts are sampled",
    "reward": "the weighted reward components (reward.components[]: each item's keys) and their deadline pool",
    "lora": "low-rank adapters through peft; off (null) until one of its keys is set, then adapters only are trained",
    "stages": "per-stage overlays: stages.<sft|grpo|eval|...> merged over the rest when that stage runs",
}

# Comments that are directives to a tool, not a description.
_DIRECTIVES = ("fmt:", "noqa", "type:", "pragma", "pyright:", "mypy:")


@dataclass(frozen=True)
class KeyDoc:
    """One settable key: ``key`` as written on the command line, e.g. ``optim.lr``."""

    key: str
    type: str  # int, float, bool, str, str or null, mapping, list, or choice
    default: str  # as YAML spells it: null, true, 0.001
    choices: tuple[str, ...]  # the allowed values of a choice key; empty otherwise
    description: str

    @property
    def section(self) -> str:
        head = self.key.split(".", 1)[0].split("[", 1)[0]
        return head if head != self.key or head == "stages" else TOP


def _comments(cls: type) -> dict[str, str]:
    """Field name -> its description comment in ``cls``'s source; {} when the source is not there."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
        tree = ast.parse(source)
        tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    except (OSError, TypeError, SyntaxError, tokenize.TokenError):
        return {}
    comment_at: dict[int, str] = {}  # line -> comment text
    code_lines: set[int] = set()  # lines holding code (not only a comment)
    for tok in tokens:
        if tok.type == tokenize.COMMENT:
            text = tok.string.lstrip("#").strip()
            if not text.startswith(_DIRECTIVES):
                comment_at[tok.start[0]] = text
        elif tok.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER):
            code_lines.update(range(tok.start[0], tok.end[0] + 1))
    classes = [n for n in tree.body if isinstance(n, ast.ClassDef)]
    if not classes:
        return {}
    out: dict[str, str] = {}
    for node in classes[0].body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        end = node.end_lineno or node.lineno
        trailing = [comment_at[n] for n in range(node.lineno, end + 1) if n in comment_at]
        if trailing:
            out[node.target.id] = " ".join(trailing)
            continue
        above: list[str] = []
        n = node.lineno - 1  # a comment block directly above, with no blank line or code between
        while n in comment_at and n not in code_lines:
            above.insert(0, comment_at[n])
            n -= 1
        out[node.target.id] = " ".join(above)
    return out


def _summary(cls: type) -> str:
    doc = inspect.getdoc(cls) or ""
    if not doc or doc.startswith(f"{cls.__name__}("):  # dataclasses invent "Name(field: type, ...)"
        return ""
    first = doc.split("\n\n", 1)[0].replace("\n", " ").replace("``", "`").strip().rstrip(".")
    return first[0].lower() + first[1:] if first[1:2].islower() else first


def _yaml(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return repr(value) if value == "" or value != value.strip() else value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):  # a list item: what differs from its defaults
        shown = [f for f in dataclasses.fields(value) if getattr(value, f.name) != _default(f)]
        return "{" + ", ".join(f"{f.name}: {_yaml(getattr(value, f.name))}" for f in shown) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_yaml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_yaml(v)}" for k, v in value.items()) + "}"
    return str(value)


def _type_name(tp: Any) -> tuple[str, tuple[str, ...]]:
    """(type, choices) of an annotation, in the words a config file uses."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        name, choices = _type_name(inner[0])
        return (f"{name} or null" if type(None) in args else name), choices
    if origin is Literal:
        return "choice", tuple(str(a) for a in args)
    if origin is dict:
        return "mapping", ()
    if origin is list:
        return "list", ()
    return getattr(tp, "__name__", str(tp)), ()


def _dataclass_of(tp: Any) -> type | None:
    """The dataclass an annotation holds (``LoraConfig | None`` -> LoraConfig), else None."""
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return tp
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        return _dataclass_of(inner[0]) if len(inner) == 1 else None
    return None


def _default(f: dataclasses.Field[Any]) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def _walk(cls: type, prefix: str, instance: Any) -> typing.Iterator[KeyDoc]:
    hints = typing.get_type_hints(cls)
    notes = _comments(cls)
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        tp = hints[f.name]
        value = getattr(instance, f.name) if instance is not None else _default(f)
        nested = _dataclass_of(tp)
        if nested is not None:
            # a section that is off by default (lora) shows its class's defaults; its summary says it is off
            inner = value if value is not None and value is not dataclasses.MISSING else None
            yield from _walk(nested, f"{key}.", inner)
            continue
        name, choices = _type_name(tp)
        default = "(required)" if value is dataclasses.MISSING else _yaml(value)
        note = notes.get(f.name, "")
        if f.name.endswith("_s") and "second" not in note:  # the unit is in the name; say it in words too
            note = f"seconds; {note}" if note else "seconds"
        yield KeyDoc(key, name, default, choices, note)
        item = typing.get_args(tp)[0] if typing.get_origin(tp) is list and typing.get_args(tp) else None
        if item is not None and _dataclass_of(item) is not None:  # reward.components[].kind, ...
            yield from _walk(item, f"{key}[].", None)


@functools.cache
def all_keys() -> tuple[KeyDoc, ...]:
    """Every key of the schema, in the order the dataclasses define them."""
    return tuple(_walk(Config, "", None))


@functools.cache
def sections() -> tuple[tuple[str, str], ...]:
    """(name, one-line summary) of each section, the top-level keys first."""
    hints = typing.get_type_hints(Config)
    notes = _comments(Config)
    out = [(TOP, _SUMMARIES[TOP])]
    for f in dataclasses.fields(Config):
        nested = _dataclass_of(hints[f.name])
        if nested is None and f.name != "stages":
            continue
        summary = _SUMMARIES.get(f.name) or (_summary(nested) if nested else "") or notes.get(f.name, "")
        out.append((f.name, summary))
    return tuple(out)


def section_keys(section: str) -> list[KeyDoc]:
    """The keys of ``section`` (``optim``, ``data.arithmetic``, ``top level``) or the one key it names.

    An unknown name is a one-line ``ConfigError`` with the nearest section suggested.
    """
    if section in (TOP, "top"):
        return [k for k in all_keys() if k.section == TOP]
    found = [
        k for k in all_keys() if k.key == section or k.key.startswith(f"{section}.") or k.key.startswith(f"{section}[")
    ]
    if found:
        return found
    names = [s for s, _ in sections() if s != TOP]
    close = difflib.get_close_matches(section, names + [k.key for k in all_keys()], n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]!r}?" if close else f"; sections: {', '.join(names)}"
    raise ConfigError(f"no section or key {section!r}{hint}", file="command line", field="config keys")


def format_keys(docs: typing.Sequence[KeyDoc]) -> str:
    """One line a key, grep-friendly: key, default, type or choices, description; a header per section."""
    if not docs:
        return ""
    width = min(max(len(d.key) for d in docs), 40)
    dwidth = min(max(len(d.default) for d in docs), 20)
    summaries = dict(sections())
    lines: list[str] = []
    current = None
    for d in docs:
        if d.section != current:
            current = d.section
            if lines:
                lines.append("")
            summary = summaries.get(current, "")
            lines.append(f"# {current}" + (f": {summary}" if summary else ""))
        kind = " | ".join(d.choices) if d.choices else d.type
        row = f"{d.key:<{width}}  {d.default:<{dwidth}}  {kind}"
        lines.append(f"{row}  -- {d.description}" if d.description else row)
    return "\n".join(lines)


def format_compact(section: str, width: int = 100) -> str:
    """``section``'s keys as ``key=default`` words wrapped under its name, for a command's ``--help``."""
    docs = section_keys(section) if section != "stages" else []
    words = [f"{d.key.split('.', 1)[1] if d.section != TOP else d.key}={d.default}" for d in docs]
    head = f"  {section}: {dict(sections()).get(section, '')}"
    if not words:
        return head
    body = textwrap.fill(" ".join(words), width=width, initial_indent="      ", subsequent_indent="      ",
                         break_long_words=False, break_on_hyphens=False)  # fmt: skip
    return f"{head}\n{body}"
