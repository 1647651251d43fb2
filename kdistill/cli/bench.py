"""``kdistill bench``: the teacher against its generated students, in parameters, FLOPs and latency."""

from __future__ import annotations

from pathlib import Path

import click

from kdistill.cli.options import console, data_dir_option, err_console, json_option, print_json, progress_lines, task_option


def parse_batches(spec: str) -> tuple[int, ...]:
    """``"1,32,1024"`` -> ``(1, 32, 1024)``; one clear error for anything else."""
    from kdistill.errors import KdistillError

    parts = [p.strip() for p in spec.split(",") if p.strip()]
    try:
        batches = tuple(int(p) for p in parts)
    except ValueError:
        batches = ()
    if not batches or any(b <= 0 for b in batches):
        raise KdistillError(f"--batches takes positive batch sizes separated by commas (e.g. 1,32,1024); got {spec!r}.")
    return tuple(dict.fromkeys(batches))


def _si(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{unit}"
    return f"{n:.3g}"


def _ms(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    ms = seconds * 1e3
    return f"{ms:.4f}" if ms < 0.1 else f"{ms:.3f}" if ms < 10 else f"{ms:.1f}" if ms < 1000 else f"{ms:.0f}"


def _ratio(r: float | None) -> str:
    return "-" if r is None else f"{r:.1f}x" if r < 1000 else f"{r:.0f}x"


@click.command("bench")
@click.argument("domain_name", metavar="DOMAIN")
@click.option("--teacher", "teacher_run", default=None, type=click.Path(),
              help="Teacher run folder (or checkpoint folder) from `kdistill teacher train`. "
                   "Default: a freshly built teacher at --teacher-preset.")
@click.option("--student", "student_run", default=None, type=click.Path(),
              help="Student run folder (or checkpoint folder) from `kdistill distill`. "
                   "Default: a freshly built student at --student-preset.")
@task_option("Task whose generated MLP is timed (default: first training task).", default=None)
@click.option("--batches", "batches_spec", default=None,
              help="Comma-separated batch sizes to time (default: the preset's, 1,32,1024).")
@click.option("--teacher-arch", default=None, help="Teacher architecture for a fresh teacher (default: the domain's).")
@click.option("--teacher-preset", default="paper", show_default=True,
              help="Preset of a fresh teacher ('paper' falls back to 'default' where a teacher has no 'paper').")
@click.option("--student-arch", default="hnmlp", show_default=True, help="Student architecture for a fresh student.")
@click.option("--student-preset", default="paper", show_default=True, help="Preset of a fresh student.")
@click.option("--preset", "bench_preset", default="default", show_default=True,
              type=click.Choice(["default", "quick", "thorough"]),
              help="Timing effort: quick (seconds, batches 1,8), default, thorough (steadier on a busy machine).")
@click.option("--threads", type=click.IntRange(1), default=None, help="Threads for torch and BLAS (default 1: the single-thread comparison).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for fresh models and random inputs.")
@click.option("--out", "out_dir", default=None, type=click.Path(file_okay=False),
              help="Folder for bench.json and bench.png (default: bench-DOMAIN).")
@json_option
@data_dir_option
def bench_cmd(domain_name: str, teacher_run: str | None, student_run: str | None, task: str | None,
              batches_spec: str | None, teacher_arch: str | None, teacher_preset: str, student_arch: str,
              student_preset: str, bench_preset: str, threads: int | None, seed: int, out_dir: str | None,
              as_json: bool, data_dir: str | None) -> None:
    """Compare the teacher of DOMAIN with its generated student: parameters, FLOPs and latency.

    FLOPs (2 x multiply-adds, per sample) and parameters are counted two ways: measured (torch
    FlopCounterMode, MHA fast path off) and analytic (the reference's convention: Linear = 2*in*out FLOPs,
    (in+1)*out parameters; only the generated MLP counts for the student). Latency is timed single-thread
    for the teacher (torch inference mode, fused fast path on) and the ways of running the student:
    per-token einsum as in the reference, kdistill's batched path, the folded MLP in torch, the numpy
    runtime, its compiled batch-1 kernel (through the runtime's extension module, and through ctypes) and
    onnxruntime. Ratios are teacher / fastest student, measured in the same run.

    \b
    Examples:
      kdistill bench unimal                                   # fresh paper-preset models
      kdistill bench unimal:vt --json                         # variable terrain (unimal:obstacle: obstacles)
      kdistill bench unimal --teacher runs/t --student runs/h --task floor-1409-11-11-01-08-26-42
      kdistill bench DOMAIN --batches 1,256 --json   # any registered domain
    """
    import attrs
    from rich import box
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table
    from rich.text import Text

    from kdistill.bench.bench import STUDENT_ROWS, TEACHER, BenchConfig, build_subjects, plot_latency, run_bench
    from kdistill.domain import domain_label
    from kdistill.errors import KdistillError
    from kdistill.io import atomic_write_json, claim_results_folder
    from kdistill.plugins import get_domain

    config = BenchConfig.presets()[bench_preset]
    changes = {}
    if batches_spec is not None:
        changes["batches"] = parse_batches(batches_spec)
    if threads is not None:
        if threads <= 0:
            raise KdistillError(f"--threads must be positive, got {threads}.")
        changes["threads"] = threads
    config = attrs.evolve(config, seed=seed, **changes)
    domain = get_domain(domain_name, data_dir=data_dir)
    from kdistill.tasks import ensure_data

    ensure_data(domain, progress_lines(as_json))
    out = Path(out_dir) if out_dir else Path(f"bench-{domain_label(domain).replace(':', '-')}")

    with err_console.status("loading the teacher and the student", spinner="dots"):  # transient: errors stay one line
        subjects = build_subjects(domain, teacher_run, student_run, task, teacher_arch=teacher_arch,
                                  teacher_preset=teacher_preset, student_arch=student_arch,
                                  student_preset=student_preset, seed=seed)
    claim_results_folder(out, "bench", {"bench.json", "bench.png"})
    with Progress(TextColumn("[bold]bench[/bold]"), BarColumn(), TextColumn("{task.description}", markup=False),
                  TimeElapsedColumn(),
                  console=err_console, disable=as_json) as progress:
        bar = progress.add_task("counting", total=2 + len(config.batches))
        result = run_bench(subjects, config,
                           progress=lambda what, done, total: progress.update(bar, description=what, completed=done))
    atomic_write_json(out / "bench.json", result)
    plot_latency(result, out / "bench.png")
    result["files"] = [str(out / "bench.json"), str(out / "bench.png")]
    if as_json:
        print_json(result)
        return

    costs, ratios, batches = result["costs"], result["ratios"], config.batches
    sub = result["subjects"]
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True,
                  title=f"{sub['domain']} / {sub['task']}: teacher {sub['teacher']['arch']} vs student "
                        f"{sub['student']['arch']}, {result['environment']['torch_threads']} thread(s)")
    table.add_column("model", no_wrap=True)
    for col in ("params", "params*", "FLOPs", "FLOPs*"):
        table.add_column(col, justify="right", no_wrap=True)
    for b in batches:
        table.add_column(f"ms@{b}", justify="right", no_wrap=True)
    lat = result["latency"]
    teacher, mlp = costs["teacher"], costs["generated_mlp"]
    table.add_row(TEACHER, _si(teacher["measured"]["params"]), _si(teacher["analytic"]["params"]),
                  _si(teacher["measured"]["flops"]), _si(teacher["analytic"]["flops"]),
                  *[_ms(lat[TEACHER][str(b)]["min_s"]) for b in batches])
    path_flops = costs["student_paths_measured_flops"]
    for name in STUDENT_ROWS:
        if name not in lat:
            continue
        table.add_row(name, _si(mlp["measured"]["params"]), _si(mlp["analytic"]["params"]),
                      _si(path_flops.get(name, mlp["measured"]["flops"])), _si(mlp["analytic"]["flops"]),
                      *[_ms(lat[name][str(b)]["min_s"]) if str(b) in lat[name] else "-" for b in batches])
    table.add_row(Text("ratio", style="bold"), _ratio(ratios["params"]), _ratio(ratios["params_analytic"]),
                  _ratio(ratios["flops"]), _ratio(ratios["flops_analytic"]),
                  *[_ratio(ratios.get(f"latency_b{b}")) for b in batches])
    console.print(table)
    console.print("FLOPs per sample (2 x multiply-adds), measured by torch FlopCounterMode (MHA fast path off); "
                  "* = analytic, the reference's convention (Linear: 2*in*out FLOPs, (in+1)*out params; the student "
                  "counts its generated MLP only). ms = best time per call. ratio = teacher / fastest student.")
    if "analytic_styles" in ratios:
        styles = ", ".join(f"{style}-style {r['flops']:.1f}x FLOPs / {r['params']:.1f}x params"
                           for style, r in ratios["analytic_styles"].items())
        console.print(f"teacher counted in the reference's styles: {styles}")
    gen = result["generate"]
    console.print(f"fastest student per batch: {', '.join(f'{b}: {n}' for b, n in ratios['fastest_student'].items())}; "
                  f"writing one task's weights (hypernetwork + fold) takes {gen['min_s'] * 1e3:.1f} ms once")
    limits = [f"batch {b}: {ratios[f'vs_limit_b{b}']:.1f}x its FLOP limit" for b in batches if f"vs_limit_b{b}" in ratios]
    if "vs_read_limit_b1" in ratios:
        limits.append(f"batch 1: {ratios['vs_read_limit_b1']:.2f}x its cache-read limit "
                      f"({ratios['student_read_limit_s'] * 1e6:.2f} us)")
    if limits:
        console.print(f"fastest student against its limits: {'; '.join(limits)}")
    console.print(f"BLAS threads: {result['environment']['blas_threads']}; compiled-runtime called through: "
                  f"{result['environment']['compiled_runtime']}; wrote {out / 'bench.json'} and {out / 'bench.png'}")
