"""``kdistill export``: one task's student as a plain dense MLP for the numpy runtime."""

from __future__ import annotations

import click

from kdistill.cli import console, data_dir_option, json_option, print_json


@click.command("export")
@click.argument("domain_name", metavar="DOMAIN")
@click.option("--student", "student_path", required=True, type=click.Path(),
              help="Student run folder (its newest checkpoint) or checkpoint folder from `kdistill distill`.")
@click.option("--robot", "--task", "task", required=True, help="The task (robot) whose MLP to export.")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False),
              help="Output stem: writes STEM.safetensors and STEM.json (a .json/.safetensors suffix is dropped).")
@click.option("--check-samples", type=click.IntRange(0), default=256, show_default=True,
              help="Random observations on which the export is compared with the student (0 = skip).")
@json_option
@data_dir_option
def export_cmd(domain_name: str, student_path: str, task: str, out: str, check_samples: int, as_json: bool,
               data_dir: str | None) -> None:
    """Fold the student's generated MLP for one task of DOMAIN into a dense MLP on the flat student observation.

    The result needs neither the context nor the hypernetwork (nor torch): load it with
    `kdistill.runtime.load(path)` and call `.act(flat_obs)` or `.act_obs(env_obs)`.

    \b
    Example:
      kdistill export unimal --student runs/hnmlp --robot floor-1409-11-11-01-08-26-42 --out exports/floor
    """
    import numpy as np

    from kdistill import runtime
    from kdistill.export import check_export_target, export_policy, load_student_run
    from kdistill.plugins import get_domain

    check_export_target(out)
    domain = get_domain(domain_name, data_dir=data_dir)
    task = domain.tasks(names=[task])[0]
    policy = load_student_run(student_path, domain.name)
    context = domain.context(task)
    info = export_policy(policy, task, context, out, source=str(student_path), domain=domain.name)
    if check_samples > 0:
        exported = runtime.load(out)
        layout = policy.layout
        rng = np.random.default_rng(0)
        std = np.sqrt(np.asarray(policy.normalizer.rms.var) + policy.normalizer.epsilon)
        raw = np.zeros((check_samples, layout.max_tokens, layout.obs_features), np.float32)
        raw[..., list(layout.student_features)] = (np.asarray(policy.normalizer.rms.mean)
                                                    + std * rng.standard_normal((check_samples, *std.shape)))
        obs = {"obs": raw, "obs_mask": np.broadcast_to(context.mask, (check_samples, layout.max_tokens))}
        policy.prepare(task, context)
        info["check"] = {"samples": check_samples,
                         "max_abs_diff": float(np.max(np.abs(policy.act(obs) - exported.act_obs(obs))))}
    if as_json:
        print_json(info)
        return
    shapes = " -> ".join([str(info["layers"][0]["in"])] + [str(layer["out"]) for layer in info["layers"]])
    console.print(f"exported {info['student']} student for {task}: dense MLP {shapes}, "
                  f"{info['num_params']:,} parameters, {info['flops']:,} FLOPs per step")
    if "check" in info:
        console.print(f"matches the student within {info['check']['max_abs_diff']:.2e} on {check_samples} random observations")
    console.print("files: " + ", ".join(info["files"]))
