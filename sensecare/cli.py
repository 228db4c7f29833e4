"""The ``sensecare`` command: parses arguments, delegates, prints one line on error."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.panel import Panel
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from sensecare import __version__
from sensecare.config import Settings
from sensecare.errors import SenseCareError

app = typer.Typer(help="SenseCare: chest CT archive and AI platform.", no_args_is_help=True, add_completion=False)
token_app = typer.Typer(help="Manage API tokens.", no_args_is_help=True)
app.add_typer(token_app, name="token")
console = Console(stderr=True)

DataDir = Annotated[Path, typer.Option("--data-dir", envvar="SENSECARE_DATA_DIR", help="Where the index and files live.")]
Db = Annotated[Optional[str], typer.Option("--db", envvar="SENSECARE_DB", help="SQLAlchemy URL, e.g. postgresql+psycopg://user@host/db; default SQLite in the data dir.")]


def _settings(**overrides: object) -> Settings:
    return Settings(**{k: v for k, v in overrides.items() if v is not None})


@app.command()
def serve(
    data_dir: DataDir = Path("var"),
    host: Annotated[str, typer.Option(envvar="SENSECARE_HOST")] = "127.0.0.1",
    port: Annotated[int, typer.Option(envvar="SENSECARE_PORT")] = 8042,
    dicom_port: Annotated[int, typer.Option("--dicom-port", envvar="SENSECARE_DICOM_PORT")] = 11112,
    db: Db = None,
    ae_title: Annotated[str, typer.Option("--ae-title", envvar="SENSECARE_AE_TITLE")] = "SENSECARE",
    cors_origin: Annotated[Optional[list[str]], typer.Option("--cors-origin", help="Allow this browser origin (repeatable); CORS is off otherwise.")] = None,
    demo: Annotated[Optional[Path], typer.Option("--demo", help="Load DICOM files from this folder before serving.")] = None,
    workers: Annotated[Optional[int], typer.Option("--workers", envvar="SENSECARE_WORKERS", min=1, max=64, help="HTTP worker processes (default: one per CPU core, at most 4).")] = None,
) -> None:
    """Serve DICOMweb + REST over HTTP and DIMSE (C-ECHO, C-STORE, C-FIND) in one process."""
    from sensecare.server import build_context, serve as run

    _configure_logging()
    settings = _settings(
        data_dir=data_dir, host=host, port=port, dicom_port=dicom_port, db=db, ae_title=ae_title,
        cors_origins=cors_origin or None,
    )
    startup = build_context(settings)
    if startup.generated_admin_token:
        console.print(
            Panel(
                f"[bold]{startup.generated_admin_token}[/bold]\n\nShown once. Set SENSECARE_ADMIN_TOKEN "
                "to choose your own, or create more with `sensecare token create`.",
                title="Admin token generated",
            )
        )
    if demo is not None:
        if demo.exists():
            _load(startup.context.archive, settings.default_tenant, demo)
        else:
            console.print(f"[yellow]demo data folder {demo} is absent; starting with an empty archive[/yellow]")
    console.print(
        f"SenseCare {__version__}: http://{host}:{port}/dicomweb  DIMSE {ae_title}@{host}:{dicom_port}  "
        f"HTTP workers {workers or default_workers()}  "
        f"index {startup.context.archive.db.safe_url}"
    )
    run(startup.context, workers=workers or default_workers())


def default_workers() -> int:
    import os

    return max(1, min(os.cpu_count() or 1, 4))


@app.command("import")
def import_files(
    path: Annotated[Path, typer.Argument(help="A DICOM file or a folder to walk.")],
    data_dir: DataDir = Path("var"),
    db: Db = None,
    tenant: Annotated[str, typer.Option(help="Tenant that owns the data.")] = "default",
) -> None:
    """Store DICOM files from disk directly into the archive."""
    from sensecare.archive.service import Archive

    settings = _settings(data_dir=data_dir, db=db)
    archive = Archive.open(settings.database_url, settings.data_dir)
    archive.ensure_tenant(tenant)
    try:
        _load(archive, tenant, path)
    finally:
        archive.close()


def _load(archive, tenant: str, path: Path) -> None:  # type: ignore[no-untyped-def]
    from sensecare.archive.loader import find_dicom_files, load_files

    found = find_dicom_files(path)
    with Progress(
        TextColumn("[bold]storing[/bold] {task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeRemainingColumn(), console=console, transient=False,
    ) as progress:
        task = progress.add_task(str(path), total=len(found.dicom))
        summary = load_files(archive, tenant, found, progress=lambda n: progress.advance(task, n))
    console.print(
        f"stored {summary.stored}, already present {summary.duplicates}, "
        f"failed {summary.failed}, not DICOM {summary.skipped}"
    )


@app.command()
def analyze(
    series_dir: Annotated[Path, typer.Argument(help="Folder (or file) holding one CT series.")],
    out: Annotated[Path, typer.Option("--out", help="Where report.json, seg.dcm and sr.dcm go.")],
    device: Annotated[str, typer.Option(help="auto | cpu | cuda")] = "auto",
    series: Annotated[Optional[str], typer.Option("--series", help="SeriesInstanceUID, when the folder holds several.")] = None,
    no_dicom: Annotated[bool, typer.Option("--no-dicom", help="Write report.json only (no SEG/SR).")] = False,
) -> None:
    """Find, segment and measure lung lesions in one chest CT series."""
    from sensecare.analysis.pipeline import STAGES, analyze_series
    from sensecare.archive.loader import find_dicom_files

    found = find_dicom_files(series_dir)
    if not found.dicom:
        raise SenseCareError(f"{series_dir} holds no DICOM files")
    with Progress(
        TextColumn("[bold]analysing[/bold] {task.description}"), BarColumn(), MofNCompleteColumn(),
        console=console, transient=True,
    ) as progress:
        task = progress.add_task("read", total=len(STAGES))

        def advance(stage: str, done: int, total: int) -> None:
            progress.update(task, completed=done, description=stage)

        result = analyze_series(found.dicom, out, device=device, series_instance_uid=series, progress=advance,
                                write_dicom=not no_dicom)
    report = result.report
    console.print(
        f"{len(report.lesions)} lesion(s), PO {report.opacity.percent_opacity:.1f} %, "
        f"severity {report.opacity.severity_score}/20, urgency [bold]{report.urgency.value}[/bold]"
        f"{' (' + ', '.join(report.flags) + ')' if report.flags else ''}; "
        f"{report.timing_s.get('total', 0):.1f} s on {report.device}; wrote {out}"
    )
    for lesion in report.lesions[:5]:
        console.print(
            f"  #{lesion.id} {lesion.type:<13} conf {lesion.confidence:.2f}  {lesion.long_axis_mm:5.1f} x "
            f"{lesion.short_axis_mm:4.1f} mm  {lesion.volume_ml:7.2f} mL  {lesion.lobe or lesion.side or ''}  "
            f"LPS ({', '.join(f'{v:.0f}' for v in lesion.center_lps_mm)})"
        )


@token_app.command("create")
def token_create(
    role: Annotated[str, typer.Option(help="admin | tenant-admin | integrator | radiologist | operator")],
    name: Annotated[str, typer.Option(help="Who or what uses the token.")] = "cli",
    tenant: Annotated[str, typer.Option(help="Tenant the token acts for.")] = "default",
    data_dir: DataDir = Path("var"),
    db: Db = None,
) -> None:
    """Create a token and print it (it is stored only as a hash)."""
    from sensecare.archive.service import Archive
    from sensecare.auth import Role, TokenStore

    try:
        parsed = Role(role)
    except ValueError:
        raise SenseCareError(f"unknown role {role!r}; choose one of {', '.join(r.value for r in Role)}") from None
    settings = _settings(data_dir=data_dir, db=db)
    archive = Archive.open(settings.database_url, settings.data_dir)
    try:
        token = TokenStore(archive.db).create(name, parsed, tenant)
    finally:
        archive.close()
    typer.echo(token)


@app.command()
def phantom(
    out: Annotated[Path, typer.Option("--out", help="Folder for the DICOM series, ground_truth.json and masks.npz.")],
    seed: Annotated[int, typer.Option(help="Same seed, same patient.")] = 0,
    slices: Annotated[Optional[int], typer.Option(help="Number of slices (default: the whole chest).")] = None,
    thickness: Annotated[float, typer.Option(help="Slice thickness, 0.625-8 mm.")] = 1.0,
    spacing: Annotated[Optional[float], typer.Option(help="Slice spacing in mm (default: the thickness).")] = None,
    kernel: Annotated[str, typer.Option(help="soft | standard | sharp")] = "standard",
    size: Annotated[str, typer.Option(help="small | medium | large")] = "medium",
    sex: Annotated[str, typer.Option(help="F | M")] = "M",
    matrix: Annotated[int, typer.Option(help="Rows = columns.")] = 512,
    lesions: Annotated[str, typer.Option(help='"random", "none" or e.g. "solid:8,ground_glass:15:juxtapleural,mass:45".')] = "random",
    diffuse: Annotated[float, typer.Option(help="Fraction of lung with viral-pneumonia-like opacity, 0-0.8.")] = 0.0,
    dose: Annotated[float, typer.Option(help="Relative dose; noise SD scales with 1/sqrt(dose).")] = 1.0,
    contrast: Annotated[bool, typer.Option(help="Intravenous contrast.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace a phantom already in --out.")] = False,
) -> None:
    """Generate a synthetic chest CT series with lesion ground truth."""
    import time

    from sensecare.phantom import PhantomSpec, generate_phantom, parse_lesions, write_phantom

    spec = PhantomSpec(
        seed=seed, matrix=matrix, n_slices=slices, slice_thickness_mm=thickness, slice_spacing_mm=spacing,
        kernel=kernel, size=size, sex=sex, lesions=parse_lesions(lesions), diffuse=diffuse, dose=dose,
        contrast=contrast,
    )
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise SenseCareError(f"{out} is not empty; choose an empty folder or pass --overwrite")
    started = time.monotonic()
    span = {"planning": (0, 10), "anatomy": (10, 55), "structures": (55, 65), "scanner": (65, 85), "truth": (85, 88)}
    with Progress(TextColumn("[bold]phantom[/bold] {task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                  TimeRemainingColumn(), console=console) as bar:
        task = bar.add_task("planning", total=100)

        def stage(name: str, done: float) -> None:
            lo, hi = span[name]
            bar.update(task, description=name, completed=lo + (hi - lo) * done)

        ph = generate_phantom(spec, progress=stage)
        write_phantom(ph, out, overwrite=overwrite,
                      progress=lambda k, n: bar.update(task, description="writing", completed=88 + 12 * k / n))
    console.print(
        f"wrote {ph.hu.shape[0]} slices ({ph.hu.shape[2]}x{ph.hu.shape[1]}, {ph.spacing[0]:.3f} mm pixels, "
        f"{spec.slice_thickness_mm:g} mm {ph.kernel_name}) to {out}: {len(ph.truth)} lesion(s), lungs "
        f"{ph.lung_volume_ml['total']:.0f} mL, opacity {ph.percent_opacity:.1f}% (high {ph.percent_high_opacity:.1f}%), "
        f"noise {ph.noise_sd_hu:.0f} HU, {time.monotonic() - started:.0f} s",
        highlight=False, soft_wrap=True,
    )


@app.command()
def evaluate(
    out: Annotated[Path, typer.Option("--out", help="Folder for evaluation.json, froc.png, volume_error.png, evaluation.md.")],
    phantoms: Annotated[Optional[int], typer.Option(help="Generate N phantoms from --seed-start (default 50 without --cases, else 0).")] = None,
    seed_start: Annotated[int, typer.Option("--seed-start", help="First phantom seed; use seeds the models never saw.")] = 5000,
    matrix: Annotated[int, typer.Option(help="Phantom rows = columns.")] = 256,
    thickness: Annotated[Optional[float], typer.Option(help="Fix the slice thickness (mm); default: drawn per seed from 1/1.25/2.5/5.")] = None,
    kernel: Annotated[Optional[str], typer.Option(help="Fix the kernel (soft | standard | sharp); default: drawn per seed.")] = None,
    lesions: Annotated[str, typer.Option(help='Phantom lesions: "random" or e.g. "solid:12,mass:35".')] = "random",
    slices: Annotated[Optional[int], typer.Option(help="Phantom slices (default: the whole chest).")] = None,
    cases: Annotated[Optional[Path], typer.Option("--cases", help="Folder of cases: each a DICOM series with ground_truth.json.")] = None,
    robustness: Annotated[bool, typer.Option(help="Also run the kernel / thickness / dose grid on the first seeds.")] = False,
    robustness_phantoms: Annotated[int, typer.Option("--robustness-phantoms", help="Seeds in the robustness grid (7 scans each).")] = 6,
    threshold: Annotated[float, typer.Option(help="Operating confidence for precision / recall / F1.")] = 0.5,
    min_diameter: Annotated[float, typer.Option("--min-diameter", help="Count truth lesions at least this large (mm).")] = 5.0,
    bootstrap: Annotated[int, typer.Option(help="Bootstrap resamples over scans for 95 % intervals (0: none).")] = 1000,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda")] = "cpu",
    jobs: Annotated[int, typer.Option(help="Cases analysed in parallel processes (CPU cores to use).")] = 1,
) -> None:
    """Measure lesion detection (FROC, CPM), typing, volumes and opacity against ground truth."""
    from sensecare.analysis.device import resolve_device
    from sensecare.evaluation.report import write_outputs
    from sensecare.evaluation.run import EvaluationConfig, PhantomRecipe, plan_cases
    from sensecare.evaluation.run import evaluate as run_evaluation

    resolve_device(device)
    recipe = PhantomRecipe(matrix=matrix, lesions=lesions, n_slices=slices,
                           **({"thicknesses": (thickness,)} if thickness is not None else {}),
                           **({"kernels": (kernel,)} if kernel is not None else {}))
    config = EvaluationConfig(
        out=out, phantoms=(0 if cases is not None else 50) if phantoms is None else phantoms, seed_start=seed_start,
        recipe=recipe, cases_dir=cases, robustness=robustness, robustness_phantoms=robustness_phantoms,
        threshold=threshold, min_diameter_mm=min_diameter, bootstrap=bootstrap, device=device, jobs=jobs,
    )
    planned = len(plan_cases(config))  # fails here, in one line, on a bad option
    with Progress(
        TextColumn("[bold]evaluating[/bold] {task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeRemainingColumn(), console=console,
    ) as bar:
        task = bar.add_task("", total=planned)
        evaluation = run_evaluation(config, progress=lambda case, done, total: bar.update(task, completed=done, description=case))
    paths = write_outputs(evaluation, out)
    s = evaluation.summary
    if s is not None:
        f = s.froc
        console.print(
            f"{s.n_scans} scans, {f.n_lesions} lesions >= {min_diameter:g} mm: CPM {_num(f.cpm)}, sensitivity at 1 FP/scan "
            f"{_num(f.sensitivity_at(1.0))}, F1 {_num(s.detection.f1)} at {threshold:g}, median |volume error| "
            f"{_num(None if s.volume_error.median_abs is None else 100 * s.volume_error.median_abs, 1)} %, mean |PO error| "
            f"{_num(s.opacity.po_mean_abs, 2)} pp; {sum(1 for c in evaluation.main_cases if c.error)} failed",
            highlight=False, soft_wrap=True,
        )
    console.print(f"wrote {paths['markdown']}, {paths['json'].name}, {paths['froc'].name}, {paths['volume_error'].name} "
                  f"in {evaluation.duration_s:.0f} s", highlight=False, soft_wrap=True)


def _num(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


@app.command()
def version() -> None:
    """Print the version."""
    typer.echo(__version__)


def _configure_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)


def main() -> None:
    """Entry point: domain errors become one line on stderr and exit status 2."""
    try:
        app(standalone_mode=False)
    except SenseCareError as exc:
        console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except (typer.Exit, SystemExit) as exc:
        code = getattr(exc, "exit_code", getattr(exc, "code", 0))
        sys.exit(code)
    except typer.Abort:
        console.print("aborted")
        sys.exit(130)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:  # click usage errors and the unforeseen: one line, no traceback
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        console.print(f"[red]error:[/red] {type(exc).__name__}: {exc}", highlight=False, soft_wrap=True)
        logging.getLogger(__name__).debug("unexpected error", exc_info=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
