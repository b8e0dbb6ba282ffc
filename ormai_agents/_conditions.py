"""The row-policy condition language: parsed once, compiled to SQLAlchemy per call.

    condition := or
    or        := and ("OR" and)*
    and       := not ("AND" not)*
    not       := "NOT" not | "(" condition ")" | predicate | "true" | "false"
    predicate := operand ("=" | "!=" | "<>" | "<" | "<=" | ">" | ">=") operand
               | operand ["NOT"] "IN" ("(" literal ("," literal)* ")" | principal_ref)
               | column "IS" ["NOT"] "NULL"
    operand   := column | principal_ref | literal
    literal   := 'text' | number | true | false | null

A small recursive-descent parser: the grammar is tiny and its error messages (naming the policy,
the model and the character position) matter more than anything a parser library would add.
Values are never spliced into SQL: literals and principal values become bound parameters.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, and_, false, not_, or_, true
from sqlalchemy.sql.elements import ColumnClause

from ormai_agents._dialects import exact_compare, exact_in
from ormai_agents._paths import parse_principal_path

__all__ = ["ConditionSyntaxError", "MissingPrincipalValue", "parse_condition"]


class ConditionSyntaxError(ValueError):
    """A condition that does not parse or does not fit its model; `.position` is 1-based."""

    def __init__(self, message: str, position: int) -> None:
        super().__init__(f"{message} (at position {position})")
        self.position = position


class MissingPrincipalValue(Exception):
    """A principal value the condition needs is absent, null, or of the wrong shape."""


# --- AST -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    pos: int


@dataclass(frozen=True, slots=True)
class Ref:
    path: tuple[str, ...]
    pos: int


@dataclass(frozen=True, slots=True)
class Literal:
    value: Any
    pos: int


Operand = Column | Ref | Literal


@dataclass(frozen=True, slots=True)
class Compare:
    op: str
    left: Operand
    right: Operand
    pos: int


@dataclass(frozen=True, slots=True)
class In:
    left: Operand
    right: tuple[Literal, ...] | Ref
    negated: bool
    pos: int


@dataclass(frozen=True, slots=True)
class IsNull:
    column: Column
    negated: bool
    pos: int


@dataclass(frozen=True, slots=True)
class BoolOp:
    op: str  # "and" | "or"
    items: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class Not:
    item: Node


@dataclass(frozen=True, slots=True)
class Const:
    value: bool


Node = Compare | In | IsNull | BoolOp | Not | Const

# --- tokenizer -------------------------------------------------------------------------------

_TOKEN = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<string>'(?:[^']|'')*')
  | (?P<number>-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)
  | (?P<name>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_-]*)*)
  | (?P<op><>|!=|<=|>=|=|<|>)
  | (?P<punct>[(),])
    """,
    re.VERBOSE,
)
_KEYWORDS = {"and", "or", "not", "in", "is", "null", "true", "false"}
_MAX_DEPTH = 50
_MAX_LIST = 1000


@dataclass(frozen=True, slots=True)
class _Tok:
    kind: str  # string number name kw op punct end
    value: Any
    pos: int  # 1-based


def _tokenize(text: str) -> list[_Tok]:
    tokens: list[_Tok] = []
    i = 0
    while i < len(text):
        m = _TOKEN.match(text, i)
        if m is None:
            raise ConditionSyntaxError(f"unexpected character {text[i]!r}", i + 1)
        kind = m.lastgroup
        raw = m.group()
        if kind == "string":
            tokens.append(_Tok("string", raw[1:-1].replace("''", "'"), i + 1))
        elif kind == "number":
            try:
                value: Any = float(raw) if any(c in raw for c in ".eE") else int(raw)
            except ValueError:  # more digits than int() converts
                raise ConditionSyntaxError("number is too long", i + 1) from None
            tokens.append(_Tok("number", value, i + 1))
        elif kind == "name":
            if raw.lower() in _KEYWORDS:
                tokens.append(_Tok("kw", raw.lower(), i + 1))
            else:
                tokens.append(_Tok("name", raw, i + 1))
        elif kind in ("op", "punct"):
            tokens.append(_Tok(kind, raw, i + 1))
        i = m.end()
    tokens.append(_Tok("end", None, len(text) + 1))
    return tokens


# --- parser ----------------------------------------------------------------------------------


