"""`llmkit evaluate`: harness tasks, perplexity, generative evaluation with an LLM judge.

The pieces, each usable from Python on its own:

* `harness.LLMKitLM` / `harness.run_tasks`: EleutherAI lm-evaluation-harness tasks on an
  llmkit model (no conversion to `transformers`).
* `perplexity.perplexity`: sliding-window perplexity and bits-per-byte of text files.
* `generative.evaluate_responses` + `judge`: responses to an Alpaca-style file scored with exact
  match / ROUGE-L / BLEU and by an LLM judge over any OpenAI-compatible endpoint.
* `pairwise`: two models (or responses files) answer the same instructions and a judge picks
  the better answer: win rate with a confidence interval, length-controlled win rate, votes for
  the arena's ratings.
* `report`: results.json / results.md, and `compare_table` for several runs side by side.
"""

from __future__ import annotations

import os
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional, Union

from llmkit.errors import LLMKitError


def evaluate(
    model: Union[list[str], str],
    tasks: Optional[list[str]] = None,
    num_fewshot: Optional[int] = None,
    limit: Optional[float] = None,
    batch_size: int = 16,
    include_path: Optional[list[str]] = None,
    perplexity: Optional[list[str]] = None,
    stride: Optional[int] = None,
    max_length: Optional[int] = None,
    generate_data: Optional[str] = None,
    prompt_style: str = "alpaca",
    max_new_tokens: int = 256,
    responses: Optional[str] = None,
    judge_url: Optional[str] = None,
    judge_model: Optional[str] = None,
    judge_api_key: Optional[str] = None,
    judge_concurrency: int = 8,
    compare_model: Optional[str] = None,
    compare_responses: Optional[str] = None,
    compare: Optional[list[str]] = None,
    pairwise: Optional[list[str]] = None,
    data: Optional[str] = None,
    both_orders: bool = False,
    judge_reference: bool = True,
    out: Optional[str] = None,
    device: str = "auto",
    dtype: Optional[str] = None,
    truncate: bool = False,
    apply_chat_template: bool = False,
    seed: int = 1234,
    source_field: Optional[str] = None,
    target_field: Optional[str] = None,
    prefix: str = "",
    num_beams: int = 1,
    length_penalty: float = 1.0,
) -> dict:
    """Evaluate a model: harness tasks, perplexity, generated responses with an LLM judge.

    Examples:
        llmkit evaluate MODEL --tasks hellaswag arc_easy --num-fewshot 5 --out eval/run1
        llmkit evaluate MODEL --tasks my_task --include-path configs/eval
        llmkit evaluate MODEL --perplexity data/a.txt data/b.jsonl --stride 512
        llmkit evaluate MODEL --generate-data alpaca_eval.json --judge-url http://host:8000/v1
        llmkit evaluate T5_MODEL --generate-data test.jsonl --prefix "summarize: " --num-beams 4
        llmkit evaluate --compare eval/run1 eval/run2
        llmkit evaluate --pairwise MODEL_A MODEL_B --data alpaca_eval.json --judge-url http://host:8000/v1

    Args:
        model: the model(s) to evaluate (llmkit or Hugging Face directory, or hub repo id);
            several are evaluated one after another and printed side by side. Optional only
            with --compare or --responses; not given with --pairwise.
        tasks: lm-evaluation-harness task, group or tag names (space or comma separated).
        num_fewshot: few-shot examples per prompt (default: each task's own, else 0).
        limit: examples per task (a fraction if below 1); also caps --generate-data examples.
        batch_size: requests (or windows, or prompts) per forward pass.
        include_path: folders (or files) of local task YAMLs, as the harness's --include_path.
        perplexity: text files (one document each), JSONL/JSON files (a "text" field per
            record) or folders, for sliding-window perplexity and bits-per-byte.
        stride: perplexity window step in tokens (default: half the window).
        max_length: context length for tasks and perplexity windows (default: the model's).
        generate_data: a JSON/JSONL file of Alpaca records (instruction, input, output) or chat
            records (messages) to generate responses for and score against the reference
            ("output", or the last assistant reply): the files `llmkit finetune` reads. For an
            encoder-decoder (T5, BART): (source, target) records (fields detected or named with
            --source-field / --target-field; a list of targets is several references), scored
            with ROUGE (rouge_score) and BLEU / chrF (sacrebleu) next to the lead-sentence and
            copy-the-source baselines.
        prompt_style: how --generate-data prompts are written: "alpaca" (llmkit's instruction
            finetuning format), "chat" (the model's chat template, or the style its vocabulary
            suggests), or a built-in style: chatml, llama3, llama2, mistral, phi3, gemma, plain.
        max_new_tokens: longest response generated for --generate-data.
        responses: a responses file from an earlier run (its responses.jsonl) to score and
            judge instead of generating.
        judge_url: OpenAI-compatible endpoint of the judge (e.g. https://api.openai.com/v1,
            or http://127.0.0.1:8000/v1 for `llmkit serve`).
        judge_model: the judge's model name (default: the first the endpoint lists).
        judge_api_key: API key for the judge (default: $LLMKIT_JUDGE_API_KEY, else
            $OPENAI_API_KEY).
        judge_concurrency: judge requests in flight at once.
        compare_model: a second model to generate responses with; the judge says which of the
            two responses is better for each example (win / tie / loss counts).
        compare_responses: a second responses file to compare against, instead of a model.
        compare: results files (or --out folders) of earlier runs to print side by side;
            nothing is evaluated.
        pairwise: two models A B (directories or hub ids), or earlier runs' responses .jsonl files,
            to answer --data; the judge picks the better answer per example (shown in a seeded
            random order). Reports A's win rate over B with a 95% interval, the length-controlled
            win rate (AlpacaEval 2.0), and writes votes.jsonl for `llmkit arena ratings`.
        data: the instructions file (Alpaca or chat records; a reference answer is optional with
            --pairwise); the same as --generate-data.
        both_orders: with --pairwise, judge every example in both orders; a verdict that changes
            with the order counts as a tie, and the consistency rate is reported.
        judge_reference: with --pairwise, show the judge the reference answer when the example
            has one (false: judge on the instruction alone, as AlpacaEval does).
        out: folder for results.json, results.md (and responses.jsonl, judgments.jsonl; with
            --pairwise responses_a/_b.jsonl and votes.jsonl); default
            out/eval/MODELNAME-YYYYMMDD-HHMMSS (UTC; A-vs-B-... with --pairwise), so every run
            keeps its results.
        device: "auto" (a GPU if there is one), "cpu", "cuda", "cuda:1", ...
        dtype: weights dtype: float32, bfloat16, float16 (default: as stored).
        truncate: cut prompts longer than the context from the left, as the harness's hf
            backend does silently, instead of stopping with an error.
        apply_chat_template: render harness prompts with the model's chat template.
        seed: random seed of the harness (few-shot sampling, sampled generation).
        source_field: an encoder-decoder's source field in --generate-data (default: detected).
        target_field: its reference field (default: detected).
        prefix: text put before every source (T5's "summarize: ", "translate English to German: ").
        num_beams: beam search width for an encoder-decoder's outputs (1: greedy).
        length_penalty: beam search's length penalty (> 1 favours longer outputs).
    """
    from llmkit.evaluate.report import compare_table, load_result, run_markdown, write_results

    models = [model] if isinstance(model, str) else [m for m in (model or []) if m]
    if data and generate_data and data != generate_data:
        raise LLMKitError(f"--data and --generate-data name the same file; got two: {data} and {generate_data}")
    generate_data = generate_data or data
    if pairwise is not None:
        return _evaluate_pairwise(models, pairwise, generate_data, locals())
    if compare:
        others = [name for name, given in (("MODEL", models), ("--tasks", tasks), ("--perplexity", perplexity),
                                            ("--generate-data", generate_data), ("--responses", responses)) if given]
        if others:
            raise LLMKitError(f"--compare prints saved results side by side; it takes no {', '.join(others)}")
        table = compare_table([load_result(p) for p in compare])
        print(table)
        if out:
            from llmkit.checkpoint import atomic_write_text

            atomic_write_text(Path(out) / "compare.md", table + "\n")
        return {"compare": table}
    _check_arguments(models, tasks, perplexity, generate_data, responses, prompt_style, judge_url, judge_model,
                     compare_model, compare_responses, batch_size, limit, (source_field, target_field, prefix))
    if num_beams < 1:
        raise LLMKitError(f"--num-beams must be >= 1, got {num_beams}")
    judge = _make_judge(judge_url, judge_model, judge_api_key) if judge_url else None

    settings = {
        "tasks": tasks, "include_path": include_path, "num_fewshot": num_fewshot, "limit": limit,
        "perplexity": perplexity, "max_length": max_length, "stride": stride, "batch_size": batch_size,
        "generate_data": generate_data, "responses": responses,
        "prompt_style": prompt_style if generate_data else None,
        "max_new_tokens": max_new_tokens if generate_data else None,
        "judge": judge and f"{judge.model} at {judge_url}", "truncate": truncate or None,
        "apply_chat_template": apply_chat_template or None, "seed": seed,
    }
    # One folder per model under --out when several are evaluated (numbered if names clash).
    names = [Path(str(m)).name for m in models]
    if out is None:
        stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
        out = str(Path("out") / "eval" / f"{names[0] if len(names) == 1 else 'models'}-{stamp}")
    targets = [out] if len(models) <= 1 else \
        [out and str(Path(out) / (n if names.count(n) == 1 else f"{n}-{i + 1}")) for i, n in enumerate(names)]
    runs = []
    for spec, target in zip(models or [None], targets):
        result = _evaluate_one(
            spec, tasks=tasks, num_fewshot=num_fewshot, limit=limit, batch_size=batch_size,
            include_path=include_path, perplexity_files=perplexity, stride=stride, max_length=max_length,
            generate_data=generate_data, prompt_style=prompt_style, max_new_tokens=max_new_tokens,
            responses=responses, judge=judge, judge_concurrency=judge_concurrency, compare_model=compare_model,
            compare_responses=compare_responses, device=device, dtype=dtype, truncate=truncate,
            apply_chat_template=apply_chat_template, seed=seed, out=target,
            seq2seq=dict(source_field=source_field, target_field=target_field, prefix=prefix, num_beams=num_beams,
                         length_penalty=length_penalty))
        shown = dict(settings)
        if "seq2seq" in result:  # an encoder-decoder's pairs: no prompt style, its own settings
            shown.update(prompt_style=None, prefix=prefix or None, num_beams=num_beams,
                         length_penalty=length_penalty if num_beams > 1 else None)
        result["settings"] = {k: v for k, v in shown.items() if v is not None}
        print(run_markdown(result))
        if target:
            json_path, md_path = write_results(target, result)
            print(f"results written to {json_path} and {md_path}")
        runs.append(result)
    if len(runs) > 1:
        print(compare_table(runs))
    return runs[0] if len(runs) == 1 else {"runs": runs}


