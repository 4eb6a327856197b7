"""Packages: manifests, run.yaml runtimes, .capstanignore, .mpm, resolution, compose."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from capstan.core.errors import InputError
from capstan.packages.manifest import ignore_regex, ignored
from capstan.packages.mpm import build_mpm, read_mpm
from capstan.packages.runtimes import boot_command, parse_run
from capstan.services.images import package_cmdline

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def run_config(package: str, data: dict[str, object]):  # type: ignore[no-untyped-def]
    return parse_run(data, package, f"{package}/meta/run.yaml")


# name, run.yaml config set, the /run script it gives (with runtime bases below)
BASES = {
    "openjdk8-zulu-compact1": {"runtime": "native", "config_set": {
        "java": {"bootcmd": "/java.so $JVM_ARGS -cp $CLASSPATH $MAIN $ARGS"}}},
    "node-4.4.5": {"runtime": "native", "config_set": {
        "node": {"bootcmd": "/libnode.so $NODE_ARGS $MAIN $ARGS"}}},
    "python-2.7": {"runtime": "native", "config_set": {
        "python": {"bootcmd": "/python $PYTHON_ARGS $MAIN $ARGS"}}},
}
CASES = [
    ("native", {"bootcmd": "/hello", "env": {"B": "2", "A": "1"}},
     "--env=A?=1 --env=B?=2 /hello"),
    ("java", {"main": "/app/app.jar", "xmx": "256m"},
     "--env=CLASSPATH?=/ --env=JVM_ARGS?=-jar --env=MAIN?=/app/app.jar "
     "--env=XMX?=256m /java.so $JVM_ARGS -cp $CLASSPATH $MAIN $ARGS"),
    ("java", {"main": "Hello", "classpath": ["/a", "/b"], "env": {"XMX": "1g"}},
     "--env=CLASSPATH?=/a:/b --env=JVM_ARGS?=-Dx=y --env=MAIN?=Hello "
     "--env=XMX?=1g /java.so $JVM_ARGS -cp $CLASSPATH $MAIN $ARGS"),
    ("node", {"main": "/server.js", "env": {"PORT": "8000"}},
     "--env=MAIN?=/server.js --env=NODE_ARGS?=-- --env=PORT?=8000 "
     "/libnode.so $NODE_ARGS $MAIN $ARGS"),
    ("node", {"shell": True},
     "--env=ARGS?= --env=MAIN?= --env=NODE_ARGS?=-- /libnode.so $NODE_ARGS $MAIN $ARGS"),
    ("python", {"main": "/main.py", "args": ["-v", "x"]},
     "--env=ARGS?=-v x --env=MAIN?=/main.py --env=PYTHON_ARGS?=-O "
     "/python $PYTHON_ARGS $MAIN $ARGS"),
    ("python", {"shell": True},
     "--env=ARGS?= --env=MAIN?=- --env=PYTHON_ARGS?=-O /python $PYTHON_ARGS $MAIN $ARGS"),
]


@pytest.mark.parametrize(("runtime", "config", "expected"), CASES)
def test_runtime_boot_commands(runtime: str, config: dict[str, object], expected: str) -> None:
    table = {name: run_config(name, data) for name, data in BASES.items()}
    table["app"] = run_config("app", {"runtime": runtime, "config_set": {"c": config}})
    assert boot_command(table, "app", "c") == expected


def test_env_soft_semantics_and_inheritance() -> None:
    table = {
        "lib": run_config("lib", {"runtime": "native", "config_set": {
            "serve": {"bootcmd": "/srv", "env": {"PORT": "80", "MODE": "lib"}}}}),
        "app": run_config("app", {"runtime": "native", "config_set": {
            "web": {"base": "lib:serve", "env": {"PORT": "8000"}},
            "debug": {"base": "app:web", "env": {"LOG": "debug"}}}}),
    }
    assert boot_command(table, "app", "debug") == \
        "--env=LOG?=debug --env=MODE?=lib --env=PORT?=8000 /srv"  # the child wins
    table["app"] = run_config("app", {"runtime": "native", "config_set": {
        "a": {"base": "app:b"}, "b": {"base": "app:a"}}})
    with pytest.raises(InputError, match="inheritance cycle"):
        boot_command(table, "app", "a")


@pytest.mark.parametrize(("data", "message"), [
    ({"runtime": "cobol", "config_set": {"a": {}}}, "unknown runtime 'cobol'"),
    ({"runtime": "native"}, "at least one config_set"),
    ({"runtime": "native", "config_set": {"a": {}}}, "'bootcmd' must be provided"),
    ({"runtime": "native", "config_set": {"a": {"bootcmd": "/x", "colour": 1}}},
     "unknown key 'colour'"),
    ({"runtime": "java", "config_set": {"a": {"xmx": "1g"}}}, "'main' must be provided"),
    ({"runtime": "node", "config_set": {"a": {"shell": True, "main": "/x"}}},
     "incompatible arguments specified [main] for shell=true"),
    ({"runtime": "java", "config_set": {"a": {"base": "osv.cli:cli", "main": "X"}}},
     "incompatible arguments specified [main] for custom 'base'"),
    ({"runtime": "native", "config_set": {"a": {"bootcmd": "/x", "env": {"K": "a b"}}}},
     "spaces not allowed"),
    ({"runtime": "native", "config_set": {"a": {"base": "nocolon"}}}, "must be in format"),
    ({"runtime": "native", "config_set": {"a": {"bootcmd": "/x"}}, "config_set_default": "b"},
     "unknown config set 'b'"),
    ({"runtime": "python", "config_set": {"a": {"main": ["x"]}}}, "'main' must be a str"),
])
def test_run_yaml_errors(data: dict[str, object], message: str) -> None:
    with pytest.raises(InputError, match=message.replace("[", r"\[").replace("]", r"\]")):
        run_config("app", data)


@pytest.mark.parametrize(("execute", "boots", "envs", "sets", "default", "expected"), [
    ("/x a", ["web"], ["K=V"], {"web": {}}, "web", "--env=K=V /x a"),
    (None, ["a", " b "], [], {"a": {}, "b": {}}, "", "runscript /run/a;runscript /run/b;"),
    (None, [], ["P=1"], {"a": {}, "b": {}}, "b", "--env=P=1 runscript /run/b;"),
    (None, [], [], {"only": {}}, "", "runscript /run/only;"),  # a lone set is the default
    (None, [], ["P=1"], {"a": {}, "b": {}}, "", "--env=P=1 runscript /run/default;"),
    (None, [], ["P?=1"], {"a": {}}, "", "--env=P?=1 runscript /run/a;"),  # a soft default
])
def test_cmdline_precedence(execute: str | None, boots: list[str], envs: list[str],
                            sets: dict[str, dict[str, str]], default: str,
                            expected: str) -> None:
    run = run_config("app", {"runtime": "native", "config_set": {
        k: {"bootcmd": "/x"} for k in sets}, "config_set_default": default})
    assert package_cmdline(run, execute, boots, envs) == expected


@pytest.mark.parametrize(("pattern", "path", "matches"), [
    ("/node_modules/.cache", "/node_modules/.cache", True),
    ("/**/*.log", "/x/a.log", True),
    ("/**/*.log", "/x/y/a.log", True),
    ("/**/*.log", "/a.log", True),
    ("/**/a.txt", "/xa.txt", False),  # fixed: a segment boundary is required
    ("/logs/*", "/logs/a", True),
    ("/logs/*", "/logs/x/y", True),
    ("/logs/*", "/logs", False),
    ("/*.md", "/README.md", True),
    ("/*.md", "/docs/a.md", False),
    ("/a+b", "/a+b", True),  # regex metacharacters are literal
    ("/a+b", "/aab", False),
    ("*.log", "/a.log", False),  # as in Capstan: no leading / matches nothing
])
def test_capstanignore_patterns(pattern: str, path: str, matches: bool) -> None:
    assert ignored([ignore_regex(pattern)], path) is matches


def _package(tmp_path: Path, name: str = "demo") -> Path:
    pkg = tmp_path / name
    (pkg / "meta").mkdir(parents=True)
    (pkg / "meta" / "package.yaml").write_text(f"name: {name}\ntitle: T\nauthor: A\n")
    (pkg / "bin").mkdir()
    (pkg / "bin" / "tool").write_bytes(b"#!tool")
    (pkg / "link").symlink_to("bin/tool")
    (pkg / "notes.log").write_text("ignored")
    (pkg / ".capstanignore").write_text("# comment\n/*.log\n")
    return pkg


def test_mpm_is_reproducible_and_capstan_compatible(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    pkg = _package(tmp_path)
    first = build_mpm(pkg)
    digest = hashlib.sha256(first.read_bytes()).hexdigest()
    (pkg / "bin" / "tool").touch()  # a new mtime changes nothing
    assert hashlib.sha256(build_mpm(pkg).read_bytes()).hexdigest() == digest
    listing = subprocess.run(["tar", "tzvf", first], capture_output=True, text=True,
                             check=True).stdout.splitlines()
    names = [line.split()[-1] if " -> " not in line else line.split()[-3] for line in listing]
    assert names == ["/", "/.capstanignore", "/bin/", "/bin/tool", "/link", "/meta/",
                     "/meta/package.yaml"]
    assert all(" root/root " in line for line in listing)
    archive = read_mpm(first)
    assert archive.manifest is not None and archive.manifest.name == "demo"
    # the Capstan way: Go's tar.gz, '/'-prefixed names, a user's uid and a root entry
    capstan = tmp_path / "capstan.mpm"
    with tarfile.open(capstan, "w:gz") as tar:
        for name, data in (("/meta/package.yaml", b"name: theirs\ntitle: T\nauthor: B\n"),
                           ("/meta/run.yaml",
                            b"runtime: native\nconfig_set:\n  a:\n    bootcmd: /x\n"),
                           ("/x", b"binary")):
            info = tarfile.TarInfo(name)
            info.size, info.uid, info.uname = len(data), 1000, "alice"
            tar.addfile(info, io.BytesIO(data))
    theirs = read_mpm(capstan)
    assert theirs.manifest is not None and theirs.manifest.name == "theirs"
    assert [m.name for m in theirs.members] == ["meta/package.yaml", "meta/run.yaml", "x"]
    assert theirs.run_yaml["runtime"] == "native"


@pytest.mark.parametrize(("member", "link", "message"), [
    ("../evil", None, "escapes the package"),
    ("/a/../../evil", None, "escapes the package"),
    ("lib/escape", "../../etc/passwd", "escapes the package"),
    ("abs", "/../../etc", "escapes the package"),
])
def test_hostile_archives_are_refused(tmp_path: Path, member: str, link: str | None,
                                      message: str) -> None:
    bad = tmp_path / "bad.mpm"
    with tarfile.open(bad, "w:gz") as tar:
        info = tarfile.TarInfo(member)
        if link:
            info.type, info.linkname = tarfile.SYMTYPE, link
            tar.addfile(info)
        else:
            info.size = 1
            tar.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(InputError, match=message):
        read_mpm(bad)


def test_hostile_and_huge_archives_on_the_command_line(cli, tmp_path: Path) -> None:
    bad = tmp_path / "bad.mpm"
    with tarfile.open(bad, "w:gz") as tar:
        info = tarfile.TarInfo("../../evil")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    result = cli("package", "describe", bad)
    assert (result.code, result.err.count("\n")) == (65, 1) and "escapes" in result.err
    assert not (tmp_path.parent / "evil").exists()
    huge = tarfile.TarInfo("big")
    huge.size = 5 << 30  # a header that claims 5 GiB, with no data behind it
    (tmp_path / "huge.mpm").write_bytes(huge.tobuf(format=tarfile.GNU_FORMAT) + bytes(1024))
    result = cli("package", "describe", tmp_path / "huge.mpm")
    assert result.code == 65 and "too large" in result.err


def test_truncated_archive(tmp_path: Path) -> None:
    pkg = _package(tmp_path)
    archive = build_mpm(pkg)
    cut = tmp_path / "cut.mpm"
    cut.write_bytes(archive.read_bytes()[:200])
    with pytest.raises(InputError, match="truncated or corrupt"):
        read_mpm(cut)


# -- end to end: repository, resolution, compose, boot ---------------------------------


def _stub(cli, tmp_path: Path, name: str, require: tuple[str, ...] = (),  # type: ignore
          run: str = "", files: dict[str, str] | None = None) -> None:
    pkg = tmp_path / "stubs" / name
    (pkg / "meta").mkdir(parents=True)
    req = "".join(f"  - {r}\n" for r in require)
    (pkg / "meta" / "package.yaml").write_text(
        f"name: {name}\ntitle: {name}\nauthor: test\nversion: '1.0'\n"
        + (f"require:\n{req}" if req else ""))
    if run:
        (pkg / "meta" / "run.yaml").write_text(run)
    for path, text in (files or {f"/{name}.txt": name}).items():
        (pkg / path.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
        (pkg / path.lstrip("/")).write_text(text)
    assert cli("package", "import", "-C", pkg).code == 0


@pytest.fixture
def repository(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Stand-ins for the real packages the examples require."""
    native = "runtime: native\nconfig_set:\n  {cs}:\n    bootcmd: {cmd}\n"
    _stub(cli, tmp_path, "osv.bootstrap", files={"/etc/hosts": "127.0.0.1 localhost\n"})
    _stub(cli, tmp_path, "openjdk8-zulu-compact1",
          run=native.format(cs="java", cmd="/java.so $JVM_ARGS -cp $CLASSPATH $MAIN $ARGS"))
    _stub(cli, tmp_path, "node-4.4.5",
          run=native.format(cs="node", cmd="/libnode.so $NODE_ARGS $MAIN $ARGS"))
    _stub(cli, tmp_path, "python-2.7",
          run=native.format(cs="python", cmd="/python $PYTHON_ARGS $MAIN $ARGS"))
    _stub(cli, tmp_path, "app.hadoop-hdfs", ("openjdk8-zulu-compact1",),
          run=native.format(cs="datanode", cmd="/java.so -cp /hdfs DataNode"))
    _stub(cli, tmp_path, "app.mysql-5.6.21", run=native.format(cs="mysqld", cmd="/mysqld"))
    _stub(cli, tmp_path, "openfoam.core", files={"/usr/lib/libfoam.so": "core"})
    _stub(cli, tmp_path, "openfoam.simplefoam", ("openfoam.core",),
          files={"/usr/bin/simpleFoam.so": "solver", "/usr/lib/libfoam.so": "patched"})


