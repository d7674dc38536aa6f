"""The spec (spec.yaml) against the rules (config.py), the documented configs, Airbyte's form rules, the published
0.1.0 spec and metadata.yaml.

config.py reads the settings' defaults, bounds and choices and each api option's fields from the spec; what it
adds (messages, rules JSON Schema cannot say) is held to the spec here. The bug these tests exist for: `check`
said SUCCEEDED for a config that the spec, and so Airbyte's UI and PyAirbyte, refuse. So: whatever the spec
refuses, parse_config must refuse too; and where the spec accepts and parse_config refuses, its message must name
the field to fix.
"""

from __future__ import annotations

import ast
import datetime
import fnmatch
import json
import logging
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from airbyte_cdk.models import ConnectorSpecificationSerializer
from airbyte_cdk.models.connector_metadata import MetadataFile
from airbyte_cdk.test.standard_tests._spec_compatibility import compare_specs, declared_breaking_changes
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from jsonschema import Draft7Validator

from destination_heap_analytics.config import (
    API_TYPES,
    DEFAULT_CONCURRENCY,
    EU_BASE_URL,
    EXACTLY_ONE,
    PRESETS,
    REQUIRED_COLUMNS,
    US_BASE_URL,
    ConfigError,
    option_columns,
    parse_config,
)
from destination_heap_analytics.destination import DestinationHeapAnalytics
from destination_heap_analytics.rejected import (
    DEFAULT_FILE_NAME_FORMAT,
    DEFAULT_PATH_FORMAT,
    FIELD,
    parse_storage_config,
)

ROOT = Path(__file__).resolve().parents[1]
# The spec Airbyte's registry published for destination-heap-analytics 0.1.0 (its destination_heap_analytics/spec.json).
PUBLISHED_SPEC_PATH = Path(__file__).with_name("published_spec_0.1.0.json")
PUBLISHED_VERSION = "0.1.0"

SPECIFICATION = DestinationHeapAnalytics().spec(logging.getLogger("airbyte"))
SPEC = SPECIFICATION.connectionSpecification
VALIDATOR = Draft7Validator(SPEC)
API_OPTIONS = SPEC["properties"]["api"]["oneOf"]
OPTION_BY_TYPE = {option["properties"]["api_type"]["const"]: option for option in API_OPTIONS}
WHOLE_NUMBERS = [name for name, prop in SPEC["properties"].items() if prop.get("type") == "integer"]
PLACEHOLDER_APP_ID = "11"  # what a documented config fragment is wrapped with


def spec_errors(config: Any) -> list[str]:
    return sorted(
        f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in VALIDATOR.iter_errors(config)
    )


# ------------------------------------------------------------------------------------------------------------
# The documented configs: README.md, docs/*.md and sample_files/config_*.json


JSON_FENCES = ("json", "json5", "jsonc")
PYTHON_FENCES = ("python", "py")


def fenced_blocks(text: str, languages: tuple[str, ...]) -> list[tuple[int, str]]:
    """(first line number, body) of every ``` / ~~~ fenced block in one of `languages`, indented or not."""
    blocks: list[tuple[int, str]] = []
    fence: str | None = None
    wanted = False
    start = 0
    body: list[str] = []
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if fence is None:
            match = re.match(r"(`{3,}|~{3,})\s*([\w+-]*)", stripped)
            if match:
                fence, wanted, start, body = match[1], match[2].lower() in languages, number + 1, []
        elif stripped.startswith(fence) and not stripped[len(fence) :].strip():
            if wanted:
                blocks.append((start, "\n".join(body)))
            fence = None
        else:
            body.append(line)
    return blocks


def config_arguments(code: str) -> list[Any]:
    """The literal dicts a python block passes as `config=` (PyAirbyte's get_destination(..., config={...}))."""
    return [
        ast.literal_eval(node.value)
        for node in ast.walk(ast.parse(code))
        if isinstance(node, ast.keyword) and node.arg == "config" and isinstance(node.value, ast.Dict)
    ]


