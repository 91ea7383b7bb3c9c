"""Photo metadata: read from headers of every format, bad values become unknown, recorded at
ingest, and filled in for images read before without embedding them again."""

from __future__ import annotations

import io
from datetime import datetime, timedelta

import pytest
from PIL import Image
from PIL.TiffImagePlugin import IFDRational

from organizer.imaging import decode, file_meta
from organizer.photo_meta import PhotoMeta, parse_exif_date, parse_offset, parse_subsec, read_meta
from organizer.pipeline import header_meta
from organizer.store import meta_queries as mq
from organizer.store import queries as q
from tests.fakes import image_bytes, photo_exif, picture, tiff_with_exif, write_photo

NOW = datetime(2026, 12, 7, 12, 0)
AREZZO = (43.4633, 11.8796)
SYDNEY = (-33.8688, 151.2093)
RIO = (-22.9068, -43.1729)


def _meta(exif: Image.Exif, fmt: str = "JPEG") -> PhotoMeta:
    data = image_bytes(picture(1), fmt, exif=exif.tobytes())
    meta = file_meta(data)
    assert meta is not None
    return meta


def test_a_camera_jpeg_gives_every_field():
    exif = photo_exif(
        offset="+02:00",
        gps=AREZZO,
        t33434=IFDRational(1, 250),
        t33437=IFDRational(28, 10),
        t34855=400,
        t37386=IFDRational(50, 1),
        t42036="EF50mm f/1.8 II",
    )
    exif.get_ifd(0x8825).update({5: b"\x00", 6: IFDRational(296, 1)})
    exif[274] = 6
    meta = _meta(exif)
    assert meta.taken_at == datetime(2008, 10, 22, 14, 3)
    assert meta.taken_offset == 120
    assert meta.latitude == pytest.approx(AREZZO[0], abs=1e-6)
    assert meta.longitude == pytest.approx(AREZZO[1], abs=1e-6)
    assert meta.altitude == 296
    assert (meta.make, meta.model, meta.camera) == ("Canon", "Canon EOS 5D", "Canon EOS 5D")
    assert meta.lens == "EF50mm f/1.8 II"
    assert (meta.exposure_s, meta.f_number, meta.iso, meta.focal_mm) == (0.004, 2.8, 400, 50)
    assert meta.orientation == 6


@pytest.mark.parametrize("fmt", ["JPEG", "WEBP", "PNG", "TIFF", "HEIF"])
@pytest.mark.parametrize("where", [AREZZO, SYDNEY, RIO, (64.1466, -21.9426)])
def test_every_format_and_hemisphere(fmt, where):
    exif = photo_exif(gps=where, offset="-03:00")
    if fmt == "HEIF":
        pytest.importorskip("pillow_heif").register_heif_opener()
    data = (
        tiff_with_exif(exif) if fmt == "TIFF" else image_bytes(picture(2), fmt, exif=exif.tobytes())
    )
    meta = file_meta(data)
    assert meta is not None
    assert meta.latitude == pytest.approx(where[0], abs=1e-6)
    assert meta.longitude == pytest.approx(where[1], abs=1e-6)
    assert meta.taken_at == datetime(2008, 10, 22, 14, 3)
    assert meta.taken_offset == -180
    assert meta.camera == "Canon EOS 5D"