EXAMPLE_CASES = [
    ("hello-c", "runscript /run/default;", "default", "--env=WHO?=world /hello $WHO",
     "/hello"),
    ("java-app", "runscript /run/hello;", "hello",
     "--env=CLASSPATH?=/app --env=JVM_ARGS?=-Dx=y --env=MAIN?=Hello "
     "--env=XMX?=256m /java.so $JVM_ARGS -cp $CLASSPATH $MAIN $ARGS", "/app/Hello.java"),
    ("node-app", "runscript /run/server;", "server",
     "--env=MAIN?=/server.js --env=NODE_ARGS?=-- --env=PORT?=8000 "
     "/libnode.so $NODE_ARGS $MAIN $ARGS", "/server.js"),
    ("python-app", "runscript /run/main;", "main",
     "--env=MAIN?=/main.py --env=PYTHON_ARGS?=-O /python $PYTHON_ARGS $MAIN $ARGS",
     "/main.py"),
    ("hdfs", "runscript /run/datanode;", "datanode",
     "--env=HADOOP_HEAPSIZE?=512 /java.so -cp /hdfs DataNode", "/app.hadoop-hdfs.txt"),
    ("mysql", "runscript /run/mysqld;", "mysqld", "--env=MYSQL_PORT?=3306 /mysqld",
     "/app.mysql-5.6.21.txt"),
    ("simplefoam", "runscript /run/solve;", "solve",
     "/usr/bin/simpleFoam.so -case /case", "/case/system/controlDict"),
]


