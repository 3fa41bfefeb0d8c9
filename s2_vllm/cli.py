"""The `s2-vllm` command line. Heavy imports (torch, transformers, vllm) happen inside commands."""

from __future__ import annotations

import os
import statistics
from pathlib import Path
from typing import Any

import click

from s2_vllm import __version__, flags, signals
from s2_vllm.clips.modality import DEFAULT as DEFAULT_MODALITY, NAMES as MODALITIES
from s2_vllm.config import ENGINES
from s2_vllm.errors import EngineError, UserError
from s2_vllm.export import FORMATS as EXPORT_FORMATS

DEBUG_ENV = "S2_VLLM_DEBUG"


class Failure(click.ClickException):
    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


class Stopped(Failure):
    """A signal stopped the run: not an error, so no 'Error:' prefix."""

    def show(self, file: Any = None) -> None:
        click.echo(self.format_message(), err=True)


class Group(click.Group):
    """Turns our exceptions into one-line messages and exit codes; --debug keeps tracebacks."""

    def invoke(self, ctx: click.Context) -> Any:
        debug = bool(ctx.params.get("debug")) or bool(os.environ.get(DEBUG_ENV))
        try:
            with signals.handled():  # SIGINT and SIGTERM stop every command the same way (exit 130)
                return super().invoke(ctx)
        except KeyboardInterrupt as exc:  # signals.Interrupted, with how far the run got, or a bare Ctrl-C
            raise Stopped(str(exc) if isinstance(exc, signals.Interrupted) else signals.RESUME_HINT, 130) from None
        except (UserError, EngineError) as exc:
            if debug:
                raise
            raise Failure(str(exc), exc.exit_code) from None


@click.group(cls=Group)
@click.version_option(__version__, prog_name="s2-vllm")
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
def cli(debug: bool) -> None:
    """Fuse clue descriptions with subtitles (OV-MER's S2 strategy, step 2) over a whole dataset;
    describe the audio or the video of clips (step 1) on the same machinery.

    \b
    Quick start:
        s2-vllm demo
        s2-vllm describe clips/ -o audio_descriptions.jsonl
        s2-vllm describe --modality video clips/ -o visual_descriptions.jsonl
        s2-vllm run --audio audio.json --subtitles subtitles.json
        s2-vllm status s2_final_descriptions.jsonl
        s2-vllm export s2_final_descriptions.jsonl -o s2_final_descriptions.json
    """


@cli.command()
@flags.use("config_path", *flags.SOURCES, *flags.PROMPT, "on_duplicate", "cut_rows", "limit", "shard")
@click.option("-o", "--output", type=click.Path(dir_okay=False),
              help="Checkpoint JSONL. [default: s2_final_descriptions.jsonl]")
@flags.use(*flags.GENERATE, *flags.CHECKPOINT)
def run(output: str | None, **params: Any) -> None:
    """Fuse every joined record and append each result to a resumable JSONL checkpoint.

    Run the same command again after an interruption: finished records are skipped.

    \b
    Examples:
        s2-vllm run --audio audio.json --subtitles subtitles.json
        s2-vllm run --audio audio_descriptions.jsonl --visual visual_descriptions.jsonl --subtitles s.json
        s2-vllm run --config configs/qwen3-8b-thinking.toml --audio a.json --subtitles s.json -o out.jsonl
        s2-vllm run --engine hf --model ./my-model --audio a.json --subtitles s.json --limit 10
        s2-vllm run --replicas 8 --audio a.json --subtitles s.json            # 8 GPUs, one replica each
        s2-vllm run --ray-address auto --replicas 16 --audio a.json --subtitles s.json
    """
    from s2_vllm.pipeline import run as run_pipeline

    config = flags.config_from(params)
    run_pipeline(config, _run_options(output, config.run.output, params), click.echo)


