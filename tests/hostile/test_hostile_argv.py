"""No option injection into QEMU; volumes are attached as what they are (issue 14, part 3).

An attacker controls a volume's spec or file name, a fleet file, a package's volume
settings, a bridge or tap name, or the CAPSTAN_ROOT path; the target is ``sandbox.victim``
(a file QEMU must never open) and the QEMU argv (one option must never become two).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from capstan.core import qemuopt
from capstan.core.errors import InputError, UsageError
from capstan.drivers.base import InstanceSpec, PortForward, Volume
from capstan.drivers.qemu.argv import Host, Paths, argv

from hostile_kit import Sandbox, check

HOSTILE = "x.img,file=real.img,format=raw"


def qemu_split(option: str) -> list[str]:
    """QEMU's reading of an option string: split on ``,``, ``,,`` is a comma."""
    parts, current, i = [], "", 0
    while i < len(option):
        if option[i] == ",":
            if option[i + 1:i + 2] == ",":
                current, i = current + ",", i + 2
                continue
            parts.append(current)
            current = ""
        else:
            current += option[i]
        i += 1
    return [*parts, current]


def qemu_img(*args: str | Path) -> None:
    subprocess.run(["qemu-img", *map(str, args)], check=True, capture_output=True)


def raw(path: Path, head: bytes = b"VOLUME01") -> Path:
    path.write_bytes(head + bytes(1 << 20))
    return path


# -- the volume spec: keys and values from closed sets --------------------------------


@pytest.mark.parametrize(("spec", "text"), [
    # the reported injection: a value's comma started a new -drive option
    ("{v}:format=raw,file={victim}", "format must be one of"),
    ("{v}:cache=none,file={victim}", "cache must be one of"),
    ("{v}:aio=threads,file={victim}", "aio must be one of"),
    ("{v}:file={victim}", "unknown setting 'file'"),
    ("{v}:if=ide", "unknown setting 'if'"),
    ("{v}:readonly=on", "unknown setting 'readonly'"),
    ("{v}:driver=file", "unknown setting 'driver'"),
    ("{v}:backing=x", "unknown setting 'backing'"),
    ("{v}:format=json", "format must be one of"),
    ("{v}:aio=native:cache=writeback", "aio=native needs cache=none"),
    ("{v}\nformat=raw", "control character"),
    ("{v}\x00.img", "control character"),
    ("path=", "use '='"),
    (":format=raw", "the path is empty"),
])
def test_volume_spec_outside_the_closed_sets(cli, sandbox: Sandbox, tmp_path: Path,
                                             spec: str, text: str) -> None:
    vol = raw(tmp_path / "decoy.img")
    result = cli("run", "-i", "nope", "--volume",
                 spec.format(v=vol, victim=sandbox.victim), "x")
    check(result, 64, text)
    assert not (sandbox.root / "instances").exists()


def test_package_volume_settings_cannot_inject(cli, sandbox: Sandbox, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "pkg" / "volumes").mkdir(parents=True)
    raw(tmp_path / "pkg" / "volumes" / "data")
    (tmp_path / "pkg" / "volumes" / "data.yaml").write_text(
        f"format: raw,file={sandbox.victim}\n")
    monkeypatch.chdir(tmp_path / "pkg")
    check(cli("run", "-i", "nope", "--volume", "data", "x"), 65, "format must be one of")


# -- what the file is: probed, never guessed --------------------------------------------


def test_backing_file_volume_is_refused(cli, sandbox: Sandbox, tmp_path: Path) -> None:
    vol = tmp_path / "back.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-F", "raw", "-b", sandbox.victim, vol)
    check(cli("run", "-i", "nope", "--volume", vol, "x"), 65, "backing file")


def test_qcow2_data_file_volume_is_refused(cli, sandbox: Sandbox, tmp_path: Path) -> None:
    # made with a decoy data file, then pointed at the victim (same name length)
    decoy = tmp_path / "outsideXvictim"
    vol = tmp_path / "data.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-o", f"data_file={decoy},data_file_raw=on",
             vol, "1M")
    vol.write_bytes(vol.read_bytes().replace(bytes(decoy), bytes(sandbox.victim)))
    check(cli("run", "-i", "nope", "--volume", f"{vol}:format=qcow2", "x"), 65, "data file")