@pytest.mark.parametrize(
    "value, expected",
    [
        ("2008:10:22 14:03:00", datetime(2008, 10, 22, 14, 3)),
        ("2008-10-22T14:03:00", datetime(2008, 10, 22, 14, 3)),
        ("2008:10:22 14:03:00\x00", datetime(2008, 10, 22, 14, 3)),
        (b"2008:10:22 14:03:00", datetime(2008, 10, 22, 14, 3)),
        ("1952:06:01 10:00:00", datetime(1952, 6, 1, 10)),  # a scanned print
        ("0000:00:00 00:00:00", None),
        ("    :  :     :  :  ", None),
        ("2000:01:01 00:00:07", None),  # a camera whose clock was never set
        ("1970:01:01 00:00:00", None),
        ("2008:13:22 14:03:00", None),
        ("2008:02:30 14:03:00", None),
        ("2008:10:22 25:03:00", None),
        ("1800:01:01 00:00:00", None),
        ("2030:01:01 00:00:00", None),  # the future
        ("2026:12:08 06:00:00", datetime(2026, 12, 8, 6)),  # tomorrow somewhere east
        ("yesterday", None),
        (20081022, None),
        (None, None),
        ("", None),
    ],
)
def test_dates(value, expected):
    assert parse_exif_date(value, NOW) == expected


@pytest.mark.parametrize(
    "value, minutes",
    [
        ("+02:00", 120),
        ("-05:30", -330),
        ("+0545", 345),
        ("+14:00", 840),
        ("+15:00", None),
        ("+02:75", None),
        ("02:00", None),
        ("   :  ", None),
        (None, None),
        (3, None),
    ],
)
def test_offsets(value, minutes):
    assert parse_offset(value) == minutes


@pytest.mark.parametrize(
    "value, microseconds",
    [
        *[("5", 500_000), ("123", 123_000), ("0042", 4_200), ("1234567", 123_456)],
        *[(" 7 ", 700_000), ("", 0), ("1.5", 0), ("-3", 0), ("١٢", 0), (None, 0), (12, 0)],
        (b"\xff", 0),
    ],
)
def test_fractions_of_a_second(value, microseconds):
    assert parse_subsec(value) == timedelta(microseconds=microseconds)


def test_the_time_taken_keeps_its_fraction_of_a_second():
    meta = _meta(photo_exif(taken="2021:06:01 09:00:10", t37521="25", t37520="99"))
    assert meta.taken_at == datetime(2021, 6, 1, 9, 0, 10, 250_000)  # the original's own
    assert PhotoMeta.from_json(meta.to_json()) == meta


R = IFDRational
GOOD = (R(43, 1), R(27, 1), R(4788, 100))


@pytest.mark.parametrize(
    "tags",
    [
        {2: GOOD, 4: GOOD},  # no references: the hemisphere is unknown
        {1: "N", 2: GOOD, 4: GOOD},  # a reference missing
        {1: "X", 2: GOOD, 3: "E", 4: GOOD},
        {1: "N", 2: (R(0, 1), R(0, 1), R(0, 1)), 3: "E", 4: (R(0, 1), R(0, 1), R(0, 1))},
        {1: "N", 2: (R(95, 1), R(0, 1), R(0, 1)), 3: "E", 4: GOOD},
        {1: "N", 2: GOOD, 3: "E", 4: (R(181, 1), R(0, 1), R(0, 1))},
        {1: "N", 2: (R(43, 1), R(75, 1), R(0, 1)), 3: "E", 4: GOOD},
        {1: "N", 2: (R(43, 1), R(1, 0), R(0, 1)), 3: "E", 4: GOOD},  # 1/0 is not a number
        {1: "N", 2: "forty-three", 3: "E", 4: GOOD},
        {1: "N", 2: 43, 3: "E", 4: GOOD},
        {1: "N", 2: "123", 3: "E", 4: "456"},  # strings: not read character by character
        {1: "N", 2: b"123", 3: "E", 4: GOOD},
        {1: "N", 2: (R(43, 1), R(1, 1)), 3: "E", 4: GOOD},
        {1: "N", 2: (R(43, 1), R(61, 1), R(0, 1)), 3: "E", 4: GOOD},
    ],
)
def test_bad_positions_are_unknown_and_the_rest_is_kept(tags):
    meta = meta_from_exif_safe(_with_gps(tags))  # as parsed: Pillow cannot write these
    assert (meta.latitude, meta.longitude, meta.altitude) == (None, None, None)
    assert meta.taken_at == datetime(2008, 10, 22, 14, 3)
    assert meta.camera == "Canon EOS 5D"


