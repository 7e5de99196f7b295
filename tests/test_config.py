"""Tests of crforge.config: dataclass configs from TOML files and overrides."""

from __future__ import annotations

import dataclasses
import enum
import logging
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pytest

from crforge import config
from crforge.config import (
    ConfigKeyError,
    ConfigTypeError,
    ConfigValueError,
    dumps_toml,
    from_dict,
    load,
    merge,
    parse_override,
    to_dict,
    write_toml,
)


class Combine(enum.Enum):
    MEDIAN = "median"
    MINMED = "minmed"


@dataclass
class SimConfig:
    seed: int = 0
    n_exposures: int = 4
    size: tuple[int, ...] = (512, 512)
    cr_rate: float = 1.5
    field_type: Literal["extragalactic", "globular_cluster", "resolved_galaxy"] = (
        "extragalactic"
    )
    noise: bool = True


@dataclass
class LabelConfig:
    driz_cr_snr: str = "3.5 3.0"
    driz_cr_scale: tuple[float, ...] = (1.2, 0.7)
    combine_type: Literal["minmed", "median"] = "minmed"
    combine_nhigh: int | None = None
    workdir: Path | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    combine: Combine = Combine.MINMED


@dataclass
class RunConfig:
    name: str = "demo"
    out: Path = Path("runs/demo")
    tags: list[str] = field(default_factory=list)
    simulate: SimConfig = field(default_factory=SimConfig)
    label: LabelConfig = field(default_factory=lambda: LabelConfig(combine_nhigh=1))
    extra: SimConfig | None = None


@dataclass
class Required:
    path: Path
    n: int = 1


@dataclass
class Validated:
    lo: float = 0.0
    hi: float = 1.0

    def __post_init__(self) -> None:
        if self.lo > self.hi:
            raise ValueError(f"lo ({self.lo}) > hi ({self.hi})")


@dataclass
class Pair:
    xy: tuple[int, float] = (1, 2.0)
    weights: dict[str, float] = field(default_factory=lambda: {"a": 1.0})
    either: int | str = 0


@dataclass(frozen=True)
class Frozen:
    a: int = 1
    b: str = "x"


@dataclass
class WithInitFalse:
    a: int = 1
    derived: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self.derived = 2 * self.a


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# ------------------------------------------------------------------ from_dict


def test_from_dict_empty_gives_defaults():
    assert from_dict(RunConfig, {}) == RunConfig()


def test_from_dict_nested_partial_table_keeps_other_defaults():
    cfg = from_dict(RunConfig, {"simulate": {"seed": 7}, "label": {"driz_cr_snr": "4 3"}})
    assert cfg.simulate == SimConfig(seed=7)
    assert cfg.label.driz_cr_snr == "4 3"
    # the field's own default (a default_factory) is the base, not LabelConfig()
    assert cfg.label.combine_nhigh == 1


def test_unknown_key_names_dotted_path_and_valid_keys():
    with pytest.raises(ValueError) as info:
        from_dict(RunConfig, {"label": {"driz_cr_snr_typo": "3"}})
    msg = str(info.value)
    assert "'label.driz_cr_snr_typo'" in msg
    assert "driz_cr_scale" in msg and "combine_type" in msg
    assert "did you mean 'label.driz_cr_snr'" in msg
    assert isinstance(info.value, ConfigKeyError)
    assert info.value.key == "label.driz_cr_snr_typo"


def test_unknown_top_level_key():
    with pytest.raises(ValueError, match=r"unknown config key 'bogus'.*valid keys in RunConfig"):
        from_dict(RunConfig, {"bogus": 1})


def test_where_prefix_in_errors():
    with pytest.raises(ValueError, match=r"'run\.stage\.bogus'"):
        from_dict(SimConfig, {"bogus": 1}, where="run.stage")