def documented_configs() -> tuple[list[Any], list[Any]]:
    """pytest params of (config) for every config the docs and sample files show, and of (source, body) for
    every json block that mentions app_id or api_type but is not JSON.

    The rule for a fenced json block, and for a dict a python block passes as `config=`: an object with
    `app_id` is a whole config, checked as written; an object with `api` but no `app_id` is a config shown
    without its environment, and one with `api_type` (and neither) is an `api` object: both are wrapped into a
    whole config with app_id "11". Anything else (a record, a catalog, a message, a list, a source's config)
    is not a config and is skipped.
    """
    found: list[Any] = []
    broken: list[Any] = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = path.read_text(encoding="utf-8")
        shown: list[tuple[str, Any]] = []
        for line, body in fenced_blocks(text, JSON_FENCES):
            source = f"{path.relative_to(ROOT)}:{line}"
            try:
                shown.append((source, json.loads(body)))
            except ValueError:
                if '"app_id"' in body or '"api_type"' in body:
                    broken.append(pytest.param(source, body, id=source))
        for line, body in fenced_blocks(text, PYTHON_FENCES):
            shown += [(f"{path.relative_to(ROOT)}:{line}", value) for value in config_arguments(body)]
        for source, block in shown:
            if not isinstance(block, dict):
                continue
            if "app_id" in block:
                config = block
            elif "api" in block:
                config = {"app_id": PLACEHOLDER_APP_ID, **block}
            elif "api_type" in block:
                config = {"app_id": PLACEHOLDER_APP_ID, "api": block}
            else:
                continue
            found.append(pytest.param(config, id=source))
    for path in sorted((ROOT / "sample_files").glob("config_*.json")):
        found.append(pytest.param(json.loads(path.read_text()), id=str(path.relative_to(ROOT))))
    return found, broken


DOCUMENTED, BROKEN_DOCUMENTED = documented_configs()


@pytest.mark.parametrize("config", DOCUMENTED)
def test_documented_config_is_valid(config):
    assert not spec_errors(config), spec_errors(config)
    parse_config(config)
    parse_storage_config(config)


@pytest.mark.parametrize("source, body", BROKEN_DOCUMENTED)
def test_documented_config_is_json(source, body):
    pytest.fail(f"{source}: a json block that shows a config is not valid JSON:\n{body}")


def test_sample_files_use_the_current_shape():
    """Presets are api options now: no sample keeps the old top-level `preset`; the three api types of the
    0.1.0 connector each have a sample, and samples point at a local server only."""
    samples = {path.name: json.loads(path.read_text()) for path in (ROOT / "sample_files").glob("config_*.json")}
    assert samples
    for name, sample in samples.items():
        assert "preset" not in sample, f"{name}: the top-level preset is gone; use api.api_type"
        assert sample["api"]["api_type"] in OPTION_BY_TYPE, name
        base_url = sample.get("base_url", US_BASE_URL)
        assert base_url.startswith("http://127.0.0.1:"), f"{name}: samples point at the local stand-in only"
    assert {"track", "add_user_properties", "add_account_properties"} <= {
        s["api"]["api_type"] for s in samples.values()
    }


# ------------------------------------------------------------------------------------------------------------
# Airbyte's form rules


def walk_properties(schema: dict, path: str = ""):
    """(path, name, property schema, sibling properties) for every property, options included."""
    for name, prop in schema.get("properties", {}).items():
        yield f"{path}{name}", name, prop, schema["properties"]
        yield from walk_properties(prop, f"{path}{name}.")
        for index, option in enumerate(prop.get("oneOf", [])):
            yield from walk_properties(option, f"{path}{name}[{index}].")


# Each oneOf's discriminator: the string property every option has, a const (the api options) or a one-value enum
# (object_storage_config's options, as Airbyte's activation destinations declare them)
DISCRIMINATORS = {
    "api": "api_type",
    "object_storage_config": "storage_type",
    "format": "format_type",
    "compression": "compression_type",
}


def test_every_oneof_option_is_a_titled_object_told_apart_by_a_discriminator():
    found_oneof = set()
    for path, name, prop, _ in walk_properties(SPEC):
        if "oneOf" not in prop:
            continue
        found_oneof.add(name)
        assert prop.get("type") == "object", path
        key = DISCRIMINATORS[name]
        consts = []
        for index, option in enumerate(prop["oneOf"]):
            where = f"{path}.oneOf[{index}]"
            assert option.get("type") == "object", where
            assert isinstance(option.get("title"), str) and option["title"].strip(), where
            discriminator = option.get("properties", {}).get(key)
            assert discriminator is not None, f"{where} has no {key}"
            assert discriminator.get("type") == "string", where
            assert "const" in discriminator or len(discriminator.get("enum", ())) == 1, where
            assert key in option.get("required", []), where
            consts.append(discriminator.get("const", discriminator.get("enum", [None])[0]))
        assert len(consts) == len(set(consts)), f"{path}: {key} values repeat: {consts}"
        titles = [option["title"] for option in prop["oneOf"]]
        assert len(titles) == len(set(titles)), f"{path}: option titles repeat: {titles}"
    assert found_oneof == set(DISCRIMINATORS)
    assert set(OPTION_BY_TYPE) == set(API_TYPES) | set(PRESETS)


