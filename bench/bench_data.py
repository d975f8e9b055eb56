"""Data at scale: `llmkit data curate` and `data prepare` throughput (MB/s) and peak memory.

Corpora: synthetic JSONL files of a given size (default 100 MB and 1 GB) built from real text in
../shared/data (see each folder's README for licences): SciTLDR abstract sentences
(summarization/), SQuAD v1.1 paragraphs cut into sentences (qa/), tinyshakespeare passages and
The Verdict (text/), SNLI premises (nli/), NTREX English sentences (translation/), movie-review
sentences (sentiment/). A document is 8-40 sentences drawn at random from one source (so two
documents share no long runs by chance); then, seeded and deterministic, like a web crawl:
3% are exact copies of an earlier document, 2% near copies (one sentence replaced), 3% hold
an e-mail address or a phone number, 2% are German (NTREX), 3% are junk (too short, or
symbol and number runs). The corpus is written once into --work and reused.

Runs, each in a fresh process (the bench samples the whole process tree: the driver, the local
pool's host and workers, or the Ray cluster the run starts; memory is the peak of the summed
proportional set size, PSS, so shared pages are counted once):

* curate: `llmkit.data.curate.curate` with its defaults (Gopher/C4 heuristics, exact and MinHash
  near dedup) plus --languages en and --pii redact; local 1 worker, local 2 workers, Ray
  (a local cluster, 2 workers; its start-up is timed apart and not in MB/s);
* prepare: `llmkit.data.prepare.prepare` with the GPT-2 tokenizer (../shared/data/gpt2);
  local 1 worker (the Rust tokenizer's own threads), 2 workers, Ray;
* raw: the reference, a plain loop over the same file with `tokenizers`: read 1,000 lines,
  json.loads, `Tokenizer.encode_batch` (its Rust thread pool: both cores), append EOS, write the
  ids as uint16 to one file. The same tokenizer.json as llmkit's run.

MB/s is the input file's bytes over the call's seconds. Rounds alternate the stacks; each
figure is the best round. With two sizes, a flat memory line means the 1 GB peak is within
10% of the 100 MB peak.

    python bench/bench_data.py                                  # 100 MB and 1 GB, 1 round
    python bench/bench_data.py --sizes 100 --rounds 2 --stages prepare
    python bench/bench_data.py --sizes 20 --stages curate prepare --runs local1 local2 raw
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data"

# --- the corpus ------------------------------------------------------------------------------------
_SPLIT = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'])")


def _sentences(text: str) -> list[str]:
    return [s.strip() for s in _SPLIT.split(text) if len(s.strip()) > 20]


def load_pools(data: Path) -> dict[str, list[str]]:
    """Real sentences per source, in file order, duplicates removed."""
    pools: dict[str, list[str]] = {}
    s = []
    for split in ("train", "dev", "test"):
        for line in open(data / "summarization" / f"{split}.jsonl", encoding="utf-8"):
            s.extend(json.loads(line)["source"])
    pools["scitldr"] = s
    s = []
    for name in ("dev-v1.1.json", "train-v1.1.first11articles.json"):
        for art in json.load(open(data / "qa" / name, encoding="utf-8"))["data"]:
            for par in art["paragraphs"]:
                s.extend(_sentences(par["context"]))
    pools["squad"] = s
    text = open(data / "text" / "tinyshakespeare.txt", encoding="utf-8").read()
    pools["shakespeare"] = [p.replace("\n", " ") for p in text.split("\n\n") if len(p) > 40]
    pools["shakespeare"] += _sentences(open(data / "text" / "the-verdict.txt", encoding="utf-8").read())
    s = []
    for split in ("dev", "test"):
        for line in open(data / "nli" / f"{split}.jsonl", encoding="utf-8"):
            s.append(json.loads(line)["premise"])
    pools["snli"] = s
    en, de = [], []
    for split in ("train", "test"):
        for line in open(data / "translation" / f"{split}.jsonl", encoding="utf-8"):
            r = json.loads(line)
            en.append(r["en"])
            de.append(r["de"])
    pools["ntrex"] = en
    pools["_german"] = de
    s = []
    for line in list(open(data / "sentiment" / "train.tsv", encoding="utf-8"))[1:]:
        s.append(line.rsplit("\t", 1)[0])
    pools["sentiment"] = s
    return {k: list(dict.fromkeys(x for x in v if x.strip())) for k, v in pools.items()}


def _pii(rng: random.Random) -> str:
    user = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(4, 9)))
    if rng.random() < 0.5:
        return f"Write to {user}.{rng.randint(1, 99)}@{rng.choice(['example.com', 'mail.org', 'uni-x.de'])} for details."
    return f"Call +44 20 7946 {rng.randint(0, 9999):04d} or +1 415 555 {rng.randint(0, 9999):04d} today."


def build_corpus(path: Path, target_bytes: int, pools: dict[str, list[str]], seed: int = 0) -> dict:
    rng = random.Random(seed)
    names = [k for k in pools if not k.startswith("_")]
    weights = [len(pools[k]) ** 0.5 for k in names]
    kept: list[str] = []  # recent documents, to copy from
    counts = dict(docs=0, exact=0, near=0, pii=0, german=0, junk=0)
    written = 0
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        while written < target_bytes:
            r = rng.random()
            if r < 0.03 and kept:
                text = rng.choice(kept)
                counts["exact"] += 1
            elif r < 0.05 and kept:
                sents = rng.choice(kept).split(" \u2063")  # the copy's sentences (marker below)
                sents[rng.randrange(len(sents))] = rng.choice(pools["ntrex"])
                text = " \u2063".join(sents)
                counts["near"] += 1
            elif r < 0.07:
                text = " ".join(rng.choices(pools["_german"], k=rng.randint(8, 30)))
                counts["german"] += 1
            elif r < 0.10:
                text = (" ".join(str(rng.randint(0, 10**6)) + rng.choice(" #|*-") for _ in range(rng.randint(20, 200)))
                        if rng.random() < 0.5 else " ".join(rng.choices(pools["snli"], k=2)))
                counts["junk"] += 1
            else:
                src = rng.choices(names, weights)[0]
                sents = rng.choices(pools[src], k=rng.randint(8, 40))
                if rng.random() < 0.03 / 0.90:
                    sents.insert(rng.randrange(len(sents) + 1), _pii(rng))
                    counts["pii"] += 1
                text = " \u2063".join(sents)
                if len(kept) < 5000:
                    kept.append(text)
                else:
                    kept[rng.randrange(5000)] = text
            line = json.dumps({"text": text.replace(" \u2063", " ")}, ensure_ascii=False) + "\n"
            f.write(line)
            written += len(line.encode("utf-8"))
            counts["docs"] += 1
    tmp.replace(path)
    return {**counts, "bytes": written, "seed": seed}


def corpus(work: Path, mb: int, data: Path) -> Path:
    path = work / f"corpus_{mb}MB.jsonl"
    meta = work / f"corpus_{mb}MB.json"
    if path.is_file() and meta.is_file():
        return path
    t0 = time.perf_counter()
    info = build_corpus(path, mb * 10**6, load_pools(data))
    meta.write_text(json.dumps(info) + "\n")
    print(f"built {path} ({info['bytes'] / 1e6:.0f} MB, {info['docs']:,} docs) in {time.perf_counter() - t0:.0f}s",
          flush=True)
    return path


# --- measuring a run in its own process tree -------------------------------------------------------
def _pss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _tree(pid: int) -> list[int]:
    """pid and every descendant (Ray's daemons too: they are the driver's children)."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def measure(code: str, env: dict | None = None) -> dict:
    """Run `code` in a new Python process; its last stdout line is a JSON object."""
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, **(env or {})}, start_new_session=True)
    peak = [0, 0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            kb = [_pss_kb(p) for p in _tree(proc.pid)]
            peak[0] = max(peak[0], sum(kb))
            peak[1] = max(peak[1], max(kb, default=0))
            stop.wait(0.2)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    out, err = proc.communicate()
    stop.set()
    th.join()
    if proc.returncode != 0:
        raise SystemExit(f"run failed (exit {proc.returncode}):\n{err[-3000:]}")
    res = json.loads(out.strip().splitlines()[-1])
    return {**res, "peak_mb": peak[0] / 1024, "peak_proc_mb": peak[1] / 1024}


_RAY_INIT = ("import ray; ray.init(log_to_driver=False, include_dashboard=False, configure_logging=False, "
             "num_cpus=2)\n")


def _stage_code(stage: str, run: str, path: Path, out: Path, tok_dir: Path) -> str:
    executor, workers = ("ray", 2) if run == "ray" else ("local", int(run[-1]))
    if stage == "curate":
        call = (f"from llmkit.data.curate import curate\n"
                f"r = curate([{str(path)!r}], {str(out)!r}, languages=['en'], pii='redact', executor={executor!r}, "
                f"workers={workers}, overwrite=True)\n"
                "info = dict(kept=r['output']['docs'], docs=r['totals']['docs_in'])\n")
    else:
        call = (f"from llmkit.data.prepare import prepare\n"
                f"m = prepare([{str(path)!r}], {str(tok_dir)!r}, {str(out)!r}, executor={executor!r}, "
                f"workers={workers}, overwrite=True)\n"
                "info = dict(tokens=sum(s['tokens'] for s in m['splits'].values()))\n")
    head = "import json, time\n"
    start = "t_start = time.perf_counter()\n" + (_RAY_INIT if run == "ray" else "") + "t0 = time.perf_counter()\n"
    return (head + start + call + "s = time.perf_counter() - t0\n"
            "print(json.dumps(dict(seconds=s, startup=t0 - t_start, **info)))\n")


def _raw_code(path: Path, out: Path, tok_dir: Path) -> str:
    return f"""
import json, time
import numpy as np
from tokenizers import Tokenizer
tok = Tokenizer.from_file({str(tok_dir / 'tokenizer.json')!r})
eos = tok.token_to_id("<|endoftext|>")
t0 = time.perf_counter()
n = 0
with open({str(path)!r}, encoding="utf-8") as f, open({str(out)!r}, "wb") as w:
    while True:
        lines = [line for _, line in zip(range(1000), f)]
        if not lines:
            break
        for enc in tok.encode_batch([json.loads(line)["text"] for line in lines]):
            ids = np.array(enc.ids + [eos], dtype=np.uint16)
            n += len(ids)
            w.write(ids.tobytes())
print(json.dumps(dict(seconds=time.perf_counter() - t0, startup=0.0, tokens=n)))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 1000], help="corpus sizes in MB")
    ap.add_argument("--stages", nargs="+", default=["curate", "prepare"], choices=["curate", "prepare"])
    ap.add_argument("--runs", nargs="+", default=["local1", "local2", "ray", "raw"],
                    choices=["local1", "local2", "ray", "raw"])
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "llmkit-bench-data",
                    help="where the corpora (kept) and the outputs (replaced) go")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    print(f"loadavg {open('/proc/loadavg').read().split()[:3]}, cores {len(os.sched_getaffinity(0))}, "
          f"cpu {_cpu()}", flush=True)

    from llmkit.tokenizer import Tokenizer

    tok_dir = args.work / "gpt2"
    if not (tok_dir / "tokenizer.json").is_file():
        Tokenizer.from_dir(str(args.data / "gpt2")).save(tok_dir)

    results: dict[tuple, dict] = {}
    for mb in args.sizes:
        path = corpus(args.work, mb, args.data)
        size = path.stat().st_size
        for rnd in range(args.rounds):
            for stage in args.stages:
                runs = [r for r in args.runs if stage == "prepare" or r != "raw"]
                runs = runs if rnd % 2 == 0 else runs[::-1]
                for run in runs:
                    out = args.work / f"out_{stage}_{run}"
                    code = (_raw_code(path, args.work / "raw.bin", tok_dir) if run == "raw"
                            else _stage_code(stage, run, path, out, tok_dir))
                    r = measure(code)
                    r["mb_s"] = size / 1e6 / r["seconds"]
                    key = (mb, stage, run)
                    if key not in results or r["mb_s"] > results[key]["mb_s"]:
                        results[key] = r
                    print(f"  {mb:>5} MB {stage:8} {run:7} round {rnd}: {r['mb_s']:6.2f} MB/s "
                          f"({r['seconds']:.1f}s, start-up {r['startup']:.1f}s), peak {r['peak_mb']:.0f} MB "
                          f"(largest process {r['peak_proc_mb']:.0f} MB)", flush=True)
    _table(results, args)
    if args.json:
        args.json.write_text(json.dumps([{"mb": k[0], "stage": k[1], "run": k[2], **v} for k, v in results.items()],
                                        indent=1) + "\n")


def _cpu() -> str:
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "?"


def _table(results: dict, args) -> None:
    print("\n| corpus | stage | run | MB/s | vs raw | vs 1 worker | peak PSS (MB) |")
    print("|---|---|---|---|---|---|---|")
    for (mb, stage, run), r in results.items():
        raw = results.get((mb, "prepare", "raw"))
        one = results.get((mb, stage, "local1"))
        vs_raw = f"{r['mb_s'] / raw['mb_s']:.2f}x" if raw and stage == "prepare" and run != "raw" else ""
        vs_one = f"{r['mb_s'] / one['mb_s']:.2f}x" if one and run not in ("local1", "raw") else ""
        print(f"| {mb} MB | {stage} | {run} | {r['mb_s']:.2f} | {vs_raw} | {vs_one} | {r['peak_mb']:.0f} |")
    if len(args.sizes) > 1:
        lo, hi = min(args.sizes), max(args.sizes)
        print(f"\npeak memory, {hi} MB over {lo} MB:")
        for stage in args.stages:
            for run in args.runs:
                a, b = results.get((lo, stage, run)), results.get((hi, stage, run))
                if a and b:
                    print(f"  {stage:8} {run:7} {a['peak_mb']:.0f} -> {b['peak_mb']:.0f} MB "
                          f"({b['peak_mb'] / a['peak_mb']:.2f}x)")


if __name__ == "__main__":
    main()