def _with_gps(tags: dict) -> Image.Exif:
    exif = photo_exif(gps=None)
    exif.get_ifd(0x8825).update(tags)
    return exif


@pytest.mark.parametrize(
    "tag, value, field",
    [
        (33434, R(0, 1), "exposure_s"),
        (33434, "fast", "exposure_s"),
        (33437, R(-28, 10), "f_number"),
        (34855, 0, "iso"),
        (34855, (), "iso"),
        (37386, R(1, 0), "focal_mm"),
        (42036, b"\xff\xfe\x00", "lens"),
        (42036, 12, "lens"),
    ],
)
def test_wrong_types_become_unknown(tag, value, field):
    meta = meta_from_exif_safe(photo_exif(**{f"t{tag}": value}))
    assert getattr(meta, field) is None
    assert meta.taken_at is not None


@pytest.mark.parametrize(
    "lat, lon, expected",
    [
        ((R(43, 1), R(27, 1), R(60, 1)), GOOD, 43.4666667),  # 60 s: rounded up by a writer
        ((R(434633, 10000),), GOOD, 43.4633),  # decimal degrees in one value
    ],
)
def test_lenient_positions(lat, lon, expected):
    meta = meta_from_exif_safe(_with_gps({1: "N", 2: lat, 3: "E", 4: lon}))
    assert meta.latitude == pytest.approx(expected, abs=1e-6)


def test_utf8_in_ascii_tags_is_read_as_utf8():
    meta = _meta(photo_exif(camera=("Zürich Optik".encode(), "Modèle 1".encode())))
    assert (meta.make, meta.model) == ("Zürich Optik", "Modèle 1")


def test_camera_text_is_cleaned():
    meta = _meta(photo_exif(camera=("NIKON CORPORATION\x00", "NIKON D750\x1b[31m  ")))
    assert meta.make == "Nikon Corporation"
    assert meta.model == "NIKON D750[31m"
    assert meta.camera == "NIKON D750[31m"  # the model already names the make
    assert _meta(photo_exif(camera=("Apple", "iPhone 12"))).camera == "Apple iPhone 12"


@pytest.mark.parametrize(
    "data",
    [
        image_bytes(picture(1), "JPEG", exif=b"Exif\x00\x00garbage" * 3),
        image_bytes(picture(1), "JPEG", exif=photo_exif(gps=AREZZO).tobytes()[:40]),
        image_bytes(picture(1), "JPEG"),
        image_bytes(picture(1), "PNG"),
    ],
    ids=["garbage", "truncated", "none-jpeg", "none-png"],
)
def test_broken_or_missing_exif_never_fails_the_image(data):
    image, info = decode(data)
    assert image.size == (96, 64)
    assert info.meta.latitude is None


def test_the_reader_never_raises_on_a_hostile_exif_object():
    class Hostile(Image.Exif):
        def get_ifd(self, tag):
            raise ValueError("broken")

        def get(self, key, default=None):
            raise RuntimeError("broken")

    from organizer.photo_meta import meta_from_exif

    assert meta_from_exif(Hostile(), NOW) == PhotoMeta()


def test_nan_and_infinite_rationals():
    exif = _with_gps({1: "N", 2: (float("nan"), 0.0, 0.0), 3: "E", 4: GOOD})
    meta = meta_from_exif_safe(exif)
    assert meta.latitude is None


def meta_from_exif_safe(exif: Image.Exif) -> PhotoMeta:
    from organizer.photo_meta import meta_from_exif

    return meta_from_exif(exif, NOW)