def test_every_property_has_title_description_and_an_order_unique_on_its_level():
    for path, _, prop, _ in walk_properties(SPEC):
        for key in ("title", "description"):
            assert isinstance(prop.get(key), str) and prop[key].strip(), f"{path} has no {key}"
        assert isinstance(prop.get("order"), int), f"{path} has no order"
    levels = [SPEC, *(option for _, _, prop, _ in walk_properties(SPEC) for option in prop.get("oneOf", ()))]
    for level in levels:
        orders = [prop["order"] for prop in level["properties"].values()]
        assert len(orders) == len(set(orders)), f"orders repeat on the level of {level.get('title')}: {orders}"


def test_secrets_are_marked_and_only_secrets():
    secrets = {path for path, _, prop, _ in walk_properties(SPEC) if prop.get("airbyte_secret")}
    assert secrets == {
        "api[4].api_key",
        "api_key",
        "object_storage_config[1].access_key_id",
        "object_storage_config[1].secret_access_key",
    }, secrets
    assert OPTION_BY_TYPE["delete_users"]["properties"]["api_key"]["airbyte_secret"] is True


def test_what_config_py_reads_from_the_spec_is_what_its_rules_need():
    """The rules parse a stream entry's api with the top-level api's options, a preset as the api_type it stands
    for (its option may offer only that type's columns, and needs none: the preset fills them), and Heap's
    deletion key only for delete_users: the spec must offer exactly that, in form order (the written order)."""
    assert SPEC["properties"]["streams"]["items"]["properties"]["api"]["oneOf"] == API_OPTIONS
    for preset, mapping in PRESETS.items():
        option = OPTION_BY_TYPE[preset]
        assert set(option["properties"]) == {"api_type", *option_columns(mapping["api_type"])}, preset
        assert option["required"] == ["api_type"], preset
    assert [kind for kind, option in OPTION_BY_TYPE.items() if "api_key" in option["properties"]] == ["delete_users"]
    assert "api_key" in OPTION_BY_TYPE["delete_users"]["required"]
    for option in API_OPTIONS:
        properties = option["properties"]
        assert list(properties) == sorted(properties, key=lambda name: properties[name]["order"]), option["title"]


def test_the_default_the_spec_cannot_hold_is_the_one_its_description_states():
    """max_concurrent_requests' default depends on bulk, which JSON Schema's `default` cannot say: the field's
    description states it instead, and must state config.py's."""
    description = SPEC["properties"]["max_concurrent_requests"]["description"]
    assert "default" not in SPEC["properties"]["max_concurrent_requests"]
    assert f"{DEFAULT_CONCURRENCY[True]} for bulk requests, {DEFAULT_CONCURRENCY[False]} for single" in description


# ------------------------------------------------------------------------------------------------------------
# The property: parse_config never accepts what the spec refuses; where it alone refuses, it names the field

COLUMN_NAMES = sorted({name for option in API_OPTIONS for name in option["properties"]} - {"api_type", "api_key"})
VALID_COLUMN = st.sampled_from(["email", "identities.connection", " plan ", "name,plan,address.city", "*", "type"])
BAD_COLUMN = st.sampled_from(["", "   ", "a,,b", "a,*", ",", None, 5, 2.5, True, [], ["email"], {"x": 1}])
WRONG_TYPES = st.sampled_from([None, 0, 1, -1, 2.5, True, False, "", " ", "text", [], {}, ["x"], {"a": 1}])


class Case:
    """A generated config with the fields it made questionable (wrong, boundary or left out) on the side."""

    def __init__(self) -> None:
        self.config: dict[str, Any] = {}
        self.questionable: set[str] = set()

    def __repr__(self) -> str:
        return f"config={self.config!r} questionable={sorted(self.questionable)}"


@st.composite
def field_value(draw, target: dict, name: str, case: Case, valid, invalid, present_weight: int = 7) -> None:
    """Sets target[name] to a valid value, a questionable one, or leaves it out (questionable too)."""
    roll = draw(st.integers(0, 9))
    if roll < present_weight - 2:
        target[name] = draw(valid)
    elif roll < present_weight:
        target[name] = draw(st.one_of(invalid, WRONG_TYPES))
        case.questionable.add(name)
    else:
        case.questionable.add(name)


def whole_number(name: str):
    low, high = SPEC["properties"][name]["minimum"], SPEC["properties"][name]["maximum"]
    high_for_all = min(high, 1000) if name == "batch_size" else high
    valid = st.one_of(st.integers(low, high_for_all), st.sampled_from([float(low), float(high_for_all)]))
    invalid = st.sampled_from([low - 1, high + 1, high_for_all + 1, high, 2**63, 5.5, float("inf"), str(low), True])
    return valid, invalid


