"""Reading the YAML a user or a checkpoint gives: UTF-8 only, no key given twice, a mapping, no alias
bomb. PyYAML's ``safe_load`` keeps the last of two equal keys without a word and Python fails on a
UTF-16 file with a traceback; here both are one-line errors naming the file (or the checkpoint) and
the key, e.g. ``config file my.yaml: key 'lr' is given twice (line 2: 1e-3, line 9: 3e-4); keep one``.
What YAML aliases expand to is counted while a document is composed, and stops at
:data:`MAX_ALIAS_NODES` values or :data:`MAX_ALIAS_CHARS` characters.
"""
import codecs

import yaml

from ..platform.errors import ConfigError, short_quote
from model.errors import QUOTE_LIMIT

__all__ = ["StrictLoader", "DuplicateKeyError", "AliasBombError", "read_utf8", "load_mapping", "load_value",
           "MAX_ALIAS_NODES", "MAX_ALIAS_CHARS"]

#: Most values (nodes) and scalar characters the aliases of one document may expand to; a config
#: file has about sixty keys, so a base mapping merged a few times stays far below.
MAX_ALIAS_NODES, MAX_ALIAS_CHARS = 10_000, 1_000_000

# Byte-order marks of the encodings an editor may pick instead of UTF-8 (UTF-32 first: its
# little-endian mark starts with UTF-16's).
_BOMS = ((codecs.BOM_UTF32_LE, "UTF-32"), (codecs.BOM_UTF32_BE, "UTF-32"),
         (codecs.BOM_UTF16_LE, "UTF-16"), (codecs.BOM_UTF16_BE, "UTF-16"))


class DuplicateKeyError(yaml.YAMLError):
    """A mapping that names one key twice; ``key``, ``first`` and ``second`` are ``(line, text)``."""

    def __init__(self, key, first, second):
        super().__init__(f"key {short_quote(key)} is given twice")
        self.key, self.first, self.second = key, first, second


class AliasBombError(yaml.YAMLError):
    """The aliases of a document expand to more than :data:`MAX_ALIAS_NODES` values or
    :data:`MAX_ALIAS_CHARS` characters; ``line`` is where the alias that crossed the limit is."""

    def __init__(self, line):
        super().__init__(f"aliases expand to more than {MAX_ALIAS_NODES} values or {MAX_ALIAS_CHARS} characters")
        self.line = line


def _expanded(node, sizes):
    """``(values, characters)`` that `node` stands for with every alias in it expanded (memoised per
    node in `sizes`, so a shared node is measured once however often it is repeated)."""
    key = id(node)
    if key not in sizes:
        if isinstance(node, yaml.ScalarNode):
            sizes[key] = (1, len(node.value))
        else:
            items = node.value if isinstance(node, yaml.SequenceNode) else [n for pair in node.value for n in pair]
            parts = [_expanded(n, sizes) for n in items]
            sizes[key] = (1 + sum(p[0] for p in parts), sum(p[1] for p in parts))
    return sizes[key]


def _shown(text):
    """`text` as written when short, else its quoted beginning (:func:`short_quote`)."""
    return text if len(text) <= QUOTE_LIMIT else short_quote(text)


def _node_text(node):
    """The value of a YAML node as written (a scalar's text, else a short flow form)."""
    if isinstance(node, yaml.ScalarNode):
        return _shown(node.value)
    try:
        return _shown(yaml.safe_dump(yaml.load(yaml.serialize(node), Loader=StrictLoader),
                                     default_flow_style=True).strip())
    except yaml.YAMLError:  # pragma: no cover - a node that does not round-trip
        return node.tag


class StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that raises :class:`DuplicateKeyError` for a key given twice in one mapping
    and :class:`AliasBombError` when the document's aliases expand beyond the limits."""

    def compose_document(self):
        self._alias_total, self._alias_sizes = [0, 0], {}
        return super().compose_document()

    def compose_node(self, parent, index):
        if not self.check_event(yaml.AliasEvent):
            return super().compose_node(parent, index)
        line = self.peek_event().start_mark.line + 1
        node = super().compose_node(parent, index)
        values, chars = _expanded(node, self._alias_sizes)
        self._alias_total[0] += values
        self._alias_total[1] += chars
        if self._alias_total[0] > MAX_ALIAS_NODES or self._alias_total[1] > MAX_ALIAS_CHARS:
            raise AliasBombError(line)
        return node

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen = {}
            for key_node, value_node in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":   # '<<: *anchor' may repeat keys on purpose
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.get(key)
                except TypeError:                                # an unhashable key: left to PyYAML
                    continue
                here = (value_node.start_mark.line + 1, _node_text(value_node))
                if first is not None:
                    raise DuplicateKeyError(key, first, here)
                seen[key] = here
        return super().construct_mapping(node, deep)


def read_utf8(path, what="config file", error=ConfigError):
    """The text of `path`; `error` naming it when it is not UTF-8 (a UTF-16/32 byte-order mark or a
    binary file is named as such). A UTF-8 byte-order mark is accepted and dropped."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise error(f"{what} {path} cannot be read: {exc.strerror}") from None
    for bom, name in _BOMS:
        if data.startswith(bom):
            raise error(f"{what} {path} is not UTF-8 text: it starts with a {name} byte-order mark; "
                        "save it as UTF-8 (expected a UTF-8 YAML file)")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        kind = "a binary file" if b"\0" in data[:4096] else "another encoding"
        raise error(f"{what} {path} is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}: "
                    f"{kind}?); expected a UTF-8 YAML file") from None


def load_value(text):
    """One YAML value (e.g. a list typed on the command line) with :class:`StrictLoader`: a key given
    twice or an alias bomb raise (``yaml.YAMLError`` subclasses)."""
    return yaml.load(text, Loader=StrictLoader)


def load_mapping(text, source, error=ConfigError):
    """Parse YAML `text` into a dict ({} for an empty document) with :class:`StrictLoader`.
    `error` (prefixed with `source`) for invalid YAML, a key given twice, aliases that expand
    beyond the limits, or a document that is not a mapping of key: value."""
    try:
        data = load_value(text)
    except AliasBombError as exc:
        raise error(f"{source}: YAML aliases (*name) expand to more than {MAX_ALIAS_NODES} values or "
                    f"{MAX_ALIAS_CHARS} characters (at line {exc.line}); write the values out instead of "
                    "repeating them with aliases") from None
    except DuplicateKeyError as exc:
        (l1, v1), (l2, v2) = exc.first, exc.second
        raise error(f"{source}: key {short_quote(exc.key)} is given twice (line {l1}: {v1}, line {l2}: {v2}); "
                    "keep one") from None
    except (ValueError, OverflowError) as exc:   # a constructor's: e.g. an integer of 5000 digits
        raise error(f"{source}: a value cannot be read: {short_quote(str(exc), 120)}") from None
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise error(f"{source}: invalid YAML{line}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise error(f"{source}: expected a mapping of key: value, got {type(data).__name__}")
    return data