def test_vmdk_extent_elsewhere_is_refused(cli, sandbox: Sandbox, tmp_path: Path) -> None:
    vol = tmp_path / "desc.vmdk"
    vol.write_text('# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\n'
                   'createType="monolithicFlat"\n\n'
                   f'RW 1 FLAT "{sandbox.victim}" 0\n')
    check(cli("run", "-i", "nope", "--volume", vol, "x"), 65, "extent")


@pytest.mark.parametrize(("make", "spec", "text"), [
    ("qcow2", ":format=raw", "is a qcow2 image, not raw"),
    ("raw", ":format=qcow2", "is a raw image, not qcow2"),
    ("vdi", ":format=vhd", "is a vdi image, not vpc"),
    ("qed", "", "is a qed image"),
])
def test_format_is_probed(cli, sandbox: Sandbox, tmp_path: Path, make: str, spec: str,
                          text: str) -> None:
    vol = tmp_path / f"v.{make}"
    qemu_img("create", "-q", "-f", make, vol, "1M")
    check(cli("run", "-i", "nope", "--volume", f"{vol}{spec}", "x"), 65, text)


def test_missing_volume(cli, sandbox: Sandbox, tmp_path: Path) -> None:
    check(cli("run", "-i", "nope", "--volume", tmp_path / HOSTILE, "x"), 65, "no such volume")


def test_probe_gives_the_format(tmp_path: Path) -> None:
    from capstan.services.volumes import attachable

    qemu_img("create", "-q", "-f", "qcow2", tmp_path / HOSTILE, "1M")
    vol = attachable(Volume.parse(str(tmp_path / HOSTILE)))
    assert vol.format == "qcow2"


# -- the fleet file's volumes key --------------------------------------------------------


@pytest.mark.parametrize(("volume", "text"), [
    ("decoy.img:format=raw,file={victim}", "format must be one of"),
    ("decoy.img:file={victim}", "unknown setting 'file'"),
    ("back.qcow2", "backing file"),
])
def test_fleet_volumes(cli, sandbox: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                       volume: str, text: str) -> None:
    work = tmp_path / "fleet"
    work.mkdir()
    raw(work / "decoy.img")
    raw(work / "app.img")
    qemu_img("create", "-q", "-f", "qcow2", "-F", "raw", "-b", sandbox.victim,
             work / "back.qcow2")
    spec = json.dumps(volume.format(victim=sandbox.victim))
    (work / "capstan-fleet.yaml").write_text(
        f"name: f\nservices:\n  a:\n    image: app.img\n    volumes: [{spec}]\n")
    monkeypatch.chdir(work)
    check(cli("up", "--dry-run"), 65, text)
    assert not (sandbox.root / "instances").exists()


# -- network device names ----------------------------------------------------------------


