"""The command line's own handling: what any command does on an interrupt or an OS error."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from dicom_node import cli, demo
from dicom_node.cli import main


def test_an_interrupt_is_one_line_and_status_130(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def interrupted(cfg: object, out: object) -> Iterator[str]:
        yield "building the demo engines ..."
        raise KeyboardInterrupt  # Ctrl-C during a build

    monkeypatch.setattr(demo, "run_demo", interrupted)
    assert main(["demo", "--out", str(tmp_path / "demo")]) == 130
    captured = capsys.readouterr()
    assert captured.out == "building the demo engines ...\n"
    assert captured.err == "dicom-node: interrupted\n"


def test_config_is_taken_before_or_after_the_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "node.yaml"
    config.write_text("node: {ae_title: BEFORE}\nstorage: {spool_dir: spool}\n")
    assert main(["--config", str(config), "check-config"]) == 0
    assert f"{config}: OK (0 destinations, AE BEFORE)" in capsys.readouterr().out
    assert main(["--config", str(config), "studies"]) == 0
    assert "the node has not run yet" in capsys.readouterr().out
    after = tmp_path / "after.yaml"
    after.write_text("node: {ae_title: AFTER}\n")
    # After the command wins (it is the more specific), as with every other flag.
    assert main(["--config", str(config), "check-config", "--config", str(after)]) == 0
    assert "AE AFTER" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("flag", "key"),
    [("--host", "node.host"), ("--ae-title", "node.ae_title"),
     ("--spool-dir", "storage.spool_dir"), ("--log-level", "logging.level")],
)  # fmt: skip
def test_an_empty_override_is_refused_naming_the_key(
    flag: str, key: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check-config", f"{flag}="]) == 2
    assert capsys.readouterr().err.startswith(f"dicom-node: error: {key}: expected ")


@pytest.mark.parametrize(
    ("argv", "flag", "given"),
    [(["check-config", "--config", ""], "--config", ""), (["check-config", " "], "PATH", " "),
     (["--config", "", "studies"], "--config", ""),
     (["engines", "--config", "", "list"], "--config", "")],
)  # fmt: skip
def test_an_empty_config_path_is_refused_not_read_as_none(
    argv: list[str], flag: str, given: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # `serve --config "$UNSET"` ran the node on the built-in defaults: every interface,
    # any calling AE.
    assert main(argv) == 2
    assert capsys.readouterr().err == (
        f"dicom-node: error: {flag}: expected a configuration file, got {given!r}\n"
    )


def test_config_is_taken_between_engines_and_its_verb(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "node.yaml"
    config.write_text(f"engines: {{cache_dir: {tmp_path / 'engines'}}}\n")
    assert main(["engines", "--config", str(config), "list"]) == 0
    assert f"0 engines built in {tmp_path / 'engines'}" in capsys.readouterr().out


def test_a_spool_dir_flag_expands_the_home_folder_as_the_file_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    assert main(["studies", "--spool-dir", "~/spool"]) == 0  # was <cwd>/~/spool
    assert f"no state database at {tmp_path / 'spool' / 'state.sqlite3'}" in capsys.readouterr().out
    assert main(["studies", "--spool-dir", "~no-such-user-here/spool"]) == 2
    assert capsys.readouterr().err.startswith(
        "dicom-node: error: storage.spool_dir: cannot expand '~'"
    )


def test_a_missing_file_named_by_the_environment_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nope.yaml"
    monkeypatch.setenv("DICOM_NODE_CONFIG", str(missing))
    assert main(["check-config"]) == 2
    assert capsys.readouterr().err == (
        f"dicom-node: error: {missing}: cannot read configuration file (No such file or "
        "directory) (named by $DICOM_NODE_CONFIG)\n"
    )
    assert main(["check-config", "--config", str(missing)]) == 2  # named here: no hint
    assert "DICOM_NODE_CONFIG" not in capsys.readouterr().err


def test_a_key_error_in_a_file_named_by_the_environment_names_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "node.yaml"
    config.write_text("node: {port: 70000}\n")
    monkeypatch.setenv("DICOM_NODE_CONFIG", str(config))
    assert main(["studies"]) == 2  # was: a bare "node.port: ..." naming no file
    assert capsys.readouterr().err == (
        f"dicom-node: error: {config}: node.port: expected an integer from 0 to 65535, got "
        "70000 (named by $DICOM_NODE_CONFIG)\n"
    )
    config.write_text("node: {port: 104}\n")
    assert main(["check-config", "--port", "99999"]) == 2  # the flag's value: not the file's
    assert capsys.readouterr().err == (
        "dicom-node: error: node.port: expected an integer from 0 to 65535, got 99999\n"
    )


def test_a_relative_path_in_the_environment_is_named_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "node.yaml").write_text("node: {port: 70000}\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DICOM_NODE_CONFIG", "./node.yaml")
    assert main(["studies"]) == 2  # was: "./node.yaml: node.yaml: node.port: ..."
    assert capsys.readouterr().err == (
        "dicom-node: error: node.yaml: node.port: expected an integer from 0 to 65535, got "
        "70000 (named by $DICOM_NODE_CONFIG)\n"
    )


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None,
    reason="needs root and setpriv to run as a user who may not look into a folder",
)
def test_a_folder_the_checking_user_may_not_look_into_passes(tmp_path: Path) -> None:
    # An admin's check-config of the service's mode-700 spool: Path.exists raised
    # PermissionError, printed as "Permission denied" naming no key.
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    os.chown(private, 65534, 65534)
    config = tmp_path / "node.yaml"
    config.write_text(f"storage: {{spool_dir: {private / 'spool'}}}\n")
    no_override = "-dac_override,-dac_read_search"
    result = subprocess.run(
        ["setpriv", f"--inh-caps={no_override}", f"--bounding-set={no_override}",
         sys.executable, "-m", "dicom_node", "check-config", str(config)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{config}: OK (0 destinations, AE TRIAGE)\n"


def test_the_demo_refuses_the_flags_it_cannot_honour(capsys: pytest.CaptureFixture[str]) -> None:
    # It listens on 127.0.0.1, a free port, its spool under --out: --port, --host and
    # --spool-dir were checked, then dropped without a word.
    for flag in ("--port=5", "--host=0.0.0.0", "--spool-dir=x"):
        with pytest.raises(SystemExit) as exited:
            main(["demo", flag])
        assert exited.value.code == 2
        assert f"unrecognized arguments: {flag}" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "flags"),
    [(["studies"], ("--port=5", "--host=0.0.0.0", "--ae-title=X")),
     (["jobs"], ("--port=5",)), (["outbox"], ("--ae-title=X",)),
     (["engines", "list"], ("--port=9108", "--host=0.0.0.0", "--ae-title=X", "--spool-dir=x"))],
)  # fmt: skip
def test_commands_refuse_the_flags_of_keys_they_do_not_read(
    argv: list[str], flags: tuple[str, ...], capsys: pytest.CaptureFixture[str]
) -> None:
    # Offered and checked, then dropped: engines list --port 9108 failed on metrics.port, a
    # key the command never reads.
    for flag in flags:
        with pytest.raises(SystemExit) as exited:
            main([*argv, flag])
        assert exited.value.code == 2
        assert f"unrecognized arguments: {flag}" in capsys.readouterr().err


def test_with_a_json_log_the_line_saying_why_is_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "node.yaml"
    config.write_text(f"engines: {{cache_dir: {tmp_path / 'engines'}}}\n")
    (tmp_path / "engines").mkdir()
    argv = ["serve", "--config", str(config), "--port", "0", "--spool-dir", str(tmp_path / "s")]
    try:
        assert main([*argv, "--log-format", "json"]) == 2  # no engines built
    finally:
        logging.getLogger().handlers.clear()
    lines = capsys.readouterr().err.splitlines()
    assert lines and all(line.startswith("{") for line in lines)  # was: a plain last line
    last = json.loads(lines[-1])
    assert last["level"] == "CRITICAL"
    assert last["message"].startswith("dicom-node: error: engine 'hip_screen': no manifest in ")


def test_a_reader_that_stops_early_is_not_an_error(tmp_path: Path) -> None:
    # `dicom-node outbox | head -1` printed "dicom-node: error: Broken pipe", status 2.
    config = tmp_path / "node.yaml"
    config.write_text(f"engines: {{cache_dir: {tmp_path / 'engines'}}}\n")
    reader = subprocess.Popen(
        [sys.executable, "-m", "dicom_node", "engines", "list", "--config", str(config)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert reader.stdout is not None and reader.stderr is not None
    reader.stdout.close()  # before anything was read
    assert reader.wait(timeout=60) == 0
    assert reader.stderr.read() == b""
    reader.stderr.close()


def test_jobs_marks_a_partial_report_and_prints_a_jobs_summary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A study reported PARTIAL read "done ... -" like a whole one, and the summary the docs
    # point to (which images were not analysed, and why) was in the database only.
    from dicom_node.config import AssemblyConfig
    from dicom_node.models import Header, ReceivedInstance
    from dicom_node.state import State

    config = tmp_path / "node.yaml"
    config.write_text("storage: {spool_dir: spool}\n")
    (tmp_path / "spool").mkdir()
    state = State(tmp_path / "spool" / "state.sqlite3", AssemblyConfig())
    for study in ("1.9", "1.8"):
        header = Header("1.2.840.10008.5.1.4.1.1.1", f"{study}.1", study, f"{study}.0", "CR",
                        "", "", True)  # fmt: skip
        instance = ReceivedInstance(header, "1.2.840.10008.1.2.1", "PACS", "a", "i", 1, 1.0, False)
        state.record_instance(instance, True, "new")
    state.release({"1.9", "1.8"}, 1.0)
    partial, whole = sorted(state.complete_due(1e12), key=lambda j: j.study_uid, reverse=True)
    left_out = [{"sop_instance_uid": "1.9.1", "why": "pixel data cannot be decoded"}]
    summary = {"hips": [], "not_analysed": left_out, "priority": "NONE"}
    state.finish_job(partial.id, "done", 2.0, priority="NONE", summary=json.dumps(summary))
    state.finish_job(whole.id, "done", 2.0, priority="NONE", summary=json.dumps({"hips": []}))
    state.close()
    assert main(["jobs", "--config", str(config)]) == 0
    rows = {line.split()[1]: line for line in capsys.readouterr().out.splitlines()[1:-1]}
    assert rows["1.9"].endswith(f"PARTIAL: 1 not analysed (jobs --summary {partial.id})")
    assert rows["1.8"].endswith(" -")
    assert main(["jobs", "--summary", str(partial.id), "--config", str(config)]) == 0
    assert json.loads(capsys.readouterr().out) == summary
    assert main(["jobs", "--summary", "99", "--config", str(config)]) == 2
    assert capsys.readouterr().err.endswith("state.sqlite3: no job 99\n")


def test_serve_ignores_sighup_from_its_start_and_restores_it_after(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Node.serve logs a SIGHUP once it serves; before that (the configuration and the engines
    # loading, a second or more) a SIGHUP killed the node with status 129.
    seen: list[object] = []

    def command(args: object) -> int:
        seen.append(signal.getsignal(signal.SIGHUP))
        return 0

    monkeypatch.setattr(cli, "_command", command)
    before = signal.getsignal(signal.SIGHUP)
    assert main(["serve"]) == 0 and seen == [signal.SIG_IGN]
    assert signal.getsignal(signal.SIGHUP) == before
    assert main(["studies"]) == 0 and seen[-1] == before  # only serve
