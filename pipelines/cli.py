"""The ``vhp`` command line: one subcommand a pipeline stage.

``dvc.yaml`` calls these with the paths it lists in ``deps``/``outs``; every
tuning knob comes from ``params.yaml`` (``--params``). Errors that come from the
user's input (a bad params key, a malformed AMC file, a tampered checkpoint)
end with one clear line on stderr and exit status 2; nothing half-written is
left behind because every stage writes to a temporary path and renames.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable

EXIT_USER_ERROR = 2

PREPARE_SECTIONS = {
    "mocap": ("prepare_mocap", "preprocessing.mocap", "MocapParams"),
    "faces": ("prepare_faces", "preprocessing.faces", "FacesParams"),
    "fashion_mnist": ("prepare_fashion_mnist", "preprocessing.fashion_mnist", "FashionMnistParams"),
}


# --------------------------------------------------------------------------- commands

def cmd_prepare(args: argparse.Namespace) -> int:
    import dataclasses
    import importlib

    from pipelines.params_file import read_yaml, section

    section_name, module_name, class_name = PREPARE_SECTIONS[args.dataset]
    module = importlib.import_module(module_name)
    params_cls = getattr(module, class_name)
    raw = read_yaml(args.params)
    data = dict(raw.get(section_name) or {})
    data.pop("enabled", None)  # a pipeline switch, not a preprocessing knob
    if args.source is not None:  # before the record is built, so that its checks see the real source
        data.update(source_override(args.dataset, args.source))
    params = section(params_cls, {section_name: data}, section_name, args.params)
    module.prepare(params, Path(args.out), progress=not args.no_progress)
    print(f"wrote {args.out}")
    return 0


def source_override(dataset: str, source: str) -> dict[str, str]:
    """The params keys that ``prepare <dataset> --source <source>`` replaces.

    faces: 'procedural', 'sfm' or 'meshes' name the source kind; a Surrey Face Model
    file (.bin), or a folder holding sfm_shape_3448.bin, selects the SFM (with the
    expression blendshapes beside it when present); any other folder is a folder of
    OBJ/PLY meshes. Other data sets: the folder itself.
    """
    if dataset != "faces" or source in ("procedural", "sfm", "meshes"):
        return {"source": source}
    path = Path(source)
    model = path if path.is_file() else path / "sfm_shape_3448.bin"
    if model.suffix == ".bin" and model.is_file():
        shapes = model.parent / "expression_blendshapes_3448.bin"
        return {"source": "sfm", "model_path": str(model),
                "blendshapes_path": str(shapes) if shapes.is_file() else ""}
    if path.is_dir():
        return {"source": "meshes", "mesh_folder": str(path)}
    raise FileNotFoundError(f"{source}: --source for faces must be procedural, sfm, meshes, a Surrey Face "
                            "Model .bin file or a folder (of the SFM or of OBJ/PLY meshes); not found")


def _load_stage_params(path: str) -> dict[str, Any]:
    from pipelines.params_file import read_yaml

    return read_yaml(path)


def cmd_train(args: argparse.Namespace) -> int:
    from pipelines.params import BaseParams, TrainParams, section
    from pipelines.train.flow import run_training

    raw = _load_stage_params(args.params)
    base = section(BaseParams, raw, "base", args.params)
    params = section(TrainParams, raw, "train", args.params)
    if args.epochs is not None:
        import dataclasses

        params = dataclasses.replace(params, epochs=args.epochs)
    checkpoints = Path(args.checkpoints) if args.checkpoints else Path("checkpoints") / args.dataset / args.model
    metrics = run_training(args.dataset, args.model, Path(args.data), Path(args.out), checkpoints,
                           params, base, progress=not args.no_progress)
    print(json.dumps({k: v for k, v in metrics.items() if not isinstance(v, dict)}, indent=1))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from pipelines.evaluate.stage import evaluate_model
    from pipelines.params import BaseParams, EvaluateParams, section
    from pipelines.runtime import set_threads

    raw = _load_stage_params(args.params)
    base = section(BaseParams, raw, "base", args.params)
    params = section(EvaluateParams, raw, "evaluate", args.params)
    set_threads(base.threads)
    metrics = evaluate_model(Path(args.model_dir), Path(args.data), Path(args.out), params,
                             progress=not args.no_progress)
    print(json.dumps({k: v for k, v in metrics.items() if not isinstance(v, (dict, list))}, indent=1))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from pipelines.params_file import section
    from pipelines.report.build import build_report
    from pipelines.report.params import ReportParams

    raw = _load_stage_params(args.params)
    params = section(ReportParams, raw, "report", args.params)
    index = build_report(Path(args.eval), Path(args.models), Path(args.out), params)
    print(f"report written: {index}")
    return 0


def cmd_retrain_run(args: argparse.Namespace) -> int:
    from pipelines.retrain.flow import run_retrain_once

    decision = run_retrain_once(Path(args.project), force=args.force)
    print(json.dumps(decision, indent=1, default=str))
    return 0


def cmd_retrain_serve(args: argparse.Namespace) -> int:
    from pipelines.retrain.flow import serve

    serve(Path(args.project), cron=args.cron, interval=args.interval, name=args.name)
    return 0


def cmd_retrain_status(args: argparse.Namespace) -> int:
    from pipelines.retrain.flow import read_registry

    registry = read_registry(Path(args.project))
    print(json.dumps(registry, indent=1, default=str))
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from pipelines.sweep.run import run_sweep_cli

    return run_sweep_cli(args)


# --------------------------------------------------------------------------- parser

def _params_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--params", default="params.yaml",
                   help="params file with the stage's section (default: %(default)s)")


def _progress_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _stage_parser(sub: Any, name: str, help_: str, description: str, func: Callable[[argparse.Namespace], int],
                  paths: dict[str, str]) -> argparse.ArgumentParser:
    """A pipeline stage's command: its required paths (as dvc.yaml passes them), --params, --no-progress."""
    p = sub.add_parser(name, help=help_, description=description)
    p.set_defaults(func=func)
    for flag, text in paths.items():
        p.add_argument(flag, required=True, help=text)
    _params_arg(p)
    _progress_arg(p)
    return p