class _Parser:
    def __init__(self, text: str) -> None:
        self.tokens = _tokenize(text)
        self.i = 0
        self.depth = 0

    def peek(self) -> _Tok:
        return self.tokens[self.i]

    def take(self) -> _Tok:
        tok = self.tokens[self.i]
        if tok.kind != "end":
            self.i += 1
        return tok

    def at_kw(self, *words: str) -> bool:
        tok = self.peek()
        return tok.kind == "kw" and tok.value in words

    def expect_kw(self, word: str) -> _Tok:
        tok = self.take()
        if tok.kind != "kw" or tok.value != word:
            raise ConditionSyntaxError(f"expected {word.upper()}, found {_describe(tok)}", tok.pos)
        return tok

    def expect_punct(self, char: str) -> _Tok:
        tok = self.take()
        if tok.kind != "punct" or tok.value != char:
            raise ConditionSyntaxError(f"expected {char!r}, found {_describe(tok)}", tok.pos)
        return tok

    def parse(self) -> Node:
        node = self.or_()
        tok = self.peek()
        if tok.kind != "end":
            raise ConditionSyntaxError(f"unexpected {_describe(tok)}", tok.pos)
        return node

    def or_(self) -> Node:
        items = [self.and_()]
        while self.at_kw("or"):
            self.take()
            items.append(self.and_())
        return items[0] if len(items) == 1 else BoolOp("or", tuple(items))

    def and_(self) -> Node:
        items = [self.not_()]
        while self.at_kw("and"):
            self.take()
            items.append(self.not_())
        return items[0] if len(items) == 1 else BoolOp("and", tuple(items))

    def not_(self) -> Node:
        self.depth += 1
        if self.depth > _MAX_DEPTH:
            raise ConditionSyntaxError("condition is nested too deeply", self.peek().pos)
        try:
            tok = self.peek()
            if tok.kind == "kw" and tok.value == "not":
                self.take()
                return Not(self.not_())
            if tok.kind == "punct" and tok.value == "(":
                self.take()
                node = self.or_()
                self.expect_punct(")")
                return node
            return self.predicate()
        finally:
            self.depth -= 1

    def operand(self) -> Operand:
        tok = self.take()
        if tok.kind == "string" or tok.kind == "number":
            return Literal(tok.value, tok.pos)
        if tok.kind == "kw" and tok.value in ("true", "false"):
            return Literal(tok.value == "true", tok.pos)
        if tok.kind == "kw" and tok.value == "null":
            return Literal(None, tok.pos)
        if tok.kind == "name":
            if tok.value == "principal" or tok.value.startswith("principal."):
                try:
                    return Ref(parse_principal_path(tok.value), tok.pos)
                except ValueError as exc:
                    raise ConditionSyntaxError(str(exc), tok.pos) from None
            if "." in tok.value:
                raise ConditionSyntaxError(
                    f"{tok.value!r}: only columns of the model itself and principal.<path> can be used",
                    tok.pos,
                )
            return Column(tok.value, tok.pos)
        raise ConditionSyntaxError(f"expected a column, principal value or literal, found {_describe(tok)}", tok.pos)

    def predicate(self) -> Node:
        start = self.peek()
        left = self.operand()
        tok = self.peek()
        if tok.kind == "op":
            self.take()
            right = self.operand()
            for side in (left, right):
                if isinstance(side, Literal) and side.value is None:
                    why = "comparing with null is never true; use IS NULL or IS NOT NULL"
                    raise ConditionSyntaxError(why, side.pos)
            return Compare("!=" if tok.value == "<>" else tok.value, left, right, start.pos)
        if self.at_kw("not", "in"):
            negated = False
            if self.at_kw("not"):
                self.take()
                negated = True
            self.expect_kw("in")
            return In(left, self.in_items(), negated, start.pos)
        if self.at_kw("is"):
            self.take()
            negated = False
            if self.at_kw("not"):
                self.take()
                negated = True
            self.expect_kw("null")
            if not isinstance(left, Column):
                raise ConditionSyntaxError(
                    "IS NULL applies to columns; a missing principal value already denies the call", start.pos
                )
            return IsNull(left, negated, start.pos)
        if isinstance(left, Literal) and isinstance(left.value, bool):
            return Const(left.value)
        raise ConditionSyntaxError(
            f"expected a comparison, IN or IS NULL after {_describe(start)}, found {_describe(tok)}", tok.pos
        )

    def in_items(self) -> tuple[Literal, ...] | Ref:
        tok = self.peek()
        if tok.kind == "name":
            ref = self.operand()
            if not isinstance(ref, Ref):
                raise ConditionSyntaxError("IN takes a parenthesised list of literals or a principal value", tok.pos)
            return ref
        self.expect_punct("(")
        items: list[Literal] = []
        while True:
            item = self.operand()
            if not isinstance(item, Literal) or item.value is None:
                raise ConditionSyntaxError("IN lists hold non-null literals only", item.pos)
            items.append(item)
            if len(items) > _MAX_LIST:
                raise ConditionSyntaxError("IN list is too long", item.pos)
            tok = self.take()
            if tok.kind == "punct" and tok.value == ")":
                return tuple(items)
            if not (tok.kind == "punct" and tok.value == ","):
                raise ConditionSyntaxError(f"expected ',' or ')', found {_describe(tok)}", tok.pos)


