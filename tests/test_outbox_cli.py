from __future__ import annotations

import json
import logging
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from dicom_node.cli import main
from dicom_node.config import AssemblyConfig
from dicom_node.config_results import SendingConfig
from dicom_node.models import Header, ReceivedInstance, ResultObject
from dicom_node.retention import purgeable
from dicom_node.send.outbox import Outbox
from dicom_node.state import SCHEMA_VERSION, State


def dead_letter(spool: Path, destination: str = "pacs") -> int:
    """A state database whose one outbox item has become a dead letter; returns its id."""
    spool.mkdir(parents=True)
    state = State(spool / "state.sqlite3", AssemblyConfig())
    header = Header("1.2.840.10008.5.1.4.1.1.1", "1.9.1", "1.9", "1.9.0", "CR", "", "", True)
    state.record_instance(
        ReceivedInstance(header, "1.2.840.10008.1.2.1", "PACS", "a", "i/1", 10, 1.0, False),
        True,
        "new",
    )
    state.release({"1.9"}, 1.0)
    [job] = state.complete_due(1e12)
    result = ResultObject("1.9.99", "1.2.840.10008.5.1.4.1.1.88.34", "outputs/1.9/x.dcm", "sr")
    state.finish_job(job.id, "done", time.time(), results=[result], destinations=[destination])
    outbox = Outbox(state, SendingConfig(max_attempts=1))
    [item] = outbox.items(["pending"])
    outbox.mark_failed(item.id, time.time(), "association to pacs rejected")
    state.close()
    return item.id


def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "node.yaml"
    path.write_text("storage: {spool_dir: spool}\n")
    return path


def test_outbox_lists_dead_letters_and_retry_requeues_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    item = dead_letter(tmp_path / "spool")
    cfg = str(config_file(tmp_path))
    assert main(["outbox", "--config", cfg]) == 0
    out = capsys.readouterr().out
    assert "dead" in out and "association to pacs rejected" in out and "1.9.99" in out
    assert out.strip().endswith("0 pending, 0 sent, 1 dead")
    assert main(["outbox", "retry", "--config", cfg]) == 0
    assert "requeued 1 dead letter" in capsys.readouterr().out
    assert main(["outbox", "list", "--state", "pending", "--config", cfg]) == 0
    assert f"{item:>5}  pending" in capsys.readouterr().out