def add_prepare(sub: Any, help_: str) -> None:
    p = _stage_parser(sub, "prepare", help_,
                      "Parse, validate and convert one data set into data/processed/<name>.zarr. Knobs come "
                      "from the params section prepare_<name>; --source overrides its `source` key.",
                      cmd_prepare, {"--out": "zarr group to write (written atomically)"})
    p.add_argument("dataset", choices=sorted(PREPARE_SECTIONS), help="which data set")
    p.add_argument("--source", default=None,
                   help="raw data folder or model file (mocap: a folder of ASF/AMC, BVH or AMASS .npz files; "
                        "faces: a Surrey Face Model folder, a folder of meshes, or 'procedural'; "
                        "fashion_mnist: the folder of idx .gz files)")


def add_train(sub: Any, help_: str) -> None:
    from vhp_core.config import MODEL_NAMES

    p = _stage_parser(sub, "train", help_,
                      "Run the Prefect `train` flow: open the zarr group, build the model, train it with REWO "
                      "(vhp), GECO (vhp-geco) or the plain bound (vae, iwae, vamp), checkpoint every "
                      "train.checkpoint_every steps, and write model.pt, metrics.json, curves.tsv and "
                      "curves.png. An interrupted run resumes from its last checkpoint.",
                      cmd_train, {"--dataset": "data set name (a key of train.kappa)",
                                  "--data": "zarr group from `vhp prepare`",
                                  "--out": "model folder to write (models/<dataset>/<model>)"})
    p.add_argument("--model", required=True, choices=MODEL_NAMES,
                   help="vhp (hierarchical prior, REWO), vhp-iw (hierarchical prior under an importance-"
                        "weighted bound, REWO), vhp-geco (GECO), iwae, vae, vamp")
    p.add_argument("--checkpoints", default=None,
                   help="resumption checkpoints (default: checkpoints/<dataset>/<model>)")
    p.add_argument("--epochs", type=int, default=None, help="override train.epochs (quick checks)")


def add_evaluate(sub: Any, help_: str) -> None:
    _stage_parser(sub, "evaluate", help_,
                  "Test log-likelihood by importance sampling, ELBO, active units, latent map over the "
                  "magnification factor, graph-based interpolation and the paper's claims as numbers; writes "
                  "eval/<dataset>/<model>/metrics.json and PNG figures.",
                  cmd_evaluate, {"--model-dir": "models/<dataset>/<model>",
                                 "--data": "the zarr group the model was trained on",
                                 "--out": "eval/<dataset>/<model>"})


def add_report(sub: Any, help_: str) -> None:
    p = sub.add_parser("report", help=help_,
                       description="Gather every eval/<dataset>/<model> into report/index.html (opens offline).")
    p.set_defaults(func=cmd_report)
    p.add_argument("--eval", default="eval", help="evaluation root (default: %(default)s)")
    p.add_argument("--models", default="models", help="models root (default: %(default)s)")
    p.add_argument("--out", default="report", help="report folder (default: %(default)s)")
    _params_arg(p)


