from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from dicom_node.config import Config, parse_config
from dicom_node.config_results import (
    CascadeRule,
    Condition,
    Destination,
    ResultsConfig,
    RoutingConfig,
    RoutingRule,
    SendingConfig,
    TriageConfig,
)
from dicom_node.errors import ConfigError
from dicom_node.pipeline import engines_needed

# The catalogue's engine names, matched loosely so that adding an engine keeps the table valid.
ENGINE_LIST = r"expected one of .*\bhip_screen\b.*"
DICOM_DEST = {"name": "pacs", "ae_title": "PACS", "host": "10.0.0.5", "port": 104}


def test_defaults_route_ap_radiographs_to_hip_screen_and_cascade_to_hipnet() -> None:
    cfg = Config()
    parsed = parse_config({})
    for section in ("routing", "triage", "results", "sending", "destinations"):
        assert getattr(parsed, section) == getattr(cfg, section), section
    rule, multimodal, osteoporosis = cfg.routing.rules
    assert (rule.name, rule.engine, rule.requires) == ("hip-ap-radiographs", "hip_screen", ())
    assert [c.attribute for c in rule.when] == ["Modality", "BodyPartExamined", "ViewPosition"]
    # The same radiographs go to the fusion engines when the study has what they need.
    assert (multimodal.engine, multimodal.when, multimodal.requires) == (
        "hip_multimodal",
        rule.when,
        ("ct",),
    )
    assert (osteoporosis.engine, osteoporosis.when, osteoporosis.requires) == (
        "osteoporosis",
        rule.when,
        ("age", "sex"),
    )
    assert cfg.routing.cascade == (
        CascadeRule(after="hip_screen", finding="total_hip_arthroplasty", engine="hipnet"),
    )
    assert "LL" in cfg.routing.lateral_views and "AP" not in cfg.routing.lateral_views
    assert cfg.triage == TriageConfig()
    assert dict(cfg.triage.thresholds) == {} and dict(cfg.triage.urgent) == {}
    assert cfg.results == ResultsConfig(
        heatmaps="positive-or-top",
        sr_series_number=9901,
        sc_series_number=9902,
        max_overlay_edge=1536,
        institution_name=None,
    )
    assert cfg.sending == SendingConfig(
        max_attempts=24, backoff_seconds=2.0, max_backoff_seconds=300.0, timeout_seconds=30.0
    )
    assert cfg.destinations == ()


def test_default_rule_conditions_select_ap_hip_radiographs() -> None:
    modality, body_part, view = RoutingConfig().rules[0].when
    assert modality.matches("DX") and modality.matches("CR") and not modality.matches("CT")
    # BodyPartExamined is optional (often absent on radiographs) and case-insensitive.
    for value in ("", "HIP", "PELVIS", "pelvis"):
        assert body_part.matches(value), value
    assert not body_part.matches("CHEST") and not body_part.matches("HIPS")
    assert view.matches("AP") and view.matches("PA") and not view.matches("LL")


def test_custom_rule_with_regex_and_list_conditions() -> None:
    cfg = parse_config(
        {
            "routing": {
                "rules": [
                    {
                        "name": "ortho.hips",
                        "engine": "hipnet",
                        "when": {"CallingAE": "ORTHO_.*", "Modality": ["DX", "CR"]},
                    },
                    {"name": "everything", "engine": "hip_screen"},
                ],
                "cascade": [],
                "lateral_views": ["LATERAL", "XTABLE"],
                "ct_body_parts": ["", " pelvis", "LOWER LIMB"],
            }
        }
    )
    assert cfg.routing == RoutingConfig(
        rules=(
            RoutingRule(
                "ortho.hips",
                "hipnet",
                (
                    Condition("CallingAE", pattern="ORTHO_.*"),
                    Condition("Modality", values=("DX", "CR")),
                ),
            ),
            RoutingRule("everything", "hip_screen", ()),
        ),
        cascade=(),
        lateral_views=("LATERAL", "XTABLE"),
        ct_body_parts=("", "PELVIS", "LOWER LIMB"),  # Code Strings: stripped, upper case
    )


def test_condition_regex_is_a_full_match_not_a_search() -> None:
    regex = Condition("SeriesDescription", pattern="HIP|PELVIS")
    assert regex.matches("HIP") and regex.matches("PELVIS")
    assert not regex.matches("LEFT HIP")
    assert not regex.matches("HIPS")
    assert not regex.matches("")
    assert Condition("CallingAE", pattern="ORTHO_.*").matches("ORTHO_1")
    assert not Condition("CallingAE", pattern="ORTHO_.*").matches("XORTHO_1")


