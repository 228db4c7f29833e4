#!/usr/bin/env python
"""Ingest and QIDO: SenseCare vs Orthanc on the same machine, in the same run (issue #3).

1. Ingest. For every round and client count C, each server receives the same
   real CT slices (LIDC-IDRI-0001), restamped with fresh UIDs for that round and
   that server so every store is a first store. C threads, each with its own
   keep-alive HTTP connection, send STOW-RS ``POST /studies`` requests of
   ``--batch`` instances (multipart/related; type="application/dicom", built
   here; every body is read into memory before the clock starts). The wall time
   from the moment all clients are released until the last response gives
   instances/s and MB/s (10^6 bytes of Part 10 files). Every response must be
   200 with as many Referenced SOPs as parts and no Failed SOP; after each run a
   QIDO query checks that the study really holds all instances.
2. QIDO. Both servers get ``--qido-studies`` tiny synthetic CT studies (16x16
   pixels, one instance each, unique patients, StudyDate spread over 2000-2019),
   stored with STOW in batches from a few threads. Then the same sequence of
   ``--qido-queries`` study-level queries (exact PatientID, PatientName
   wildcard, StudyDate year range with limit=50, limit=100&offset=5000) is timed
   on each server, one at a time on one connection.

Run from the repository root::

    .venv/bin/python benchmarks/ingest_vs_orthanc.py --rounds 3 --clients 1,4 --json /tmp/ingest.json

See docs/benchmarks.md for what the numbers mean and the results of a run.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import os
import queue
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import httpx
import pydicom

from benchmarks.common import (
    DICOM_JSON,
    OrthancProcess,
    PySpy,
    first_value,
    machine_info,
    median,
    multipart_related,
    percentile,
    process_cpu_seconds,
    qido_rows,
    ratio,
    remove_tree,
    start_sensecare,
    stow_counts,
)
from sensecare.dicom.restamp import restamp_files
from tests.helpers.synthetic_ct import make_ct_series

DEFAULT_SOURCE = REPO.parent / "shared" / "data" / "chest-ct" / "LIDC-IDRI-0001" / "series"
MB = 1e6
QIDO_KINDS = ("exact PatientID", "PatientName wildcard", "StudyDate year, limit=50", "limit=100&offset=5000")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass
class Target:
    """One server under test, as the clients see it."""

    name: str
    dicomweb: str
    headers: dict[str, str]
    ping_url: str
    pid: int


# --------------------------------------------------------------------------- ingest


@dataclass
class Payload:
    """One run's request bodies, built before the clock starts."""

    study_uid: str
    bodies: list[tuple[bytes, str, int]]  # (body, content type, instances)
    instances: int
    file_bytes: int


def build_payload(sources: list[Path], stage: Path, batch: int) -> Payload:
    """Restamp ``sources`` under fresh UIDs (one new study) and cut them into STOW bodies."""
    files = restamp_files(sources, stage)
    data = [f.read_bytes() for f in files]
    study_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    shutil.rmtree(stage)
    bodies = []
    for start in range(0, len(data), batch):
        chunk = data[start : start + batch]
        body, content_type = multipart_related(chunk)
        bodies.append((body, content_type, len(chunk)))
    return Payload(study_uid, bodies, len(data), sum(len(d) for d in data))


def stow_concurrently(target: Target, bodies: list[tuple[bytes, str, int]], clients: int) -> dict:
    """Send ``bodies`` from ``clients`` threads (round-robin split); returns timing and checks."""
    shares = [bodies[i::clients] for i in range(clients)]
    barrier = threading.Barrier(clients + 1)
    latencies: list[float] = []
    errors: list[str] = []
    stored = [0] * clients
    lock = threading.Lock()

    def client(index: int) -> None:
        try:
            with httpx.Client(headers=target.headers, timeout=600) as http:
                http.get(target.ping_url).raise_for_status()  # open the keep-alive connection
                barrier.wait()
                for body, content_type, count in shares[index]:
                    t0 = time.perf_counter()
                    response = http.post(
                        target.dicomweb + "/studies", content=body,
                        headers={"Content-Type": content_type, "Accept": DICOM_JSON},
                    )
                    elapsed = time.perf_counter() - t0
                    referenced, failed = stow_counts(response) if response.status_code < 500 else (0, count)
                    with lock:
                        latencies.append(elapsed)
                        if response.status_code != 200 or referenced != count or failed:
                            errors.append(
                                f"{target.name}: HTTP {response.status_code}, {referenced}/{count} referenced, "
                                f"{failed} failed: {response.text[:300]}"
                            )
                    stored[index] += referenced
        except Exception as exc:  # noqa: BLE001 - reported, and the run fails
            with lock:
                errors.append(f"{target.name} client {index}: {type(exc).__name__}: {exc}")
            barrier.abort()

    threads = [threading.Thread(target=client, args=(i,), name=f"stow-{i}") for i in range(clients)]
    for thread in threads:
        thread.start()
    try:
        barrier.wait()
    except threading.BrokenBarrierError:
        pass
    start = time.perf_counter()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    return {"wall_s": wall, "stored": sum(stored), "errors": errors, "request_latencies_s": latencies}


