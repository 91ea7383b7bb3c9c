"""The CLI end to end with the tiny open_clip model (random weights, no network)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from organizer.config import Settings
from organizer.errors import OptionsError
from organizer.library import Library
from tests.fakes import TINY_CONFIG, write_picture


def test_ingest_json_summary_and_status(cli, photos):
    result = cli("ingest", photos, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    for key in ("new", "changed", "moved", "unchanged", "missing", "failed"):
        assert isinstance(summary[key], int)
    assert summary["new"] == 6 and isinstance(summary["elapsed_s"], float)
    assert "random weights" in result.stderr  # --pretrained none is warned about

    result = cli("status", "--json")
    assert result.exit_code == 0, result.output
    st = json.loads(result.stdout)
    assert st["images"] == {"ok": 6, "failed": 0, "missing": 0}
    assert st["model"]["name"] == "tiny-clip" and st["model"]["dim"] == 32
    assert st["model"]["random_weights"] is True
    assert st["index"]["count"] == 6 and st["index"]["in_sync"] is True

    result = cli("status")
    assert "6 ok, 0 failed, 0 missing" in result.stdout and "in sync" in result.stdout


def test_human_summary_and_failed_listing(cli, photos):
    (photos / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 nope")
    result = cli("ingest", photos)
    assert result.exit_code == 0
    assert "6 new" in result.stdout and "1 failed" in result.stdout
    assert "organizer status --failed" in result.stdout
    result = cli("status", "--failed")
    assert "broken.jpg:" in result.stdout
    result = cli("status", "--failed", "--json")
    failed = json.loads(result.stdout)["failed"]
    assert failed[0]["path"] == "broken.jpg" and failed[0]["reason"]
    result = cli("status", "--failed", "--absolute")
    assert os.path.join(os.path.realpath(photos), "broken.jpg") in result.stdout


def test_failed_and_skipped_together_show_both(cli, photos):
    (photos / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 nope")
    (photos / "notes.txt").write_text("x")
    assert cli("ingest", photos).exit_code == 0
    text = cli("status", "--failed", "--skipped").stdout
    assert "broken.jpg:" in text and "notes.txt" in text
    both = json.loads(cli("status", "--skipped", "--failed", "--json").stdout)
    assert [f["path"] for f in both["failed"]] == ["broken.jpg"]
    assert [f["path"] for f in both["files"]] == ["notes.txt"] and both["by_type"] == {".txt": 1}


@pytest.mark.both_backends
def test_second_writer_is_refused_with_the_holder(cli, photos, library, backend):
    assert cli("ingest", photos).exit_code == 0
    holder = Library.open(Settings(library=library))
    lock = holder.writer_lock("ingest")
    lock.acquire()
    try:
        result = cli("ingest", photos)
        assert result.exit_code == 1
        where = f" on {socket.gethostname()}" if backend == "postgresql" else ""
        assert f"library is busy: ingest running (pid {os.getpid()}{where})" in result.stderr
        assert "Traceback" not in result.output
        # readers are not blocked by the writer
        assert cli("status").exit_code == 0
    finally:
        lock.release()
        holder.close()
    assert cli("ingest", photos).exit_code == 0


def test_other_model_is_refused(cli, photos):
    assert cli("ingest", photos).exit_code == 0
    result = cli("ingest", photos, "--model", "ViT-B-32", "--pretrained", "none")
    assert result.exit_code == 1
    assert "built with tiny-clip/none" in result.stderr and "cannot mix" in result.stderr


def test_unknown_model_name_is_a_clear_error(cli, photos):
    result = cli("ingest", photos, "--model", "ViT-B-33", "--pretrained", "none")
    assert result.exit_code == 1
    assert "unknown model 'ViT-B-33'" in result.stderr and "ViT-B-32" in result.stderr


def test_unknown_weights_tag_names_the_known_ones(cli, photos):
    result = cli("ingest", photos, "--model", "ViT-B-32-256", "--pretrained", "nonsense")
    assert result.exit_code == 1
    assert "datacomp_s34b_b86k" in result.stderr


def test_unreachable_weights_stop_before_anything_is_written(cli, photos, tmp_path):
    result = cli("ingest", photos, "--model", "ViT-B-32-256", "--pretrained", "datacomp_s34b_b86k")
    assert result.exit_code == 1
    err = result.stderr
    assert "ViT-B-32-256/datacomp_s34b_b86k are not cached" in err
    assert "--pretrained /path/to/open_clip_model.safetensors" in err
    assert "Traceback" not in result.output
    result = cli("status", "--json")
    st = json.loads(result.stdout)
    assert st["images"] == {"ok": 0, "failed": 0, "missing": 0} and st["model"] is None
    assert st["roots"] == []


def test_checkpoint_path_is_loaded_and_recorded(cli, photos, tmp_path):
    import open_clip
    import torch

    open_clip.add_model_config(TINY_CONFIG)
    model = open_clip.create_model("tiny-clip")
    checkpoint = tmp_path / "tiny.pt"
    torch.save(model.state_dict(), checkpoint)
    result = cli("ingest", photos, "--pretrained", checkpoint)
    assert result.exit_code == 0, result.output
    st = json.loads(cli("status", "--json").stdout)
    assert st["model"]["pretrained"] == str(checkpoint) and len(st["model"]["weights_sha256"]) == 64
    assert st["model"]["random_weights"] is False


def test_missing_library_for_status(cli, tmp_path):
    result = cli("status", "--library", tmp_path / "nowhere")
    assert result.exit_code == 1 and "no library at" in result.stderr


@pytest.mark.both_backends
def test_a_refused_ingest_makes_no_library_and_records_no_run(cli, library, backend, photos):
    nowhere = photos.parent / "nowhere"
    result = cli("ingest", nowhere)
    assert result.exit_code == 1 and f"folder not found: {nowhere}" in result.stderr
    assert "no library" in cli("status").stderr
    if backend == "sqlite":
        assert not Path(library).exists()
    assert cli("ingest", photos).exit_code == 0
    before = json.loads(cli("status", "--json").stdout)["last_ingest"]
    assert cli("ingest", photos, nowhere).exit_code == 1
    assert json.loads(cli("status", "--json").stdout)["last_ingest"] == before


def test_bad_arguments_exit_2(cli):
    assert cli("ingest", "--batch-size", "zero").exit_code == 2
    assert cli("frobnicate").exit_code == 2


def test_not_a_folder(cli, photos):
    result = cli("ingest", photos / "img000.jpg")
    assert result.exit_code == 1 and "not a folder" in result.stderr


@pytest.mark.parametrize("args", [["--help"], ["status"], ["ingest", "--help"]])
def test_light_commands_do_not_import_torch(args, cli, photos, tmp_path):
    assert cli("ingest", photos).exit_code == 0
    code = (
        "import sys; from organizer.cli import app\n"
        "try:\n    app(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('torch', 'open_clip', 'faiss') if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    env = {**os.environ, "ORGANIZER_LIBRARY": str(tmp_path / "lib")}
    out = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, env=env
    )
    assert "HEAVY []" in out.stdout, out.stdout + out.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["cluster", "-k", "0"],
        ["cluster", "-k", "1"],
        ["cluster", "-k", "abc"],
        ["cluster", "--algorithm", "magic"],
        ["cluster", "--k-min", "1"],
        ["cluster", "--k-min", "10", "--k-max", "5"],
        ["duplicates", "--threshold", "1.5"],
        ["duplicates", "--threshold", "0"],
        ["similar", "photo.jpg", "-n", "0"],
        ["similar", "photo.jpg", "--threshold", "1.01"],
        ["search", "a dog", "--threshold", "-2"],
        ["search", "a dog", "--limit", "-3"],
        ["clusters", "-n", "-1"],
        ["export", "--to", "out", "--mode", "hardlinkz"],
        ["evaluate", "--labels", "astrology"],
        ["ingest", "--precision", "fp8"],
        ["ingest", "--device", "tpu"],
        ["ingest", "--batch-size", "0"],
        ["ingest", "--workers", "-1"],
        ["report", "--max-points", "0"],
        ["frobnicate"],
        # an empty path (an unset shell variable) is never the working folder
        ["ingest", ""],
        ["ingest", "/"],
        ["-L", "", "status"],
        ["-L", " ", "status"],
        ["status", "--library", ""],
        ["similar", ""],
        ["search", ""],
        ["search", "a dog", "--plus", ""],
        ["search", "a dog", "--minus", " "],
        ["cluster", "--vocabulary", ""],
        ["export", "--to", ""],
        ["report", "-o", ""],
        ["report", "--png", ""],
        ["roots", "remove", ""],
        ["ingest", "photos", "--model", ""],
        ["ingest", "photos", "--pretrained", " "],
        ["roots", "move", "", "new"],
        ["roots", "move", "old", ""],
        ["index", "shards", "train", "", "--parts", "2"],
        ["index", "shards", "fill", "", "--part", "1"],
        ["index", "shards", "merge", ""],
    ],
)
def test_usage_errors_exit_2_with_one_line_before_anything_runs(cli, tmp_path, args):
    result = cli(*args)
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "--help" in lines[0]
    assert not (tmp_path / "lib").exists()  # refused at parse time: no library was made


def test_an_empty_folder_argument_ingests_nothing_from_the_working_folder(
    cli, photos, library, monkeypatch
):
    """`organizer ingest "$PHOTOS"` with PHOTOS unset, run from a folder of photos."""
    monkeypatch.chdir(photos)
    result = cli("ingest", "")
    assert result.exit_code == 2 and "empty path" in result.stderr
    assert not Path(library).exists()
    with (
        Library.open(Settings(library=library), create=True) as lib,
        pytest.raises(OptionsError, match="empty path"),
    ):
        lib.ingest([""])


def test_old_spellings_still_work(cli, photos):
    """-k/--top of similar and search, clusters --top/--runs and cluster --assign-new."""
    assert cli("ingest", photos).exit_code == 0
    photo = photos / "img000.jpg"
    new = json.loads(cli("similar", photo, "-n", "2", "--json").stdout)
    old = json.loads(cli("similar", photo, "-k", "2", "--json").stdout)
    assert old == new and len(new["results"]) == 2
    assert len(json.loads(cli("search", "x", "--top", "3", "--json").stdout)["results"]) == 3
    assert cli("cluster", "-k", "2", "--no-names").exit_code == 0
    runs = json.loads(cli("runs", "--json").stdout)
    assert json.loads(cli("clusters", "--runs", "--json").stdout) == runs
    top = json.loads(cli("clusters", "--top", "1", "--json").stdout)
    assert all(len(c["representatives"]) == 1 for c in top["clusters"])
    assign = json.loads(cli("cluster", "--assign-new", "--json").stdout)
    assert assign == json.loads(cli("cluster", "assign", "--json").stdout)
    assert assign["assigned"] == 0
    for command in (["similar", "--help"], ["clusters", "--help"], ["cluster", "--help"]):
        shown = cli(*command).stdout
        assert "--top" not in shown and "--assign-new" not in shown and "--runs" not in shown


def test_no_arguments_shows_the_help_once(cli):
    result = cli()
    assert result.exit_code == 2 and "ingest" in result.stdout
    assert result.output.count("Usage: ") == 1


def test_result_thresholds_take_any_cosine(cli, photos):
    """Text scores are small and --minus terms can make them negative: 0 and below are valid."""
    assert cli("ingest", photos).exit_code == 0
    assert cli("search", "a dog", "--threshold", "-0.5").exit_code == 0
    assert cli("similar", photos / "img000.jpg", "--threshold", "0").exit_code == 0


def test_json_gives_the_exact_bytes_of_a_name_that_is_not_utf8(cli, tmp_path):
    import base64

    root = tmp_path / "photos"
    root.mkdir()
    odd = os.path.join(os.fsencode(root), b"caf\xe9.jpg")
    write_picture(Path(os.fsdecode(odd)), 1)
    write_picture(root / "plain.jpg", 2)
    assert cli("ingest", root).exit_code == 0
    found = json.loads(cli("search", "a cat", "--json").stdout)["results"]
    by_path = {r["path"]: r for r in found}
    assert "path_b64" not in by_path["plain.jpg"]
    exact = by_path["caf\\xe9.jpg"]["path_b64"]
    assert base64.b64decode(exact) == odd and os.path.exists(base64.b64decode(exact))


def test_output_into_a_closed_pipe_ends_quietly(cli, tmp_path, photos):
    assert cli("ingest", photos).exit_code == 0
    for i in range(3000):
        (photos / f"note{i:04d}.txt").write_text("x")
    env = {**os.environ, "ORGANIZER_LIBRARY": str(tmp_path / "lib")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "organizer", "status", "--skipped", "--json"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    proc.stdout.read(100)
    proc.stdout.close()  # as `| head -c 100` does
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0 and err == b"", err


def test_the_library_may_come_before_the_command(cli, photos, tmp_path):
    other = tmp_path / "other-lib"
    assert cli("-L", other, "ingest", photos).exit_code == 0
    assert json.loads(cli("-L", other, "status", "--json").stdout)["library"] == str(other)
    assert cli("-L", other, "cluster", "-k", "2", "--no-names").exit_code == 0


def test_similar_on_a_folder_says_so(cli, photos):
    assert cli("ingest", photos).exit_code == 0
    result = cli("similar", photos)
    assert result.exit_code == 1 and "is a folder" in result.stderr


def test_the_installed_command_runs_main():
    """`organizer` goes through cli.main (which ends by freezing the garbage collector: a
    second saved at every exit), as `python -m organizer` does."""
    from importlib.metadata import entry_points

    (script,) = entry_points(group="console_scripts", name="organizer")
    assert script.value == "organizer.cli:main"