@pytest.mark.parametrize(
    ("data", "key", "expected"),
    [
        ({"simulate": {"seed": "7"}}, "simulate.seed", "int"),
        ({"simulate": {"seed": 7.0}}, "simulate.seed", "int"),
        ({"simulate": {"seed": True}}, "simulate.seed", "int"),
        ({"simulate": {"noise": 1}}, "simulate.noise", "bool"),
        ({"simulate": {"cr_rate": "fast"}}, "simulate.cr_rate", "float"),
        ({"simulate": {"cr_rate": False}}, "simulate.cr_rate", "float"),
        ({"name": 3}, "name", "str"),
        ({"out": 3}, "out", "Path"),
        ({"simulate": 3}, "simulate", "SimConfig"),
        ({"simulate": {"size": 512}}, "simulate.size", "tuple[int, ...]"),
        ({"simulate": {"size": [512, "x"]}}, "simulate.size[1]", "int"),
        ({"tags": "a"}, "tags", "list[str]"),
        ({"label": {"overrides": [1]}}, "label.overrides", "dict[str, Any]"),
        ({"label": {"combine_nhigh": "one"}}, "label.combine_nhigh", "int | None"),
    ],
)
def test_type_errors_name_key_type_and_value(data, key, expected):
    with pytest.raises(TypeError) as info:
        from_dict(RunConfig, data)
    msg = str(info.value)
    assert f"'{key}'" in msg
    assert expected in msg
    assert isinstance(info.value, ConfigTypeError)


def test_type_error_shows_value():
    with pytest.raises(TypeError, match=r"expects int, got 'seven' \(str\)"):
        from_dict(SimConfig, {"seed": "seven"})


def test_int_accepted_for_float():
    cfg = from_dict(SimConfig, {"cr_rate": 2})
    assert cfg.cr_rate == 2.0 and isinstance(cfg.cr_rate, float)


def test_tuple_path_optional_literal_enum():
    cfg = from_dict(
        RunConfig,
        {
            "out": "runs/x",
            "simulate": {"size": [64, 32], "field_type": "globular_cluster"},
            "label": {
                "driz_cr_scale": [1.5, 1],
                "combine_nhigh": None,
                "workdir": "/tmp/w",
                "combine": "median",
            },
        },
    )
    assert cfg.out == Path("runs/x")
    assert cfg.simulate.size == (64, 32)
    assert cfg.label.driz_cr_scale == (1.5, 1.0)
    assert all(isinstance(v, float) for v in cfg.label.driz_cr_scale)
    assert cfg.label.combine_nhigh is None
    assert cfg.label.workdir == Path("/tmp/w")
    assert cfg.label.combine is Combine.MEDIAN


def test_enum_by_name():
    assert from_dict(LabelConfig, {"combine": "MEDIAN"}).combine is Combine.MEDIAN
    with pytest.raises(ValueError, match="'combine' must be one of"):
        from_dict(LabelConfig, {"combine": "mean"})


def test_literal_rejects_other_values():
    with pytest.raises(ValueError) as info:
        from_dict(RunConfig, {"simulate": {"field_type": "galaxy"}})
    msg = str(info.value)
    assert "'simulate.field_type'" in msg
    assert "'globular_cluster'" in msg and "'galaxy'" in msg
    assert isinstance(info.value, ConfigValueError)


def test_none_rejected_for_non_optional():
    with pytest.raises(TypeError, match="'name'.*None"):
        from_dict(RunConfig, {"name": None})


def test_optional_nested_dataclass():
    cfg = from_dict(RunConfig, {"extra": {"seed": 3}})
    assert cfg.extra == SimConfig(seed=3)
    with pytest.raises(ValueError, match=r"'extra\.bogus'"):
        from_dict(RunConfig, {"extra": {"bogus": 3}})


def test_fixed_tuple_dict_union():
    cfg = from_dict(Pair, {"xy": [3, 4], "weights": {"b": 2}, "either": "name"})
    assert cfg.xy == (3, 4.0) and isinstance(cfg.xy[1], float)
    assert cfg.weights == {"b": 2.0}
    assert cfg.either == "name"
    assert from_dict(Pair, {"either": 5}).either == 5
    with pytest.raises(TypeError, match="expected 2 items"):
        from_dict(Pair, {"xy": [1, 2, 3]})
    with pytest.raises(TypeError, match=r"'weights\.b'.*float"):
        from_dict(Pair, {"weights": {"b": "heavy"}})
    with pytest.raises(TypeError, match=r"'either'.*int \| str"):
        from_dict(Pair, {"either": 1.5})


