"""``kdistill export``: one task's student as a plain dense MLP, for the numpy runtime (safetensors + JSON) or as ONNX."""

from __future__ import annotations

import click

from kdistill.cli.options import console, data_dir_option, json_option, print_json, progress_lines, task_option, tasks_dir_option


@click.command("export")
@click.argument("domain_name", metavar="DOMAIN")
@click.option("--student", "student_path", required=True, type=click.Path(),
              help="Student run folder (its newest checkpoint) or checkpoint folder from `kdistill distill`.")
@task_option("The task whose MLP to export.", required=True)
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False),
              help="Output stem: writes STEM.safetensors and STEM.json, or STEM.onnx with --format onnx "
                   "(a .json/.safetensors/.onnx suffix is dropped).")
@click.option("--format", "fmt", type=click.Choice(["safetensors", "onnx", "c"]), default="safetensors",
              show_default=True,
              help="safetensors: dense layers + JSON for kdistill.deploy.runtime (numpy only); onnx: one ONNX model "
                   "(input 'obs' (N, T*S), output 'mu' (N, T*A)), checked with onnxruntime; c: STEM.c + STEM.h, "
                   "dependency-free C99 with policy_act(obs, action) (policy_act_extero(obs, extero, action) for a "
                   "student that reads exteroception), checked with the system compiler.")
@click.option("--check-samples", type=click.IntRange(0), default=256, show_default=True,
              help="Random observations on which the export is compared with the student (0 = skip).")
@json_option
@data_dir_option
@tasks_dir_option
def export_cmd(domain_name: str, student_path: str, task: str, out: str, fmt: str, check_samples: int, as_json: bool,
               data_dir: str | None, tasks_dir: str | None) -> None:
    """Fold the student's generated MLP for one task of DOMAIN into a dense MLP on the flat student observation.

    The result needs neither the context nor the hypernetwork (nor torch): load it with
    `kdistill.deploy.runtime.load(path)` and call `.act(flat_obs)` or `.act_obs(env_obs)`. With --format onnx it
    is one ONNX model for any ONNX runtime, compared with the student through onnxruntime before it is
    written (largest difference at most 1e-5). A student of a task kind with exteroception (e.g. unimal:vt) exports
    its encoder too and takes a second input: `.act(flat_obs, extero)`, ONNX input `extero`, and with --format c the
    function `policy_act_extero(obs, extero, action)`.

    \b
    Examples:
      kdistill export unimal --student runs/hnmlp --task floor-1409-11-11-01-08-26-42 --out exports/floor
      kdistill export unimal --student runs/hnmlp --task my-task --tasks-dir my-tasks --format onnx --out exports/my
      kdistill export unimal:vt --student runs/hnmlp-vt --task floor-1409-11-11-01-08-26-42 --out exports/floor-vt
    """
    from kdistill.deploy import runtime
    from kdistill.deploy.export import (
        check_export_target,
        check_onnx_target,
        export_c,
        export_onnx,
        export_parity,
        export_policy,
        load_student_run,
        random_student_observations,
    )
    from kdistill.plugins import get_domain
    from kdistill.tasks import select_tasks

    if fmt == "onnx":
        check_onnx_target(out)
    else:
        check_export_target(out)
    domain = get_domain(domain_name, data_dir=data_dir)
    task = select_tasks(domain, tasks=task, tasks_dir=tasks_dir, progress=progress_lines())[0]
    policy = load_student_run(student_path, domain)
    context = domain.context(task)
    if fmt == "onnx":
        check = random_student_observations(policy, check_samples) if check_samples > 0 else None
        info = export_onnx(policy, task, context, out, source=str(student_path), domain=domain, check_obs=check)
        if as_json:
            print_json(info)
            return
        shapes = " -> ".join([str(info["layers"][0]["in"])] + [str(layer["out"]) for layer in info["layers"]])
        console.print(f"exported {info['student']} student for {task} as ONNX (opset {info['opset']}): dense MLP "
                      f"{shapes}, {info['num_params']:,} parameters")
        if "check" in info:
            console.print(f"onnxruntime matches the student within {info['check']['max_abs_diff']:.2e} on "
                          f"{check_samples} random observations")
        console.print("file: " + info["files"][0])
        return
    if fmt == "c":
        info = export_c(policy, task, context, out, check_samples)
        if as_json:
            print_json(info)
            return
        ext = f", extero[{info['extero_size']}]" if "extero_size" in info else ""
        console.print(f"exported the {task} policy as C: {info['header']} and {info['source']}, function "
                      f"{info['function']}(obs[{info['obs_size']}]{ext}, action[{info['action_size']}])", markup=False)
        if info.get("check") is not None:
            console.print(f"compiled and run: matches the student within {info['check']:.2e} on {check_samples} "
                          f"random observations", markup=False)
        return
    info = export_policy(policy, task, context, out, source=str(student_path), domain=domain)
    if check_samples > 0:
        info["check"] = {"samples": check_samples,
                         "max_abs_diff": export_parity(policy, task, context, runtime.load(out), check_samples)}
    if as_json:
        print_json(info)
        return
    shapes = " -> ".join([str(info["layers"][0]["in"])] + [str(layer["out"]) for layer in info["layers"]])
    console.print(f"exported {info['student']} student for {task}: dense MLP {shapes}, "
                  f"{info['num_params']:,} parameters, {info['flops']:,} FLOPs per step")
    if "check" in info:
        console.print(f"matches the student within {info['check']['max_abs_diff']:.2e} on {check_samples} random observations")
    console.print("files: " + ", ".join(info["files"]))