def test_item_ids_may_follow_the_options(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # README: --config before or after the subcommand. argparse alone refused the ids after
    # it: `outbox retry --config PATH 6` was "unrecognized arguments: 6".
    item = dead_letter(tmp_path / "spool")
    cfg = str(config_file(tmp_path))
    assert main(["outbox", "list", "--state", "dead", str(item), "--config", cfg]) == 0
    assert f"{item:>5}  dead" in capsys.readouterr().out
    assert main(["outbox", "retry", "--config", cfg, str(item)]) == 0
    assert capsys.readouterr().out == "requeued 1 dead letter\n"
    with pytest.raises(SystemExit, match="2"):
        main(["outbox", "discard", "--config", cfg, "x"])
    assert capsys.readouterr().err.endswith(
        "dicom-node: error: argument ids: expected an item id, got 'x'\n"
    )
    with pytest.raises(SystemExit, match="2"):
        main(["outbox", "discard", "--config", cfg, "--bogus", str(item)])
    assert capsys.readouterr().err.endswith("dicom-node: error: unrecognized arguments: --bogus\n")
    with pytest.raises(SystemExit, match="2"):
        main(["studies", "--config", cfg, str(item)])  # only the outbox takes ids
    assert capsys.readouterr().err.endswith(f"error: unrecognized arguments: {item}\n")


def test_outbox_list_shows_whole_names_the_study_and_the_kind(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    item = dead_letter(tmp_path / "spool", destination="radiology-pacs-backup")
    cfg = str(config_file(tmp_path))
    assert main(["outbox", "--config", cfg]) == 0
    header, row, _ = capsys.readouterr().out.splitlines()
    assert header.split()[:7] == ["ID", "STATE", "DEST", "KIND", "TRIES", "WHEN", "STUDY"]
    # Was cut to 'radiology-pa'; no study, no kind: whose result was it?
    assert row.split()[:5] == [str(item), "dead", "radiology-pacs-backup", "SR", "1"]
    assert row.split()[6:8] == ["1.9", "1.9.99"]
    # An id lists that item, whatever its state (was ignored: every item was listed).
    assert main(["outbox", "list", str(item), "--config", cfg]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 3
    # One that is not there is an error, as for retry and discard (was: an empty table, 0).
    assert main(["outbox", "list", str(item), str(item + 1), "--config", cfg]) == 2
    assert capsys.readouterr().err == f"dicom-node: error: no outbox item with id {item + 1}\n"
    assert main(["outbox", "list", str(item), "--state", "sent", "--config", cfg]) == 2
    assert capsys.readouterr().err.endswith(f"no outbox item with id {item} in state sent\n")


def test_with_a_json_log_an_outbox_error_is_a_json_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Printed plain whatever the format: a JSON log pipeline dropped the one line saying why.
    item = dead_letter(tmp_path / "spool")
    cfg = str(config_file(tmp_path))
    try:
        assert main(["outbox", "list", str(item + 1), "--config", cfg, "--log-format", "json"]) == 2
    finally:
        logging.getLogger().handlers.clear()
    [line] = capsys.readouterr().err.splitlines()
    entry = json.loads(line)
    assert entry["level"] == "CRITICAL"
    assert entry["message"] == f"dicom-node: error: no outbox item with id {item + 1}"


def test_state_is_refused_where_it_would_be_ignored(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # `retry --state sent` requeued every dead letter.
    item = dead_letter(tmp_path / "spool")
    cfg = str(config_file(tmp_path))
    for verb in ("retry", "discard"):
        assert main(["outbox", verb, str(item), "--state", "sent", "--config", cfg]) == 2
        assert capsys.readouterr().err == (
            f"dicom-node: error: --state: only for list ({verb} acts on dead letters)\n"
        )
    assert main(["outbox", "--config", cfg]) == 0
    assert " dead " in capsys.readouterr().out  # still a dead letter


def empty_state_file(tmp_path: Path) -> tuple[str, Path]:
    """A config, and an empty file where its state database belongs (a failed restore)."""
    database = tmp_path / "spool" / "state.sqlite3"
    database.parent.mkdir(parents=True)
    database.write_bytes(b"")
    return str(config_file(tmp_path)), database


def test_retry_and_discard_never_make_a_new_database_of_a_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg, database = empty_state_file(tmp_path)  # became a new database, "requeued 0", exit 0
    for verb in (["retry"], ["discard", "1"]):
        assert main(["outbox", *verb, "--config", cfg]) == 2
        assert capsys.readouterr().err == (
            f"dicom-node: error: {database}: not a state database of the node (empty or "
            "damaged; a node started on it would make a new one)\n"
        )
    assert database.read_bytes() == b"" and sorted(database.parent.iterdir()) == [database]
    database.unlink()
    State(database, AssemblyConfig()).close()
    with sqlite3.connect(database) as db:  # a database of an older version: not migrated
        db.execute("UPDATE meta SET value = '3' WHERE key = 'schema_version'")
    assert main(["outbox", "retry", "--config", cfg]) == 2
    assert capsys.readouterr().err.endswith("start the node once to migrate it\n")
    with sqlite3.connect(database) as db:
        assert db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == (
            "3",
        )


def test_listing_commands_read_the_state_and_never_write_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg, database = empty_state_file(tmp_path)  # came back as a new database and "0 jobs"
    for command in (["studies"], ["jobs"], ["outbox"]):
        assert main([*command, "--config", cfg]) == 2
        assert capsys.readouterr().err == (
            f"dicom-node: error: {database}: not a state database of the node (empty or "
            "damaged; a node started on it would make a new one)\n"
        )
    assert database.read_bytes() == b"" and sorted(database.parent.iterdir()) == [database]
    old = State(database, AssemblyConfig())  # a database of an older version
    old.close()
    with sqlite3.connect(database) as db:
        db.execute("UPDATE meta SET value = '3' WHERE key = 'schema_version'")
    before = database.read_bytes()
    assert main(["jobs", "--config", cfg]) == 2
    assert capsys.readouterr().err.endswith(
        f"schema version 3, this node reads {SCHEMA_VERSION}: start the node once to migrate it\n"
    )
    assert database.read_bytes() == before


def test_outbox_discard_gives_up_on_named_dead_letters(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    item = dead_letter(tmp_path / "spool")
    cfg = str(config_file(tmp_path))
    assert main(["outbox", "discard", "--config", cfg]) == 2  # never all by default
    assert "outbox discard: give the ids of the dead letters" in capsys.readouterr().err
    assert main(["outbox", "discard", str(item + 1), "--config", cfg]) == 2
    assert f"outbox discard: no dead letter with id {item + 1}" in capsys.readouterr().err
    assert main(["outbox", "discard", str(item), "--config", cfg]) == 0
    captured = capsys.readouterr()  # main logs to stderr
    assert "discarded 1 dead letter" in captured.out
    # Where its file is, and that it may leave within a minute (a study finished long ago).
    assert f"  {item}: {tmp_path / 'spool'}/outputs/1.9/" in captured.out
    # The paths come after the rows are gone, the files seconds from the purge: the way to
    # deliver by hand is --copy-to (was "copy them first", too late to act on).
    assert "if it finished more than 72 h ago (seconds away): to deliver results by hand, " in (
        captured.out
    )
    assert "discard with --copy-to DIR" in captured.out
    assert f"dead letter {item} (SOP instance 1.9.99 of study 1.9, to pacs) discarded" in (
        captured.err
    )
    assert main(["outbox", "--config", cfg]) == 0
    assert capsys.readouterr().out.strip().endswith("0 pending, 0 sent, 0 dead")
    # Nothing keeps the study from the retention any more.
    state = State(tmp_path / "spool" / "state.sqlite3", AssemblyConfig())
    try:
        assert purgeable(state, 1e12) == ["1.9"]
    finally:
        state.close()


def test_outbox_retry_of_an_unknown_id_is_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dead_letter(tmp_path / "spool")
    assert main(["outbox", "retry", "42", "--config", str(config_file(tmp_path))]) == 2
    captured = capsys.readouterr()
    assert "no dead letter with id 42" in captured.err and not captured.out


@pytest.mark.parametrize(
    ("item", "why"),
    [("0", "expected an item id from 1 to 2\\^63-1, got 0"),
     ("99999999999999999999", "expected an item id from 1 to 2\\^63-1, got 9+"),
     ("x", "expected an item id, got 'x'")],
)  # fmt: skip
def test_outbox_retry_ids_are_checked_when_parsed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], item: str, why: str
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["outbox", "retry", item, "--config", str(config_file(tmp_path))])
    assert exited.value.code == 2
    assert re.search(rf"argument ids: {why}$", capsys.readouterr().err.strip())


def test_outbox_before_the_node_ever_ran(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["outbox", "--config", str(config_file(tmp_path))]) == 0
    assert "the node has not run yet" in capsys.readouterr().out


@pytest.mark.parametrize(("verb", "ids"), [("retry", []), ("retry", ["12"]), ("discard", ["12"])])
def test_outbox_retry_before_the_node_ever_ran_is_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], verb: str, ids: list[str]
) -> None:
    # A script must not take "nothing to retry in" for a successful requeue.
    assert main(["outbox", verb, *ids, "--config", str(config_file(tmp_path))]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("dicom-node: error: no state database at ")
    assert f"nothing to {verb}" in captured.err
    assert not (tmp_path / "spool").exists()  # not created by asking


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root to become nobody"
)
def test_an_account_that_may_only_read_the_spool_lists_it() -> None:
    # A WAL database is read through its -shm file, which the node removes when it stops
    # and a reader without write access cannot make.
    folder = Path(tempfile.mkdtemp(prefix="readonly-spool-", dir="/tmp"))
    try:
        folder.chmod(0o755)
        dead_letter(folder / "spool")
        (folder / "spool").chmod(0o755)
        database = folder / "spool" / "state.sqlite3"
        assert sorted(p.name for p in database.parent.iterdir()) == ["state.sqlite3"]
        database.chmod(0o644)
        config = config_file(folder)
        config.chmod(0o644)
        for command in ("jobs", "outbox"):
            done = subprocess.run(
                ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                 sys.executable, "-m", "dicom_node", command, "--config", str(config)],
                capture_output=True, text=True, timeout=60, cwd=folder,
            )  # fmt: skip
            assert done.returncode == 0, done.stderr
        assert "1 dead" in done.stdout
    finally:
        shutil.rmtree(folder)


