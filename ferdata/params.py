"""params.yaml -> frozen dataclasses, one per stage section.

params.yaml is the single source of values: :func:`section` requires every key of a section, so the few
field defaults (for code that builds a section by hand: tests, benchmarks, the library API) never stand in
for it, and a missing or unknown key is a clear error naming the section.
"""
from __future__ import annotations

import dataclasses
import math
import re
import typing
from pathlib import Path
from typing import Any, Callable, Collection, Mapping, TypeVar

import yaml

from ferdata.errors import NamedKeyError

T = TypeVar("T")
PARAMS_FILE = "params.yaml"
# Settings that set how fast a stage runs or where it keeps its cache, never what it makes: dvc.yaml
# leaves them out of their stage's params (tests/test_dvc_deps.py checks it). Training's own are in
# fermodels.runstate (a run resumes under another value). allow_download decides whether missing weights may
# be fetched, not which: the faces are those of the same model files (in the detection cache key).
SPEED_ONLY: Mapping[str, tuple[str, ...]] = {"detect": ("workers", "cache_dir", "allow_download"),
                                             "align": ("workers",), "derive": ("workers",), "evaluate": ("workers",)}


_NUMBERS = ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float")


class ParamsLoader(yaml.SafeLoader):
    """YAML's plain numbers resolved as YAML 1.2's core schema, as DVC (ruamel.yaml) writes and reads
    params.yaml: ``1e-05`` and ``1.0e5`` are numbers (``dvc exp run -S train.lr=0.00001`` writes
    ``lr: 1e-05``, which PyYAML's 1.1 reads as text), ``017`` is 17 (1.1: octal 15), ``0o17`` is 15,
    ``1:30`` is text (1.1: 90, base 60). The rest as SafeLoader resolves it (``yes``/``no``/``on``/``off``
    stay booleans)."""

    yaml_implicit_resolvers = {first: [(tag, regex) for tag, regex in resolvers if tag not in _NUMBERS]
                               for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}

    def flatten_mapping(self, node: yaml.MappingNode) -> None:
        """A mapping, refused when it names a key twice: PyYAML keeps the last silently (``lr`` set
        twice trained with the second), where DVC (ruamel.yaml) refuses the file. Keys a merge
        (``<<: *base``) brings in may be set again, as YAML means them to. Checked here, on a node's
        first flattening: flattening puts the merged keys into ``node.value`` for good, and a merge
        source may be flattened (as another mapping's ``<<``) before it is constructed itself."""
        checked = self.__dict__.setdefault("_checked_nodes", set())
        if id(node) not in checked:
            checked.add(id(node))
            seen: dict[Any, Any] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.setdefault(key, key_node.start_mark)
                except TypeError:                   # an unhashable key: SafeLoader's own error follows
                    continue
                if first is not key_node.start_mark:
                    raise yaml.constructor.ConstructorError(
                        "while constructing a mapping", node.start_mark,
                        f"found the key {key!r} twice (first on line {first.line + 1}): keep one", key_node.start_mark)
        super().flatten_mapping(node)

    def construct_yaml_int(self, node: yaml.Node) -> int:
        text = str(self.construct_scalar(node)).replace("_", "")
        sign, digits = (-1, text[1:]) if text[:1] == "-" else (1, text.lstrip("+"))
        base = {"0b": 2, "0o": 8, "0x": 16}.get(digits[:2].lower(), 10)
        return sign * int(digits[2:] if base != 10 else digits, base)


ParamsLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^(?:[-+]?[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?"
                                          r"|[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+|[-+]?\.[0-9_]+(?:[eE][-+]?[0-9]+)?"
                                          r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"), list("-+0123456789."))
ParamsLoader.add_implicit_resolver(
    "tag:yaml.org,2002:int", re.compile(r"^(?:[-+]?0b[01_]+|[-+]?0o[0-7_]+|[-+]?[0-9][0-9_]*|[-+]?0x[0-9a-fA-F_]+)$"),
    list("-+0123456789"))
ParamsLoader.add_constructor("tag:yaml.org,2002:int", ParamsLoader.construct_yaml_int)


def read_yaml(text: Any) -> Any:
    """``text`` (a string or a file) read as params.yaml is (:class:`ParamsLoader`)."""
    return yaml.load(text, Loader=ParamsLoader)


def default_params_text() -> str:
    """The project's params.yaml as released: packaged in the wheel as ``ferdata/params.yaml`` (setup.py
    copies it there at build time), else, in a checkout, the one beside ``ferdata/``."""
    from importlib.resources import files

    packaged = files("ferdata") / PARAMS_FILE
    if packaged.is_file():
        return packaged.read_text(encoding="utf-8")
    return (Path(__file__).resolve().parents[1] / PARAMS_FILE).read_text(encoding="utf-8")


def load_params(path: str | Path = PARAMS_FILE) -> dict[str, Any]:
    if Path(path).is_dir():
        raise IsADirectoryError(f"{path} is a folder: give the parameters file (params.yaml) with --params PATH")
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path} not found: run from the project folder (the one with params.yaml) "
                                f"or pass --params PATH (outside a checkout, `ferdata params > params.yaml` "
                                f"writes the defaults)")
    with open(path, encoding="utf-8") as f:
        try:
            data = read_yaml(f)
        except yaml.YAMLError as err:
            raise ValueError(f"{path} is not valid YAML: {err}") from None
        except UnicodeDecodeError:
            raise ValueError(f"{path} is not a YAML text file (not UTF-8 text): give the parameters file "
                             "(params.yaml)") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    return data


def stage_section(params: Mapping[str, Any], name: str, cls: type[T]) -> T:
    """``params[name]`` as dataclass ``cls`` (:func:`section`); a missing section is named."""
    return section(cls, section_values(params, name), name)


