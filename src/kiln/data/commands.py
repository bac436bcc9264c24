"""`kiln prepare` (text -> dataset folder) and `kiln tokenizer train|info`."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from kiln.data import shards
from kiln.data.prepare import BUILTIN_CORPUS_PATH, builtin_dataset, prepare_dataset
from kiln.data.sources import UTF8_POLICIES, SkipReport, read_documents, resolve_inputs
from kiln.data.tokenizer import BUILTIN_TOKENIZER, eos_id, load_tokenizer, tokenizer_hash, train_bpe, vocab_size
from kiln.errors import KilnError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "prepare", help="tokenize text files into a dataset folder of token shards",
        description="Tokenize text into a dataset folder for `kiln train --data.paths=[DIR]`. Each .txt or .md file "
        "is one document, however long; each line of a JSONL file is one document (its --text-field). Validation "
        "holds out whole documents, or, for a one-document dataset, the tail of its tokens.")
    p.add_argument("inputs", nargs="*", type=Path,
                   help="files or folders of .txt .md (one document per file) and .jsonl .json.gz .jsonl.gz "
                        ".jsonl.zst (one document per line) (default: the built-in Shakespeare corpus, prepared once "
                        "into the kiln cache)")
    p.add_argument("--out", type=Path, default=None, help="dataset folder to create (default: data/<first input>)")
    p.add_argument("--tokenizer", default=BUILTIN_TOKENIZER, help="'builtin' or a path to a tokenizer.json")
    p.add_argument("--text-field", default="text", help="JSON field holding each document's text")
    p.add_argument("--workers", type=int, default=None,
                   help="tokenizer processes (default: one per 16 MiB of input, at most one a core; 0 = in-process)")
    p.add_argument("--shard-tokens", type=int, default=shards.DEFAULT_SHARD_TOKENS, help="tokens per shard file")
    p.add_argument("--utf8-errors", choices=UTF8_POLICIES, default="replace",
                   help="bytes that are not UTF-8: replace them with U+FFFD, or skip the document (both counted)")
    p.add_argument("--overwrite", action="store_true", help="replace the output folder if it exists")
    p.add_argument("--fast-encode", action="store_true",
                   help="kiln's cached pre-tokenizer: 3-5x faster, same ids on every corpus checked (opt-in)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_prepare)

    tok = subparsers.add_parser("tokenizer", help="train or inspect tokenizers")
    tok_sub = tok.add_subparsers(dest="tokenizer_command", metavar="SUBCOMMAND", required=True)
    t = tok_sub.add_parser("train", help="train a byte-level BPE tokenizer on text files")
    t.add_argument("inputs", nargs="*", type=Path, help="files or folders, as for prepare (default: built-in corpus)")
    t.add_argument("--vocab-size", type=int, required=True, help="vocabulary size, <|endoftext|> (id 0) included")
    t.add_argument("--out", type=Path, required=True, help="tokenizer.json file to write")
    t.add_argument("--text-field", default="text", help="JSON field holding each document's text")
    t.add_argument("--min-frequency", type=int, default=2, help="merges must occur at least this often")
    t.add_argument("--utf8-errors", choices=UTF8_POLICIES, default="replace", help="as for prepare")
    t.set_defaults(func=run_tokenizer_train)
    i = tok_sub.add_parser("info", help="show a tokenizer's vocabulary size, EOS id and hash")
    i.add_argument("tokenizer", nargs="?", default=BUILTIN_TOKENIZER, help="'builtin' or a tokenizer.json path")
    i.set_defaults(func=run_tokenizer_info)


def run_prepare(args: argparse.Namespace) -> int:
    if args.workers is not None and args.workers < 0:
        raise KilnError(f"--workers must be 0 (tokenize in this process) or more, got {args.workers}")
    started, wall_start = time.perf_counter(), time.time()
    progress = not args.no_progress
    if not args.inputs and args.out is None and args.tokenizer == BUILTIN_TOKENIZER:
        out = builtin_dataset(progress=progress)
    else:
        out = args.out or Path("data") / (args.inputs[0].name.split(".")[0] if args.inputs else "builtin")
        out = prepare_dataset(args.inputs, out, args.tokenizer, text_field=args.text_field,
                              utf8_errors=args.utf8_errors, workers=args.workers, shard_tokens=args.shard_tokens,
                              overwrite=args.overwrite, progress=progress, fast_encode=args.fast_encode)
    print_summary(out, time.perf_counter() - started, reused=(out / shards.META_FILE).stat().st_mtime < wall_start)
    return 0


def print_summary(folder: Path, seconds: float, reused: bool = False) -> None:
    meta = json.loads((folder / shards.META_FILE).read_text(encoding="utf-8"))
    megabytes = meta["text_bytes"] / 1e6
    speed = "reused from the cache" if reused else f"{megabytes / seconds:.2f} MB/s over {seconds:.1f}s"
    documents = meta["num_documents"]
    print(f"{documents:,} document{'' if documents == 1 else 's'}, {meta['num_tokens']:,} tokens ({meta['dtype']}, "
          f"{len(meta['shards'])} shard(s)), {megabytes:.2f} MB of text, {speed}")
    print(f"tokenizer {meta['tokenizer']['name']} (vocab {meta['tokenizer']['vocab_size']}, "
          f"hash {meta['tokenizer']['hash'][:12]}), EOS id {meta['eos_id']}")
    for reason, info in meta["skipped"].items():
        more = ", ..." if info["count"] > len(info["first"]) else ""
        print(f"skipped/altered {reason}: {info['count']} ({', '.join(info['first'])}{more})")
    print(f"dataset: {folder}")


def run_tokenizer_train(args: argparse.Namespace) -> int:
    report = SkipReport()
    files = resolve_inputs(args.inputs or [BUILTIN_CORPUS_PATH], report)
    texts = (text for path in files for text in read_documents(path, args.text_field, args.utf8_errors, report))
    tok = train_bpe(texts, args.vocab_size, args.min_frequency)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(args.out))
    for line in report.lines():
        print(f"skipped/altered {line}")
    print(f"trained byte-level BPE: vocab {vocab_size(tok)}, <|endoftext|> = {eos_id(tok)}, "
          f"hash {tokenizer_hash(tok)[:12]} -> {args.out}")
    return 0


def run_tokenizer_info(args: argparse.Namespace) -> int:
    tok = load_tokenizer(args.tokenizer)
    print(json.dumps({"tokenizer": str(args.tokenizer), "vocab_size": vocab_size(tok), "eos_id": eos_id(tok),
                      "dtype": shards.dtype_for_vocab(vocab_size(tok)).name, "hash": tokenizer_hash(tok)}, indent=2))
    return 0