def test_condition_list_compares_exact_values() -> None:
    values = Condition("Modality", values=("DX", "CR"))
    assert values.matches("DX") and values.matches("CR")
    assert not values.matches("dx")  # exact, not case-folded
    assert not values.matches("DXR")
    assert not values.matches("D")
    assert not values.matches("")
    # A list entry is a literal, never a pattern.
    assert not Condition("Modality", values=("D.",)).matches("DX")


def test_code_string_conditions_ignore_the_case_of_the_config() -> None:
    # Headers' Code Strings are upper-cased before matching (route.rules); so are list values.
    rule = {
        "name": "lower",
        "engine": "hip_screen",
        "when": {"Modality": ["dx", "Cr"], "ViewPosition": "ap|pa", "CallingAE": ["ortho"]},
    }
    (parsed,) = parse_config({"routing": {"rules": [rule]}}).routing.rules
    modality, view, calling = parsed.when
    assert modality == Condition("Modality", values=("DX", "CR"))
    assert view.matches("AP") and view.matches("PA") and not view.matches("LL")
    assert calling == Condition("CallingAE", values=("ortho",))  # an AE title is not a CS
    assert not Condition("SeriesDescription", pattern="hip").matches("HIP")


def test_routing_rules_may_be_emptied() -> None:
    # A node that only receives (every study skipped): the default cascade, from an engine
    # no rule runs any more, is left out (its engines were opened at every start).
    routing = parse_config({"routing": {"rules": []}}).routing
    assert (routing.rules, routing.cascade) == ((), ())
    bone = {"name": "bone", "engine": "osteoporosis"}
    cfg = parse_config({"routing": {"rules": [bone]}})
    assert cfg.routing.cascade == ()
    assert engines_needed(cfg) == ("osteoporosis",)


def test_a_cascade_chain_may_be_written_in_any_order() -> None:
    # Every step applies at each round: a chain written last step first was refused.
    steps = [
        {"after": "hipnet", "finding": "dislocation", "engine": "hip_multimodal"},
        {"after": "hip_screen", "finding": "total_hip_arthroplasty", "engine": "hipnet"},
    ]
    routing = parse_config({"routing": {"cascade": steps}}).routing
    assert [step.after for step in routing.cascade] == ["hipnet", "hip_screen"]


def test_triage_results_and_sending_parse() -> None:
    cfg = parse_config(
        {
            "triage": {
                "thresholds": {
                    "hip_screen": {"osteoarthritis": 0.7, "femoral_neck_fracture": 0.25}
                },
                "urgent": {"hip_screen": ["femoral_neck_fracture", "osteoarthritis"], "hipnet": []},
            },
            "results": {
                "heatmaps": "none",
                "sr_series_number": 7001,
                "sc_series_number": 7002,
                "max_overlay_edge": 256,
                "institution_name": "General Hospital",
            },
            "sending": {
                "max_attempts": 1,
                "backoff_seconds": 0.1,
                "max_backoff_seconds": 0.1,
                "timeout_seconds": 0.5,
            },
        }
    )
    assert dict(cfg.triage.thresholds) == {
        "hip_screen": {"osteoarthritis": 0.7, "femoral_neck_fracture": 0.25}
    }
    assert dict(cfg.triage.urgent) == {
        "hip_screen": ("femoral_neck_fracture", "osteoarthritis"),
        "hipnet": (),
    }
    assert cfg.results == ResultsConfig("none", 7001, 7002, 256, "General Hospital")
    assert cfg.sending == SendingConfig(1, 0.1, 0.1, 0.5)


def test_folder_destination_resolves_against_base(tmp_path: Path) -> None:
    cfg = parse_config(
        {
            "destinations": [
                {"name": "out", "type": "folder", "path": "results/out"},
                {"name": "abs", "type": "folder", "path": str(tmp_path / "elsewhere")},
                {**DICOM_DEST, "type": "dicom"},
            ]
        },
        tmp_path / "conf",
    )
    assert cfg.destinations == (
        Destination(name="out", type="folder", path=tmp_path / "conf" / "results" / "out"),
        Destination(name="abs", type="folder", path=tmp_path / "elsewhere"),
        Destination(name="pacs", ae_title="PACS", host="10.0.0.5", port=104),
    )
    assert cfg.destinations[2].type == "dicom" and cfg.destinations[2].path is None