def section_values(params: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    """``params[name]``; a missing section (or one that is not a mapping) is named."""
    if not isinstance(params.get(name), Mapping):
        raise NamedKeyError(f"params.yaml has no {name!r} section (copy it from the project's params.yaml)")
    return params[name]


def section(cls: type[T], values: Mapping[str, Any], name: str) -> T:
    """Build dataclass ``cls`` from a params section, rejecting unknown/missing keys."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(values) - names
    missing = names - set(values)
    if unknown or missing:
        parts = ([f"unknown keys {sorted(unknown)} (misspelt, or from another version?)"] if unknown else []) + \
                ([f"missing keys {sorted(missing)} (new settings: copy them with their defaults from the "
                  f"project's params.yaml, section {name})"] if missing else [])
        raise ValueError(f"params section {name!r}: " + "; ".join(parts))
    return cls(**values)


def parse_assignments(items: list[str], example: str = "exclude_classes=[Contempt]") -> dict[str, Any]:
    """``["key=value", ...]`` from the command line as a dict, each value read as YAML
    (``exclude_classes=[Contempt]`` -> a list, ``frames=3`` -> an int); ``example``: one the
    option takes, for the error."""
    out: dict[str, Any] = {}
    for item in items:
        key, eq, text = item.partition("=")
        if not eq or not key.strip():
            raise ValueError(f"{item!r}: expected KEY=VALUE, e.g. {example}")
        try:
            value = read_yaml(text)
        except yaml.YAMLError as err:
            raise ValueError(f"{item!r}: the value is not YAML ({err})") from None
        if isinstance(value, dict) and any(":" in str(k) and v is None for k, v in value.items()):
            raise ValueError(f"{item!r}: YAML reads {{a:b}} as one key 'a:b'; write a space after each colon, "
                             "e.g. mapping={happy: Happy}")
        out[key.strip()] = value
    return out


Rule = tuple[Callable[[Any], bool], str]       # (test, what a good value is)


def repeated(values: Collection[Any]) -> list[Any]:
    """The values that occur more than once in ``values``, sorted (a list param that names
    datasets or files must name each once)."""
    seen = list(values)
    return sorted({v for v in seen if seen.count(v) > 1})


def _number(v: Any) -> bool:
    """A finite int or float: ``.inf`` passed every range (an infinite learning rate trained to NaN
    after the preprocessing, instead of being refused here)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def at_least(n: float) -> Rule:
    return (lambda v: _number(v) and v >= n, f">= {n}")


def above(n: float) -> Rule:
    return (lambda v: _number(v) and v > n, f"> {n}")


def within(lo: float, hi: float) -> Rule:
    return (lambda v: _number(v) and lo <= v <= hi, f"in [{lo}, {hi}]")


def below_from(lo: float, hi: float) -> Rule:
    return (lambda v: _number(v) and lo <= v < hi, f"in [{lo}, {hi})")


def one_of(values: Collection[Any]) -> Rule:
    return (lambda v: v in values, f"one of {', '.join(map(str, values))}")


def optional(rule: Rule) -> Rule:
    return (lambda v: v is None or rule[0](v), f"null or {rule[1]}")


# The plain types a params field can be annotated with, and what a value of each must be.
KINDS: Mapping[type, Rule] = {
    bool: (lambda v: isinstance(v, bool), "true or false"),
    int: (lambda v: isinstance(v, int) and not isinstance(v, bool), "a whole number"),
    float: (_number, "a number"),
    str: (lambda v: isinstance(v, str), "text"),
}


def kind_rule(hint: Any) -> Rule | None:
    """The rule of a field annotated ``bool``, ``int``, ``float`` or ``str`` (or one of them ``| None``);
    None for other annotations (mappings, lists, nested sections), which their own checks cover."""
    args = typing.get_args(hint)
    kinds = [a for a in args if a is not type(None)] if args else [hint]
    if len(kinds) != 1 or kinds[0] not in KINDS:
        return None
    rule = KINDS[kinds[0]]
    return optional(rule) if type(None) in args else rule


def check_values(name: str, values: Any, rules: Mapping[str, Rule]) -> None:
    """Refuse a params section (a dataclass) whose values have the wrong type for their annotation
    or break ``rules`` (field -> rule), naming every bad one: ``workers: 1.5``, ``seed: abc`` or a
    zero batch size fails here, with what to set, not inside a stage."""
    hints = typing.get_type_hints(type(values))
    checks = {f.name: [r for r in (rules.get(f.name), kind_rule(hints[f.name])) if r]    # the rule's words first
              for f in dataclasses.fields(values)}
    bad = []
    for key, field_rules in checks.items():
        value = getattr(values, key)
        broken = next((good for ok, good in field_rules if not ok(value)), None)
        if broken:
            bad.append(f"{name}.{key} must be {broken}, got {value!r}{_text_number(value)}")
    if bad:
        raise ValueError("; ".join(bad))


def _text_number(value: Any) -> str:
    """A hint for a number YAML read as text (quoted)."""
    if not isinstance(value, str):
        return ""
    try:
        float(value)
    except ValueError:
        return ""
    return " (YAML read it as text: write it without quotes)"


DATASET_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]*")      # no leading "-": a stage would read "-h" as an option


def is_name_list(names: Any) -> bool:
    """Whether ``names`` is a list (or tuple) of non-empty strings, as datasets are named in a list."""
    return isinstance(names, (list, tuple)) and all(isinstance(n, str) and n for n in names)


def dataset_specs(params: Mapping[str, Any]) -> Mapping[str, Any]:
    """params.yaml's ``datasets`` section (empty when absent), refused when it is no mapping: written
    as a list, like ``train.datasets``, it gave a TypeError traceback."""
    specs = params.get("datasets") or {}
    if not isinstance(specs, Mapping):
        raise ValueError(f"params.yaml datasets must map each dataset's name to its reader, root and options "
                         f"(datasets: {{sample: {{reader: affectnet, root: data/raw/sample}}}}), got {specs!r}; the "
                         "datasets to train on are train.datasets")
    if bad := [name for name in specs if not isinstance(name, str) or not DATASET_NAME.fullmatch(name)]:
        raise ValueError(f"params.yaml datasets: name {bad[0]!r} is not letters, digits, _ and - only, not starting "
                         "with - (dvc.yaml's stages for each dataset take a dot for a params path, a space splits a "
                         "command line, and `ferdata prepare -h` reads a leading - as an option)")
    return specs
