"""Hypothesis strategies that mutate valid seeds: values of every type, edits of a nested
document (replace, delete, add, rename, retype), and edits of a file's text or bytes."""

from __future__ import annotations

import copy
import math
from typing import Any

from hypothesis import strategies as st

#: Values that have found bugs elsewhere: bounds, signs, huge, tiny, non-finite, odd text.
SPECIAL = [
    0,
    -1,
    1,
    2,
    3,
    2**31 - 1,
    2**63,
    10**6,
    10**9,
    1e-12,
    0.5,
    -0.5,
    1.0,
    1e30,
    1e308,
    math.nan,
    math.inf,
    -math.inf,
    True,
    False,
    None,
    "",
    " ",
    "nan",
    "inf",
    "-inf",
    "1e999",
    "null",
    "auto",
    "cpu",
    "cuda",
    "cuda:7",
    "bogus",
    "../..",
    "/",
    "/dev/null",
    "\x00",
    "é ü 中",
    "x" * 300,
    "[a, b]",
    "{a: 1}",
    [],
    {},
    [None],
    ["layer1.0", "layer1.0"],
]


def scalars() -> st.SearchStrategy[Any]:
    return st.one_of(
        st.sampled_from(SPECIAL),
        st.integers(-(2**40), 2**40),
        st.floats(allow_nan=True, allow_infinity=True, width=64),
        st.text(max_size=12),
        st.booleans(),
    )


def values() -> st.SearchStrategy[Any]:
    """Any YAML/JSON value, nested a little."""
    return st.one_of(
        scalars(),
        st.lists(scalars(), max_size=3),
        st.dictionaries(st.text(max_size=6), scalars(), max_size=2),
    )


def _paths(doc: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += _paths(v, (*prefix, i))
    return out


def _get(doc: Any, path: tuple) -> Any:
    for k in path:
        doc = doc[k]
    return doc


OPS = (
    "replace",
    "replace",
    "nudge",
    "nudge",
    "delete",
    "add",
    "rename",
    "retype",
    "wrap",
    "number",
)


@st.composite
def mutated(draw, seed: Any, max_edits: int = 3, protect: tuple = ()) -> Any:
    """``seed`` (a nested dict/list document) after 1..``max_edits`` random edits.

    ``protect``: top-level paths whose values are never replaced (the cost of a run that
    validates is bounded by the caller, not here).
    """
    doc = copy.deepcopy(seed)
    for _ in range(draw(st.integers(1, max_edits))):
        paths = [p for p in _paths(doc) if not any(p[: len(q)] == q for q in protect)]
        path = draw(st.sampled_from(paths))
        op = draw(st.sampled_from(OPS))
        if not path:  # the whole document
            if op in ("replace", "retype"):
                doc = draw(values())
            continue
        parent, key = _get(doc, path[:-1]), path[-1]
        old = parent[key]
        if op == "replace":
            parent[key] = draw(values())
        elif op == "delete":
            del parent[key]
        elif op == "add" and isinstance(old, dict):
            old[
                draw(st.sampled_from(["lr", "name", "x", "", "Epochs", draw(st.text(max_size=8))]))
            ] = draw(values())
        elif op == "rename" and isinstance(parent, dict):
            new = draw(
                st.sampled_from([f"{key}s", str(key).upper(), f"{key}_", str(key)[:-1] or "_"])
            )
            parent[new] = parent.pop(key)
        elif op == "retype":
            parent[key] = str(old) if not isinstance(old, str) else draw(scalars())
        elif op == "wrap":
            parent[key] = [old]
        elif op == "nudge":  # a nearby value of the same type: often still valid
            if isinstance(old, bool):
                parent[key] = not old
            elif isinstance(old, (int, float)):
                parent[key] = draw(st.sampled_from([old * 2, old / 2, old + 1, old - 1, -old, 0]))
                if isinstance(old, int) and draw(st.booleans()):
                    parent[key] = int(parent[key])
        elif op == "number":
            parent[key] = draw(
                st.sampled_from([0, -1, 10**9, 1e-9, math.nan, math.inf, 2.5, -(2**31)])
            )
    return doc


@st.composite
def text_edit(draw, text: str) -> str:
    """``text`` with one edit: truncated, a character inserted or dropped, a line doubled,
    a tab indent."""
    op = draw(st.sampled_from(["truncate", "insert", "drop", "double", "tab"]))
    if not text:
        return draw(st.text(max_size=20))
    i = draw(st.integers(0, len(text) - 1))
    if op == "truncate":
        return text[:i]
    if op == "insert":
        return (
            text[:i]
            + draw(
                st.sampled_from(
                    [
                        ":",
                        "-",
                        "[",
                        "{",
                        "'",
                        '"',
                        "\t",
                        "\n",
                        "&a",
                        "*a",
                        "!!python/object:os.system",
                        "\x00",
                    ]
                )
            )
            + text[i:]
        )
    if op == "drop":
        return text[:i] + text[i + 1 :]
    lines = text.splitlines(keepends=True)
    j = draw(st.integers(0, len(lines) - 1))
    if op == "double":
        return "".join([*lines[: j + 1], lines[j], *lines[j + 1 :]])
    return "".join([*lines[:j], "\t" + lines[j], *lines[j + 1 :]])


@st.composite
def byte_edit(draw, data: bytes) -> bytes:
    """``data`` with 1..4 byte edits: flips, truncation, insertion, zeroed runs, or
    replaced whole."""
    for _ in range(draw(st.integers(1, 4))):
        op = draw(
            st.sampled_from(["flip", "flip", "truncate", "insert", "zero", "replace", "empty"])
        )
        if op == "empty":
            return b""
        if op == "replace":
            return draw(st.binary(max_size=64))
        if not data:
            data = draw(st.binary(max_size=16))
            continue
        i = draw(st.integers(0, len(data) - 1))
        if op == "flip":
            data = data[:i] + bytes([data[i] ^ (1 << draw(st.integers(0, 7)))]) + data[i + 1 :]
        elif op == "truncate":
            data = data[:i]
        elif op == "insert":
            data = data[:i] + draw(st.binary(min_size=1, max_size=16)) + data[i:]
        else:
            n = draw(st.integers(1, 64))
            data = data[:i] + b"\0" * min(n, len(data) - i) + data[i + n :]
    return data


def differences(a: Any, b: Any, path: str = "", limit: int = 6) -> list[str]:
    """Where ``b`` differs from ``a`` (a short list for reports: the campaign's examples)."""
    if type(a) is not type(b) or not isinstance(a, (dict, list)):
        return [] if a == b or (a != a and b != b) else [f"{path or '.'}: {a!r:.40} -> {b!r:.80}"]
    out: list[str] = []
    if isinstance(a, dict):
        for k in list(a) + [k for k in b if k not in a]:
            if k not in b:
                out.append(f"{path}.{k}: deleted")
            elif k not in a:
                out.append(f"{path}.{k}: added {b[k]!r:.80}")
            else:
                out += differences(a[k], b[k], f"{path}.{k}")
    else:
        if len(a) != len(b):
            out.append(f"{path}: length {len(a)} -> {len(b)}")
        for i, (x, y) in enumerate(zip(a, b, strict=False)):
            out += differences(x, y, f"{path}[{i}]")
    return out[:limit]
