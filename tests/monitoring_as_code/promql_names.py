"""Metric names used by a PromQL expression, and the metric names the contract allows."""

from __future__ import annotations

import re
from pathlib import Path

HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring",
             "group_left", "group_right", "inf", "nan", "atan2"}
_IDENTIFIER = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")


def metric_names(expr: str) -> set[str]:
    """Identifiers in ``expr`` that are series selectors (not functions, keywords or labels)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals (label values, $variables)
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # range and subquery windows
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in _IDENTIFIER.finditer(text):
        following = text[match.end():].lstrip()[:1]
        preceding = text[:match.start()].rstrip()[-1:]
        if following == "(" or preceding == "$" or match.group().lower() in _KEYWORDS:
            continue  # a function call, a Grafana variable or a PromQL keyword
        if preceding.isdigit() or preceding == ".":
            continue  # part of a number such as 1e3
        names.add(match.group())
    return names


def contract_metrics(contracts_md: Path) -> tuple[set[str], set[str]]:
    """(all metric names, histogram names) from the "Metrics" section of docs/CONTRACTS.md.

    Metric names are the backticked ``mlops_*`` and ``request_*`` tokens (the others are labels);
    histograms are those marked "(histogram)" and KServe's, listed before "Ours".
    """
    section = contracts_md.read_text().split("## Metrics", 1)[1].split("\n## ", 1)[0]
    token = r"`((?:mlops|request)_[a-z0-9_]*)[^`]*`"
    names = set(re.findall(token, section))
    kserve_part = section.split("Ours", 1)[0]
    histograms = set(re.findall(token, kserve_part))
    histograms |= set(re.findall(token + r"\s*\(histogram", section))
    return names, histograms


def allowed_series(names: set[str], histograms: set[str]) -> set[str]:
    """Contract names plus the series a histogram is exposed as."""
    return names | {h + suffix for h in histograms for suffix in HISTOGRAM_SUFFIXES}