@st.composite
def api_object(draw, case: Case) -> Any:
    roll = draw(st.integers(0, 19))
    if roll == 0:
        case.questionable.add("api")
        return draw(st.one_of(WRONG_TYPES, st.sampled_from(["track", "heap_users"])))
    api: dict[str, Any] = {}
    # The option comes from the spec (its api_type consts) and the rules (API_TYPES and PRESETS) alike.
    kind = draw(st.sampled_from(sorted(set(OPTION_BY_TYPE) | set(API_TYPES) | set(PRESETS))))
    if roll == 1:
        api["api_type"] = draw(st.one_of(WRONG_TYPES, st.sampled_from(["TRACK", "nope", "preset", " track"])))
        case.questionable.add("api_type")
    elif roll == 2:
        case.questionable.add("api_type")
    else:
        api["api_type"] = kind
    declared = [name for name in OPTION_BY_TYPE[kind]["properties"] if name not in ("api_type", "api_key")]
    rules = list(option_columns(PRESETS[kind]["api_type"] if kind in PRESETS else kind))
    others = draw(st.lists(st.sampled_from(COLUMN_NAMES), max_size=2))
    for name in dict.fromkeys([*declared, *rules, *others]):
        draw(field_value(api, name, case, VALID_COLUMN, BAD_COLUMN, present_weight=6))
    if kind == "delete_users" or draw(st.integers(0, 9)) == 0:
        draw(field_value(api, "api_key", case, st.sampled_from(["heap-delete-key-0123", " k "]), st.just("  "), 8))
    if draw(st.integers(0, 9)) == 0:
        api[draw(st.sampled_from(["preset", "unknown", "order"]))] = draw(WRONG_TYPES)
    case.questionable |= set(api) - set(OPTION_BY_TYPE[kind]["properties"])  # a field the option lacks is refused
    api_type = PRESETS[kind]["api_type"] if kind in PRESETS else kind
    for first, second, _ in EXACTLY_ONE.get(api_type, ()):  # the rule: exactly one of the two (a preset has one)
        if (first in api and second in api) or (kind not in PRESETS and first not in api and second not in api):
            case.questionable |= {first, second}
    return api


@st.composite
def configs(draw) -> Case:
    case = Case()
    config = case.config
    draw(
        field_value(
            config,
            "app_id",
            case,
            st.sampled_from(["11", "1234567890", "007"]),
            st.sampled_from(["", " 11", "11 ", "11\n", "abc", "1a", "１１", "-1", 11]),
            8,
        )
    )
    draw(
        field_value(
            config,
            "base_url",
            case,
            st.sampled_from(
                [
                    US_BASE_URL,
                    EU_BASE_URL,
                    US_BASE_URL + "/",
                    "http://127.0.0.1:8765",
                    "http://localhost:1",
                    "http://[::1]:9",
                ]
            ),
            st.sampled_from(
                [
                    "",
                    " ",
                    "heapanalytics.com",
                    "ftp://heapanalytics.com",
                    "http://example.com",
                    "https://user:pw@heapanalytics.com",
                    "https://heapanalytics.com?x=1",
                    "https://heapanalytics.com#f",
                    "https://",
                    "http://127.0.0.1:99999",
                    "https://heap analytics.com",
                    "https://heapanalytics.com\\x",
                ]
            ),
            6,
        )
    )
    api = draw(api_object(case))
    if api is not None or draw(st.booleans()):
        config["api"] = api
    else:
        case.questionable.add("api")
    for name in ("bulk", "dry_run"):
        draw(field_value(config, name, case, st.booleans(), st.sampled_from(["true", 1, 0]), 3))
    draw(
        field_value(
            config,
            "on_invalid_record",
            case,
            st.sampled_from(["skip", "fail"]),
            st.sampled_from(["SKIP", "ignore", " skip"]),
            3,
        )
    )
    for name in WHOLE_NUMBERS:
        valid, invalid = whole_number(name)
        draw(field_value(config, name, case, valid, invalid, 3))
    if draw(st.integers(0, 9)) == 0:  # extra fields, the old top-level preset among them
        config[draw(st.sampled_from(["preset", "unknown_setting", "order"]))] = draw(
            st.one_of(WRONG_TYPES, st.sampled_from(list(PRESETS)))
        )
    return case


def named_fields(message: str, names: set[str]) -> set[str]:
    return {name for name in names if re.search(rf"(?<![\w]){re.escape(name)}(?![\w])", message)}


def check_agreement(case: Case) -> None:
    errors = spec_errors(case.config)
    try:
        parse_config(case.config)
    except ConfigError as error:
        if not errors:  # the spec accepts, the rules refuse: the message must name a field that was questionable
            assert named_fields(str(error), case.questionable), (
                f"parse_config refused a config the spec accepts without naming the field to fix: {error}\n{case}"
            )
        return
    assert not errors, f"parse_config accepted a config the spec refuses ({errors}):\n{case}"


def _case(config: dict, *questionable: str) -> Case:
    case = Case()
    case.config, case.questionable = config, set(questionable)
    return case


TRACK = {"api_type": "track", "identity_column": "email", "event_column": "action"}