def test_outbox_discard_copies_the_files_out_first_when_asked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    item = dead_letter(tmp_path / "spool")
    cfg = str(config_file(tmp_path))
    by_hand = tmp_path / "by-hand"
    by_hand.mkdir()
    # A file that cannot be copied (here: gone) stops the discard.
    assert main(["outbox", "discard", str(item), "--copy-to", str(by_hand), "--config", cfg]) == 2
    assert (
        f"--copy-to: dead letter {item} not copied (cannot read outputs/1.9/x.dcm: no such "
        "file); nothing discarded"
    ) in capsys.readouterr().err
    result = tmp_path / "spool" / "outputs" / "1.9" / "x.dcm"
    result.parent.mkdir(parents=True)
    result.write_bytes(b"the SR")
    assert main(["outbox", "retry", "--copy-to", str(tmp_path), "--config", cfg]) == 2
    assert "--copy-to: only for discard, got retry" in capsys.readouterr().err
    missing = tmp_path / "no-such-folder"
    assert main(["outbox", "discard", str(item), "--copy-to", str(missing), "--config", cfg]) == 2
    assert f"--copy-to: expected an existing folder, got '{missing}'" in capsys.readouterr().err
    assert main(["outbox", "list", str(item), "--config", cfg]) == 0
    assert " dead " in capsys.readouterr().out  # nothing discarded
    # Written as a folder destination writes (temporary file, fsync, rename): a link
    # planted under the result's name is replaced, not written through (was: the file it
    # pointed to overwritten; and a plain copy, not durable before the row went).
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"not yours")
    (by_hand / "1.9").mkdir()
    (by_hand / "1.9" / "1.9.99.dcm").symlink_to(victim)
    assert main(["outbox", "discard", str(item), "--copy-to", str(by_hand), "--config", cfg]) == 0
    assert f"copied first to {by_hand}/<study>/<sop>.dcm" in capsys.readouterr().out
    copy = by_hand / "1.9" / "1.9.99.dcm"
    assert not copy.is_symlink() and copy.read_bytes() == b"the SR"
    assert victim.read_bytes() == b"not yours"