@pytest.mark.parametrize("mode", ["bridge", "tap"])
def test_network_device_cannot_inject(cli, sandbox: Sandbox, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    # a directory that makes /sys/class/net/<name>/bridge "exist" through ..
    trap = tmp_path / "x,helper=evil"
    (trap / "bridge").mkdir(parents=True)
    (trap / "tun_flags").write_text("0")
    name = f"../../../..{trap}"
    image = raw(tmp_path / "app.img")
    check(cli("run", "-d", "-i", image, "-n", mode, "-b", name, "x"), 64,
          "invalid network device")


# -- the escaper, and the argv as a pure function of spec and paths -------------------


@pytest.mark.parametrize("bad", ["a\nb", "a\x00b", "a\rb", "\x7f", "tab\there"])
def test_escaper_refuses_control_characters(bad: str) -> None:
    with pytest.raises(InputError, match="control character"):
        qemuopt.escape(bad)


@given(st.text())
@settings(max_examples=300, deadline=None)
def test_escaper_round_trip(value: str) -> None:
    try:
        escaped = qemuopt.escape(value)
    except InputError:
        assert any(ord(c) < 32 or ord(c) == 127 for c in value)
        return
    assert qemu_split(f"file={escaped},if=none") == [f"file={value}", "if=none"]


def golden_argv(root: Path, volume: Path) -> list[str]:
    d = root / "instances" / "qemu" / "v1"
    paths = Paths(disk=d / "disk.qcow2", console=d / "console.sock",
                  console_log=d / "console.log", qmp=d / "qmp.sock")
    spec = InstanceSpec(name="v1", image=Path("/i.qcow2"), memory_mib=64, cpus=1,
                        networking="none", volumes=(Volume(volume, "qcow2"),),
                        private_network="net", private_mac="02:00:00:00:00:01")
    return argv(spec, paths, Host(qemu="qemu", accel="tcg"))


def test_argv_golden_with_hostile_paths(tmp_path: Path) -> None:
    root = Path("/r,oot dir,file=/etc/shadow")
    volume = tmp_path / HOSTILE
    volume.write_bytes(b"")
    v = str(volume).replace(",", ",,")
    d = "/r,,oot dir,,file=/etc/shadow/instances/qemu/v1"
    assert golden_argv(root, volume) == [
        "qemu", "-name", "guest=v1", "-machine", "pc", "-accel", "tcg", "-cpu", "max",
        "-m", "64", "-smp", "1", "-nodefaults", "-no-user-config", "-display", "none",
        "-drive", f"file={d}/disk.qcow2,if=none,id=hd0,format=qcow2,aio=threads,"
                  "cache=writeback",
        "-device", "virtio-blk-pci,id=blk0,bootindex=0,drive=hd0",
        "-device", "virtio-rng-pci",
        "-chardev", f"socket,id=con0,path={d}/console.sock,server=on,wait=off,"
                    f"logfile={d}/console.log,logappend=on",
        "-serial", "chardev:con0",
        "-qmp", f"unix:{d}/qmp.sock,server=on,wait=off",
        "-drive", f"file={v},if=none,id=hd1,format=qcow2,cache=writeback,aio=threads",
        "-device", "virtio-blk-pci,id=blk1,drive=hd1",
        "-netdev", "socket,id=pn0,mcast=239.255.160.138:24043,localaddr=127.0.0.1",
        "-device", "virtio-net-pci,netdev=pn0,id=nic2,romfile=,mac=02:00:00:00:00:01",
    ]


def test_argv_refuses_a_root_with_a_newline(tmp_path: Path) -> None:
    volume = tmp_path / "v.img"
    volume.write_bytes(b"")
    with pytest.raises(InputError, match="control character"):
        golden_argv(Path("/r\noot"), volume)


def test_run_under_a_root_with_a_newline(cli, sandbox: Sandbox, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "ro\not"
    root.mkdir()
    monkeypatch.setenv("CAPSTAN_ROOT", str(root))
    image = raw(tmp_path / "app.img")
    check(cli("run", "-d", "-i", image, "n1"), 65, "control character")
    assert not (root / "instances" / "qemu" / "n1").exists()


@given(st.text(max_size=40))
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_every_drive_option_is_one_option(name: str) -> None:
    if any(ord(c) < 32 or ord(c) == 127 for c in name) or "/" in name or name in ("", ".", ".."):
        return
    option = qemuopt.join("", {"file": Path("/vols", name), "if": "none", "format": "raw"})
    assert qemu_split(option) == [f"file=/vols/{name}", "if=none", "format=raw"]


# -- parsers: no traceback, only documented errors ---------------------------------------


@given(st.text(max_size=60), st.dictionaries(st.sampled_from(["format", "cache", "aio"]),
                                             st.text(max_size=12), max_size=3))
@settings(max_examples=400, deadline=None)
def test_volume_parser_property(text: str, defaults: dict[str, str]) -> None:
    try:
        vol = Volume.parse(text, defaults)
    except UsageError as err:
        assert "\n" not in str(err)
        return
    assert vol.path.is_absolute()
    assert not any(ord(c) < 32 or ord(c) == 127 for c in str(vol.path))
    assert vol.format is None or vol.format in ("raw", "qcow2", "vmdk", "vdi", "vpc", "vhdx")
    # "": the default, chosen where the volume is attached (issue 17, gap 6)
    assert vol.cache in ("", "none", "writeback", "writethrough", "directsync", "unsafe")
    assert vol.aio in ("", "threads", "native", "io_uring")


@given(st.text(max_size=40))
@settings(max_examples=400, deadline=None)
def test_port_forward_parser_property(text: str) -> None:
    try:
        rule = PortForward.parse(text)
    except UsageError as err:
        assert "\n" not in str(err)
        return
    assert 0 <= rule.host_port <= 65535 and 0 < rule.guest_port <= 65535
    assert rule.protocol in ("tcp", "udp")
    assert "," not in rule.host_addr and "-" not in rule.host_addr


@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40))
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow,
          HealthCheck.function_scoped_fixture])
