"""`s2-vllm evaluate`: set-level scores of predicted emotion labels against gold labels (OV-MER).

For each sample with a non-empty gold set G and a predicted set P (labels mapped to their
synonym group first, when a map is given): precision |G∩P|/|P| (0 when P is empty) and
recall |G∩P|/|G|. Both are averaged over the samples; F = 2PR/(P+R) of the averages.
"""

from __future__ import annotations

import ast
import csv
import io
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import IO

import orjson

from s2_vllm.checkpoint import atomic_write, merge_rows
from s2_vllm.errors import InputError, UserError
from s2_vllm.labels import normalize_label, parse_labels
from s2_vllm.stages import written_by


def demo_gold_path() -> Path:
    """The packaged gold labels for the demo data (name, openset)."""
    return Path(str(resources.files("s2_vllm") / "demo_data" / "gold_openset.csv"))


@dataclass(frozen=True)
class SampleScore:
    name: str
    gold: frozenset[str]
    predicted: frozenset[str]
    precision: float
    recall: float

    @property
    def matched(self) -> frozenset[str]:
        return self.gold & self.predicted


@dataclass
class Evaluation:
    samples: list[SampleScore]
    precision: float
    recall: float
    fscore: float
    empty_gold: int = 0  # samples in both whose gold set is empty (not scored)
    gold_only: list[str] = field(default_factory=list)  # gold samples without a prediction
    predicted_only: list[str] = field(default_factory=list)  # predictions without a gold sample


def _labels_of(value: str) -> list[str]:
    """A gold cell: a Python or JSON list literal (`['happy', 'relaxed']`), else comma-separated text."""
    text = value.strip()
    if text.startswith("["):
        try:
            parsed = ast.literal_eval(text)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            parsed = None
        if isinstance(parsed, (list, tuple)) and all(isinstance(x, str) for x in parsed):
            return list(dict.fromkeys(label for x in parsed if (label := normalize_label(x))))
    return parse_labels(text)


def _open_csv(path: Path) -> list[list[str]]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise InputError(f"file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read {path}: {exc}") from None
    try:
        return [row for row in csv.reader(io.StringIO(text, newline="")) if any(c.strip() for c in row)]
    except csv.Error as exc:
        raise InputError(f"{path} is not valid CSV: {exc}") from None


def read_gold(path: Path, id_key: str = "name", label_key: str = "openset") -> dict[str, list[str]]:
    """name -> gold labels, from a CSV with a header (OV-MERD's track2_train_ovmerd.csv)."""
    rows = _open_csv(Path(path))
    if not rows:
        raise InputError(f"{path} is empty")
    header = [c.strip() for c in rows[0]]
    for key, flag in ((id_key, "--gold-id-key"), (label_key, "--gold-key")):
        if key not in header:
            raise InputError(f"{path} has no column '{key}' (columns: {', '.join(header)}); see {flag}")
    at, lt = header.index(id_key), header.index(label_key)
    gold: dict[str, list[str]] = {}
    for line, row in enumerate(rows[1:], 2):
        if len(row) != len(header):
            raise InputError(f"{path}: row {line} has {len(row)} fields but the header has {len(header)}")
        name = row[at].strip()
        if not name:
            raise InputError(f"{path}: row {line} has an empty {id_key}")
        if name in gold:
            raise InputError(f"{path}: {id_key} '{name}' appears twice (again in row {line})")
        gold[name] = _labels_of(row[lt])
    return gold


def read_synonyms(path: Path) -> dict[str, str]:
    """label -> group: a JSON object, or a CSV of two columns label,group (an optional header)."""
    path = Path(path)
    if path.suffix.lower() == ".json":
        try:
            data = orjson.loads(path.read_bytes())
        except FileNotFoundError:
            raise InputError(f"file not found: {path}") from None
        except (OSError, orjson.JSONDecodeError) as exc:
            raise InputError(f"cannot read {path}: {exc}") from None
        if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
            raise InputError(f"{path} must be a JSON object mapping each label to its group name (a string)")
        pairs = list(data.items())
    else:
        rows = _open_csv(path)
        if rows and [c.strip().lower() for c in rows[0]] == ["label", "group"]:
            rows = rows[1:]
        for line, row in enumerate(rows, 1):
            if len(row) != 2:
                raise InputError(f"{path}: row {line} has {len(row)} fields; a synonym map has two: label,group")
        pairs = [(row[0], row[1]) for row in rows]
    return {k: g for key, group in pairs if (k := normalize_label(key)) and (g := normalize_label(group))}