def test_dict_any_values_kept_as_given():
    cfg = from_dict(LabelConfig, {"overrides": {"combine_nhigh": 1, "skysub": False}})
    assert cfg.overrides == {"combine_nhigh": 1, "skysub": False}


def test_required_field():
    assert from_dict(Required, {"path": "a/b"}) == Required(Path("a/b"))
    with pytest.raises(ValueError, match="missing required config key.*'path'"):
        from_dict(Required, {"n": 2})


def test_post_init_error_is_reported_with_location():
    @dataclass
    class Holder:
        v: Validated = field(default_factory=Validated)

    with pytest.raises(ValueError, match=r"invalid config 'v': lo \(2.0\) > hi"):
        from_dict(Holder, {"v": {"lo": 2}})


def test_init_false_fields_are_not_keys():
    assert from_dict(WithInitFalse, {"a": 3}).derived == 6
    with pytest.raises(ValueError, match="unknown config key 'derived'"):
        from_dict(WithInitFalse, {"derived": 3})
    assert to_dict(WithInitFalse(a=2)) == {"a": 2}


def test_from_dict_rejects_non_dataclass_and_non_mapping():
    with pytest.raises(TypeError):
        from_dict(dict, {})
    with pytest.raises(TypeError, match="expected a table"):
        from_dict(SimConfig, [1, 2])


# ------------------------------------------------------------------ merge


def test_merge_is_deep_and_does_not_mutate():
    base = from_dict(RunConfig, {"simulate": {"seed": 5, "n_exposures": 2}})
    new = merge(base, {"simulate": {"seed": 6}, "name": "b"})
    assert new.simulate.seed == 6
    assert new.simulate.n_exposures == 2  # kept from base, not reset to default
    assert new.name == "b"
    assert base.simulate.seed == 5 and base.name == "demo"


def test_merge_errors_and_frozen():
    with pytest.raises(ValueError, match=r"'simulate\.x'"):
        merge(RunConfig(), {"simulate": {"x": 1}})
    with pytest.raises(TypeError, match=r"'simulate\.seed'"):
        merge(RunConfig(), {"simulate": {"seed": "1"}})
    frozen = merge(Frozen(), {"b": "y"})
    assert frozen == Frozen(a=1, b="y")
    with pytest.raises(TypeError):
        merge(RunConfig, {})


def test_merge_runs_post_init():
    with pytest.raises(ValueError, match="lo"):
        merge(Validated(), {"lo": 5.0})


# ------------------------------------------------------------------ parse_override


@pytest.mark.parametrize(
    ("text", "key", "value"),
    [
        ("simulate.n_exposures=2", "simulate.n_exposures", 2),
        ("simulate.cr_rate=3.5", "simulate.cr_rate", 3.5),
        ("simulate.noise=true", "simulate.noise", True),
        ('name="abc"', "name", "abc"),
        ("name=abc", "name", "abc"),
        ("label.driz_cr_snr=3.5 3.0", "label.driz_cr_snr", "3.5 3.0"),
        ("simulate.size=[1, 2]", "simulate.size", [1, 2]),
        (" simulate . seed = 4 ", "simulate.seed", 4),
        ("x=a=b", "x", "a=b"),
        ("x=", "x", ""),
        ("x={a = 1}", "x", {"a": 1}),
        ("x=inf", "x", math.inf),
        ("x=/data/raw", "x", "/data/raw"),
    ],
)
def test_parse_override(text, key, value):
    assert parse_override(text) == (key, value)


@pytest.mark.parametrize("text", ["noequals", "=3", "a..b=1", ".a=1", "a.=1"])
def test_parse_override_bad(text):
    with pytest.raises(ValueError):
        parse_override(text)


def test_parse_override_multiline_is_raw():
    assert parse_override("x=1\ny = 2") == ("x", "1\ny = 2")


# ------------------------------------------------------------------ load


def test_load_defaults_only():
    assert load(RunConfig) == RunConfig()