def test_run_volume_and_forward_options_property(cli, text: str) -> None:
    for option in ("--volume", "-f"):
        result = cli("run", "-i", "/no/such/image", option, text, "x")
        assert result.code in (64, 65), result
        assert "Traceback" not in result.err and result.err.count("\n") == 1, result.err


# -- booting the probe loader: what the guest reads ----------------------------------------


@pytest.mark.functional
@pytest.mark.qemu
def test_boot_with_commas_in_the_root_and_the_volume(cli, image: Path, sandbox: Sandbox,
                                                     tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "ro,ot dir,file=x"
    root.mkdir()
    monkeypatch.setenv("CAPSTAN_ROOT", str(root))
    (tmp_path / "im,age dir").mkdir()
    image = image.rename(tmp_path / "im,age dir" / "a,pp.qcow2")  # the overlay's backing file
    (tmp_path / "real.img").write_bytes(b"REALDISK" + bytes(1 << 20))
    vol = raw(tmp_path / HOSTILE, b"COMMAVOL")
    done = cli.program("run", "-i", image, "--volume", vol, "--rm", "c1")
    assert done.returncode == 0, done.stderr
    assert f"PROBE disk1={b'COMMAVOL'.hex()}" in done.stdout, done.stdout
    # detached: found running (its argv holds the escaped paths), stopped and deleted
    assert cli.program("run", "-d", "-i", image, "-e", "/x @hold", "--volume", vol,
                       "c2").returncode == 0
    try:
        rows = json.loads(cli.program("instances", "-f", "json").stdout)
        assert [(r["Name"], r["Status"]) for r in rows] == [("c2", "running")]
    finally:
        assert cli.program("delete", "c2").returncode == 0
    assert json.loads(cli.program("instances", "-f", "json").stdout) == []


@pytest.mark.functional
@pytest.mark.qemu
def test_qcow2_volume_is_attached_as_qcow2(cli, image: Path, sandbox: Sandbox,
                                           tmp_path: Path) -> None:
    vol = tmp_path / "data.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", vol, "1M")
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x41 0 512", str(vol)],
                   check=True, capture_output=True)
    done = cli.program("run", "-i", image, "--volume", vol, "--rm", "q1")
    assert done.returncode == 0, done.stderr
    # the guest reads the disk's contents, never the qcow2 header (QFI\xfb)
    assert "PROBE disk1=4141414141414141" in done.stdout, done.stdout
    check(cli("run", "-i", image, "--volume", f"{vol}:format=raw", "q2"), 65,
          "is a qcow2 image, not raw")


@pytest.mark.functional
@pytest.mark.qemu
def test_volume_replaced_before_a_restart_is_probed_again(cli, image: Path, sandbox: Sandbox,
                                                          tmp_path: Path) -> None:
    vol = tmp_path / "v.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", vol, "1M")
    assert cli("run", "-d", "-i", image, "-e", "/x @hold", "--volume", vol, "r1").code == 0
    assert cli("stop", "r1").code == 0
    vol.unlink()
    qemu_img("create", "-q", "-f", "qcow2", "-F", "raw", "-b", sandbox.victim, vol)
    check(cli("start", "r1"), 65, "backing file")
    raw(vol)
    check(cli("start", "r1"), 65, "is a raw image, not qcow2")