def _run_options(output: str | None, default: str, params: dict[str, Any]) -> Any:
    """The selection and checkpoint flags of `run` and `extract-labels`; without -o, a shard's output is
    named after it."""
    from s2_vllm.pipeline import RunOptions

    shard = flags.parse_shard(params["shard"])
    path = output if output is not None else flags.shard_output(default, shard)
    return RunOptions(Path(path), overwrite=params["overwrite"], retry_failed=params["retry_failed"],
                      retry_cut=params["retry_cut"], repair=params["repair"], limit=params["limit"], shard=shard,
                      progress=not params["no_progress"], show_engine_log=params["show_engine_log"])


@cli.command()
@flags.use("config_path", *flags.SOURCES, *flags.PROMPT, "on_duplicate", "cut_rows", "limit", "shard")
@click.option("-o", "--output", type=click.Path(dir_okay=False), default="prompts.jsonl", show_default=True)
@click.option("--force", is_flag=True, help="Replace the output file if it exists.")
def render(output: str, force: bool, limit: int | None, shard: str | None, **params: Any) -> None:
    """Dry run: write the rendered prompts and their token counts; needs only the tokenizer.

    \b
    Example:
        s2-vllm render --audio audio.json --subtitles subtitles.json -o prompts.jsonl
    """
    from s2_vllm.render import render_prompts

    config = flags.config_from(params)
    counts = render_prompts(config, Path(output), force=force, limit=limit, shard=flags.parse_shard(shard),
                            echo=click.echo)
    if counts:
        click.echo(
            f"prompt tokens: min {min(counts)}, median {statistics.median(counts):g}, "
            f"mean {statistics.fmean(counts):.1f}, max {max(counts)}"
        )


@cli.command()
@click.argument("clips", nargs=-1, type=click.Path())
@click.option("--manifest", type=click.Path(dir_okay=False),
              help="CSV / JSON / JSONL listing the clips: an id and a path (relative to the manifest) per entry.")
@click.option("--id-key", default="file_id", show_default=True, help="The manifest's id column or field.")
@click.option("--path-key", default="path", show_default=True, help="The manifest's path column or field.")
@click.option("--modality", type=click.Choice(MODALITIES), default=DEFAULT_MODALITY, show_default=True,
              help="What of each clip the model describes: its audio track or its video frames.")
@flags.use("config_path", "subtitles", *flags.PROMPT, "on_duplicate", "limit", "shard", *flags.CLIPS)
@click.option("-o", "--output", type=click.Path(dir_okay=False),
              help="Checkpoint JSONL. [default: audio_descriptions.jsonl, or visual_descriptions.jsonl for video]")
@flags.use(*[f for f in flags.GENERATE if f not in ("engine", "batch_size")], *flags.CHECKPOINT)
def describe(clips: tuple[str, ...], manifest: str | None, id_key: str, path_key: str, output: str | None,
             modality: str, max_seconds: float | None, **params: Any) -> None:
    """Describe the emotional cues in each clip's audio or video (S2 step 1) into a resumable JSONL checkpoint.

    CLIPS are files, or folders searched recursively for audio and video files (video files only with
    --modality video); a clip's id is its file name without the extension. The default models are
    Qwen/Qwen2.5-Omni-7B for audio (its thinker) and Qwen/Qwen2.5-VL-7B-Instruct for video, on vLLM. The
    checkpoints feed step 2 directly: s2-vllm run --audio audio_descriptions.jsonl --visual
    visual_descriptions.jsonl.

    \b
    Examples:
        s2-vllm describe clips/ -o audio_descriptions.jsonl
        s2-vllm describe --modality video clips/ -o visual_descriptions.jsonl --fps 2 --max-frames 32
        s2-vllm describe --manifest clips.csv --id-key name --path-key file
        s2-vllm describe clips/ --subtitles dataset.json --config configs/qwen2.5-omni-3b-describe.toml
        s2-vllm run --audio audio_descriptions.jsonl --subtitles dataset.json
    """
    from s2_vllm.clips.modality import get
    from s2_vllm.config import apply_overrides
    from s2_vllm.describe import ClipInputs, describe as run_stage

    inputs = ClipInputs(tuple(clips), manifest, id_key, path_key, params.pop("subtitles"), modality)
    config = flags.config_from(params)
    if max_seconds is not None:
        apply_overrides(config, modality, max_seconds=max_seconds)
    run_stage(config, _run_options(output, get(modality).default_output, params), inputs, click.echo)