def test_resolution_lock_and_bad_input(cli, repository: None, tmp_path: Path,
                                       capstan_root: Path) -> None:
    app = tmp_path / "app"
    shutil.copytree(EXAMPLES / "hdfs", app)
    out = tmp_path / "a.qcow2"
    shown = json.loads(cli("package", "compose", "-C", app, "-l", "probe-loader", "-o", out,
                           "-f", "json").out)
    assert shown["Packages"] == "osv.bootstrap openjdk8-zulu-compact1 app.hadoop-hdfs"
    lock = (app / "capstan.lock").read_text()
    assert "app.hadoop-hdfs" in lock and "sha256" in lock
    # a package that changed under the lock is refused, with both digests
    _stub(cli, tmp_path / "again", "app.hadoop-hdfs", ("openjdk8-zulu-compact1",),
          files={"/changed": "x"})
    result = cli("package", "compose", "-C", app, "-l", "probe-loader", "-o", out)
    assert result.code == 65 and "capstan.lock pins app.hadoop-hdfs" in result.err
    cases = [
        ("require:\n  - osv.nope\n", 65, "package osv.nope is not in your local repository"),
        ("require: [x\n", 65, "package.yaml:"),
        ("colour: red\n", 65, "package.yaml:4: unknown key 'colour'"),
        ("require: [app.hadoop-hdfs]\nconstraints: {app.hadoop-hdfs: '>=2.0'}\n", 65,
         "needs app.hadoop-hdfs >=2.0, but the repository has version '1.0'"),
        ("constraints: {x: 'about 2'}\n", 65, "invalid version constraint 'about 2'"),
    ]
    for extra, code, text in cases:
        (app / "meta" / "package.yaml").write_text(
            "name: a\ntitle: t\nauthor: me\n" + extra)
        result = cli("package", "compose", "-C", app, "-l", "probe-loader", "-o", out)
        assert (result.code, result.err.count("\n")) == (code, 1), (extra, result)
        assert text in result.err, (extra, result.err)
    _stub(cli, tmp_path / "cyc", "cyc.a", ("cyc.b",))
    _stub(cli, tmp_path / "cyc", "cyc.b", ("cyc.a",))
    (app / "meta" / "package.yaml").write_text("name: a\ntitle: t\nauthor: me\nrequire: "
                                               "[cyc.a]\n")
    result = cli("package", "compose", "-C", app, "-l", "probe-loader", "-o", out)
    assert result.code == 65 and "dependency cycle: cyc.a -> cyc.b -> cyc.a" in result.err
    (app / "meta" / "package.yaml").unlink()
    result = cli("package", "compose", "-C", app, "-l", "probe-loader", "-o", out)
    assert result.code == 65 and "no meta/package.yaml" in result.err
    assert sorted(p.name for p in (capstan_root / "packages").glob("*.mpm"))[0] == \
        "app.hadoop-hdfs.mpm"