def study_instance_count(target: Target, study_uid: str) -> int | None:
    response = httpx.get(
        target.dicomweb + "/studies",
        params={"StudyInstanceUID": study_uid, "includefield": "NumberOfStudyRelatedInstances"},
        headers=target.headers, timeout=60,
    )
    rows = qido_rows(response)
    if len(rows) != 1:
        return None
    value = first_value(rows[0], "00201208")
    return int(value) if value is not None else None


def run_ingest(args: argparse.Namespace, targets: list[Target], workdir: Path, profile_dir: Path | None) -> dict:
    sources = sorted(args.source.glob("*.dcm"))
    if not sources:
        raise SystemExit(f"no .dcm files under {args.source}")
    chosen = [sources[i % len(sources)] for i in range(args.instances)]
    log(f"ingest: {len(chosen)} instances per run from {args.source} ({len(sources)} files), "
        f"batch {args.batch}, clients {args.clients}, {args.rounds} rounds")

    # Warm-up: one untimed batch per server (imports, first connections, page cache of the code).
    for target in targets:
        payload = build_payload(chosen[: args.batch], workdir / "stage" / f"warmup-{target.name}", args.batch)
        result = stow_concurrently(target, payload.bodies, 1)
        if result["errors"]:
            raise RuntimeError("warm-up failed: " + "; ".join(result["errors"][:3]))

    runs = []
    for round_index in range(args.rounds):
        for clients in args.clients:
            # Alternate which server goes first so neither always runs on a "cooler" machine.
            order = targets if (round_index + args.clients.index(clients)) % 2 == 0 else targets[::-1]
            for target in order:
                stage = workdir / "stage" / f"{target.name}-r{round_index}-c{clients}"
                payload = build_payload(chosen, stage, args.batch)
                os.sync()  # start every run with no dirty pages from the restamping
                time.sleep(0.2)
                spy = None
                if profile_dir and target.name == "SenseCare":
                    spy = PySpy(args.py_spy, target.pid, profile_dir / f"ingest-c{clients}-r{round_index}.txt")
                cpu_before = process_cpu_seconds(target.pid)
                try:
                    result = stow_concurrently(target, payload.bodies, clients)
                finally:
                    cpu_after = process_cpu_seconds(target.pid)
                    if spy:
                        spy.stop()
                cpu = cpu_after - cpu_before if cpu_before is not None and cpu_after is not None else None
                if result["errors"]:
                    raise RuntimeError("STOW failed: " + "; ".join(result["errors"][:3]))
                count = study_instance_count(target, payload.study_uid)
                if count != payload.instances or result["stored"] != payload.instances:
                    raise RuntimeError(
                        f"{target.name} holds {count} instances of study {payload.study_uid} "
                        f"(acknowledged {result['stored']}), expected {payload.instances}"
                    )
                wall = result["wall_s"]
                lat = result["request_latencies_s"]
                run = {
                    "server": target.name,
                    "round": round_index + 1,
                    "clients": clients,
                    "instances": payload.instances,
                    "requests": len(payload.bodies),
                    "file_bytes": payload.file_bytes,
                    "wall_s": wall,
                    "instances_per_s": payload.instances / wall,
                    "mb_per_s": payload.file_bytes / MB / wall,
                    "request_p50_s": percentile(lat, 50),
                    "request_max_s": max(lat),
                    "server_cpu_s": cpu,
                    "server_cpu_ms_per_instance": 1000 * cpu / payload.instances if cpu is not None else None,
                    "server_cores_busy": cpu / wall if cpu is not None else None,
                    "verified_instances": count,
                    "study_instance_uid": payload.study_uid,
                }
                runs.append(run)
                log(f"ingest round {round_index + 1} C={clients} {target.name:9s}: "
                    f"{run['instances_per_s']:7.1f} inst/s {run['mb_per_s']:6.1f} MB/s ({wall:.2f} s), "
                    f"server CPU {run['server_cpu_ms_per_instance'] or 0:.1f} ms/inst, verified {count}")

    summary = []
    for clients in args.clients:
        row: dict = {"clients": clients}
        for target in targets:
            mine = [r for r in runs if r["server"] == target.name and r["clients"] == clients]
            row[target.name] = {
                "median_instances_per_s": median([r["instances_per_s"] for r in mine]),
                "median_mb_per_s": median([r["mb_per_s"] for r in mine]),
                "rounds_instances_per_s": [round(r["instances_per_s"], 1) for r in mine],
                "median_server_cpu_ms_per_instance": median(
                    [r["server_cpu_ms_per_instance"] for r in mine if r["server_cpu_ms_per_instance"] is not None]
                ),
                "median_server_cores_busy": median(
                    [r["server_cores_busy"] for r in mine if r["server_cores_busy"] is not None]
                ),
            }
        row["ratio_sensecare_over_orthanc"] = ratio(
            row["SenseCare"]["median_instances_per_s"], row["Orthanc"]["median_instances_per_s"]
        )
        summary.append(row)
    return {"runs": runs, "summary": summary, "instances_per_run": len(chosen), "batch": args.batch,
            "source": str(args.source)}


