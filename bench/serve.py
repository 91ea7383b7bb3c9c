"""Web app benchmark: `organizer serve` over a 100k-image library, default model.

    python bench/serve.py [--n 100000] [--seconds 30] [--clients 20] [--every 60]
    python bench/serve.py --uploads 20

The library holds the 100 real photos (ingested with ViT-B-32-256, seeded random weights:
the same compute as real ones) plus N-100 synthetic images with clustered 512-d vectors
(their files do not exist; only the real ones are thumbnailed). The server runs as users
run it; requests go over HTTP from this process. Printed: the CPU, then

- /api/search p50/p95 over distinct texts (text encoding included), /api/similar p50/p95,
  a cached /thumb p50/p95, each after warm-up, one client;
- N clients for S seconds on a mix (search 20 %, similar 40 %, thumbnails 40 %): requests/s,
  errors, p50/p95, and the server's resident memory before, after and its growth in the
  second half of the run (flat memory: the second half grows by ~0);
- the same mix while `organizer ingest` adds 300 photos to the library: errors, the slowest
  request, and whether the new images are searchable once the ingest is done.

With ``--every S`` the server's RSS is printed every S seconds of the load (a soak:
``--seconds 600 --every 60`` shows whether memory levels off).

``--uploads K`` measures something else: K clients at once upload a 13000 x 13000 one-colour
PNG (37 KB, 169 MP: a decompression bomb that passes the ingest's pixel limit) to a server
over a small library (the real photos, the tiny test model), then K the largest such PNG the
server's upload budget lets it decode. Printed for each: the server's RSS idle, at its peak
during the uploads and 5 s after; how the uploads were answered; and the latency of
/api/status and a cached /thumb, asked one after another meanwhile.

Cached in $ORGANIZER_BENCH_DATA (default /tmp/organizer-bench).
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import math
import random
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import quote

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from catalogue import cpu, rows, vectors
from common import DATA, ORGANIZER, PHOTOS, TINY_CONFIG, table, tree_rss_mb, variants

WORDS = [
    "dog",
    "cat",
    "beach",
    "sunset",
    "mountain",
    "city",
    "street",
    "car",
    "bicycle",
    "child",
    "wedding",
    "food",
    "cake",
    "flower",
    "tree",
    "snow",
    "boat",
    "train",
    "concert",
    "party",
    "kitchen",
    "garden",
    "bird",
    "horse",
    "bridge",
    "night",
    "market",
    "church",
    "portrait",
    "museum",
    "forest",
    "river",
    "lake",
    "desert",
    "airplane",
    "stadium",
    "office",
]
BULK = 5_000


def make_library(n: int) -> Path:
    """The real photos, ingested, plus synthetic images up to ``n``; cached by ``n``."""
    library = DATA / f"serve-{n}"
    if (library / "ready").exists():
        return library
    subprocess.run(["rm", "-rf", str(library)], check=True)
    env_args = ["--pretrained", "none"]
    done = subprocess.run(
        [*ORGANIZER, "-L", str(library), "ingest", str(PHOTOS), *env_args, "-q"],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        sys.exit(done.stderr)
    from organizer.config import Settings
    from organizer.library import Library
    from organizer.store import queries as q
    from organizer.store.db import write_transaction

    synthetic = DATA / "serve-synthetic-root"
    synthetic.mkdir(parents=True, exist_ok=True)  # present, so its images are searched
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((2000, 512)).astype(np.float32)
    with Library.open(Settings(library=library)) as lib:
        with lib.engine.connect() as conn:
            model = q.library_model(conn)
        with write_transaction(lib.engine) as conn:
            root_id = q.add_root(conn, str(synthetic))
        total = n - 100
        for start in range(0, total, BULK):
            m = min(BULK, total - start)
            with write_transaction(lib.engine) as conn:
                q.insert_embedded(conn, model.id, rows(root_id, start, m), vectors(rng, centres, m))
        lib.refresh_index()
        print(f"library: {n} images, index {lib.vectors().describe()}", flush=True)
    (library / "ready").touch()
    return library


class Server:
    def __init__(self, library: Path):
        self.log = library.parent / "serve-bench.log"
        self.proc = subprocess.Popen(
            [*ORGANIZER, "-L", str(library), "serve", "--port", "0"],
            stdout=subprocess.DEVNULL,
            stderr=open(self.log, "w"),  # noqa: SIM115 - the child owns it
        )
        deadline = time.monotonic() + 120
        while "serving " not in self.log.read_text():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                sys.exit(f"the server did not start: {self.log.read_text()}")
            time.sleep(0.1)
        url = self.log.read_text().split(" at ", 1)[1].split()[0]
        self.port = int(url.split(":")[2].split("/")[0])

    def rss_mb(self) -> float:
        return tree_rss_mb(self.proc.pid)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


class Client:
    """One keep-alive HTTP connection."""

    def __init__(self, port: int):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)

    def get(self, path: str) -> tuple[int, bytes, float]:
        started = time.perf_counter()
        try:
            self.conn.request("GET", path)
            response = self.conn.getresponse()
            data = response.read()
        except (OSError, http.client.HTTPException):
            self.conn.close()
            return 0, b"", time.perf_counter() - started
        return response.status, data, time.perf_counter() - started


def percentiles(times: list[float]) -> tuple[str, str]:
    ms = sorted(t * 1000 for t in times)
    return f"{statistics.median(ms):.1f}", f"{ms[int(0.95 * (len(ms) - 1))]:.1f}"


def query(rng: random.Random) -> str:
    return quote(" ".join(rng.sample(WORDS, rng.choice((1, 2, 3)))))


def single(port: int, real_ids: list[int], all_ids: list[int]) -> list[list[str]]:
    client, rng = Client(port), random.Random(1)
    for _ in range(5):  # warm-up: the model's first passes
        client.get(f"/api/search?q={query(rng)}&n=12")
    rows = []
    searches = [client.get(f"/api/search?q={query(rng)}+{i}&n=12") for i in range(60)]
    similars = [client.get(f"/api/similar/{rng.choice(all_ids)}?n=12") for _ in range(200)]
    for i in real_ids:
        client.get(f"/thumb/{i}")  # made once, cached after
    thumbs = [client.get(f"/thumb/{rng.choice(real_ids)}") for _ in range(300)]
    for name, results in (
        ("/api/search", searches),
        ("/api/similar", similars),
        ("/thumb (cached)", thumbs),
    ):
        bad = sum(1 for s, _, _ in results if s != 200)
        rows.append([name, str(len(results)), *percentiles([t for _, _, t in results]), str(bad)])
    return rows


def mix(
    port: int, clients: int, seconds: float, real_ids, all_ids, server, every: float = 0
) -> dict:
    """The load mix; with ``every``, the server's RSS is printed every that many seconds (a
    soak: does memory level off?)."""
    stop = time.monotonic() + seconds
    times: list[float] = []
    errors: list[int] = []
    rss: list[tuple[float, float]] = []
    lock = threading.Lock()

    def worker(seed: int) -> None:
        client, rng = Client(port), random.Random(seed)
        while time.monotonic() < stop:
            roll = rng.random()
            if roll < 0.2:
                path = f"/api/search?q={query(rng)}&n=24"
            elif roll < 0.6:
                path = f"/api/similar/{rng.choice(all_ids)}?n=24"
            else:
                path = f"/thumb/{rng.choice(real_ids)}"
            status, _, took = client.get(path)
            with lock:
                times.append(took)
                if status != 200:
                    errors.append(status)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    started = time.monotonic()
    for t in threads:
        t.start()
    shown = 0.0
    while any(t.is_alive() for t in threads):
        at = time.monotonic() - started
        rss.append((at, server.rss_mb()))
        if every and at >= shown:
            print(
                f"  {at:5.0f} s: server RSS {rss[-1][1]:.0f} MB, {len(times)} requests", flush=True
            )
            shown += every
        time.sleep(0.5)
    wall = time.monotonic() - started
    half = [m for t, m in rss if t >= seconds / 2]
    p50, p95 = percentiles(times)
    return {
        "requests": len(times),
        "per_s": len(times) / wall,
        "errors": len(errors),
        "p50": p50,
        "p95": p95,
        "max_ms": max(times) * 1000,
        "rss_start": rss[0][1],
        "rss_end": rss[-1][1],
        "second_half_growth": (half[-1] - half[0]) if len(half) > 1 else 0.0,
    }


def upload_library() -> Path:
    """The real photos ingested with the tiny test model: a server whose memory is mostly
    what uploads cost."""
    library = DATA / "serve-uploads"
    if (library / "ready").exists():
        return library
    subprocess.run(["rm", "-rf", str(library)], check=True)
    tiny = ["--model", str(TINY_CONFIG), "--pretrained", "none"]
    done = subprocess.run(
        [*ORGANIZER, "-L", str(library), "ingest", str(PHOTOS), *tiny, "-q"],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        sys.exit(done.stderr)
    (library / "ready").touch()
    return library


def flat_png(side: int = 13_000, mode: str = "1") -> bytes:
    """A one-colour PNG of side x side pixels: a few hundred KB at most, that decode to
    side**2 pixels (bilevel: a byte each in Pillow, 4 as RGB)."""
    path = DATA / f"flat-{mode}-{side}.png"
    if not path.exists():
        from PIL import Image

        colour = 1 if mode == "1" else (200, 30, 30, 128)
        Image.new(mode, (side, side), colour).save(path, optimize=True)
    return path.read_bytes()


def post(port: int, body: bytes) -> tuple[int, bytes, float]:
    started = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    try:
        conn.request("POST", "/api/search?n=3", body=body, headers={"Content-Type": "image/png"})
        response = conn.getresponse()
        data = response.read()
    except (OSError, http.client.HTTPException) as exc:
        return 0, str(exc).encode(), time.perf_counter() - started
    finally:
        conn.close()
    return response.status, data, time.perf_counter() - started


def uploads(count: int) -> None:
    """See the module's docstring (--uploads)."""
    pictures = [("the hostile run's", flat_png(13_000))]
    try:
        from organizer.serve.uploads import DECODE_BUDGET
    except ImportError:  # before uploads had a budget
        pass
    else:  # RGBA costs 8 bytes a pixel: the largest such picture the budget decodes
        side = math.isqrt(DECODE_BUDGET // 8) - 1
        pictures.append(("RGBA, the largest the budget decodes", flat_png(side, "RGBA")))
    library = upload_library()
    server = Server(library)
    try:
        client = Client(server.port)
        while client.get("/api/search?q=warm&n=1")[0] != 200:
            time.sleep(0.5)
        photo = sorted(PHOTOS.glob("*.jpg"))[0].read_bytes()
        status, data, _ = post(server.port, photo)  # the image tower, loaded once
        assert status == 200, data
        thumb_id = json.loads(data)["results"][0]["image_id"]
        client.get(f"/thumb/{thumb_id}")
        for label, png in pictures:
            time.sleep(2)
            upload_round(server, png, label, count, thumb_id)
    finally:
        server.stop()


def upload_round(server, png: bytes, label: str, count: int, thumb_id: int) -> None:
    from PIL import Image

    client = Client(server.port)  # the server closes keep-alive connections idle for 5 s
    with Image.open(io.BytesIO(png)) as im:
        side = im.width
    idle = server.rss_mb()
    print(f"\n{count} uploads at once of a {len(png):,}-byte {side} x {side} PNG ({label})")
    answers: list[tuple[int, bytes, float]] = []
    threads = [
        threading.Thread(target=lambda: answers.append(post(server.port, png)))
        for _ in range(count)
    ]
    others: dict[str, list[float]] = {"/api/status": [], f"/thumb/{thumb_id}": []}
    peak = idle
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        peak = max(peak, server.rss_mb())
        for path, times in others.items():
            status, _, took = client.get(path)
            times.append(took if status == 200 else float("inf"))
            if status != 200:
                print(f"  {path} answered {status}", flush=True)
    time.sleep(5)
    after = server.rss_mb()
    print(
        f"server RSS: idle {idle:.0f} MB, peak {peak:.0f} MB ({peak - idle:+.0f}), "
        f"5 s after {after:.0f} MB ({after - idle:+.0f})"
    )
    kinds: dict[str, int] = {}
    for status, data, _ in answers:
        error = json.loads(data).get("error", "") if status not in (0, 200) else ""
        key = f"{status} {error}".strip()
        kinds[key] = kinds.get(key, 0) + 1
    for key, n in sorted(kinds.items()):
        print(f"  {n} answered {key}")
    print(f"  the last answer came after {max(t for _, _, t in answers):.1f} s")
    rows = [
        [path, str(len(times)), *percentiles(times), f"{max(times) * 1000:.0f}"]
        for path, times in others.items()
    ]
    print(table(rows, ["meanwhile", "requests", "p50 ms", "p95 ms", "max ms"]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--every", type=float, default=0, help="print the server's RSS every S s")
    ap.add_argument("--uploads", type=int, default=0, help="K bomb-like uploads at once")
    args = ap.parse_args()
    print(cpu(), flush=True)
    if args.uploads:
        uploads(args.uploads)
        return
    library = make_library(args.n)
    server = Server(library)
    try:
        client = Client(server.port)
        while client.get("/api/search?q=warm&n=1")[0] != 200:
            time.sleep(0.5)
        status = json.loads(client.get("/api/status")[1])
        print(f"serving {status['images']['ok']} images, index: {status['index']['description']}")
        found = json.loads(client.get("/api/search?q=photo&n=500")[1])["results"]
        real_ids = sorted({r["image_id"] for r in found if "openimages" in r["root"]})
        real_ids = real_ids or list(range(1, 101))
        all_ids = list(range(1, args.n + 1))
        rows = single(server.port, real_ids, all_ids)
        print(table(rows, ["endpoint (1 client)", "requests", "p50 ms", "p95 ms", "errors"]))

        load = mix(server.port, args.clients, args.seconds, real_ids, all_ids, server, args.every)
        print(
            f"\n{args.clients} clients, {args.seconds:.0f} s: {load['requests']} requests "
            f"({load['per_s']:.0f}/s), {load['errors']} errors, p50 {load['p50']} ms, p95 "
            f"{load['p95']} ms; server RSS {load['rss_start']:.0f} -> {load['rss_end']:.0f} MB "
            f"(second half: {load['second_half_growth']:+.0f} MB)"
        )

        new = variants("serve-extra", 300, 1024)
        ingest = subprocess.Popen(
            [*ORGANIZER, "-L", str(library), "ingest", str(new), "-q"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        started = time.monotonic()
        during = {"requests": 0, "errors": 0, "max_ms": 0.0}
        while ingest.poll() is None:
            part = mix(server.port, 4, 5, real_ids, all_ids, server)
            during["requests"] += part["requests"]
            during["errors"] += part["errors"]
            during["max_ms"] = max(during["max_ms"], part["max_ms"])
        ingest_s = time.monotonic() - started
        if ingest.returncode != 0:
            sys.exit(f"the ingest failed: {ingest.stderr.read()}")
        after = json.loads(Client(server.port).get("/api/status")[1])["images"]["ok"]
        print(
            f"\nwhile an ingest of 300 photos ran ({ingest_s:.0f} s): {during['requests']} "
            f"requests, {during['errors']} errors, slowest {during['max_ms']:.0f} ms; after it, "
            f"the server holds {after} images ({after - status['images']['ok']:+d})"
        )
    finally:
        server.stop()
        if "new" in locals():  # the next run adds them again
            subprocess.run(
                [*ORGANIZER, "-L", str(library), "roots", "remove", str(new)], capture_output=True
            )


if __name__ == "__main__":
    main()