def test_precedence_defaults_file_overrides(tmp_path):
    path = write(
        tmp_path / "run.toml",
        """
name = "from-file"
[simulate]
seed = 11
n_exposures = 3
[label]
driz_cr_snr = "4.0 3.0"
""",
    )
    cfg = load(RunConfig, path)
    assert cfg.name == "from-file"
    assert cfg.simulate.seed == 11 and cfg.simulate.n_exposures == 3
    assert cfg.simulate.cr_rate == 1.5  # default
    assert cfg.label.combine_nhigh == 1  # default factory

    cfg = load(
        RunConfig,
        str(path),
        ["simulate.seed=12", "label.driz_cr_snr=3.5 3.0", "simulate.seed=13"],
    )
    assert cfg.simulate.seed == 13  # last override wins
    assert cfg.simulate.n_exposures == 3  # file
    assert cfg.label.driz_cr_snr == "3.5 3.0"
    assert cfg.name == "from-file"


def test_override_conversion_by_field_type():
    cfg = load(
        RunConfig,
        overrides=[
            "name=2",  # str field: stays the text "2"
            "out=runs/x",  # Path from raw text
            "simulate.cr_rate=2",  # int -> float
            "simulate.size=[8, 16]",
            "label.driz_cr_scale=[1.5, 1.2]",
            "label.combine_nhigh=2",
            "label.workdir=/scratch/w",
            "label.combine_type=median",
            "simulate.noise=false",
            "tags=['a', 'b']",
        ],
    )
    assert cfg.name == "2"
    assert cfg.out == Path("runs/x")
    assert cfg.simulate.cr_rate == 2.0 and isinstance(cfg.simulate.cr_rate, float)
    assert cfg.simulate.size == (8, 16)
    assert cfg.label.driz_cr_scale == (1.5, 1.2)
    assert cfg.label.combine_nhigh == 2
    assert cfg.label.workdir == Path("/scratch/w")
    assert cfg.label.combine_type == "median"
    assert cfg.simulate.noise is False
    assert cfg.tags == ["a", "b"]


def test_override_into_dict_field_and_inline_table(tmp_path):
    path = write(tmp_path / "c.toml", '[label.overrides]\ncombine_nhigh = 1\n')
    cfg = load(RunConfig, path, ["label.overrides.skysub=false"])
    assert cfg.label.overrides == {"combine_nhigh": 1, "skysub": False}
    cfg = load(RunConfig, path, ["simulate={seed = 9, n_exposures = 2}"])
    assert (cfg.simulate.seed, cfg.simulate.n_exposures) == (9, 2)
    # an inline table merges into the file's table
    path2 = write(tmp_path / "d.toml", "[simulate]\ncr_rate = 9.0\n")
    cfg = load(RunConfig, path2, ["simulate={seed = 9}"])
    assert (cfg.simulate.seed, cfg.simulate.cr_rate) == (9, 9.0)


def test_override_errors_name_the_key_and_the_override():
    with pytest.raises(ValueError) as info:
        load(RunConfig, overrides=["simulate.n_exposure=2"])
    msg = str(info.value)
    assert "'simulate.n_exposure'" in msg
    assert "override 'simulate.n_exposure=2'" in msg
    assert "did you mean 'simulate.n_exposures'" in msg

    with pytest.raises(TypeError) as info:
        load(RunConfig, overrides=["simulate.seed=abc"])
    assert "'simulate.seed'" in str(info.value) and "'abc'" in str(info.value)

    with pytest.raises(TypeError, match=r"'name' expects str, got \{'x': 1\} \(dict\)"):
        load(RunConfig, overrides=["name.x=1"])
    with pytest.raises(TypeError, match="'name' is a value, not a table"):
        load(RunConfig, overrides=["name=a", "name.x=1"])

    with pytest.raises(ValueError, match="KEY=VALUE"):
        load(RunConfig, overrides=["simulate.seed"])


def test_file_errors_name_the_file_and_key(tmp_path):
    path = write(tmp_path / "bad_key.toml", "[simulate]\nsed = 1\n")
    with pytest.raises(ValueError) as info:
        load(RunConfig, path)
    assert str(path) in str(info.value) and "'simulate.sed'" in str(info.value)

    path = write(tmp_path / "bad_type.toml", '[simulate]\nseed = "1"\n')
    with pytest.raises(TypeError) as info:
        load(RunConfig, path, ["name=x"])
    assert str(path) in str(info.value) and "'simulate.seed'" in str(info.value)