# --------------------------------------------------------------------------- QIDO


def synthetic_study(i: int) -> bytes:
    """One tiny CT instance (16x16) of its own study and patient, as Part 10 bytes."""
    study_date = dt.date(2000, 1, 1) + dt.timedelta(days=(i * 7919) % 7305)  # spread over 2000-2019
    ds = make_ct_series(
        n_slices=1, rows=16, cols=16, shuffle=False,
        patient_id=f"QIDO-{i:05d}", patient_name=f"Qido^Patient{i}",
    )[0]
    ds.StudyDate = study_date.strftime("%Y%m%d")
    ds.StudyTime = f"{8 + i % 10:02d}{i % 60:02d}00"
    ds.AccessionNumber = f"QA{i:06d}"
    ds.StudyID = str(i)
    ds.StudyDescription = "QIDO benchmark"
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def populate(target: Target, bodies: list[tuple[bytes, str, int]], threads: int, total: int) -> dict:
    """STOW all ``bodies`` from ``threads`` workers; logs progress; returns timing."""
    work: queue.Queue = queue.Queue()
    for item in bodies:
        work.put(item)
    done = [0]
    errors: list[str] = []
    lock = threading.Lock()
    start = time.perf_counter()
    next_report = [max(total // 10, 1)]

    def worker() -> None:
        with httpx.Client(headers=target.headers, timeout=600) as http:
            while not errors:
                try:
                    body, content_type, count = work.get_nowait()
                except queue.Empty:
                    return
                response = http.post(target.dicomweb + "/studies", content=body,
                                     headers={"Content-Type": content_type, "Accept": DICOM_JSON})
                referenced, failed = stow_counts(response) if response.status_code < 500 else (0, count)
                with lock:
                    if response.status_code != 200 or referenced != count or failed:
                        errors.append(f"HTTP {response.status_code}: {response.text[:300]}")
                        return
                    done[0] += count
                    if done[0] >= next_report[0]:
                        rate = done[0] / (time.perf_counter() - start)
                        log(f"  {target.name}: {done[0]}/{total} studies ({rate:.0f}/s)")
                        next_report[0] += max(total // 10, 1)

    workers = [threading.Thread(target=worker, name=f"populate-{i}") for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    wall = time.perf_counter() - start
    if errors:
        raise RuntimeError(f"populating {target.name} failed: {errors[0]}")
    return {"studies": done[0], "wall_s": wall, "studies_per_s": done[0] / wall}


def qido_sequence(n_studies: int, n_queries: int, seed: int) -> list[tuple[str, dict[str, str]]]:
    rng = random.Random(seed)
    kinds = [QIDO_KINDS[i % len(QIDO_KINDS)] for i in range(n_queries)]
    rng.shuffle(kinds)
    offset = min(5000, max(0, n_studies - 100))
    queries = []
    for kind in kinds:
        if kind == QIDO_KINDS[0]:
            params = {"PatientID": f"QIDO-{rng.randrange(n_studies):05d}"}
        elif kind == QIDO_KINDS[1]:
            params = {"PatientName": f"qido^patient{rng.randrange(10, 100)}*"}
        elif kind == QIDO_KINDS[2]:
            year = rng.randrange(2000, 2020)
            params = {"StudyDate": f"{year}0101-{year}1231", "limit": "50"}
        else:
            params = {"limit": "100", "offset": str(offset)}
        queries.append((kind, params))
    return queries


def query_string(params: dict[str, str]) -> str:
    """``k=v&...`` with ``*`` and ``^`` left literal.

    Orthanc 1.10.1 does not percent-decode QIDO matching values: ``Qido%5EPatient1*``
    matches nothing there, while ``Qido^Patient1*`` matches. Both servers get the
    same literal URL.
    """
    return "&".join(f"{key}={value}" for key, value in params.items())


def time_queries(target: Target, queries: list[tuple[str, dict[str, str]]]) -> list[dict]:
    results = []
    with httpx.Client(headers={**target.headers, "Accept": DICOM_JSON}, timeout=600) as http:
        for kind, params in queries[:8]:  # warm-up, untimed
            http.get(target.dicomweb + "/studies?" + query_string(params))
        for kind, params in queries:
            url = target.dicomweb + "/studies?" + query_string(params)
            t0 = time.perf_counter()
            response = http.get(url)
            body = response.content
            elapsed = time.perf_counter() - t0
            if response.status_code not in (200, 204):
                raise RuntimeError(f"{target.name} QIDO {params}: HTTP {response.status_code} {response.text[:300]}")
            rows = json.loads(body) if response.status_code == 200 and body else []
            results.append({"kind": kind, "params": params, "latency_ms": elapsed * 1000, "rows": len(rows),
                            "status": response.status_code})
    return results


def run_qido(args: argparse.Namespace, targets: list[Target], profile_dir: Path | None) -> dict:
    n = args.qido_studies
    log(f"QIDO: making {n} synthetic studies (16x16 CT, one instance each)")
    instances = [synthetic_study(i) for i in range(n)]
    bodies = []
    for start in range(0, n, args.qido_batch):
        chunk = instances[start : start + args.qido_batch]
        body, content_type = multipart_related(chunk)
        bodies.append((body, content_type, len(chunk)))
    population = {}
    for target in targets:
        log(f"QIDO: storing {n} studies into {target.name} (batches of {args.qido_batch}, {args.qido_threads} threads)")
        spy = PySpy(args.py_spy, target.pid, profile_dir / "populate.txt") if profile_dir and target.name == "SenseCare" else None
        cpu_before = process_cpu_seconds(target.pid)
        try:
            population[target.name] = populate(target, bodies, args.qido_threads, n)
        finally:
            cpu_after = process_cpu_seconds(target.pid)
            if spy:
                spy.stop()
        if cpu_before is not None and cpu_after is not None:
            population[target.name]["server_cpu_ms_per_study"] = 1000 * (cpu_after - cpu_before) / n
        log(f"  {target.name}: {n} studies in {population[target.name]['wall_s']:.1f} s "
            f"({population[target.name]['studies_per_s']:.0f}/s)")
        # Check the count: the (n-1)th and nth QIDO-* patients exist, the (n+1)th does not.
        probe = httpx.get(target.dicomweb + "/studies?" + query_string(
                          {"PatientID": "QIDO-*", "limit": "5", "offset": str(n - 1)}),
                          headers=target.headers, timeout=600)
        population[target.name]["verified_last_page_rows"] = len(qido_rows(probe))
        if len(qido_rows(probe)) != 1:
            raise RuntimeError(f"{target.name} does not hold exactly {n} QIDO studies")

    queries = qido_sequence(n, args.qido_queries, seed=args.seed)
    per_server = {}
    for target in targets:
        os.sync()
        time.sleep(1)
        spy = PySpy(args.py_spy, target.pid, profile_dir / "qido.txt") if profile_dir and target.name == "SenseCare" else None
        try:
            per_server[target.name] = time_queries(target, queries)
        finally:
            if spy:
                spy.stop()
        log(f"QIDO {target.name}: p50 {percentile([r['latency_ms'] for r in per_server[target.name]], 50):.1f} ms")

    mismatches = [
        {"params": q[1], **{t.name: per_server[t.name][i]["rows"] for t in targets}}
        for i, q in enumerate(queries)
        if len({per_server[t.name][i]["rows"] for t in targets}) > 1
    ]
    summary = []
    for kind in (*QIDO_KINDS, "all"):
        row: dict = {"kind": kind}
        for target in targets:
            lat = [r["latency_ms"] for r in per_server[target.name] if kind == "all" or r["kind"] == kind]
            rows = [r["rows"] for r in per_server[target.name] if kind == "all" or r["kind"] == kind]
            row[target.name] = {"queries": len(lat), "p50_ms": percentile(lat, 50), "p95_ms": percentile(lat, 95),
                                "mean_rows": sum(rows) / len(rows) if rows else 0}
        row["ratio_p50_sensecare_over_orthanc"] = ratio(row["SenseCare"]["p50_ms"], row["Orthanc"]["p50_ms"])
        row["ratio_p95_sensecare_over_orthanc"] = ratio(row["SenseCare"]["p95_ms"], row["Orthanc"]["p95_ms"])
        summary.append(row)
    return {"studies": n, "population": population, "summary": summary, "row_count_mismatches": mismatches,
            "queries": [{"kind": k, "params": p} for k, p in queries],
            "latencies": {name: [round(r["latency_ms"], 3) for r in res] for name, res in per_server.items()}}


# --------------------------------------------------------------------------- report


def print_report(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 150)
    ingest = report.get("ingest")
    if ingest:
        table = Table(title=f"STOW-RS ingest, {ingest['instances_per_run']} CT slices per run, "
                            f"{ingest['batch']} per request, median of {report['args']['rounds']} rounds")
        for column in ("clients", "Orthanc inst/s", "Orthanc MB/s", "SenseCare inst/s", "SenseCare MB/s",
                       "SenseCare/Orthanc", "server CPU ms/inst (O | S)", "rounds inst/s (O | S)"):
            table.add_column(column, justify="right")
        for row in ingest["summary"]:
            o, s = row["Orthanc"], row["SenseCare"]
            table.add_row(
                str(row["clients"]), f"{o['median_instances_per_s']:.1f}", f"{o['median_mb_per_s']:.1f}",
                f"{s['median_instances_per_s']:.1f}", f"{s['median_mb_per_s']:.1f}",
                f"{row['ratio_sensecare_over_orthanc']:.2f}x",
                f"{o['median_server_cpu_ms_per_instance']:.1f} | {s['median_server_cpu_ms_per_instance']:.1f}",
                f"{o['rounds_instances_per_s']} | {s['rounds_instances_per_s']}",
            )
        console.print(table)
    qido = report.get("qido")
    if qido:
        table = Table(title=f"QIDO-RS /studies latency at {qido['studies']} studies (ms; ratio = SenseCare/Orthanc)")
        for column in ("query", "n", "Orthanc p50", "Orthanc p95", "SenseCare p50", "SenseCare p95",
                       "ratio p50", "ratio p95", "rows"):
            table.add_column(column, justify="right")
        for row in qido["summary"]:
            o, s = row["Orthanc"], row["SenseCare"]
            table.add_row(
                row["kind"], str(o["queries"]), f"{o['p50_ms']:.1f}", f"{o['p95_ms']:.1f}",
                f"{s['p50_ms']:.1f}", f"{s['p95_ms']:.1f}",
                f"{row['ratio_p50_sensecare_over_orthanc']:.2f}", f"{row['ratio_p95_sensecare_over_orthanc']:.2f}",
                f"{o['mean_rows']:.0f}/{s['mean_rows']:.0f}",
            )
        console.print(table)
        pop = qido["population"]
        console.print("population (STOW, tiny instances): " + ", ".join(
            f"{name} {p['studies_per_s']:.0f} studies/s ({p['wall_s']:.0f} s, server CPU "
            f"{p.get('server_cpu_ms_per_study', float('nan')):.1f} ms/study)" for name, p in pop.items()))
        if qido["row_count_mismatches"]:
            console.print(f"[yellow]{len(qido['row_count_mismatches'])} queries returned different row counts[/yellow]")
    m = report["machine"]
    console.print(f"{m['cpu_model']}, {m['cpu_count']} cores, {m['ram_bytes'] / 2**30:.0f} GiB, "
                  f"{m['workdir_filesystem']['type']} on {m['workdir_filesystem']['device']}; "
                  f"Orthanc {report['servers']['Orthanc']['version']} (DICOMweb {report['servers']['Orthanc']['dicomweb_plugin']}), "
                  f"SenseCare {m['sensecare_version']}, Python {m['python']}")


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", default="1,4", help="comma-separated client counts (default 1,4)")
    parser.add_argument("--instances", type=int, default=256,
                        help="instances per run (default 256: a chest CT of 1.25 mm slices; 128 made 4-client runs last 0.3 s)")
    parser.add_argument("--batch", type=int, default=16, help="instances per STOW request (default 16)")
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="folder of real CT slices")
    parser.add_argument("--qido-studies", type=int, default=10000)
    parser.add_argument("--qido-queries", type=int, default=200)
    parser.add_argument("--qido-batch", type=int, default=200, help="instances per STOW while populating")
    parser.add_argument("--qido-threads", type=int, default=4, help="STOW threads while populating")
    parser.add_argument("--skip-qido", action="store_true")
    parser.add_argument("--skip-ingest", action="store_true")
    parser.add_argument("--seed", type=int, default=3, help="seed of the QIDO query sequence")
    parser.add_argument("--json", type=Path, help="write every measurement here")
    parser.add_argument("--workdir", type=Path, help="parent of the temporary data folder (default /tmp)")
    parser.add_argument("--keep-workdir", action="store_true", help="do not delete the servers' data")
    parser.add_argument("--sensecare-db", help="SQLAlchemy URL of SenseCare's index (default SQLite in its data dir)")
    parser.add_argument("--profile-dir", type=Path,
                        help="record SenseCare with py-spy (collapsed stacks) during its timed runs; slows it down")
    parser.add_argument("--py-spy", default=shutil.which("py-spy") or "py-spy", help="py-spy binary")
    args = parser.parse_args(argv)
    args.clients = [int(c) for c in args.clients.split(",") if c.strip()]
    if not args.clients or min(args.clients) < 1 or args.rounds < 1 or args.batch < 1 or args.instances < 1:
        parser.error("rounds, clients, batch and instances must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally blocks on SIGTERM
    parent = args.workdir or Path("/tmp")
    parent.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="sensecare-bench-ingest-", dir=parent))
    report: dict = {"benchmark": "ingest_vs_orthanc", "args": {k: (str(v) if isinstance(v, Path) else v)
                                                               for k, v in vars(args).items()}}
    report["machine"] = machine_info(workdir)
    report["profiled"] = bool(args.profile_dir)
    orthanc = OrthancProcess(workdir / "orthanc")
    sensecare = None
    started = time.perf_counter()
    try:
        log(f"starting Orthanc and SenseCare under {workdir}")
        orthanc.start()
        sensecare = start_sensecare(workdir / "sensecare", args.sensecare_db)
        system = orthanc.system()
        report["servers"] = {
            "Orthanc": {"version": system.get("Version"), "dicomweb_plugin": orthanc.plugin_version(),
                        "database_backend_plugin": system.get("DatabaseBackendPlugin"),
                        "storage_area_plugin": system.get("StorageAreaPlugin"),
                        "config": orthanc.config,
                        "durability": "SyncStorageArea=true (default): fsync of each stored file; SQLite index "
                                      "in WAL mode with synchronous=NORMAL (Orthanc's built-in PRAGMAs), so a "
                                      "commit is not fsync'd until a WAL checkpoint"},
            "SenseCare": {"version": report["machine"]["sensecare_version"],
                          "index": "sqlite (WAL, synchronous=FULL)" if not args.sensecare_db
                          else args.sensecare_db.split("@")[-1],
                          "durability": "fsync of each file and of its directory, then the index commit "
                                        "(fsync'd) before the STOW response"},
        }
        targets = [
            Target("Orthanc", orthanc.dicomweb, orthanc.headers, orthanc.url + "/system", orthanc.process.pid),
            Target("SenseCare", sensecare.dicomweb, sensecare.headers, sensecare.url + "/healthz",
                   sensecare.process.pid),
        ]
        if args.profile_dir:
            args.profile_dir.mkdir(parents=True, exist_ok=True)
        if not args.skip_ingest:
            report["ingest"] = run_ingest(args, targets, workdir, args.profile_dir)
        if not args.skip_qido:
            report["qido"] = run_qido(args, targets, args.profile_dir)
        report["elapsed_s"] = time.perf_counter() - started
        print_report(report)
    finally:
        if sensecare is not None:
            sensecare.stop()
        orthanc.stop()
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(report, indent=2, default=str))
            log(f"wrote {args.json}")
        if args.keep_workdir:
            log(f"kept {workdir}")
        else:
            remove_tree(workdir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