def _make_judge(judge_url: str, judge_model: Optional[str], judge_api_key: Optional[str]):
    from llmkit.evaluate.judge import OpenAIJudge

    key = judge_api_key or os.environ.get("LLMKIT_JUDGE_API_KEY") or os.environ.get("OPENAI_API_KEY")
    judge = OpenAIJudge(judge_url, model=judge_model, api_key=key)
    judge.check()  # a wrong URL or key fails now, not after generating every response
    return judge


def _evaluate_pairwise(models: list, specs: list, data: Optional[str], args: dict) -> dict:
    """`--pairwise A B`: check everything, then the judge, then generate (or read) and judge."""
    from llmkit.evaluate import pairwise as pw
    from llmkit.evaluate.report import run_markdown, write_results

    others = [name for name, given in (("MODEL", models), ("--tasks", args["tasks"]),
                                        ("--perplexity", args["perplexity"]), ("--responses", args["responses"]),
                                        ("--compare-model", args["compare_model"]),
                                        ("--compare-responses", args["compare_responses"]),
                                        ("--compare", args["compare"])) if given]
    if others:
        raise LLMKitError(f"--pairwise compares the two models it names; it takes no {', '.join(others)}")
    if args["batch_size"] < 1:
        raise LLMKitError(f"--batch-size must be >= 1, got {args['batch_size']}")
    if args["limit"] is not None and args["limit"] <= 0:
        raise LLMKitError(f"--limit must be positive, got {args['limit']}")
    pw.check_arguments(specs, data, args["judge_url"], args["prompt_style"], args["max_new_tokens"],
                       args["judge_concurrency"])
    judge = _make_judge(args["judge_url"], args["judge_model"], args["judge_api_key"])
    names = pw.side_names(specs)
    out = args["out"]
    if out is None:
        stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
        safe = [n.replace("/", "_").replace(" ", "_") for n in names]
        out = str(Path("out") / "eval" / f"{safe[0]}-vs-{safe[1]}-{stamp}")
    t = time.perf_counter()
    section = pw.run_pairwise(
        specs, data, judge, prompt_style=args["prompt_style"], max_new_tokens=args["max_new_tokens"],
        batch_size=args["batch_size"], limit=args["limit"], seed=args["seed"], both_orders=args["both_orders"],
        judge_reference=args["judge_reference"], judge_concurrency=args["judge_concurrency"],
        device=args["device"], dtype=args["dtype"], out=out)
    generated = not all(pw.is_responses_file(s) for s in specs)
    settings = {"pairwise": list(specs), "data": data, "limit": args["limit"], "seed": args["seed"],
                "both_orders": args["both_orders"], "judge_reference": args["judge_reference"],
                "prompt_style": args["prompt_style"] if generated else None,
                "max_new_tokens": args["max_new_tokens"] if generated else None,
                "judge": f"{judge.model} at {args['judge_url']}"}
    result = {"model": None, "model_name": f"{names[0]} vs {names[1]}",
              "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "seconds": {"pairwise": round(time.perf_counter() - t, 2)}, "pairwise": section,
              "settings": {k: v for k, v in settings.items() if v is not None}}
    print(run_markdown(result))
    json_path, md_path = write_results(out, result)
    print(f"results written to {json_path} and {md_path}; votes in {section['votes']} "
          f"(`llmkit arena ratings {section['votes']}`)")
    return result