@cli.command()
@click.argument("checkpoints", nargs=-1, required=True, type=click.Path())
def status(checkpoints: tuple[str, ...]) -> None:
    """Rows by status, what remains, the config fingerprint and the throughput so far.

    \b
    Examples:
        s2-vllm status s2_final_descriptions.jsonl
        s2-vllm status 'out.shard-*.jsonl'
    """
    from s2_vllm.report import status_lines

    for line in status_lines(expand(checkpoints)):
        click.echo(line)


@cli.command()
@click.argument("checkpoints", nargs=-1, required=True, type=click.Path())
@click.option("-o", "--output", type=click.Path(dir_okay=False), required=True, help="File to write.")
@click.option("--format", "fmt", type=click.Choice(EXPORT_FORMATS), default="json", show_default=True,
              help="json: the tutorial's list of {file_id, final_description} ({file_id, generated_text} for a "
                   "describe checkpoint, step 2's input).")
@click.option("--cut-rows", type=click.Choice(["use", "skip"]), default="use", show_default=True,
              help="json: rows cut at max_tokens (status length) are written (use) or left out (skip).")
@click.option("--include-failed", is_flag=True, hidden=True)  # the default now; kept so old scripts run
@click.option("--force", is_flag=True, help="Replace the output file if it exists.")
def export(checkpoints: tuple[str, ...], output: str, fmt: str, cut_rows: str, include_failed: bool,
           force: bool) -> None:
    """Write the results for downstream code.

    \b
    Examples:
        s2-vllm export s2_final_descriptions.jsonl -o s2_final_descriptions.json
        s2-vllm export out.jsonl --format csv -o out.csv
    """
    from s2_vllm.checkpoint import merge_rows
    from s2_vllm.export import export as export_rows, text_key_of

    paths = expand(checkpoints)
    rows, info = merge_rows(paths)
    if info.get("duplicates"):
        click.echo(f"warning: {info['duplicates']} ids appear in more than one checkpoint; the last row is kept",
                   err=True)
    count = export_rows(rows, Path(output), fmt, force=force, cut_rows="use" if include_failed else cut_rows,
                        text_key=text_key_of(paths))
    click.echo(f"wrote {count} records to {output}")


@cli.command()
@click.option("--dir", "directory", type=click.Path(file_okay=False), default="s2-vllm-demo", show_default=True,
              help="Where the demo writes its data, checkpoint and export.")
@click.option("--max-tokens", type=int, default=48, show_default=True)
@click.option("--engine", type=click.Choice(ENGINES),
              help="Default: vllm where its engine can start (a GPU, or vLLM's CPU build), else hf. With "
                   "--from-clips, step 2's engine (describe always runs on vLLM).")
@click.option("--from-clips", "--from-audio", "from_clips", is_flag=True,
              help="Start from generated video clips with audio tracks: describe their audio and their frames "
              "(step 1) -> run with three sources (step 2) -> export. Needs vLLM.")
def demo(directory: str, max_tokens: int, engine: str | None, from_clips: bool) -> None:
    """Run the whole pipeline on a tiny random model and bundled data: no GPU, no network.

    It builds (once) a tiny Qwen3-style model with random weights and a locally trained
    tokenizer, runs 50 bundled records, interrupts the run, shows `status`, resumes, and
    exports the tutorial's JSON. The model's text is noise: only the plumbing is real.
    It runs on vLLM where its engine can start (a CUDA GPU, or vLLM's CPU build) and on
    transformers otherwise, and says which.

    With --from-clips it starts one step earlier: a tiny random Qwen2.5-Omni thinker describes the
    audio of eight generated clips and a tiny random Qwen2.5-VL their frames, on vLLM (describe),
    and the two checkpoints are step 2's acoustic and visual sources.

    \b
    Examples:
        s2-vllm demo
        s2-vllm demo --from-clips --dir s2-vllm-clips-demo
    """
    from s2_vllm.demo import run_clips_demo, run_demo

    (run_clips_demo if from_clips else run_demo)(Path(directory), max_tokens=max_tokens, echo=click.echo,
                                                 engine=engine)