def _describe(tok: _Tok) -> str:
    if tok.kind == "end":
        return "end of condition"
    if tok.kind == "string":
        return "a string"
    if tok.kind == "number":
        return "a number"
    if tok.kind == "kw":
        return str(tok.value).upper()
    return repr(tok.value)


def parse_condition(text: str) -> Node:
    """Parse a condition into its tree. Raises ConditionSyntaxError with a 1-based position."""
    if not isinstance(text, str):
        raise ConditionSyntaxError("a condition must be a string", 1)
    return _Parser(text).parse()


# --- binding to a model ----------------------------------------------------------------------

PY_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "=": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}
FLIP = {"=": "=", "!=": "!=", "<": ">", "<=": ">=", ">": "<", ">=": "<="}


def _walk(node: Node):  # type: ignore[no-untyped-def]
    yield node
    if isinstance(node, BoolOp):
        for item in node.items:
            yield from _walk(item)
    elif isinstance(node, Not):
        yield from _walk(node.item)


def operands(node: Node) -> list[Operand]:
    """Every operand in the tree (for validation and linting)."""
    out: list[Operand] = []
    for n in _walk(node):
        if isinstance(n, Compare):
            out += [n.left, n.right]
        elif isinstance(n, In):
            out.append(n.left)
            out += [n.right] if isinstance(n.right, Ref) else list(n.right)
        elif isinstance(n, IsNull):
            out.append(n.column)
    return out


def columns_used(node: Node) -> set[str]:
    return {o.name for o in operands(node) if isinstance(o, Column)}


@dataclass(frozen=True, slots=True)
class ColumnBinding:
    """What the compiler needs to know of one column."""

    sql: ColumnClause[Any] | ColumnElement[Any]
    coerce: Callable[[Any], Any]