def test_missing_file_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.toml"):
        load(RunConfig, tmp_path / "nope.toml")


def test_syntax_error_names_the_file(tmp_path):
    path = write(tmp_path / "broken.toml", "[simulate\nseed = 1\n")
    with pytest.raises(ValueError, match="broken.toml.*invalid TOML"):
        load(RunConfig, path)


def test_override_fixes_bad_file_value(tmp_path):
    path = write(tmp_path / "c.toml", '[simulate]\nseed = "x"\n')
    assert load(RunConfig, path, ["simulate.seed=3"]).simulate.seed == 3


def test_load_required_from_override():
    assert load(Required, overrides=["path=data"]) == Required(Path("data"))


def test_load_logs_at_debug(tmp_path, caplog):
    path = write(tmp_path / "c.toml", "name = 'x'\n")
    with caplog.at_level(logging.DEBUG, logger="crforge.config"):
        load(RunConfig, path, ["simulate.seed=1"])
    assert "c.toml" in caplog.text and "simulate.seed" in caplog.text


# ------------------------------------------------------------------ to_dict / TOML


def _rich_config() -> RunConfig:
    return RunConfig(
        name='quote " backslash \\ tab\t unicode é',
        out=Path("runs/x y"),
        tags=["a", "b.c"],
        simulate=SimConfig(seed=3, size=(64, 32), cr_rate=1e-5, field_type="resolved_galaxy"),
        label=LabelConfig(
            driz_cr_snr="4 3",
            driz_cr_scale=(1.5, 1.2),
            combine_type="median",
            combine_nhigh=2,
            workdir=Path("/w"),
            overrides={"final_wcs": True, "dotted.key": 2, "nested": {"a": [1, 2]}},
            combine=Combine.MEDIAN,
        ),
        extra=SimConfig(seed=9, noise=False),
    )


def test_to_dict_is_plain():
    d = to_dict(_rich_config())
    assert d["out"] == "runs/x y"
    assert d["simulate"]["size"] == [64, 32]
    assert d["label"]["combine"] == "median"
    assert d["label"]["combine_nhigh"] == 2
    assert d["extra"]["noise"] is False
    assert to_dict(RunConfig())["extra"] is None  # to_dict keeps None
    assert from_dict(RunConfig, d) == _rich_config()
    with pytest.raises(TypeError):
        to_dict({"a": 1})


def test_dumps_toml_round_trip(tmp_path):
    cfg = _rich_config()
    text = dumps_toml(cfg, header="written by a test\nsecond line")
    assert text.startswith("# written by a test\n# second line\n")
    tomllib.loads(text)  # valid TOML
    path = write(tmp_path / "rt.toml", text)
    assert load(RunConfig, path) == cfg


def test_dumps_toml_defaults_round_trip(tmp_path):
    path = write(tmp_path / "d.toml", dumps_toml(RunConfig()))
    assert load(RunConfig, path) == RunConfig()


def test_dumps_toml_layout():
    text = dumps_toml(RunConfig())
    lines = text.splitlines()
    # root scalars come before any table; nested dataclasses become tables
    assert lines[0] == 'name = "demo"'
    assert "[simulate]" in lines and "[label]" in lines
    assert lines.index('out = "runs/demo"') < lines.index("[simulate]")
    doc = tomllib.loads(text)  # arrays as arrays (tomli-w lays them out one item a line)
    assert doc["simulate"]["size"] == [512, 512]
    assert doc["label"]["driz_cr_scale"] == [1.2, 0.7]
    assert not any(line.startswith("extra") for line in lines)  # None left out
    assert "[label.overrides]" in lines  # empty dict kept as an empty table


def test_dumps_toml_special_floats(tmp_path):
    cfg = Validated(lo=-math.inf, hi=math.inf)
    assert load(Validated, write(tmp_path / "f.toml", dumps_toml(cfg))) == cfg
    text = dumps_toml(SimConfig(cr_rate=math.nan))
    assert "cr_rate = nan" in text