@example(_case({"app_id": "11", "api": {**TRACK, "timestamp_column": None}}, "timestamp_column"))
@example(_case({"app_id": "11", "api": {**TRACK, "excluded_columns": None}}, "excluded_columns"))
@example(_case({"app_id": "11", "api": {"api_type": "heap_events", "identity_column": None}}, "identity_column"))
@example(_case({"app_id": "11", "api": {"api_type": []}}, "api_type"))
@example(_case({"app_id": "11", "api": {"api_type": {"track": 1}}}, "api_type"))
@example(_case({"app_id": "11\n", "api": {"api_type": "heap_users"}}, "app_id"))
@example(
    _case(
        {
            "app_id": "11",
            "api": {"api_type": "identify", "user_id_column": "u", "identity_column": "i", "excluded_columns": 5},
        },
        "excluded_columns",
    )
)
@example(_case({"app_id": "11", "api": {"api_type": "delete_users", "api_key": "k" * 10}}, "identity_column"))
@given(case=configs())
@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
def test_parse_config_never_accepts_what_the_spec_refuses(case):
    check_agreement(case)


@st.composite
def valid_configs(draw) -> dict:
    """Configs the rules call valid, for each api option and preset: the spec must accept them too (else the
    UI blocks a config the connector would run)."""
    kind = draw(st.sampled_from(sorted(OPTION_BY_TYPE)))
    api: dict[str, Any] = {"api_type": kind}
    api_type = PRESETS[kind]["api_type"] if kind in PRESETS else kind
    for name in option_columns(api_type):
        required = kind not in PRESETS and name in REQUIRED_COLUMNS[api_type]
        if required or (api_type != "delete_users" and draw(st.booleans())):
            api[name] = draw(st.sampled_from(["email", "a.b", "x,y"] if name != "excluded_columns" else ["a,b", ""]))
    for first, second, _ in EXACTLY_ONE.get(api_type, ()):  # exactly one of the two (a preset has its own)
        api.pop(draw(st.sampled_from([first, second])), None)
        if kind not in PRESETS and first not in api and second not in api:
            api[draw(st.sampled_from([first, second]))] = "email"
    if api_type == "delete_users":
        api["api_key"] = "heap-delete-key"
    config = {"app_id": draw(st.from_regex(r"[0-9]{1,12}", fullmatch=True)), "api": api}
    if draw(st.booleans()):
        config["base_url"] = draw(st.sampled_from([US_BASE_URL, EU_BASE_URL, "http://127.0.0.1:8765"]))
    for name in WHOLE_NUMBERS:
        if draw(st.booleans()):
            low, high = SPEC["properties"][name]["minimum"], SPEC["properties"][name]["maximum"]
            config[name] = draw(st.integers(low, min(high, 1000) if name == "batch_size" else high))
    return config


@given(config=valid_configs())
@settings(max_examples=500, deadline=None)
def test_what_the_rules_accept_the_spec_accepts(config):
    parse_config(config)
    assert not spec_errors(config)


# ------------------------------------------------------------------------------------------------------------
# Backward compatibility with the published 0.1.0 spec, and metadata.yaml


def metadata() -> dict:
    return yaml.safe_load((ROOT / "metadata.yaml").read_text())


def spec_comparison():
    published = json.loads(PUBLISHED_SPEC_PATH.read_text())
    current = ConnectorSpecificationSerializer.dump(SPECIFICATION)
    return compare_specs(published, current)


def test_spec_is_backward_compatible_with_the_published_0_1_0_or_declares_its_breaking_changes():
    comparison = spec_comparison()
    print(
        f"\ncompare_specs(published {PUBLISHED_VERSION}, current): {len(comparison.breaking)} breaking, "
        f"{len(comparison.compatible)} compatible change(s)"
    )
    for kind, changes in (("Breaking", comparison.breaking), ("Compatible", comparison.compatible)):
        print(f"{kind} changes:" + ("" if changes else " none"))
        for change in changes:
            print(f"  - {change}")
    data = metadata()["data"]
    declared = declared_breaking_changes(data, PUBLISHED_VERSION, data["dockerImageTag"])
    if comparison.breaking:
        assert declared, (
            f"breaking changes since {PUBLISHED_VERSION} not declared under data.releases.breakingChanges in "
            "metadata.yaml:\n" + "\n".join(comparison.breaking)
        )
        for version in declared:
            scoped = data["releases"]["breakingChanges"][version].get("scopedImpact")
            assert scoped is None or scoped, version
    else:
        assert not declared, f"metadata.yaml declares breaking changes {declared} that the spec does not have"