def test_package_cli_round_trip(cli, tmp_path: Path) -> None:
    pkg = tmp_path / "mine"
    pkg.mkdir()
    assert cli("package", "init", pkg, "-n", "com.me.tool", "-t", "Tool", "-a", "Me",
               "--runtime", "node").code == 0
    assert "runtime: node" in (pkg / "meta" / "run.yaml").read_text()
    result = cli("package", "init", pkg, "-n", "com.me.tool", "-t", "Tool", "-a", "Me")
    assert result.code == 65 and "--force" in result.err
    assert cli("runtime", "list", "-f", "value", "-c", "Runtime").out.split() == \
        ["native", "node", "java", "python"]  # Capstan's order
    result = cli("runtime", "init", "-r", "cobol", "-C", pkg, "--force")
    assert result.code == 65 and "unknown runtime 'cobol'" in result.err
    assert cli("runtime", "init", "-r", "native", "-C", pkg, "--force", "--plain").code == 0
    (pkg / "meta" / "run.yaml").write_text(
        "runtime: native\nconfig_set:\n  tool:\n    bootcmd: /tool\n")
    assert cli("package", "import", "-C", pkg).code == 0
    rows = json.loads(cli("package", "list", "-f", "json").out)
    assert [r["Name"] for r in rows] == ["com.me.tool"]
    shown = json.loads(cli("package", "describe", "com.me.tool", "-f", "json").out)
    assert shown["Boot"] == "tool: /tool"
    assert cli("package", "delete", "com.me.tool").code == 0
    assert cli("package", "delete", "com.me.tool").code == 65