BAD: list[tuple[dict[str, Any], str]] = [
    # --- routing ---------------------------------------------------------------
    ({"routing": []}, r"^routing: expected a mapping, got \[\]"),
    (
        {"routing": {"rule": []}},
        r"^routing\.rule: unknown key in routing "
        r"\(known: cascade, ct_body_parts, lateral_views, rules\)",
    ),
    ({"routing": {"rules": {"name": "x"}}}, r"^routing\.rules: expected a list, got \{'name'"),
    ({"routing": {"rules": ["x"]}}, r"^routing\.rules\[0\]: expected a mapping, got 'x'"),
    (
        {"routing": {"rules": [{"name": "a", "engine": "hip_screen", "if": {}}]}},
        r"^routing\.rules\[0\]\.if: unknown key in routing\.rules\[0\] \(known: engine, name, requires, when\)",
    ),
    (
        {"routing": {"rules": [{"engine": "hip_screen"}]}},
        r"^routing\.rules\[0\]\.name: required, got nothing",
    ),
    (
        {"routing": {"rules": [{"name": "a"}]}},
        r"^routing\.rules\[0\]\.engine: required, got nothing",
    ),
    (
        {"routing": {"rules": [{"name": "a b", "engine": "hip_screen"}]}},
        r"^routing\.rules\[0\]\.name: expected letters, digits, .* got 'a b'",
    ),
    (
        {"routing": {"rules": [{"name": None, "engine": "hip_screen"}]}},
        r"^routing\.rules\[0\]\.name: expected a non-empty string, got null",
    ),
    (
        {
            "routing": {
                "rules": [
                    {"name": "a", "engine": "hip_screen"},
                    {"name": "b", "engine": "hipnet"},
                    {"name": "a", "engine": "hipnet"},
                ]
            }
        },
        r"^routing\.rules\[2\]\.name: duplicate rule name, got 'a'",
    ),
    (
        {"routing": {"rules": [{"name": "a", "engine": "osteoporosis", "requires": ["bmi"]}]}},
        r"^routing\.rules\[0\]\.requires\[0\]: expected one of ct, text, age, sex, height, "
        r"weight, got 'bmi'",
    ),
    (
        {"routing": {"rules": [{"name": "a", "engine": "osteoporosis", "requires": "age"}]}},
        r"^routing\.rules\[0\]\.requires: expected a list, got 'age'",
    ),
    (
        {"routing": {"rules": [{"name": "a", "engine": "hip_scree"}]}},
        rf"^routing\.rules\[0\]\.engine: {ENGINE_LIST}, got 'hip_scree'",
    ),
    (
        {"routing": {"rules": [{"name": "a", "engine": 5}]}},
        r"^routing\.rules\[0\]\.engine: expected a non-empty string, got 5",
    ),
    (
        {"routing": {"rules": [{"name": "a", "engine": "hip_screen", "when": ["Modality"]}]}},
        r"^routing\.rules\[0\]\.when: expected a mapping, got \['Modality'\]",
    ),
    (
        {"routing": {"rules": [{"name": "a", "engine": "hip_screen", "when": {"Modalty": "DX"}}]}},
        r"^routing\.rules\[0\]\.when\.Modalty: unknown attribute \(known: Modality, .*CallingAE.*\), got 'Modalty'",
    ),
    (
        {"routing": {"rules": [{"name": "a", "engine": "hip_screen", "when": {"Modality": []}}]}},
        r"^routing\.rules\[0\]\.when\.Modality: expected a non-empty list of strings, got \[\]",
    ),
    (
        {
            "routing": {
                "rules": [{"name": "a", "engine": "hip_screen", "when": {"Modality": ["DX", 1]}}]
            }
        },
        r"^routing\.rules\[0\]\.when\.Modality: expected a non-empty list of strings, got \['DX', 1\]",
    ),
    (
        {"routing": {"rules": [{"name": "a", "engine": "hip_screen", "when": {"Modality": 5}}]}},
        r"^routing\.rules\[0\]\.when\.Modality: expected a regular expression or a list of values, got 5",
    ),
    (
        {"routing": {"rules": [{"name": "a", "engine": "hip_screen", "when": {"Modality": None}}]}},
        r"^routing\.rules\[0\]\.when\.Modality: expected a regular expression or a list of values, got null",
    ),
    (
        {
            "routing": {
                "rules": [
                    {"name": "a", "engine": "hip_screen", "when": {"SeriesDescription": "(HIP"}}
                ]
            }
        },
        r"^routing\.rules\[0\]\.when\.SeriesDescription: not a valid regular expression \(.*\), got '\(HIP'",
    ),
    (  # grep's POSIX class: a FutureWarning on stderr, check-config OK, never a match
        {
            "routing": {
                "rules": [
                    {
                        "name": "a",
                        "engine": "hip_screen",
                        "when": {"BodyPartExamined": "[[:alpha:]]*"},
                    }
                ]
            }
        },
        r"^routing\.rules\[0\]\.when\.BodyPartExamined: not a valid regular expression "
        r"\(Possible nested set at position 1\), got '\[\[:alpha:\]\]\*'$",
    ),
    ({"routing": {"cascade": "hipnet"}}, r"^routing\.cascade: expected a list, got 'hipnet'"),
    ({"routing": {"cascade": [["a"]]}}, r"^routing\.cascade\[0\]: expected a mapping, got \['a'\]"),
    (
        {
            "routing": {
                "cascade": [{"after": "hip_screen", "finding": "x", "engine": "hipnet", "if": 1}]
            }
        },
        r"^routing\.cascade\[0\]\.if: unknown key in routing\.cascade\[0\] \(known: after, engine, finding\)",
    ),
    (
        {"routing": {"cascade": [{"finding": "x", "engine": "hipnet"}]}},
        r"^routing\.cascade\[0\]\.after: required, got nothing",
    ),
    (
        {"routing": {"cascade": [{"after": "hip_screen", "engine": "hipnet"}]}},
        r"^routing\.cascade\[0\]\.finding: required, got nothing",
    ),
    (
        {"routing": {"cascade": [{"after": "hip_screen", "finding": "x"}]}},
        r"^routing\.cascade\[0\]\.engine: required, got nothing",
    ),
    (
        {"routing": {"cascade": [{"after": "screen", "finding": "x", "engine": "hipnet"}]}},
        rf"^routing\.cascade\[0\]\.after: {ENGINE_LIST}, got 'screen'",
    ),
    (
        {"routing": {"cascade": [{"after": "hip_screen", "finding": "x", "engine": "net"}]}},
        rf"^routing\.cascade\[0\]\.engine: {ENGINE_LIST}, got 'net'",
    ),
    # A cascade after an engine nothing runs: passed, and its engines opened for nothing.
    (
        {
            "routing": {
                "rules": [{"name": "bone", "engine": "osteoporosis"}],
                "cascade": [
                    {"after": "hip_screen", "finding": "total_hip_arthroplasty", "engine": "hipnet"}
                ],
            }
        },
        r"^routing\.cascade\[0\]\.after: no routing rule \(nor another cascade step\) runs "
        r"this engine, so this step never would, got 'hip_screen'$",
    ),
    (
        {"routing": {"cascade": [{"after": "hip_screen", "finding": "", "engine": "hipnet"}]}},
        r"^routing\.cascade\[0\]\.finding: expected a non-empty string, got ''",
    ),
    (
        {"routing": {"lateral_views": ["LL", ""]}},
        r"^routing\.lateral_views\[1\]: expected a non-empty string, got ''",
    ),
    # Rules that can select nothing, and an AP counted as a lateral: check-config passed
    # them, and every study was skipped.
    (
        {"routing": {"lateral_views": ["LL", "ap"]}},
        r"^routing\.lateral_views: AP, PA are the views the engines analyse, not laterals, "
        r"got \['LL', 'ap'\]",
    ),
    (
        {
            "routing": {
                "rules": [
                    {
                        "name": "x",
                        "engine": "hip_screen",
                        "when": {"ViewPosition": ["LL", "LATERAL"]},
                    }
                ]
            }
        },
        r"^routing\.rules\[0\]\.when\.ViewPosition: only lateral views \(routing\.lateral_views\)"
        r", which are only ever an AP's partner: the rule can select no image, got "
        r"\['LL', 'LATERAL'\]",
    ),
    (
        {
            "routing": {
                "rules": [
                    {
                        "name": "x",
                        "engine": "hip_screen",
                        "when": {"SOPClassUID": ["1.2.840.10008.5.1.4.1.1.1.1.1"]},
                    }
                ]
            }
        },
        r"^routing\.rules\[0\]\.when\.SOPClassUID: no class the engines read "
        r"\(1\.2\.840\.10008\.5\.1\.4\.1\.1\.1, 1\.2\.840\.10008\.5\.1\.4\.1\.1\.1\.1: CR and DX "
        r"For Presentation\): the rule can select no image, got \['1\.2\.840\.10008\.5\.1\.4\.1\.1\.1\.1\.1'\]",
    ),
    (
        {"routing": {"ct_body_parts": ["HIP", 3]}},
        r"^routing\.ct_body_parts\[1\]: expected a Code String \(up to 16 letters, digits, "
        r"spaces or '_'; \"\" for none\), got 3",
    ),
    (
        {"routing": {"ct_body_parts": ["CHEST/ABDOMEN"]}},
        r"^routing\.ct_body_parts\[0\]: expected a Code String .*, got 'CHEST/ABDOMEN'",
    ),
    (
        {"routing": {"ct_body_parts": "HIP"}},
        r"^routing\.ct_body_parts: expected a list, got 'HIP'",
    ),
    (
        {"triage": {"urgent": {"hip_screen": ["femoral_neck_fracture", "normal"]}}},
        r"^triage\.urgent\.hip_screen: 'normal' is hip_screen's normal class, which is never a "
        r"finding \(a normal hip is never urgent\), got it listed",
    ),
    # --- triage ----------------------------------------------------------------
    ({"triage": "on"}, r"^triage: expected a mapping, got 'on'"),
    (
        {"triage": {"threshold": {}}},
        r"^triage\.threshold: unknown key in triage \(known: thresholds, urgent\)",
    ),
    ({"triage": {"thresholds": [0.5]}}, r"^triage\.thresholds: expected a mapping, got \[0\.5\]"),
    (
        {"triage": {"thresholds": {"screen": {"normal": 0.5}}}},
        rf"^triage\.thresholds\.screen: {ENGINE_LIST}, got 'screen'",
    ),
    (
        {"triage": {"thresholds": {"hip_screen": 0.5}}},
        r"^triage\.thresholds\.hip_screen: expected a mapping of class to threshold, got 0\.5",
    ),
    (
        {"triage": {"thresholds": {"hip_screen": None}}},
        r"^triage\.thresholds\.hip_screen: expected a mapping of class to threshold, got null",
    ),
    (
        {"triage": {"thresholds": {"hip_screen": {"fracture": 0.5}}}},
        r"^triage\.thresholds\.hip_screen\.fracture: not a class of hip_screen "
        r"\(normal, osteoarthritis, .*\), got 'fracture'$",
    ),
    (
        {"triage": {"urgent": {"hipnet": ["dislocation", "loosening"]}}},
        r"^triage\.urgent\.hipnet: not a class of hipnet \(periprosthetic_joint_infection, "
        r".*\), got 'loosening'$",
    ),
    (
        {"triage": {"thresholds": {"hip_screen": {"osteoarthritis": 0}}}},
        r"^triage\.thresholds\.hip_screen\.osteoarthritis: expected a probability between 0 and 1, got 0$",
    ),
    (
        {"triage": {"thresholds": {"hip_screen": {"osteoarthritis": 1.0}}}},
        r"^triage\.thresholds\.hip_screen\.osteoarthritis: expected a probability between 0 and 1, got 1\.0",
    ),
    (
        {"triage": {"thresholds": {"hip_screen": {"osteoarthritis": -0.1}}}},
        r"^triage\.thresholds\.hip_screen\.osteoarthritis: expected a probability .* got -0\.1",
    ),
    (
        {"triage": {"thresholds": {"hip_screen": {"osteoarthritis": float("nan")}}}},
        r"^triage\.thresholds\.hip_screen\.osteoarthritis: expected a probability .* got nan",
    ),
    (
        {"triage": {"thresholds": {"hip_screen": {"osteoarthritis": True}}}},
        r"^triage\.thresholds\.hip_screen\.osteoarthritis: expected a probability .* got true",
    ),
    (
        {"triage": {"thresholds": {"hip_screen": {"osteoarthritis": "0.5"}}}},
        r"^triage\.thresholds\.hip_screen\.osteoarthritis: expected a probability .* got '0\.5'",
    ),
    ({"triage": {"urgent": ["x"]}}, r"^triage\.urgent: expected a mapping, got \['x'\]"),
    (
        {"triage": {"urgent": {"hipnett": []}}},
        rf"^triage\.urgent\.hipnett: {ENGINE_LIST}, got 'hipnett'",
    ),
    (
        {"triage": {"urgent": {"hip_screen": "femoral_neck_fracture"}}},
        r"^triage\.urgent\.hip_screen: expected a list, got 'femoral_neck_fracture'",
    ),
    (
        {"triage": {"urgent": {"hip_screen": ["osteoarthritis", 3]}}},
        r"^triage\.urgent\.hip_screen\[1\]: expected a non-empty string, got 3",
    ),
    # --- results ---------------------------------------------------------------
    (
        {"results": {"heatmap": "none"}},
        r"^results\.heatmap: unknown key in results \(known: .*heatmaps.*\)",
    ),
    (
        {"results": {"heatmaps": "all"}},
        r"^results\.heatmaps: expected one of positive, positive-or-top, none, got 'all'",
    ),
    (
        {"results": {"heatmaps": False}},
        r"^results\.heatmaps: expected a non-empty string, got false; quote it in YAML$",
    ),
    (
        {"results": {"sr_series_number": 0}},
        r"^results\.sr_series_number: expected an integer from 1 to 2147483647, got 0",
    ),
    (
        {"results": {"sc_series_number": 2**31}},
        r"^results\.sc_series_number: expected an integer from 1 to 2147483647, got 2147483648",
    ),
    (
        {"results": {"sr_series_number": 9902}},
        r"^results\.sc_series_number: must differ from results\.sr_series_number, got 9902",
    ),
    (
        {"results": {"sr_series_number": 5, "sc_series_number": 5}},
        r"^results\.sc_series_number: must differ from results\.sr_series_number, got 5",
    ),
    (
        {"results": {"max_overlay_edge": 255}},
        r"^results\.max_overlay_edge: expected an integer from 256 to 8192, got 255",
    ),
    (
        {"results": {"institution_name": "   "}},
        r"^results\.institution_name: expected a non-empty string, got '   '",
    ),
    *(
        (  # C1 controls and separators were accepted, and went into every SR and overlay
            {"results": {"institution_name": f"St Mary{c}"}},
            r"^results\.institution_name: expected at most 64 characters without backslash or "
            r"control characters \(a DICOM Long String\), got 'St Mary",
        )
        for c in ("\x85", "\x9b", "\u2028", "\x1f")
    ),
    (  # was accepted, then failed every study with an overlay as 'the source headers...'
        {"results": {"institution_name": "H" * 65}},
        r"^results\.institution_name: expected at most 64 characters without backslash or "
        r"control characters \(a DICOM Long String\), got 'H{65}' \(65 characters\)$",
    ),
    (
        {"results": {"institution_name": "North\\South"}},
        r"^results\.institution_name: expected at most 64 .*, got 'North\\\\South' \(11 ",
    ),
    (
        {"results": {"institution_name": "North\tSouth"}},
        r"^results\.institution_name: expected at most 64 .*, got 'North\\tSouth' \(11 ",
    ),
    # --- sending ---------------------------------------------------------------
    (
        {"sending": {"retries": 3}},
        r"^sending\.retries: unknown key in sending \(known: backoff_seconds, max_attempts, ",
    ),
    (
        {"sending": {"max_attempts": 0}},
        r"^sending\.max_attempts: expected an integer from 1 to 1000, got 0",
    ),
    (
        {"sending": {"backoff_seconds": -1}},
        r"^sending\.backoff_seconds: expected a number greater than 0, got -1",
    ),
    (  # no backoff at all: a short outage would use up every attempt in seconds
        {"sending": {"backoff_seconds": 0, "max_backoff_seconds": 0}},
        r"^sending\.backoff_seconds: expected a number greater than 0, got 0$",
    ),
    (
        {"sending": {"timeout_seconds": 0}},
        r"^sending\.timeout_seconds: expected a number greater than 0, got 0",
    ),
    (
        {"sending": {"max_backoff_seconds": float("nan")}},
        r"^sending\.max_backoff_seconds: expected a finite number of seconds, got nan$",
    ),
    (
        {"sending": {"max_backoff_seconds": float("inf")}},
        r"^sending\.max_backoff_seconds: expected a finite number of seconds, got inf$",
    ),
    (
        {"sending": {"backoff_seconds": float("nan")}},
        r"^sending\.backoff_seconds: expected a finite number of seconds, got nan$",
    ),
    (
        {"sending": {"timeout_seconds": float("inf")}},
        r"^sending\.timeout_seconds: expected a finite number of seconds, got inf$",
    ),
    (
        {"sending": {"max_backoff_seconds": 1}},
        r"^sending\.max_backoff_seconds: must be at least sending\.backoff_seconds \(2\.0\), got 1\.0",
    ),
    (
        {"sending": {"backoff_seconds": 10, "max_backoff_seconds": 9.5}},
        r"^sending\.max_backoff_seconds: must be at least sending\.backoff_seconds \(10\.0\), got 9\.5",
    ),
    # --- destinations ------------------------------------------------------------
    ({"destinations": "pacs"}, r"^destinations: expected a list, got 'pacs'"),
    ({"destinations": [None]}, r"^destinations\[0\]: expected a mapping, got null"),
    (
        {"destinations": [{**DICOM_DEST, "type": "s3"}]},
        r"^destinations\[0\]\.type: expected one of dicom, folder, got 's3'",
    ),
    (
        {"destinations": [{**DICOM_DEST, "type": ""}]},
        r"^destinations\[0\]\.type: expected a non-empty string, got ''",
    ),
    (
        {"destinations": [{"name": "out", "type": "folder"}]},
        r"^destinations\[0\]\.path: required, got nothing",
    ),
    (
        {
            "storage": {"spool_dir": "/srv/spool"},
            "destinations": [{"name": "out", "type": "folder", "path": "/srv/spool/results"}],
        },
        r"^destinations\[0\]\.path: must be outside storage\.spool_dir \(/srv/spool\), whose "
        r"folders the retention purges, got '/srv/spool/results'$",
    ),
    (
        {"destinations": [{"type": "folder", "path": "out"}]},
        r"^destinations\[0\]\.name: required, got nothing",
    ),
    (
        {"destinations": [{"name": "out", "type": "folder", "path": "out", "host": "h"}]},
        r"^destinations\[0\]\.host: unknown key in destinations\[0\] \(known: name, path, type\)",
    ),
    (
        {"destinations": [{"name": "out", "type": "folder", "path": ""}]},
        r"^destinations\[0\]\.path: expected a non-empty string, got ''",
    ),
    (
        {"destinations": [{**DICOM_DEST, "path": "out"}]},
        r"^destinations\[0\]\.path: unknown key in destinations\[0\] \(known: ae_title, host, name, port, type\)",
    ),
    (
        {"destinations": [{"name": "p", "ae_title": "P", "host": "h"}]},
        r"^destinations\[0\]\.port: required, got nothing",
    ),
    (
        {"destinations": [{"name": "p", "host": "h", "port": 104}]},
        r"^destinations\[0\]\.ae_title: required, got nothing",
    ),
    (
        {"destinations": [{"name": "p", "ae_title": "P", "port": 104}]},
        r"^destinations\[0\]\.host: required, got nothing",
    ),
    (
        {"destinations": [DICOM_DEST, {"name": "pacs", "type": "folder", "path": "out"}]},
        r"^destinations\[1\]\.name: duplicate destination name, got 'pacs'",
    ),
]


@pytest.mark.parametrize(("raw", "message"), BAD, ids=[m for _, m in BAD])
def test_every_bad_value_names_its_key(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(raw)


@pytest.mark.parametrize("value", [0, False, [], ""], ids=["zero", "false", "empty-list", "empty"])
def test_falsy_non_string_institution_name_is_refused(value: Any) -> None:
    with pytest.raises(
        ConfigError, match=r"^results\.institution_name: expected a non-empty string, got "
    ):
        parse_config({"results": {"institution_name": value}})


def test_a_cascade_finding_must_be_a_class_of_its_first_engine() -> None:
    rule = {"after": "hip_screen", "finding": "total_hip_arthroplsty", "engine": "hipnet"}
    with pytest.raises(
        ConfigError,
        match=r"^routing\.cascade\[0\]\.finding: not a class of hip_screen .*"
        r"got 'total_hip_arthroplsty'",
    ):
        parse_config({"routing": {"cascade": [rule]}})


def test_a_null_urgent_list_keeps_the_manifest_high_risk_classes() -> None:
    cfg = parse_config({"triage": {"urgent": {"hipnet": None}}})
    assert "hipnet" not in cfg.triage.urgent