@cli.command("extract-labels")
@click.argument("checkpoints", nargs=-1, required=True, type=click.Path())
@click.option("-o", "--output", type=click.Path(dir_okay=False),
              help="Labels checkpoint JSONL (resumable, like run's). [default: emotion_labels.jsonl]")
@flags.use("config_path", *flags.PROMPT, "cut_rows", "limit", "shard", *flags.GENERATE, *flags.CHECKPOINT,
           max_tokens=64, temperature=0.0)
def extract_labels(checkpoints: tuple[str, ...], output: str | None, **params: Any) -> None:
    """List the emotion labels each fused description supports (OV-MER), resumable like run.

    Reads the ok and length rows of fusion checkpoints (shards are merged; --cut-rows skip reads
    ok rows only); each row of the output keeps the
    model's answer in final_description and the parsed, lower-cased labels in labels. From a
    --config, everything but [sources], [run] output/on_duplicate and [sampling]
    max_tokens/temperature (which come from the flags) applies; a [prompt] template with
    {description} replaces the built-in label prompt.

    \b
    Examples:
        s2-vllm extract-labels s2_final_descriptions.jsonl -o emotion_labels.jsonl
        s2-vllm extract-labels 'out.shard-*.jsonl' --config configs/qwen3-8b.toml
    """
    from s2_vllm.labels import extract_labels as run_stage

    config = flags.config_from(params)
    run_stage(config, _run_options(output, "emotion_labels.jsonl", params), expand(checkpoints), click.echo)


@cli.command()
@click.argument("labels", type=click.Path(dir_okay=False))
@click.option("--gold", type=click.Path(dir_okay=False), required=True, help="Gold CSV, e.g. track2_train_ovmerd.csv.")
@click.option("--gold-id-key", default="name", show_default=True, help="Gold column with the sample id.")
@click.option("--gold-key", default="openset", show_default=True, help="Gold column with the label list.")
@click.option("--synonyms", type=click.Path(dir_okay=False), help="Map label -> group: JSON object or CSV label,group.")
@click.option("--scores", type=click.Path(dir_okay=False), help="Per-sample CSV. [default: LABELS.scores.csv]")
@click.option("--force", is_flag=True, help="Replace the scores file if it exists.")
def evaluate(labels: str, gold: str, gold_id_key: str, gold_key: str, synonyms: str | None, scores: str | None,
             force: bool) -> None:
    """Score extracted labels against gold label sets: set-level precision, recall and F (OV-MER).

    Per sample with a non-empty gold set G and predicted set P: precision |G∩P|/|P| (0 when P is
    empty), recall |G∩P|/|G|; both averaged over samples, F = 2PR/(P+R).

    \b
    Example:
        s2-vllm evaluate emotion_labels.jsonl --gold track2_train_ovmerd.csv --synonyms groups.json
    """
    from s2_vllm.evaluate import evaluate as score, read_gold, read_predictions, read_synonyms, report_lines
    from s2_vllm.evaluate import write_scores

    predicted, failed = read_predictions(Path(labels))
    result = score(read_gold(Path(gold), gold_id_key, gold_key), predicted,
                   read_synonyms(Path(synonyms)) if synonyms else None)
    out = Path(scores or f"{labels}.scores.csv")
    write_scores(result, out, force=force)
    for line in report_lines(result, failed):
        click.echo(line)
    click.echo(f"per-sample scores: {out}")


def expand(patterns: tuple[str, ...]) -> list[Path]:
    """Checkpoint arguments, with globs expanded (quoted globs reach us unexpanded)."""
    import glob

    paths: list[Path] = []
    for pattern in patterns:
        matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        if not matches:
            raise UserError(f"no checkpoint matches {pattern}")
        paths.extend(Path(m) for m in matches)
    return paths


if __name__ == "__main__":
    cli()
