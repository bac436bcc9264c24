"""`kiln export hf CKPT OUT` and `kiln import hf HF_DIR OUT`."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    export = subparsers.add_parser("export", help="write a kiln checkpoint in another format")
    export_formats = export.add_subparsers(dest="format", metavar="FORMAT", required=True)
    hf = export_formats.add_parser("hf", help="as a Hugging Face Olmo2 directory (AutoModelForCausalLM loads it)")
    hf.add_argument("checkpoint", help="kiln model directory, or a run folder (its highest step<N> is used)")
    hf.add_argument("out", help="directory to write config.json, kiln_config.json, weights and tokenizer into")
    hf.set_defaults(func=run_export_hf)

    import_ = subparsers.add_parser("import", help="make a kiln checkpoint from another format")
    import_formats = import_.add_subparsers(dest="format", metavar="FORMAT", required=True)
    hf = import_formats.add_parser("hf", help="from a Hugging Face Olmo2 directory")
    hf.add_argument("hf_dir", help="directory with config.json (model_type olmo2) and safetensors weights")
    hf.add_argument("out", help="kiln model directory to write")
    hf.set_defaults(func=run_import_hf)


def run_export_hf(args: argparse.Namespace) -> int:
    from kiln.hf.convert import export_hf

    out = export_hf(args.checkpoint, args.out)
    print(f"wrote Hugging Face Olmo2 model to {out}")
    return 0


def run_import_hf(args: argparse.Namespace) -> int:
    from kiln.hf.convert import import_hf

    out = import_hf(args.hf_dir, args.out)
    print(f"wrote kiln model directory {out}")
    return 0