def _check_arguments(models, tasks, perplexity, generate_data, responses, prompt_style, judge_url, judge_model,
                     compare_model, compare_responses, batch_size, limit, pair_fields=(None, None, "")) -> None:
    """Every check that needs no model, done before loading one: a typo in the last option
    should not surface after an hour of harness tasks."""
    if not models and not responses:
        raise LLMKitError("MODEL is required (only --compare and --responses work without one)")
    if not (tasks or perplexity or generate_data or responses):
        raise LLMKitError("nothing to evaluate: give --tasks, --perplexity and/or --generate-data (or --responses)")
    if responses and generate_data:
        raise LLMKitError("--responses scores an earlier run's responses; it cannot be combined with --generate-data")
    if (judge_model or compare_model or compare_responses) and not judge_url:
        raise LLMKitError("--judge-model, --compare-model and --compare-responses need a judge: give --judge-url")
    if compare_model and compare_responses:
        raise LLMKitError("give either --compare-model or --compare-responses, not both")
    if (compare_model or compare_responses) and not (generate_data or responses):
        raise LLMKitError("--compare-model/--compare-responses compare generated responses: give --generate-data")
    if batch_size < 1:
        raise LLMKitError(f"--batch-size must be >= 1, got {batch_size}")
    if limit is not None and limit <= 0:
        raise LLMKitError(f"--limit must be positive, got {limit}")
    if perplexity:
        from llmkit.data import expand_sources

        expand_sources(perplexity)  # missing files fail here
    from llmkit.evaluate.generative import load_examples, load_responses

    if generate_data:
        try:
            load_examples(generate_data)
        except LLMKitError as e:  # not instruction records: (source, target) pairs for an encoder-decoder?
            from llmkit.data.seq2seq import read_seq2seq

            try:
                read_seq2seq(generate_data, *pair_fields)
            except LLMKitError:
                raise e from None
        if prompt_style not in ("alpaca", "chat", "auto"):
            from llmkit.prompts import PromptStyle

            PromptStyle.from_name(prompt_style)
    for path in (responses, compare_responses):
        if path:
            load_responses(path)