def add_retrain(sub: Any, help_: str) -> None:
    p = sub.add_parser("retrain", help=help_,
                       description="The Prefect `retrain` flow: ask DVC what changed (`dvc status`), "
                                   "rerun the pipeline (`dvc repro`) when something did, compare the "
                                   "challenger with the production model on retrain.metric and promote "
                                   "it only if better by retrain.min_improvement. Every decision is "
                                   "recorded in registry/registry.json.")
    rsub = p.add_subparsers(dest="retrain_command", metavar="action", required=True)
    r = rsub.add_parser("run", help="run the retrain flow once now",
                        description="Run the retrain flow once (ephemeral Prefect API unless "
                                    "PREFECT_API_URL points at a server).")
    r.add_argument("--project", default=".", help="project folder with params.yaml and dvc.yaml")
    r.add_argument("--force", action="store_true", help="rerun even if DVC reports nothing changed")
    r.set_defaults(func=cmd_retrain_run)
    r = rsub.add_parser("serve", help="serve the retrain flow on a schedule",
                        description="Serve the retrain flow with flow.serve on a cron or interval "
                                    "schedule. Scheduled runs need a Prefect server: start one with "
                                    "`prefect server start --host 127.0.0.1` and set "
                                    "PREFECT_API_URL=http://127.0.0.1:4200/api.")
    r.add_argument("--project", default=".", help="project folder with params.yaml and dvc.yaml")
    group = r.add_mutually_exclusive_group()
    group.add_argument("--cron", default=None, help='cron schedule, e.g. "0 3 * * *"')
    group.add_argument("--interval", type=float, default=None, help="interval in seconds")
    r.add_argument("--name", default="vhp-retrain", help="deployment name (default: %(default)s)")
    r.set_defaults(func=cmd_retrain_serve)
    r = rsub.add_parser("status", help="print the registry: champion and every decision")
    r.add_argument("--project", default=".", help="project folder")
    r.set_defaults(func=cmd_retrain_status)


def add_fetch(sub: Any, help_: str) -> None:
    from pipelines.prepare.fetch import add_fetch_parser

    add_fetch_parser(sub, help_)


def add_sweep(sub: Any, help_: str) -> None:
    from pipelines.sweep.run import add_sweep_parser

    add_sweep_parser(sub, cmd_sweep, help_)


# name -> (the line `vhp --help` shows, what adds the command's own arguments). A command's
# arguments, and whatever they import, are built only when that command runs (or for `vhp
# --help`'s list, not at all): `vhp prepare --help` imports neither torch nor Prefect.
COMMANDS: dict[str, tuple[str, Callable[[Any, str], None]]] = {
    "fetch": ("download raw data: embedded | cmu | sfm", add_fetch),
    "prepare": ("raw data -> a validated zarr group", add_prepare),
    "train": ("train one model on one data set (a Prefect flow)", add_train),
    "evaluate": ("evaluate one trained model", add_evaluate),
    "report": ("one HTML page for all models", add_report),
    "retrain": ("retrain when data, code or params change; promote only a better model", add_retrain),
    "sweep": ("train and evaluate a grid of data sets x models x kappa x seeds", add_sweep),
}


def command_of(argv: list[str]) -> str | None:
    """The subcommand that ``argv`` runs, if it names one."""
    word = next((a for a in argv if not a.startswith("-")), None)
    return word if word in COMMANDS else None


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The ``vhp`` parser; with ``command``, only that command gets its arguments (and imports)."""
    parser = argparse.ArgumentParser(
        prog="vhp",
        description=(
            "VAEs with learned hierarchical priors (VHP-VAE) trained with REWO. "
            "Each subcommand is one stage of the pipeline raw data -> data/processed/*.zarr -> "
            "models/ -> eval/ -> report/; `dvc repro` runs them all in order."
        ),
        epilog="Run `vhp <command> --help` for the options of one stage.",
    )
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="command", metavar="command", required=True)
    for name, (help_, add) in COMMANDS.items():
        if command is None or command == name:
            add(sub, help_)
        else:
            sub.add_parser(name, help=help_)
    return parser


def main(argv: list[str] | None = None) -> int:
    from pipelines import quiet_expected_errors

    argv = sys.argv[1:] if argv is None else argv
    quiet_expected_errors(enabled="--debug" not in argv)  # before Prefect sets up its logging
    args = build_parser(command_of(argv) or "").parse_args(argv)  # "": no command named, none built
    from pipelines.errors import say_error, user_errors

    errors = user_errors()
    try:
        return int(args.func(args) or 0)
    except errors as err:
        if args.debug:
            raise
        message = (str(err).splitlines() or [type(err).__name__])[0]
        say_error(f"vhp {args.command}: error: {message}")
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(f"vhp {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
