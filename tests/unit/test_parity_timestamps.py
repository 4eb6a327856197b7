"""Gap 1 of issue 17: timestamps as Go Capstan writes, reads and shows them.

Capstan (reference 6.2): "``created`` | timestamp string | Parsed leniently: RFC 3339
(``2019-09-16T07:52:38-04:00``) or ``YYYY-MM-DD HH:MM``; anything else (including a
bare date) counts as "no time" and prints ``N/A``." Listings (3.3): "``Created`` (20,
shown as ``YYYY-MM-DD HH:MM`` or ``N/A``)". Go's ``time.Parse(time.RFC3339, s)``
accepts only ``Z`` or ``+hh:mm`` offsets, so the ``+0000`` pycapstan once wrote read
back as N/A in Capstan.
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from capstan.core import timestamps

#: what Go's time.RFC3339 layout parses, with whole seconds (Capstan writes no fractions)
GO_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(Z|[+-]\d{2}:\d{2})")


@pytest.mark.parametrize(("text", "shown"), [
    ("2019-09-16T07:52:38-04:00", "2019-09-16 07:52"),  # Capstan's own example
    ("2017-09-14T18:08:00Z", "2017-09-14 18:08"),
    ("2017-09-14T18:08:00.123456789+02:00", "2017-09-14 18:08"),
    ("2017-09-14 18:08", "2017-09-14 18:08"),  # what Capstan's compose writes
    ("2026-12-06T05:17:36+0000", "2026-12-06 05:17"),  # what pycapstan wrote before
    ("2017-09-14", "N/A"),  # a bare date is no time to Capstan
    ("N/A", "N/A"),  # Capstan's literal for "unset"
    ("", "N/A"),
    ("yesterday", "N/A"),
    ("2017-13-45T99:99:00Z", "N/A"),
    (None, "N/A"),
    (["2017-09-14 18:08"], "N/A"),
])
def test_read_leniently_show_as_capstan(text: object, shown: str) -> None:
    assert timestamps.show(text) == shown


def test_yaml_timestamps_are_read_too() -> None:
    """An unquoted RFC 3339 value reaches us as a datetime from PyYAML."""
    loaded = yaml.safe_load("created: 2019-09-16T07:52:38-04:00\n")["created"]
    assert isinstance(loaded, dt.datetime)
    assert timestamps.show(loaded) == "2019-09-16 07:52"


def test_written_forms() -> None:
    utc = dt.datetime(2017, 9, 14, 18, 8, 0, 999, tzinfo=dt.UTC)
    assert timestamps.rfc3339(utc) == "2017-09-14T18:08:00Z"
    plus2 = dt.datetime(2017, 9, 14, 18, 8, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    assert timestamps.rfc3339(plus2) == "2017-09-14T18:08:00+02:00"
    assert GO_RFC3339.fullmatch(timestamps.now())


def test_source_date_epoch_gives_a_reproducible_build_time(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1505412480")
    assert timestamps.build_time() == "2017-09-14T18:08:00Z"


@settings(max_examples=60, deadline=None)
@given(st.datetimes(min_value=dt.datetime(1970, 1, 2), max_value=dt.datetime(9998, 1, 1),
                    timezones=st.sampled_from([dt.UTC, dt.timezone(dt.timedelta(hours=-4)),
                                               dt.timezone(dt.timedelta(hours=5, minutes=30))])))
def test_what_we_write_go_reads_and_we_read_back(when: dt.datetime) -> None:
    text = timestamps.rfc3339(when)
    assert GO_RFC3339.fullmatch(text), text
    assert timestamps.parse(text) == when.replace(microsecond=0)


def test_package_init_and_import_write_rfc3339(cli, tmp_path: Path,
                                               capstan_root: Path) -> None:
    pkg = tmp_path / "pkg"
    assert cli("package", "init", pkg, "-n", "app", "-t", "App", "-a", "me").code == 0
    created = yaml.safe_load((pkg / "meta" / "package.yaml").read_text())["created"]
    assert isinstance(created, str) and GO_RFC3339.fullmatch(created)
    assert "created: '" in (pkg / "meta" / "package.yaml").read_text()  # quoted, as Capstan


def test_old_offset_form_is_read_and_rewritten(cli, tmp_path: Path, capstan_root: Path) -> None:
    """A manifest with the old ``+0000`` is listed with its time, and the repository
    copy ``package import`` writes is RFC 3339."""
    pkg = tmp_path / "old"
    (pkg / "meta").mkdir(parents=True)
    (pkg / "meta" / "package.yaml").write_text(
        "name: old\ntitle: Old\nauthor: me\ncreated: 2026-12-06T05:17:36+0000\n")
    assert cli("package", "import", "-C", pkg).code == 0
    stored = yaml.safe_load((capstan_root / "packages" / "old.yaml").read_text())
    assert stored["created"] == "2026-12-06T05:17:36Z"
    assert cli("package", "list", "-f", "value", "-c", "Created").out.split("\n")[0] == \
        "2026-12-06 05:17"


def test_unknown_created_is_left_out_not_written_as_na(cli, tmp_path: Path,
                                                       capstan_root: Path) -> None:
    """[fix] 13 #6: Capstan wrote ``created: N/A`` literally; we omit the key."""
    pkg = tmp_path / "nodate"
    (pkg / "meta").mkdir(parents=True)
    (pkg / "meta" / "package.yaml").write_text("name: nodate\ntitle: T\nauthor: me\n")
    assert cli("package", "import", "-C", pkg).code == 0
    assert "created" not in yaml.safe_load((capstan_root / "packages" / "nodate.yaml").read_text())
    assert cli("package", "list", "-f", "value", "-c", "Created").out.strip() == "N/A"


def test_image_index_times(cli, tmp_path: Path, capstan_root: Path) -> None:
    """``import -c`` is stored as RFC 3339 and listed as Capstan lists it."""
    image = tmp_path / "disk.raw"
    image.write_bytes(b"\0" * 4096)
    assert cli("import", "ns/a", image, "-c", "2017-09-14T18:08:00+02:00").code == 0
    assert cli("import", "ns/b", image).code == 0
    index = yaml.safe_load((capstan_root / "repository/ns/a/index.yaml").read_text())
    assert index["created"] == "2017-09-14T18:08:00+02:00"
    assert GO_RFC3339.fullmatch(
        yaml.safe_load((capstan_root / "repository/ns/b/index.yaml").read_text())["created"])
    rows = cli("images", "-f", "value", "-c", "Name", "-c", "Created").out.splitlines()
    assert rows[0] == "ns/a 2017-09-14 18:08"