def published_spec_configs():
    """Configs the 0.1.0 spec accepted (what saved connections hold): the current spec must accept them too."""
    published = json.loads(PUBLISHED_SPEC_PATH.read_text())["connectionSpecification"]
    options = published["properties"]["api"]["oneOf"]

    @st.composite
    def build(draw):
        option = draw(st.sampled_from(options))
        api = {}
        for name, prop in option["properties"].items():
            if "const" in prop:
                api[name] = prop["const"]
            elif name in option["required"] or draw(st.booleans()):
                api[name] = draw(st.sampled_from(["*", "email", "", " ", "a,,b", *prop.get("examples", [])]))
        return {"app_id": draw(st.text(max_size=6)), "base_url": draw(st.text(max_size=30)), "api": api}

    return build()


@given(config=published_spec_configs())
@settings(max_examples=300, deadline=None)
def test_a_config_the_published_spec_accepted_the_current_spec_accepts(config):
    """What compare_specs claims, checked on configs: no saved 0.1.0 config becomes invalid on upgrade."""
    assert Draft7Validator(json.loads(PUBLISHED_SPEC_PATH.read_text())["connectionSpecification"]).is_valid(config)
    assert not spec_errors(config)
    check_agreement(_case(config, "app_id", "base_url", *config["api"]))


def test_metadata_is_what_the_registry_reads():
    loaded = MetadataFile.from_file(ROOT / "metadata.yaml")
    data = metadata()["data"]
    setup_py = (ROOT / "setup.py").read_text()
    dockerfile = (ROOT / "Dockerfile").read_text()
    version = re.search(r'version="([^"]+)"', setup_py)[1]
    package = re.search(r'name="([^"]+)"', setup_py)[1]
    assert loaded.data.dockerImageTag == version == re.search(r"io\.airbyte\.version=(\S+)", dockerfile)[1]
    assert loaded.data.dockerRepository == "airbyte/destination-heap-analytics"
    assert loaded.data.connectorBuildOptions.baseImage == re.search(r"ARG BASE_IMAGE=(\S+)", dockerfile)[1]
    assert re.fullmatch(
        r"docker\.io/airbyte/python-connector-base:[\d.]+@sha256:[0-9a-f]{64}",
        loaded.data.connectorBuildOptions.baseImage,
    )
    assert data["remoteRegistries"] == {"pypi": {"enabled": True, "packageName": package}}
    assert data["supportsDbt"] is False and data["supportsNormalization"] is False
    assert data["supportsDataActivation"] is True  # discover answers Heap's objects (destination.py)
    assert loaded.data.supportsRefreshes is True and data["supportsRefreshes"] is True  # as activation destinations
    assert data["documentationUrl"] == SPECIFICATION.documentationUrl
    assert data["connectorType"] == "destination" and data["definitionId"]
    # releases as Airbyte's ConnectorReleases schema has it (additionalProperties false; breakingChanges has at
    # least one entry, each keyed by a version, with a message and an upgrade deadline)
    releases = data["releases"]
    assert set(releases) <= {
        "releaseCandidates",
        "rolloutConfiguration",
        "breakingChanges",
        "migrationDocumentationUrl",
    }
    for key, change in releases.get("breakingChanges", {}).items():
        assert re.fullmatch(r"\d+\.\d+\.\d+", str(key)), key
        assert set(change) <= {
            "upgradeDeadline",
            "message",
            "migrationDocumentationUrl",
            "scopedImpact",
            "deadlineAction",
        }
        assert isinstance(change["message"], str) and change["message"].strip(), key
        datetime.date.fromisoformat(str(change["upgradeDeadline"]))
    if "breakingChanges" in releases:
        assert releases["breakingChanges"], "breakingChanges needs at least one entry (minProperties 1)"
    assert set(releases.get("rolloutConfiguration", {})) <= {
        "enableProgressiveRollout",
        "initialPercentage",
        "maxPercentage",
        "advanceDelayMinutes",
    }


# ------------------------------------------------------------------------------------------------------------
# object_storage_config: Airbyte's declaration (its load-dlq toolkit's spec), and rejected.py's rules that agree

STORAGE = SPEC["properties"][FIELD]
STORAGE_OPTIONS = {option["properties"]["storage_type"]["enum"][0]: option for option in STORAGE["oneOf"]}
S3_OPTION = STORAGE_OPTIONS["S3"]