def test_header_reading_stops_early_for_a_big_jpeg(tmp_path, monkeypatch):
    """A JPEG's EXIF comes from its first 256 KB; the rest of the file is not read."""
    path = tmp_path / "big.jpg"
    rng = __import__("numpy").random.default_rng(0)
    noise = Image.fromarray(rng.integers(0, 256, (1400, 1400, 3), dtype="uint8"))
    noise.save(path, quality=95, exif=photo_exif(gps=SYDNEY).tobytes())
    assert path.stat().st_size > 1_000_000
    reads = []
    real_open = open

    class Counting(io.FileIO):
        def read(self, n=-1):
            data = super().read(n)
            reads.append(len(data))
            return data

    monkeypatch.setattr(
        "builtins.open",
        lambda p, m="r", *a, **k: Counting(p, "r") if m == "rb" else real_open(p, m, *a, **k),
    )
    meta = header_meta(str(path).encode())
    assert meta is not None and meta.latitude == pytest.approx(SYDNEY[0], abs=1e-6)
    assert sum(reads) <= 256 * 1024


def test_header_meta_of_a_vanished_or_broken_file(tmp_path):
    assert header_meta(str(tmp_path / "gone.jpg").encode()) is None
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe1 not really")
    assert header_meta(str(tmp_path / "bad.jpg").encode()) == PhotoMeta()  # read: nothing


def test_a_raw_file_reads_its_tiff_header():
    from organizer.imaging import raw_meta

    meta = raw_meta(tiff_with_exif(photo_exif(gps=RIO, camera=("NIKON", "D750"))))
    assert meta is not None and meta.camera == "Nikon D750"
    assert meta.latitude == pytest.approx(RIO[0], abs=1e-6)
    assert raw_meta(b"not a tiff") is None


def test_read_meta_of_an_image_without_exif_support():
    image = Image.new("RGB", (4, 4))
    assert read_meta(image) == PhotoMeta()


# -- at ingest ------------------------------------------------------------------------------


def _meta_rows(lib) -> dict[str, PhotoMeta | None]:
    with lib.engine.connect() as conn:
        ids = {r.relpath.decode(): r.id for r in conn.execute(q.select(q.images)).all()}
        records = q.describe_images(conn, list(ids.values()))
    return {name: records[i].meta for name, i in ids.items()}


@pytest.mark.both_backends
def test_ingest_records_metadata_and_places(fake_lib, tmp_path):
    root = tmp_path / "photos"
    write_photo(root / "arezzo.jpg", 1, photo_exif(gps=AREZZO, offset="+02:00"))
    write_photo(root / "sydney.webp", 2, photo_exif(gps=SYDNEY, taken="2019:01:05 09:00:00"))
    write_photo(root / "plain.png", 3, photo_exif(taken=None, camera=None))
    write_photo(root / "broken.jpg", 4, photo_exif(taken="0000:00:00 00:00:00", gps=(0.0, 0.0)))
    s = fake_lib.ingest([root])
    assert (s.new, s.failed, s.metadata_filled) == (4, 0, 0)
    metas = _meta_rows(fake_lib)
    assert metas["arezzo.jpg"].taken_offset == 120
    assert metas["sydney.webp"].taken_at == datetime(2019, 1, 5, 9)
    assert metas["plain.png"] == PhotoMeta()
    assert (metas["broken.jpg"].taken_at, metas["broken.jpg"].latitude) == (None, None)
    with fake_lib.engine.connect() as conn:
        records = q.describe_images(conn, [1, 2, 3, 4])
        counts = mq.meta_counts(conn)
    places = sorted(r.place for r in records.values() if r.place)
    assert places == ["Arezzo, Tuscany, Italy", "Sydney, New South Wales, Australia"]
    assert counts == {
        "read": 4,
        "with_time": 2,
        "with_coordinates": 2,
        "with_camera": 3,
        "with_place": 2,
        "unread": 0,
    }


