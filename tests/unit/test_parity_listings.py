"""Gap 3 of issue 17: the columns of ``images`` and ``package list``.

Capstan (reference 3.3): "images, packages and remote listings share one layout:
``Name`` (50), ``Description`` (50; the package *title* for packages), ``Version``
(15), ``Created`` (20, shown as ``YYYY-MM-DD HH:MM`` or ``N/A``), ``Platform`` (15)
... An empty platform prints ``N/A`` for images but blank for packages."
(6.10) ``index.yaml``'s ``platform`` is read by ``images``. (4.6) ``package list``:
"The first invalid manifest stops the walk and the error is discarded" [quirk];
[fix] 13 #36: "invalid manifests reported, valid ones listed".
"""

from __future__ import annotations

import json
from pathlib import Path

CAPSTAN_COLUMNS = ["Name", "Description", "Version", "Created", "Platform"]


def test_images_columns_from_index_yaml(cli, tmp_path: Path, capstan_root: Path) -> None:
    repo = capstan_root / "repository"
    (repo / "osv" / "full").mkdir(parents=True)
    (repo / "osv" / "full" / "full.qemu").write_bytes(b"\0" * 512)
    (repo / "osv" / "full" / "index.yaml").write_text(
        'format_version: "1"\nversion: "0.57"\ncreated: 2023-05-22 10:15\n'
        'description: OSv with a JVM\nbuild: ""\nplatform: Ubuntu 22.04\n')
    (repo / "bare").mkdir()
    (repo / "bare" / "bare.qemu").write_bytes(b"\0" * 512)  # no index.yaml (a download)
    rows = json.loads(cli("images", "-f", "json").out)
    assert list(rows[0])[:5] == CAPSTAN_COLUMNS
    assert {"Size", "SHA256", "Source"} <= set(rows[0])
    by_name = {r["Name"]: r for r in rows}
    assert {k: by_name["osv/full"][k] for k in CAPSTAN_COLUMNS} == {
        "Name": "osv/full", "Description": "OSv with a JVM", "Version": "0.57",
        "Created": "2023-05-22 10:15", "Platform": "Ubuntu 22.04"}
    assert by_name["bare"]["Created"] == "N/A" and by_name["bare"]["Platform"] == "N/A"
    assert by_name["bare"]["Hypervisor"] == "qemu"


def _manifest(folder: Path, name: str, text: str) -> None:
    (folder / f"{name}.yaml").write_text(text)
    (folder / f"{name}.mpm").write_bytes(b"")


def test_package_list_columns_and_a_malformed_manifest(cli, capstan_root: Path) -> None:
    packages = capstan_root / "packages"
    packages.mkdir()
    _manifest(packages, "a.good", "name: a.good\ntitle: Good\nauthor: t\nversion: '1.0'\n"
              "created: '2019-09-16T07:52:38-04:00'\nplatform: Debian 12\n")
    _manifest(packages, "b.broken", "name: [b.broken\n")
    _manifest(packages, "c.good", "name: c.good\ntitle: Also good\nauthor: t\n")
    result = cli("package", "list", "-f", "json")
    assert result.code == 0
    rows = json.loads(result.out)
    assert list(rows[0])[:5] == CAPSTAN_COLUMNS
    assert [(r["Name"], r["Description"], r["Version"], r["Created"], r["Platform"])
            for r in rows] == [("a.good", "Good", "1.0", "2019-09-16 07:52", "Debian 12"),
                               ("c.good", "Also good", "", "N/A", "")]
    problems = result.err.strip().splitlines()
    assert len(problems) == 1 and problems[0].startswith("capstan: warning: skipping ")
    assert "b.broken.yaml" in problems[0]