def test_object_storage_config_is_declared_as_airbytes_activation_destinations_declare_it():
    """What the platform reads and validates: the options, each field's type, enum and default, what is hidden,
    what is secret, what is required (titles, descriptions and orders are the form's)."""
    assert STORAGE["title"] == "Object Storage Configuration" and FIELD not in SPEC["required"]
    assert set(STORAGE_OPTIONS) == {"None", "S3"}
    assert STORAGE_OPTIONS["None"]["required"] == ["storage_type"]
    assert STORAGE_OPTIONS["None"]["properties"]["storage_type"]["default"] == "None"
    fields = S3_OPTION["properties"]
    assert list(fields) == [
        "storage_type", "access_key_id", "secret_access_key", "role_arn", "s3_bucket_name", "s3_bucket_region",
        "s3_endpoint", "bucket_path", "format", "compression", "path_format", "file_name_format",
    ]  # fmt: skip
    assert S3_OPTION["required"] == ["storage_type", "s3_bucket_name", "s3_bucket_region", "bucket_path", "format"]
    assert {name for name, prop in fields.items() if prop.get("airbyte_hidden")} == {
        "format", "compression", "path_format", "file_name_format"
    }  # fmt: skip
    assert fields["s3_bucket_region"]["default"] == "" and "" in fields["s3_bucket_region"]["enum"]
    assert "us-east-1" in fields["s3_bucket_region"]["enum"] and len(fields["s3_bucket_region"]["enum"]) == 35
    assert fields["path_format"]["default"] == DEFAULT_PATH_FORMAT == "{sync_id}/{namespace}/{stream_name}/"
    assert fields["file_name_format"]["default"] == DEFAULT_FILE_NAME_FORMAT
    assert DEFAULT_FILE_NAME_FORMAT == "{date}_{timestamp}_{part_number}{format_extension}"
    assert fields["format"]["default"] == "CSV"
    formats = {o["properties"]["format_type"]["enum"][0]: o for o in fields["format"]["oneOf"]}
    assert formats["CSV"]["required"] == ["format_type", "flattening"] and formats["JSONL"]["required"] == [
        "format_type"
    ]
    for option in formats.values():
        assert option["properties"]["flattening"]["enum"] == ["No flattening", "Root level flattening"]
        assert option["properties"]["flattening"]["default"] == "No flattening"
    assert [o["properties"]["compression_type"]["enum"] for o in fields["compression"]["oneOf"]] == [
        ["No Compression"], ["GZIP"]
    ]  # fmt: skip
    for option in (STORAGE_OPTIONS["None"], S3_OPTION, *formats.values(), *fields["compression"]["oneOf"]):
        assert option["additionalProperties"] is True


VALID_S3 = {
    "storage_type": "S3",
    "s3_bucket_name": "rejected-records",
    "s3_bucket_region": "",
    "bucket_path": "",
    "format": {"format_type": "CSV", "flattening": "No flattening"},
}
STORAGE_VALUES = {  # each S3 field: values the spec accepts, then values it refuses (or the rules refuse, saying so)
    "access_key_id": (["AKIAEXAMPLE", ""], [5, None, "kéy"]),
    "secret_access_key": (["secret/Key+1", ""], [[], None]),
    "role_arn": (["arn:aws:iam::1:role/r", ""], [1, None]),
    "s3_bucket_name": (["rejected-records"], ["", " ", 3, None]),
    "s3_bucket_region": (["", "eu-west-1", "us-east-1"], ["mars-1", "EU-WEST-1", 1, None]),
    "s3_endpoint": (["http://127.0.0.1:9000", "https://minio.example.com", ""], ["ftp://x", "http://u:p@h", 2]),
    "bucket_path": (["", "prefix/", "/a/b/"], [None, 1]),
    "format": (
        [
            {"format_type": "CSV", "flattening": "No flattening"},
            {"format_type": "JSONL"},
            {"format_type": "JSONL", "flattening": "Root level flattening"},
        ],
        ["CSV", {"format_type": "CSV"}, {"format_type": "XML"}, {"format_type": "JSONL", "flattening": "x"}, None],
    ),  # fmt: skip
    "compression": ([{"compression_type": "GZIP"}, {"compression_type": "No Compression"}], ["GZIP", {}, None]),
    "path_format": (["{namespace}/{stream_name}/", "${SYNC_ID}/x", ""], ["{nope}/", 3, None]),
    "file_name_format": (["{part_number}.csv", "{date:yyyy_MM}_{part_number}{format_extension}"], ["{date}", None]),
}


@st.composite
def storage_cases(draw) -> Case:
    case = Case()
    storage: dict[str, Any] = {}
    kind = draw(st.sampled_from(["S3", "S3", "S3", "None", "none", None, 5]))
    if kind is not None:
        storage["storage_type"] = kind
    if kind not in ("S3", "None"):
        case.questionable.add("storage_type")
    for name, (valid, invalid) in STORAGE_VALUES.items():
        roll = draw(st.integers(0, 9))
        if roll < 6:
            if name in VALID_S3 or roll < 3:
                storage[name] = draw(st.sampled_from(valid))
        elif roll < 8:
            storage[name] = draw(st.sampled_from(invalid))
            case.questionable.add(name)
        elif name in S3_OPTION["required"] or name in ("access_key_id", "secret_access_key"):
            case.questionable.add(name)  # left out
    if bool(storage.get("access_key_id")) != bool(storage.get("secret_access_key")):
        case.questionable |= {"access_key_id", "secret_access_key"}
    case.config = {"app_id": "11", FIELD: storage}
    return case