def test_dumps_toml_none_with_non_none_default_warns(caplog):
    @dataclass
    class C:
        x: int | None = 3

    with caplog.at_level(logging.WARNING, logger="crforge.config"):
        text = dumps_toml(C(x=None))
    assert "x" not in text.replace("#", "")
    assert "'x' is None" in caplog.text


def test_dumps_toml_none_against_enclosing_default(caplog):
    # RunConfig.label defaults to LabelConfig(combine_nhigh=1): None there is lossy
    cfg = RunConfig(label=LabelConfig(combine_nhigh=None))
    with caplog.at_level(logging.WARNING, logger="crforge.config"):
        dumps_toml(cfg)
    assert "'label.combine_nhigh' is None" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="crforge.config"):
        dumps_toml(RunConfig())  # extra=None is its default: no warning
    assert caplog.text == ""


def test_dumps_toml_rejects_none_in_array():
    @dataclass
    class C:
        xs: list[Any] = field(default_factory=lambda: [1, None])

    with pytest.raises(ValueError, match="None"):
        dumps_toml(C())


def test_write_toml_atomic(tmp_path):
    out = write_toml(RunConfig(name="w"), tmp_path / "cfg.toml", header="hdr")
    assert out == tmp_path / "cfg.toml"
    assert [p.name for p in tmp_path.iterdir()] == ["cfg.toml"]
    assert load(RunConfig, out).name == "w"


def test_frozen_round_trip(tmp_path):
    cfg = Frozen(a=5, b="z")
    assert load(Frozen, write(tmp_path / "f.toml", dumps_toml(cfg))) == cfg


def test_public_functions_have_docstrings():
    for name in config.__all__:
        obj = getattr(config, name)
        assert obj.__doc__, name
    for name in ("from_dict", "merge", "parse_override", "load", "to_dict", "dumps_toml"):
        assert "Parameters" in getattr(config, name).__doc__
    assert dataclasses.is_dataclass(RunConfig)


def test_unresolvable_local_annotations_are_explained():
    @dataclass
    class LocalInner:
        a: int = 1

    @dataclass
    class LocalOuter:
        inner: LocalInner = field(default_factory=LocalInner)

    with pytest.raises(TypeError, match="module level"):
        from_dict(LocalOuter, {})


def test_module_docstring_example():
    import doctest

    result = doctest.testmod(config)
    assert result.failed == 0 and result.attempted > 0


# ------------------------------------------------------------------ load_section


def test_load_section_reads_its_table_only(tmp_path):
    path = write(
        tmp_path / "run.toml",
        'name = "r"\n[simulate]\nseed = 4\n[label]\nunchecked_here = 1\n',
    )
    cfg = config.load_section(SimConfig, "simulate", path)
    assert cfg == SimConfig(seed=4)
    # overrides relative to the section or with its prefix
    cfg = config.load_section(SimConfig, "simulate", path, ["n_exposures=2", "simulate.seed=5"])
    assert (cfg.seed, cfg.n_exposures) == (5, 2)
    assert config.load_section(SimConfig, "simulate") == SimConfig()
    assert config.load_section(SimConfig, "absent", path) == SimConfig()


def test_load_section_errors_carry_the_prefix(tmp_path):
    path = write(tmp_path / "run.toml", "[simulate]\nsed = 4\n")
    with pytest.raises(ValueError) as info:
        config.load_section(SimConfig, "simulate", path)
    assert "'simulate.sed'" in str(info.value) and str(path) in str(info.value)
    with pytest.raises(TypeError) as info:
        config.load_section(SimConfig, "simulate", overrides=["seed=x"])
    assert "override 'seed=x'" in str(info.value) and "'simulate.seed'" in str(info.value)
    with pytest.raises(ValueError, match="override 'simulate.sed=1'"):
        config.load_section(SimConfig, "simulate", overrides=["simulate.sed=1"])
    path = write(tmp_path / "bad.toml", "simulate = 3\n")
    with pytest.raises(TypeError, match="'simulate'.*expected a table"):
        config.load_section(SimConfig, "simulate", path)


def test_load_section_nested_name(tmp_path):
    path = write(tmp_path / "run.toml", "[stages.simulate]\nseed = 8\n")
    assert config.load_section(SimConfig, "stages.simulate", path).seed == 8
