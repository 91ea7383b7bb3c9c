"""Bad and odd inputs through the real `organizer` process: each one is recorded as failed
with a reason, or embedded correctly; the run goes on and exits 0."""

from __future__ import annotations

import io
import json
import os
import shutil
import sys
import unicodedata
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.battery import BATTERY
from tests.fakes import image_bytes, picture, write_picture
from tests.reliability.conftest import assert_consistent, organizer_env, run_organizer

pytestmark = pytest.mark.slow

FAILED = "failed"
OK = "ok"


def _animated(fmt: str, frames: int = 200) -> bytes:
    images = [Image.new("RGB", (64, 48), (i % 256, 255 - i % 256, 0)) for i in range(frames)]
    buf = io.BytesIO()
    images[0].save(buf, fmt, save_all=True, append_images=images[1:], duration=20)
    return buf.getvalue()


def _exif_rotated(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    turn = Image.Transpose.ROTATE_90 if orientation == 6 else Image.Transpose.ROTATE_270
    return image_bytes(picture(11, (96, 64)).transpose(turn), "PNG", exif=exif)


def _cases(real_jpeg: bytes) -> dict[bytes, tuple[bytes, str, str]]:
    """relpath -> (content, expected status, expected reason fragment or check)."""
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n0 0 moveto showpage\n"
    psd = b"8BPS\x00\x01\x00\x00\x00\x00\x00\x00\x00\x03\x00\x00\x00\x0a\x00\x00\x00\x0a\x00\x08\x00\x03"
    svg = b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><rect width="10" height="10"/></svg>'
    rng = np.random.default_rng(7)
    return {
        b"zero.jpg": (b"", FAILED, "empty file"),
        b"half.jpg": (real_jpeg[: len(real_jpeg) // 2], FAILED, "cannot decode"),
        b"random.jpg": (
            rng.integers(0, 256, 20_000, dtype=np.uint8).tobytes(),
            FAILED,
            "not a supported image",
        ),
        b"text.png": (
            b"this is a text file, not a picture\n" * 10,
            FAILED,
            "not a supported image",
        ),
        b"bomb.png": (
            image_bytes(Image.new("1", (20000, 20000), 0), "PNG"),
            FAILED,
            "decompression bomb",
        ),
        b"eps.jpg": (eps, FAILED, "not a supported image"),
        b"psd.jpg": (psd, FAILED, "not a supported image"),
        b"svg.jpg": (svg, FAILED, "not a supported image"),
        b"cmyk.jpg": (image_bytes(picture(1).convert("CMYK"), "JPEG", quality=90), OK, ""),
        b"gray16.png": (
            image_bytes(
                Image.fromarray((np.arange(64 * 48, dtype=np.uint16) * 21).reshape(48, 64)), "PNG"
            ),
            OK,
            "",
        ),
        b"palette-alpha.png": (image_bytes(picture(2).convert("P"), "PNG", transparency=0), OK, ""),
        b"la.png": (image_bytes(picture(3).convert("LA"), "PNG"), OK, ""),
        b"bilevel.png": (image_bytes(picture(4).convert("1"), "PNG"), OK, ""),
        b"exif6.png": (_exif_rotated(6), OK, "96x64"),
        b"exif8.png": (_exif_rotated(8), OK, "96x64"),
        b"animated.gif": (_animated("GIF"), OK, "64x48"),
        b"animated.webp": (_animated("WEBP"), OK, "64x48"),
        b"caf\xe9-latin1.jpg": (image_bytes(picture(20), "JPEG"), OK, ""),
        b"new\nline.jpg": (image_bytes(picture(21), "JPEG"), OK, ""),
        b"x" * 251 + b".jpg": (image_bytes(picture(22), "JPEG"), OK, ""),
        unicodedata.normalize("NFC", "café.jpg").encode(): (
            image_bytes(picture(23), "JPEG"),
            OK,
            "",
        ),
        unicodedata.normalize("NFD", "café.jpg").encode(): (
            image_bytes(picture(24), "JPEG"),
            OK,
            "",
        ),
    }


def _fake_ghostscript(folder: Path) -> Path:
    """A `gs` on PATH that leaves a mark if anything ever starts it."""
    marker = folder / "ghostscript-was-started"
    folder.mkdir(parents=True, exist_ok=True)
    gs = folder / "gs"
    gs.write_text(f"#!/bin/sh\ntouch {marker}\nexit 1\n")
    gs.chmod(0o755)
    return marker


def test_bad_inputs_are_recorded_and_the_run_goes_on(tmp_path):
    from organizer.config import Settings
    from organizer.library import Library
    from organizer.store import queries as q

    root = tmp_path / "photos"
    good = [write_picture(root / f"good{i}.jpg", 100 + i) for i in range(3)]
    cases = _cases(good[0].read_bytes())
    for relpath, (content, _, _) in cases.items():
        with open(os.path.join(os.fsencode(root), relpath), "wb") as fh:
            fh.write(content)
    (root / "loop").symlink_to(root, target_is_directory=True)
    (root / "broken.jpg").symlink_to(root / "does-not-exist.jpg")
    outside = write_picture(tmp_path / "elsewhere" / "outside.jpg", 300)
    (root / "outside.jpg").symlink_to(outside)
    cases[b"broken.jpg"] = (b"", FAILED, "broken symbolic link")
    cases[b"outside.jpg"] = (b"", FAILED, "outside the root")

    marker = _fake_ghostscript(tmp_path / "bin")
    env = organizer_env(tmp_path / "lib", PATH=f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    result = run_organizer(["ingest", root, "--json"], env, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    summary = json.loads(result.stdout)
    assert summary["new"] == 3 + sum(1 for c in cases.values() if c[1] == OK)

    with Library.open(Settings(library=tmp_path / "lib")) as lib, lib.engine.connect() as conn:
        rows = {r.relpath: r for r in conn.execute(q.select(q.images))}
    for relpath, (_, status, expect) in cases.items():
        with BATTERY.bad_input():
            row = rows[relpath]  # stored under its exact bytes
            assert row.status == status, (relpath, row.failure_reason)
            if status == FAILED:
                assert expect in row.failure_reason, (relpath, row.failure_reason)
            elif expect:
                assert f"{row.width}x{row.height}" == expect, relpath
    assert not marker.exists(), "an external program (Ghostscript) was started"
    assert all(rows[os.fsencode(p.name)].status == OK for p in good)
    assert_consistent(tmp_path / "lib", BATTERY)

    # a second run reads none of them again and changes nothing
    again = json.loads(run_organizer(["ingest", root, "--json"], env).stdout)
    assert again["failed"] == 0 and again["new"] == 0 and again["embedded"] == 0

    # odd names round-trip: shown losslessly, and usable as queries by path
    failed = json.loads(run_organizer(["status", "--failed", "--json"], env).stdout)["failed"]
    assert {f["path"] for f in failed} >= {"zero.jpg", "broken.jpg"}
    for relpath in (b"caf\xe9-latin1.jpg", b"new\nline.jpg", b"x" * 251 + b".jpg"):
        path = os.fsdecode(os.path.join(os.fsencode(root), relpath))
        out = run_organizer(["similar", path, "-k", "40", "--json"], env)
        assert out.returncode == 0, out.stderr
        shown = {r["path"] for r in json.loads(out.stdout)["results"]}
        assert "caf\\xe9-latin1.jpg" in shown or relpath == b"caf\xe9-latin1.jpg"
        assert "new\\nline.jpg" in shown or relpath == b"new\nline.jpg"


def test_decompression_bomb_is_refused_with_bounded_memory(tmp_path):
    """Decoding a 20000 x 20000 PNG of a few KB must not allocate its 400 million pixels."""
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(image_bytes(Image.new("1", (20000, 20000), 0), "PNG"))
    code = (
        "import resource, sys\n"
        "from organizer.errors import ImageError\n"
        "from organizer.imaging import decode\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "try:\n    decode(open(sys.argv[1], 'rb').read())\nexcept ImageError as e:\n    print('REFUSED', e)\n"
        "print('GROWTH_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)\n"
    )
    import subprocess

    out = subprocess.run([sys.executable, "-c", code, str(bomb)], capture_output=True, text=True)
    with BATTERY.bad_input():
        assert "REFUSED" in out.stdout, out.stdout + out.stderr
        growth_kb = int(out.stdout.split("GROWTH_KB")[1])
        assert growth_kb < 50_000, f"decoding the bomb grew memory by {growth_kb} KB"


def test_many_frame_animation_is_decoded_quickly():
    import time

    from organizer.imaging import decode

    for fmt in ("GIF", "WEBP"):
        data = _animated(fmt, 500)
        with BATTERY.bad_input():
            started = time.perf_counter()
            image, _ = decode(data)
            elapsed = time.perf_counter() - started
            assert image.size == (64, 48) and np.asarray(image)[0, 0, 0] == 0  # frame 0
            assert elapsed < 2.0, f"{fmt}: {elapsed:.2f} s for the first frame of 500"


def test_unreadable_file_and_folder_are_recorded(shared_tmp):
    """Run as an unprivileged user (root reads everything)."""
    root = shared_tmp / "photos"
    for i in range(3):
        write_picture(root / f"ok{i}.jpg", i)
    write_picture(root / "secret.jpg", 10).chmod(0o000)
    write_picture(root / "locked" / "inside.jpg", 11)
    (root / "locked").chmod(0o000)
    for path in [shared_tmp, root, *root.glob("ok*.jpg")]:
        path.chmod(path.stat().st_mode | 0o755)
    env = organizer_env(shared_tmp / "lib", HOME=str(shared_tmp))
    result = run_organizer(["ingest", root, "--json"], env, user="nobody")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    with BATTERY.bad_input():
        assert summary["new"] == 3 and summary["failed"] == 1
        failed = json.loads(
            run_organizer(["status", "--failed", "--json"], env, user="nobody").stdout
        )
        assert [f["path"] for f in failed["failed"]] == ["secret.jpg"]
        assert "Permission denied" in failed["failed"][0]["reason"]
    with BATTERY.bad_input():
        assert any("locked" in p and "cannot be read" in p for p in summary["problems"])
    # once readable, both are picked up, and nothing known under the locked folder was lost
    (root / "secret.jpg").chmod(0o644)
    (root / "locked").chmod(0o755)
    again = json.loads(run_organizer(["ingest", root, "--json"], env, user="nobody").stdout)
    assert again["new"] == 1 and again["changed"] == 1 and again["failed"] == 0


def test_file_replaced_between_scan_and_read_is_retried(fake_lib, tmp_path, monkeypatch):
    import organizer.ingest.run as ingest_mod
    from organizer.ingest import IngestOptions

    root = tmp_path / "photos"
    for i in range(3):
        write_picture(root / f"p{i}.jpg", i)
    real_plan = ingest_mod.plan

    def plan_then_replace(*args, **kwargs):
        result = real_plan(*args, **kwargs)
        data = (root / "p1.jpg").read_bytes()
        (root / "p1.jpg").write_bytes(data[: len(data) // 2])  # truncated after the scan
        return result

    monkeypatch.setattr(ingest_mod, "plan", plan_then_replace)
    summary = fake_lib.ingest([root], options=IngestOptions(workers=0))
    monkeypatch.setattr(ingest_mod, "plan", real_plan)
    with BATTERY.bad_input():
        assert summary.failed == 1 and summary.new == 2
        [failure] = fake_lib.failures()
        assert failure.relpath == b"p1.jpg" and "changed since the scan" in failure.reason
        write_picture(root / "p1.jpg", 1)  # the copy completes
        again = fake_lib.ingest([root], options=IngestOptions(workers=0))
        assert again.changed == 1 and fake_lib.failures() == []


def test_nothing_outside_the_root_is_followed_unless_asked(fake_lib, tmp_path):
    from organizer.ingest import IngestOptions

    root = tmp_path / "photos"
    write_picture(root / "a.jpg", 1)
    outside = write_picture(tmp_path / "elsewhere" / "b.jpg", 2)
    (root / "b.jpg").symlink_to(outside)
    (root / "out-dir").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    first = fake_lib.ingest([root])
    reasons = [f.reason for f in fake_lib.failures()]
    second = fake_lib.ingest([root], options=IngestOptions(follow_symlinks=True))
    with BATTERY.bad_input():
        assert (first.new, first.failed) == (1, 1)
        assert len(reasons) == 1 and "outside the root" in reasons[0]
        assert second.changed == 1 and fake_lib.failures() == []  # followed when asked
    shutil.rmtree(tmp_path / "elsewhere")
