"""Translation benchmark: Multi30k German -> English BLEU/chrF (sacreBLEU), training time per epoch,
and decoding speed (sentences per second) for greedy and beam search on the CPU.

    python benchmarks/translation.py --data ../shared/data/translation/multi30k --minutes 110 --threads 1
    python benchmarks/translation.py --data ... --minutes 5 --threads 1     # a quick look

Trains `experiment=multi30k` on `train` for at most `--minutes` of wall time (or its
`trainer.max_epochs`), keeps the checkpoint with the best greedy BLEU on `val`, and reports `val`
decoded greedily and with beam search, and a test split as well when the folder holds one (`test.<source>` +
`test.<target>`, else Multi30k's `test_2016_flickr`, else another `test_*` pair, or the stem that
`task.data.splits.test=STEM` names; the copy in `../shared/data` holds none: Multi30k's test sets are held back):
detokenised output against the raw references, with sacreBLEU's signatures. Prints tables, then one
JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import exit_code, fit_and_test, positive_int, quiet, quote, table  # noqa: E402

REFERENCES = {"GRU + Bahdanau attention (bentrevett/pytorch-seq2seq)": 28.3, "attention + SentencePiece": 33.5}


def decode_split(task: Any, model: Any, dataset: Any, beam: int, batch_size: int) -> dict[str, Any]:
    """Translate a scored split with `beam` (1 = greedy): sacreBLEU scores and sentences per second."""
    import torch

    from gru_suite_plugins.translation.task import corpus_scores

    model.eval()
    order = sorted(range(len(dataset)), key=lambda i: len(dataset.source[i]))
    hypotheses, references = [], []
    start = time.perf_counter()
    with torch.no_grad():
        for begin in range(0, len(order), batch_size):
            batch = dataset.__getitems__(order[begin:begin + batch_size])
            hypotheses += [task.detokenize(h.tokens) for h in task.translate(model, batch, beam)]
            references += batch["references"]
    seconds = time.perf_counter() - start
    scores = corpus_scores(hypotheses, references, task.lowercase, str(task.cfg.data.target))
    return {"beam": beam, **scores, "sentences": len(order), "seconds": seconds,
            "sentences_per_s": len(order) / seconds, "examples": hypotheses[200:203]}


def test_stem(folder: Path, source: str, target: str, overrides: list[str]) -> list[str]:
    """`task.data.splits.test=<stem>` for the folder's test set when the overrides name none: `test`, else Multi30k's
    own name for the 2016 test set that the references score (`test_2016_flickr`), else the first other `test_*`."""
    if any(o.startswith("task.data.splits.test=") for o in overrides):
        return []
    stems = sorted({path.name.split(".")[0] for path in folder.glob("test*")})
    paired = [stem for stem in stems if all(any(folder.glob(f"{stem}.{lang}*")) for lang in (source, target))]
    for stem in ("test", "test_2016_flickr", *paired):
        if stem in paired:
            others = [other for other in paired if other != stem]
            print(f"note: reporting test set {stem}" + (f" (also in the folder: {', '.join(others)}; name one with "
                  "task.data.splits.test=STEM)" if others else ""), file=sys.stderr)
            return [f"task.data.splits.test={stem}"]
    return []


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="folder with {train,val}.{de,en}[.gz]")
    parser.add_argument("--source", default="de")
    parser.add_argument("--target", default="en")
    parser.add_argument("--minutes", type=float, default=110.0, help="training wall-time budget (default 110)")
    parser.add_argument("--beam", type=int, default=5)
    parser.add_argument("--threads", type=positive_int, default=2, help="torch intra-op threads (default 2)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides, e.g. backbone.hidden_size=512")
    args = parser.parse_args(argv)
    if not args.data.is_dir():
        print(f"error: {args.data} not found", file=sys.stderr)
        return 2
    quiet()
    import torch

    from gru_suite.testing import compose_train_config

    torch.set_num_threads(args.threads)
    hours, rest = divmod(int(args.minutes * 60), 3600)
    overrides = [
        "experiment=multi30k", f"task.data.path={quote(args.data)}", f"task.data.source={args.source}",
        f"task.data.target={args.target}", f"task.decode.beam_size={args.beam}",
        f"++trainer.max_time=00:{hours:02d}:{rest // 60:02d}:{rest % 60:02d}", "trainer.accelerator=cpu",
        "logger=none", "callbacks.progress_bar=null", "predict_after_training=false",
        *test_stem(args.data, args.source, args.target, args.overrides), *args.overrides,
    ]
    with tempfile.TemporaryDirectory() as tmp:
        cfg = compose_train_config("translation", overrides, Path(tmp))
        run = fit_and_test(cfg, args.seed)
    task, model = run.task, run.module.model  # the best checkpoint's weights (loaded by the test stage)
    from gru_suite_plugins.translation.data import read_parallel

    data = cfg.task.data
    splits = ["val"] + (["test"] if read_parallel(args.data, data.splits.test, args.source, args.target,
                                                   data.encoding_errors) else [])
    decoded = {split: [decode_split(task, model, run.datamodule.dataset(split), beam, data.eval_batch_size)
                       for beam in (1, args.beam)] for split in splits}
    epochs = len(run.clock.wall)
    results = {
        "data": str(args.data), "direction": f"{args.source}->{args.target}", "splits": splits,
        "test_set": data.splits.test if "test" in splits else None,
        "overrides": overrides, "threads": args.threads, "parameters": sum(p.numel() for p in model.parameters()),
        "epochs_run": epochs, "best_epoch": run.best_epoch, "best_val_bleu_greedy": run.best_val_loss,
        "train_s_per_epoch": sum(run.clock.wall) / max(epochs, 1), "fit_wall_s": run.fit_wall_s,
        # the test stage's: on `test` when the folder has it, else on `val`
        f"{splits[-1]}_perplexity": run.test_metrics.get("test/perplexity"),
        **{("decoding" if split == "val" else f"{split}_decoding"): {f"beam{d['beam']}": d for d in runs}
           for split, runs in decoded.items()},
    }
    references = REFERENCES.items() if "multi30k" in str(args.data.resolve()).lower() else ()  # Multi30k's own
    table(
        f"{args.data.name} {args.source}->{args.target}, best checkpoint by greedy val BLEU",
        ["split", "decoding", "BLEU", "chrF", "sentences/s", "epochs", "s/epoch", "perplexity"],
        [[f"{data.splits.test if split == 'test' else split} ({d['sentences']})",
          ("greedy" if d["beam"] == 1 else f"beam {d['beam']}"), d["bleu"], d["chrf"],
          d["sentences_per_s"], epochs, results["train_s_per_epoch"],
          run.test_metrics.get("test/perplexity") if split == splits[-1] else ""]
         for split, runs in decoded.items() for d in runs]
        + [["Multi30k test 2016", f"{name} (reference)", value, "", "", "", "", ""] for name, value in references],
    )
    last = decoded[splits[-1]][-1]
    print(f"sacreBLEU: {last['bleu_signature']} | {last['chrf_signature']}")
    print(json.dumps(results, default=float, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(exit_code(main))
