"""Rule files (collector/rules.py, rules/*.yaml): the shipped profiles load, quote their seeds faithfully, and a
bad file or profile choice is refused naming the file, the rule and the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from collector import cli
from collector.rules import SHIPPED_RULES, RuleError, load_profiles, load_rule_file, rules_for_sites

SEEDS = Path(__file__).parent.parent / "seeds"

VALID = """
profile: test-profile
title: Test
applies_to: tests
source: {document: Test document, year: 2024}
rules:
  - id: pue-high
    title: PUE high
    metric: pue
    period: 12m
    comparison: ">"
    threshold: 1.25
    severity: critical
"""


def write(tmp_path: Path, text: str, name: str = "test.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_the_shipped_profiles_load():
    profiles = load_profiles()
    assert {"wuhan-new-large", "national-hub-new", "beijing-zero-carbon", "gb-40879-2021",
            "operational"} <= profiles.keys()
    operational = {r.metric for r in profiles["operational"].rules}
    assert {"agent_offline", "meter_lag_s", "host_coverage", "pue", "gpu_power_limit_ratio"} <= operational


def test_every_quote_is_verbatim_in_its_seed_file():
    for profile in load_profiles().values():
        for rule in profile.resolved():
            source = rule.source
            if source.quote:
                assert source.seed, f"{rule.id}: a quote needs its seed file"
                assert source.quote in (SEEDS / source.seed).read_text(encoding="utf-8"), rule.id


def test_the_policy_thresholds_match_the_documents():
    rules = {r.id: r for p in load_profiles().values() for r in p.resolved()}
    assert (rules["wuhan-pue-12m"].comparison, rules["wuhan-pue-12m"].threshold) == (">", 1.25)  # 1.25以下
    assert (rules["hub-green-12m"].comparison, rules["hub-green-12m"].threshold) == ("<=", 0.80)  # 超过80%
    assert (rules["beijing-green-12m"].comparison, rules["beijing-green-12m"].threshold) == ("<", 1.0)
    assert not rules["gb40879-above-limit"].source.confirmed  # not in the seeds: says so
    assert not rules["wuhan-utilisation-12m"].source.confirmed  # city-wide average, metric undefined


def test_a_rule_without_source_takes_the_profile_source(tmp_path):
    rule = load_rule_file(write(tmp_path, VALID)).resolved()[0]
    assert rule.source.cite() == "Test document (2024)"


@pytest.mark.parametrize("change, expected", [
    (("threshold: 1.25", "threshold: high"), "rules[0] (pue-high).threshold: Input should be a valid number"),
    (("metric: pue", "metric: puee"), "rules[0] (pue-high): metric 'puee' is not one the collector evaluates"),
    (("    period: 12m\n", ""), "rules[0] (pue-high): metric 'pue' is a site metric: give its period"),
    (("period: 12m", "period: 2y"), "rules[0] (pue-high).period: Input should be"),
    (('comparison: ">"', "comparison: missing"), "threshold is required with a comparison, and not allowed"),
    (("severity: critical", "severity: urgent"), "rules[0] (pue-high).severity"),
    (("severity: critical", "severity: critical\n    hold: 10"), "rules[0] (pue-high).hold: Extra inputs"),
])
def test_an_invalid_rule_names_the_file_the_rule_and_the_field(tmp_path, change, expected):
    path = write(tmp_path, VALID.replace(*change))
    with pytest.raises(RuleError) as error:
        load_rule_file(path)
    assert str(path) in str(error.value)
    assert expected in str(error.value)


def test_a_rule_id_used_twice_names_both_files(tmp_path):
    write(tmp_path, VALID, "a.yaml")
    write(tmp_path, VALID.replace("test-profile", "other"), "b.yaml")
    with pytest.raises(RuleError, match=r"b.yaml: pue-high: rule id 'pue-high' is also at .*a.yaml: pue-high"):
        load_profiles(tmp_path)


def test_an_unknown_profile_in_the_site_config_is_an_error():
    with pytest.raises(RuleError, match="site 'dc1' names rule profile 'wuhan'; known: .*wuhan-new-large"):
        rules_for_sites(load_profiles(), {"dc1": ["wuhan"]}, "site.yaml")


def test_sites_get_the_rules_of_their_profiles():
    rules = rules_for_sites(load_profiles(SHIPPED_RULES), {"a": ["wuhan-new-large", "operational"], "b": []}, "x")
    assert "wuhan-pue-12m" in [r.id for r in rules["a"]] and rules["b"] == ()


def collector_check(tmp_path, rules_folder, profiles) -> tuple[int, str, str]:
    site = tmp_path / "site.yaml"
    site.write_text(f"sites:\n  - {{id: dc1, name: Test, grid_region: central, rules: {profiles}}}\n")
    config = tmp_path / "collector.toml"
    config.write_text(f'site_config = "{site}"\n[influx]\napi = "v1"\ndatabase = "dcem"\n'
                      f'[state]\nfolder = "{tmp_path / "state"}"\n[rules]\nfolder = "{rules_folder}"\n')
    return cli.main(["--config", str(config), "--check"])


def test_the_collector_refuses_to_start_on_an_invalid_rule_file(tmp_path, capsys):
    rules = tmp_path / "rules"
    rules.mkdir()
    bad = write(rules, VALID.replace("threshold: 1.25", "threshold: high"))
    assert collector_check(tmp_path, rules, "[test-profile]") == 2
    assert f"dcem-collector: {bad}: rules[0] (pue-high).threshold: Input should be a valid number" in capsys.readouterr().err


def test_the_collector_check_counts_the_rules_of_the_chosen_profiles(tmp_path, capsys):
    rules = tmp_path / "rules"
    rules.mkdir()
    write(rules, VALID)
    assert collector_check(tmp_path, rules, "[test-profile]") == 0
    assert "1 site(s), 1 rule(s)" in capsys.readouterr().out
    assert collector_check(tmp_path, rules, "[wuhan-new-large]") == 2
    assert "names rule profile 'wuhan-new-large'; known: test-profile" in capsys.readouterr().err