class BoundCondition:
    """A parsed condition checked against one model; compiled to SQL for each principal."""

    def __init__(self, tree: Node, columns: Mapping[str, ColumnBinding]) -> None:
        self.tree = tree
        self.columns = columns
        for op in operands(tree):
            if isinstance(op, Column) and op.name not in columns:
                raise ConditionSyntaxError(f"unknown column {op.name!r}", op.pos)
        # Literals compared with a column are coerced to its type once, here.
        self._literals: dict[int, Any] = {}
        for n in _walk(tree):
            if isinstance(n, Compare):
                pairs = [(n.left, n.right), (n.right, n.left)]
                for col, other in pairs:
                    if isinstance(col, Column) and isinstance(other, Literal):
                        self._literals[id(other)] = self._coerce_literal(col, other)
            elif isinstance(n, In) and isinstance(n.left, Column) and not isinstance(n.right, Ref):
                for lit in n.right:
                    self._literals[id(lit)] = self._coerce_literal(n.left, lit)
        self.principal_only = not columns_used(tree)

    def _coerce_literal(self, col: Column, lit: Literal) -> Any:
        try:
            return self.columns[col.name].coerce(lit.value)
        except ValueError as exc:
            raise ConditionSyntaxError(f"literal does not fit column {col.name!r}: {exc}", lit.pos) from None

    def compile(self, resolve: Callable[[tuple[str, ...]], Any]) -> ColumnElement[bool]:
        """SQL for this condition with the principal's values bound.

        `resolve` returns the principal value at a path, or None when absent. Raises
        MissingPrincipalValue when a needed value is absent or unusable.
        """
        out = self._compile(self.tree, resolve)
        if isinstance(out, bool):
            return true() if out else false()
        return out

    def evaluate(self, resolve: Callable[[tuple[str, ...]], Any]) -> bool:
        """Evaluate a principal-only condition in Python."""
        out = self._compile(self.tree, resolve)
        if not isinstance(out, bool):  # pragma: no cover - guarded at construction
            raise TypeError("condition refers to columns")
        return out

    # Each node compiles to a Python bool (when it depends on the principal only) or SQL.
    def _compile(self, node: Node, resolve: Callable[[tuple[str, ...]], Any]) -> bool | ColumnElement[bool]:
        if isinstance(node, Const):
            return node.value
        if isinstance(node, BoolOp):
            parts = [self._compile(item, resolve) for item in node.items]
            if node.op == "and":
                if any(p is False for p in parts):
                    return False
                sql = [p for p in parts if p is not True]
                return True if not sql else (sql[0] if len(sql) == 1 else and_(*sql))  # type: ignore[arg-type]
            if any(p is True for p in parts):
                return True
            either = [p for p in parts if p is not False]
            return False if not either else (either[0] if len(either) == 1 else or_(*either))  # type: ignore[arg-type]
        if isinstance(node, Not):
            inner = self._compile(node.item, resolve)
            return (not inner) if isinstance(inner, bool) else not_(inner)
        if isinstance(node, IsNull):
            col = self.columns[node.column.name].sql
            return col.is_not(None) if node.negated else col.is_(None)
        if isinstance(node, Compare):
            return self._compare(node, resolve)
        return self._in(node, resolve)

    def _value(self, operand: Operand, resolve: Callable[[tuple[str, ...]], Any]) -> Any:
        if isinstance(operand, Literal):
            return operand.value
        if isinstance(operand, Ref):
            value = resolve(operand.path)
            if value is None or value == "":
                raise MissingPrincipalValue(".".join(("principal", *operand.path)))
            return value
        raise TypeError(operand)  # pragma: no cover

    def _compare(self, node: Compare, resolve: Callable[[tuple[str, ...]], Any]) -> bool | ColumnElement[bool]:
        left, right, op = node.left, node.right, node.op
        if not isinstance(left, Column) and isinstance(right, Column):
            left, right, op = right, left, FLIP[op]
        if isinstance(left, Column):
            binding = self.columns[left.name]
            if isinstance(right, Column):
                rhs: Any = self.columns[right.name].sql
            elif isinstance(right, Literal):
                rhs = self._literals[id(right)]
            else:
                raw = self._value(right, resolve)
                if isinstance(raw, (tuple, list, frozenset, set, Mapping)):
                    raise MissingPrincipalValue("a list principal value needs IN")
                try:
                    rhs = binding.coerce(raw)
                except ValueError:
                    raise MissingPrincipalValue("principal value does not fit the column") from None
            # Text is compared exactly (no case, accent or trailing-space folding).
            return exact_compare(binding.sql, op, rhs)
        a = self._value(left, resolve)
        b = self._value(right, resolve)
        try:
            return bool(PY_OPS[op](a, b))
        except TypeError:
            raise MissingPrincipalValue("values can't be compared") from None

    def _in(self, node: In, resolve: Callable[[tuple[str, ...]], Any]) -> bool | ColumnElement[bool]:
        if isinstance(node.right, Ref):
            raw = self._value(node.right, resolve)
            values = list(raw) if isinstance(raw, (tuple, list, frozenset, set)) else [raw]
        else:
            values = [self._literals.get(id(lit), lit.value) for lit in node.right]
        if isinstance(node.left, Column):
            binding = self.columns[node.left.name]
            if isinstance(node.right, Ref):
                try:
                    values = [binding.coerce(v) for v in values]
                except ValueError:
                    raise MissingPrincipalValue("principal value does not fit the column") from None
            if not values:  # IN () matches nothing; NOT IN () excludes nothing
                return node.negated
            return exact_in(binding.sql, values, node.negated)
        needle = self._value(node.left, resolve)
        found = needle in values
        return (not found) if node.negated else found



def sql_compare(col: Any, op: str, rhs: Any) -> ColumnElement[bool]:
    """A plain SQL comparison (the row-level security generator's; it runs on PostgreSQL)."""
    if op == "=":
        return col == rhs  # type: ignore[no-any-return]
    if op == "!=":
        return col != rhs  # type: ignore[no-any-return]
    if op == "<":
        return col < rhs  # type: ignore[no-any-return]
    if op == "<=":
        return col <= rhs  # type: ignore[no-any-return]
    if op == ">":
        return col > rhs  # type: ignore[no-any-return]
    return col >= rhs  # type: ignore[no-any-return]