def _evaluate_one(spec: Optional[str], *, tasks, num_fewshot, limit, batch_size, include_path, perplexity_files,
                  stride, max_length, generate_data, prompt_style, max_new_tokens, responses, judge, judge_concurrency,
                  compare_model, compare_responses, device, dtype, truncate, apply_chat_template, seed, out,
                  seq2seq: Optional[dict] = None) -> dict:
    from llmkit.checkpoint import load_model

    result: dict = {"model": spec, "model_name": Path(str(spec)).name if spec else None,
                    "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "seconds": {}}
    model = tokenizer = None
    if spec is not None:
        loaded = load_model(spec, device=device, dtype=dtype)
        model, tokenizer = loaded.model, loaded.tokenizer
        result["model_info"] = {"kind": loaded.kind, "path": str(loaded.path), "context": loaded.config.block_size,
                                "parameters": sum(p.numel() for p in model.parameters()),
                                "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
                                "device": str(next(model.parameters()).device)}
    if tasks:
        from llmkit.evaluate.harness import LLMKitLM, run_tasks, task_metrics

        t = time.perf_counter()
        lm = LLMKitLM(model, tokenizer, batch_size=batch_size, max_length=max_length, truncate=truncate)
        raw = run_tasks(lm, tasks, num_fewshot=num_fewshot, limit=limit, include_path=include_path,
                        apply_chat_template=apply_chat_template, seed=seed)
        result["tasks"] = task_metrics(raw)
        result["harness"] = {k: raw.get(k) for k in ("n-shot", "n-samples", "versions", "higher_is_better",
                                                    "group_subtasks", "lm_eval_version")}
        result["seconds"]["tasks"] = round(time.perf_counter() - t, 2)
    if perplexity_files:
        from llmkit.evaluate.perplexity import perplexity

        t = time.perf_counter()
        result["perplexity"] = perplexity(model, tokenizer, perplexity_files, max_length=max_length, stride=stride,
                                          batch_size=batch_size)
        result["seconds"]["perplexity"] = round(time.perf_counter() - t, 2)
    if generate_data and model is not None and model.cfg.is_seq2seq:
        from llmkit.evaluate.seq2seq import evaluate_seq2seq

        t = time.perf_counter()
        result["seq2seq"] = evaluate_seq2seq(model, tokenizer, generate_data, max_new_tokens=max_new_tokens,
                                             batch_size=batch_size, limit=limit, out=out, **(seq2seq or {}))
        result["seconds"]["seq2seq"] = round(time.perf_counter() - t, 2)
    elif generate_data or responses:
        from llmkit.evaluate.generative import evaluate_responses

        t = time.perf_counter()
        result["generative"] = evaluate_responses(
            model, tokenizer, data=generate_data, responses_file=responses, prompt_style=prompt_style,
            max_new_tokens=max_new_tokens, batch_size=batch_size, limit=limit, judge=judge,
            judge_concurrency=judge_concurrency, compare_model=compare_model, compare_responses=compare_responses,
            device=device, dtype=dtype, out=out)
        result["seconds"]["generative"] = round(time.perf_counter() - t, 2)
    return result


__all__ = ["evaluate"]
