"""export and verify-fmadapter: the .fmadapter package (and the MLX export, `--format mlx`)."""

from __future__ import annotations

from fmlab.export.mlx import export_mlx
from fmlab.export.mlx_format import DTYPES as MLX_DTYPES
from fmlab.export.package import export_fmadapter, package_sizes
from fmlab.export.verify import verify_fmadapter

# --- export (.fmadapter package and its verification) -----------------------------------------------


def add_export(sub):
    p = sub.add_parser("export", help="write an .fmadapter package (Apple's export_fmadapter flags)")
    p.add_argument("-o", "--output-dir", required=True, help="directory for <name>.fmadapter")
    p.add_argument("-n", "--adapter-name", required=True, help="package name: ASCII letters, digits and _ only")
    p.add_argument(
        "-c",
        "--checkpoint",
        required=True,
        help="adapter checkpoint (Apple .pt or fmlab .safetensors), or a training run directory (its best)",
    )
    p.add_argument(
        "-d",
        "--draft-checkpoint",
        help="draft checkpoint (Apple draft layout .pt), or a draft run directory (its best)",
    )
    p.add_argument("--author", default="3P developer", help='metadata author (default: "3P developer")')
    p.add_argument("--description", default="", help="metadata description")
    p.add_argument("--license", default="", help="metadata license")
    p.add_argument("--assets", help="assets directory of the base (default: $FMLAB_ASSETS or the embedded fmlab-tiny)")
    p.add_argument(
        "--base-signature",
        help="base model signature (default: Apple's for afm-3b, else the sha1 of the assets' base-model.pt)",
    )
    p.add_argument(
        "--num-draft-tokens", type=int, default=5, help="metadata speculativeDecodingDraftTokenCount (default: 5)"
    )
    p.add_argument("--no-coreml", action="store_true", help="do not write draft.mlpackage (Core ML draft)")
    p.add_argument(
        "--extras-in-package",
        action="store_true",
        help="put fmlab-manifest.json and draft.mlpackage inside the .fmadapter (default: beside it in "
        "<name>.fmlab/, so the package holds exactly the toolkit's files)",
    )
    p.add_argument(
        "--format",
        choices=("fmadapter", "mlx", "both"),
        default="fmadapter",
        help="fmadapter (default): Apple's package; mlx: <name>_mlx/ (and <name>_mlx_draft/) for mlx-lm; both",
    )
    p.add_argument(
        "--mlx-dtype", choices=tuple(MLX_DTYPES), default="float32", help="MLX weights dtype (default: float32)"
    )
    p.add_argument(
        "--mlx-unfused",
        action="store_true",
        help="MLX: the base alone in model.safetensors and the LoRA in adapters/ (mlx-lm's adapter files)",
    )
    p.add_argument("--no-mlx-verify", action="store_true", help="MLX: skip the check with mlx-lm after writing")
    p.add_argument("-v", "--verbose", action="count", default=0, help="accepted for Apple compatibility")
    p.add_argument("-q", "--quiet", action="count", default=0, help="print only the package path")
    p.set_defaults(func=cmd_export)


def cmd_export(args):
    log = (lambda *_: None) if args.quiet else print
    if args.format in ("mlx", "both"):
        paths = export_mlx(
            args.output_dir,
            args.adapter_name,
            args.checkpoint,
            args.draft_checkpoint,
            assets=args.assets,
            dtype=args.mlx_dtype,
            unfused=args.mlx_unfused,
            verify=not args.no_mlx_verify,
            log=log,
        )
        if args.quiet:
            print("\n".join(str(p) for p in paths.values()))
        if args.format == "mlx":
            return 0
    path = export_fmadapter(
        args.output_dir,
        args.adapter_name,
        args.checkpoint,
        args.draft_checkpoint,
        author=args.author,
        description=args.description,
        license=args.license,
        assets=args.assets,
        base_signature=args.base_signature,
        num_draft_tokens=args.num_draft_tokens,
        coreml=not args.no_coreml,
        extras_in_package=args.extras_in_package,
        log=log,
    )
    if args.quiet:
        print(path)
        return 0
    for name, size in package_sizes(path).items():
        print(f"  {name:<24} {size:>14,} bytes")
    return 0


def add_verify_fmadapter(sub):
    p = sub.add_parser("verify-fmadapter", help="read an .fmadapter package back and check it numerically")
    p.add_argument("path", help="the <name>.fmadapter directory")
    p.add_argument("-c", "--checkpoint", help="source adapter checkpoint (default: the one the manifest records)")
    p.add_argument("-d", "--draft-checkpoint", help="source draft checkpoint (default: from the manifest)")
    p.add_argument("--assets", help="assets directory of the base (default: the one the manifest records)")
    p.add_argument("--prompts", type=int, default=4, help="prompts for the draft acceptance check (default: 4)")
    p.add_argument("-m", "--max-new-tokens", type=int, default=48, help="tokens per prompt (default: 48)")
    p.add_argument("--json", action="store_true", help="print the measured numbers as JSON after the report")
    p.set_defaults(func=cmd_verify_fmadapter)


def cmd_verify_fmadapter(args):
    import json

    report = verify_fmadapter(
        args.path,
        args.checkpoint,
        args.draft_checkpoint,
        args.assets,
        num_prompts=args.prompts,
        max_new_tokens=args.max_new_tokens,
    )
    print(report.text())
    if args.json:
        print(json.dumps(report.numbers, indent=2, default=str))
    return 0 if report.ok else 1