def score_sample(name: str, gold: set[str] | frozenset[str], predicted: set[str] | frozenset[str]) -> SampleScore:
    hits = len(gold & predicted)
    precision = hits / len(predicted) if predicted else 0.0
    return SampleScore(name, frozenset(gold), frozenset(predicted), precision, hits / len(gold))


def evaluate(gold: dict[str, list[str]], predicted: dict[str, list[str]],
             synonyms: dict[str, str] | None = None) -> Evaluation:
    """Average precision and recall over the samples in both with a non-empty gold set; F of the averages."""
    synonyms = synonyms or {}

    def group(labels: list[str]) -> set[str]:
        return {synonyms.get(label, label) for label in labels}

    samples: list[SampleScore] = []
    empty_gold = 0
    for name, labels in gold.items():
        if name not in predicted:
            continue
        if not labels:
            empty_gold += 1
            continue
        samples.append(score_sample(name, group(labels), group(predicted[name])))
    precision = sum(s.precision for s in samples) / len(samples) if samples else 0.0
    recall = sum(s.recall for s in samples) / len(samples) if samples else 0.0
    fscore = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return Evaluation(samples, precision, recall, fscore, empty_gold,
                      [n for n in gold if n not in predicted], [n for n in predicted if n not in gold])


def read_predictions(path: Path) -> tuple[dict[str, list[str]], set[str]]:
    """(file_id -> labels of the `ok` rows, ids whose row is not ok) of an extract-labels checkpoint."""
    stage = written_by(path)
    rows, _ = merge_rows([Path(path)])
    ok_rows = [r for r in rows if r.status == "ok"]
    failed = {r.file_id for r in rows if r.status != "ok"}
    if (stage is not None and "evaluate" not in stage.read_by) or any(r.labels is None for r in ok_rows):
        raise UserError(f"{path} is not an extract-labels checkpoint; run `s2-vllm extract-labels` on it first")
    return {r.file_id: [x for x in map(normalize_label, r.labels or []) if x] for r in ok_rows}, failed


def report_lines(result: Evaluation, failed: set[str] | None = None) -> list[str]:
    """The table: counts, missing samples on either side, then one line per metric (4 decimals)."""
    lines = [f"scored samples: {len(result.samples)}" + (f" ({result.empty_gold} with an empty gold set skipped)"
                                                         if result.empty_gold else "")]
    if result.gold_only:
        n_failed = len(set(result.gold_only) & (failed or set()))
        why = f"; {n_failed} of them failed or were skipped" if n_failed else ""
        lines.append(f"missing predictions: {len(result.gold_only)} gold samples have no labels (not scored{why}), "
                     f"e.g. {', '.join(result.gold_only[:3])}")
    if result.predicted_only:
        lines.append(f"missing gold: {len(result.predicted_only)} labelled samples are not in the gold file "
                     f"(not scored), e.g. {', '.join(result.predicted_only[:3])}")
    lines += [f"{'precision':<10} {result.precision:.4f}", f"{'recall':<10} {result.recall:.4f}",
              f"{'F-score':<10} {result.fscore:.4f}"]
    return lines


def write_scores(result: Evaluation, out: Path, *, force: bool = False) -> None:
    """Per-sample CSV: name, gold, predicted, matched (JSON lists after synonym grouping), precision, recall."""
    out = Path(out)
    if out.exists() and not force:
        raise UserError(f"{out} exists; use --force to replace it")

    def write(f: IO[bytes]) -> None:
        text = io.TextIOWrapper(f, encoding="utf-8", newline="")
        writer = csv.writer(text)
        writer.writerow(["name", "gold", "predicted", "matched", "precision", "recall"])
        for s in result.samples:
            sets = [orjson.dumps(sorted(x)).decode() for x in (s.gold, s.predicted, s.matched)]
            writer.writerow([s.name, *sets, f"{s.precision:.6g}", f"{s.recall:.6g}"])
        text.flush()
        text.detach()

    try:
        atomic_write(out, write)
    except OSError as exc:
        raise UserError(f"cannot write {out}: {exc.strerror or exc}") from None
