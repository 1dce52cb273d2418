"""The HTML report in a real browser: headless Chromium loads it from disk with the network off
(tests/browser.py), every chart div must hold a drawn plotly SVG, the console must stay free of
errors and the page must request nothing; a screenshot is saved under the test's tmp dir.

Chromium is Debian's ``chromium``: scripts/test installs it under CI=true (ensure_test_services in
scripts/_env.sh; the Debian root of 3.14/3.15 has it as a test service); elsewhere this test skips,
saying so, when it is missing.
"""
from __future__ import annotations

import os
import struct

import pytest

import browser
from cowprof.cli import main
from cowprof.reporters.html import CHART_IDS, PAGE_CHARTS
from recordings import write_attributed

pytest.importorskip("plotly", reason="the HTML report needs plotly (the test extra has it)")
if browser.find_chromium() is None:
    if os.environ.get("CI") == "true":
        pytest.fail(browser.why_no_chromium(), pytrace=False)
    pytest.skip(browser.why_no_chromium(), allow_module_level=True)

# For each chart div: how many plotly SVGs it holds and how many drawn marks (trace paths, bars)
# those have; the page is ready once every div has both.
CHARTS_JS = """(() => {
  const ids = %s;
  const out = {};
  for (const id of ids) {
    const div = document.getElementById(id);
    out[id] = div ? {svgs: div.querySelectorAll('svg.main-svg').length,
                     marks: div.querySelectorAll('.scatterlayer path.js-line, .scatterlayer path.js-fill, '
                                                 + '.barlayer path').length} : null;
  }
  out.ready = ids.every(id => out[id] && out[id].svgs > 0 && out[id].marks > 0);
  return out;
})()"""


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def _check(result: browser.PageResult, ids: list[str]) -> None:
    assert result.value and result.value.get("ready"), result.value
    for div in ids:
        assert result.value[div]["svgs"] > 0 and result.value[div]["marks"] > 0, (div, result.value[div])
    assert result.errors == [], result.errors
    assert result.requests == [], result.requests  # the report needs nothing from the network


def test_report_with_attribution_renders_every_chart_offline(tmp_path):
    rec = tmp_path / "run.jsonl"
    write_attributed(rec)
    html = tmp_path / "report.html"
    assert main(["report", str(rec), "--html", str(html)]) == 0
    ids = list(CHART_IDS.values())
    result = browser.load(html, CHARTS_JS % ids)
    shot = tmp_path / "report.png"
    shot.write_bytes(result.screenshot)
    print(f"screenshot: {shot} ({result.network_off})")
    _check(result, ids)
    width, height = _png_size(result.screenshot)
    assert width >= 1000 and height > 6 * 400  # the whole page, six charts


def test_the_check_fails_on_a_broken_report(tmp_path):
    """The baseline: a report whose charts cannot be drawn (plotly.js cut out) must fail the check."""
    rec = tmp_path / "run.jsonl"
    write_attributed(rec)
    html = tmp_path / "report.html"
    assert main(["report", str(rec), "--html", str(html)]) == 0
    doc = html.read_text()
    start = doc.index("<script>/**")  # plotly.js, inlined once (its licence comment first)
    end = doc.index("</script>", start)
    broken = tmp_path / "broken.html"
    broken.write_text(doc[:start] + "<script>" + doc[end:])
    ids = [CHART_IDS[k] for k in PAGE_CHARTS]
    result = browser.load(broken, CHARTS_JS % ids, timeout=2)
    with pytest.raises(AssertionError):
        _check(result, ids)
    assert any("Plotly" in e for e in result.errors), result.errors  # the console saw it