@example(_case({"app_id": "11", FIELD: {**VALID_S3, "compression": None}}, "compression"))
@example(_case({"app_id": "11", FIELD: {**VALID_S3, "path_format": None}}, "path_format"))
@example(_case({"app_id": "11", FIELD: {**VALID_S3, "format": {"format_type": "CSV"}}}, "format"))
@example(_case({"app_id": "11", FIELD: {"storage_type": "None", "s3_bucket_name": 5}}))
@given(case=storage_cases())
@settings(max_examples=600, deadline=None)
def test_the_storage_rules_never_accept_what_the_spec_refuses(case):
    errors = spec_errors(case.config)
    try:
        parse_storage_config(case.config)
    except ConfigError as error:
        assert FIELD in str(error)
        if not errors:
            assert named_fields(str(error), case.questionable), f"refused without naming the field: {error}\n{case}"
        return
    assert not errors, f"the rules accepted an object_storage_config the spec refuses ({errors}):\n{case}"


def test_a_storage_config_the_spec_accepts_is_parsed_with_its_defaults():
    parsed = parse_storage_config({"app_id": "11", FIELD: VALID_S3})
    assert (parsed.bucket, parsed.bucket_path, parsed.region, parsed.endpoint) == ("rejected-records", "", None, None)
    assert (parsed.jsonl, parsed.flattened, parsed.gzip) == (False, False, False)
    assert (parsed.path_format, parsed.file_name_format) == (DEFAULT_PATH_FORMAT, DEFAULT_FILE_NAME_FORMAT)
    assert parsed.access_key_id is None and parsed.role_arn is None
    for config in ({"app_id": "11"}, {"app_id": "11", FIELD: {"storage_type": "None"}}):
        assert not spec_errors(config) and parse_storage_config(config) is None


def test_a_storage_refusal_never_shows_a_secret():
    secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
    for storage in (
        {**VALID_S3, "secret_access_key": secret},  # without its access key
        {**VALID_S3, "access_key_id": "AKIA1", "secret_access_key": secret + "\u00e9"},
        {**VALID_S3, "access_key_id": "AKIA1", "secret_access_key": secret, "s3_endpoint": f"http://a:{secret}@h"},
    ):
        with pytest.raises(ConfigError) as refused:
            parse_storage_config({"app_id": "11", FIELD: storage})
        assert secret not in str(refused.value) and FIELD in str(refused.value)


def test_secrets_stay_out_of_git_and_out_of_the_image_builds_context():
    """The README's container example puts config.json (with any api_key) in secrets/: git must not offer it for
    a commit, nor the build send it to the image builder (.dockerignore: a pattern naming a directory keeps out
    all of it)."""
    ignored = subprocess.run(
        ["git", "check-ignore", "--no-index", "-q", "secrets/config.json"], cwd=ROOT, check=False
    )
    assert ignored.returncode == 0, ".gitignore does not keep secrets/ out of git"
    lines = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()]
    patterns = [line.rstrip("/") for line in lines if line and not line.startswith("#")]
    assert any(fnmatch.fnmatch("secrets", pattern) for pattern in patterns), ".dockerignore sends secrets/ to builds"


def test_the_readmes_pyairbyte_snippet_sets_its_settings_before_importing_airbyte():
    """PyAirbyte reads AIRBYTE_OFFLINE_MODE and AIRBYTE_NO_UV when airbyte is imported: set after, they do
    nothing, and the snippet fails offline. Its destination config is one the spec and the connector accept."""
    readme = (ROOT / "README.md").read_text().split("## Use from PyAirbyte", 1)[1]
    snippet = readme.split("```python\n", 1)[1].split("```", 1)[0]
    statements = ast.parse(snippet).body
    imports = [n for n, s in enumerate(statements) if isinstance(s, ast.Import) and s.names[0].name == "airbyte"]
    settings_at = {
        ast.literal_eval(call.args[0]): n
        for n, statement in enumerate(statements)
        for call in ast.walk(statement)
        if isinstance(call, ast.Call) and ast.unparse(call.func) == "os.environ.setdefault"
    }
    assert set(settings_at) == {"AIRBYTE_OFFLINE_MODE", "AIRBYTE_NO_UV"} and imports
    assert max(settings_at.values()) < imports[0]
    calls = [node for node in ast.walk(ast.parse(snippet)) if isinstance(node, ast.Call)]
    (destination,) = [call for call in calls if ast.unparse(call.func) == "ab.get_destination"]
    config = ast.literal_eval(next(k.value for k in destination.keywords if k.arg == "config"))
    assert not spec_errors(config)
    parse_config(config)