@pytest.mark.both_backends
def test_an_older_library_is_filled_in_without_embedding(fake_lib, fake, tmp_path, monkeypatch):
    from organizer.ingest import metadata

    monkeypatch.setattr(metadata, "PARALLEL_FROM", 2)  # the reader processes, as for many
    root = tmp_path / "photos"
    for i in range(5):
        write_photo(root / f"p{i}.jpg", i, photo_exif(gps=AREZZO))
    fake_lib.ingest([root])
    embedded = fake.images_embedded
    with fake_lib.engine.begin() as conn:  # as a library made before metadata was read
        conn.execute(mq.meta_t.delete())
    s = fake_lib.ingest([root])
    assert (s.metadata_filled, s.new, s.changed, fake.images_embedded) == (5, 0, 0, embedded)
    assert all(m is not None and m.latitude for m in _meta_rows(fake_lib).values())
    assert fake_lib.ingest([root]).metadata_filled == 0  # read once


@pytest.mark.both_backends
def test_a_changed_file_is_read_again_and_a_copy_gets_its_own(fake_lib, tmp_path):
    root = tmp_path / "photos"
    write_photo(root / "a.jpg", 1, photo_exif(taken="2010:01:02 03:04:05"))
    fake_lib.ingest([root])
    write_photo(root / "a.jpg", 1, photo_exif(taken="2011:01:02 03:04:05"))  # same pixels
    (root / "copy.jpg").write_bytes((root / "a.jpg").read_bytes())
    fake_lib.ingest([root])
    metas = _meta_rows(fake_lib)
    assert metas["a.jpg"].taken_at == datetime(2011, 1, 2, 3, 4, 5)
    assert metas["copy.jpg"].taken_at == datetime(2011, 1, 2, 3, 4, 5)


def test_a_failed_image_has_no_metadata(fake_lib, tmp_path):
    root = tmp_path / "photos"
    write_photo(root / "a.jpg", 1)
    fake_lib.ingest([root])
    (root / "a.jpg").write_bytes(b"\xff\xd8\xff not a jpeg any more")
    s = fake_lib.ingest([root])
    assert s.failed == 1
    with fake_lib.engine.connect() as conn:
        assert mq.meta_counts(conn)["read"] == 0
        assert conn.execute(q.select(mq.meta_t)).all() == []


def test_metadata_crosses_processes_as_json_unchanged():
    """Ray's decode tasks hand metadata to the writer as JSON text: nothing is lost."""
    meta = _meta(photo_exif(offset="-03:30", gps=RIO, t33434=IFDRational(1, 60)))
    assert PhotoMeta.from_json(meta.to_json()) == meta
    assert PhotoMeta.from_json(PhotoMeta().to_json()) == PhotoMeta()


def test_a_dng_gives_its_camera_and_date():
    pytest.importorskip("rawpy")
    from tests.test_formats import make_dng

    dng = make_dng(
        (
            (271, "s", 0, "Canon", True),
            (272, "s", 0, "Canon EOS R5", True),
            (306, "s", 0, "2021:05:06 07:08:09", True),
        )
    )
    _, info = decode(dng, raw=True)
    assert (info.format, info.meta.camera) == ("RAW", "Canon EOS R5")
    assert info.meta.taken_at == datetime(2021, 5, 6, 7, 8, 9)
    assert file_meta(dng, raw=True) == info.meta


def test_a_file_away_during_the_fill_is_read_by_a_later_ingest(fake_lib, tmp_path):
    """A header that cannot be read now (a share away, a permission) is not recorded as
    empty: it stays unread, and the next ingest reads it."""
    root = tmp_path / "photos"
    write_photo(root / "here.jpg", 1, photo_exif(gps=AREZZO))
    write_photo(root / "away/there.jpg", 2, photo_exif(gps=SYDNEY))
    fake_lib.ingest([root])
    with fake_lib.engine.begin() as conn:
        conn.execute(mq.meta_t.delete())
    from organizer.ingest import metadata

    (root / "away").rename(tmp_path / "elsewhere")
    assert metadata.backfill(fake_lib.engine, None) == 1
    (tmp_path / "elsewhere").rename(root / "away")
    assert fake_lib.ingest([root]).metadata_filled == 1
    assert all(m is not None and m.latitude for m in _meta_rows(fake_lib).values())
