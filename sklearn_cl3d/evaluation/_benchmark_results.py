"""Results files of :func:`benchmark`: the cells already done, the saved
networks, the per-label-count draw seeds, and the tidy outputs and tables."""

from __future__ import annotations

import json

import numpy as np

from ._benchmark_setup import _FIXED, _RESULTS, _InputError
from ._runs import (
    _fmt_ci,
    _write_json,
)
from ._splits import (
    _MAX_SEED,
)
from ._statistics import paired_differences, summarize
from ._tables import _COLUMNS, _as_frame

# ------------------------------------------------------------------ results


def _key(row):
    seed = row.get("seed")
    return (row["method"], row["protocol"], int(row["n_labels"]), int(row["repeat"]),
            None if seed is None else int(seed))  # fmt: skip


def _save_network(est, path, log):
    """Keep a pretrained network, so that a resumed run scores new cells
    without pretraining it again."""
    from ..persistence import save_pretrained

    try:
        save_pretrained(est, path)
    except (OSError, ValueError, TypeError) as exc:
        log(f"  (not saved to {path}: {type(exc).__name__}: {exc})")


def _load_network(path, common, log):
    """The network saved at ``path`` by an earlier call, or None."""
    from ..persistence import load_pretrained

    if not path.is_dir():
        return None
    try:
        params = {k: common[k] for k in ("device", "verbose") if k in common}
        return [load_pretrained(path, **params)]
    except Exception as exc:  # noqa: BLE001 - any failure: pretrain again
        log(f"  {path} cannot be read back ({type(exc).__name__}: {exc}); "
            "pretraining again")  # fmt: skip
        return None


def _draw_seed(random_state, n):
    """Seed of the draws of ``n`` labelled subjects: fixed by ``random_state``
    and ``n`` alone, whatever the other label counts."""
    seq = np.random.SeedSequence([int(random_state) % 2**32, int(n)])
    return int(seq.generate_state(1)[0] % _MAX_SEED)


def _previous_n_labels(out, resume):
    """Label counts of the scores already in ``out/results.json`` (none when
    it is missing or unreadable: :func:`_load_previous` says why)."""
    try:
        rows = json.loads((out / _RESULTS).read_text())["scores"] if resume else []
        return sorted({int(r["n_labels"]) for r in rows})
    except (OSError, ValueError, KeyError, TypeError):
        return []


def _load_previous(out, config, log):
    """The rows of ``out/results.json`` made with the same settings."""
    path = out / _RESULTS
    if not path.is_file():
        return [], {}
    try:
        payload = json.loads(path.read_text())
        old, rows = payload["config"], list(payload["scores"])
        for row in rows:
            _key(row)
    except (ValueError, KeyError, TypeError) as exc:
        raise _InputError(
            f"{path} cannot be resumed ({type(exc).__name__}: {exc}): move it away or "
            "pass resume=False (--no-resume) to start again."
        ) from None
    mine = json.loads(json.dumps({k: config[k] for k in _FIXED}, default=str))
    differ = [k for k in _FIXED if old.get(k) != mine[k]]
    if differ:
        why = ""
        if "label_draws" in differ:
            why = (
                " (it was made by an earlier version, whose draws of the labelled "
                "subjects depended on the whole n_labels list)"
            )
        elif "cohort" in differ:
            why = " (the built-in cohort grows with the largest n_labels, --labels)"
        raise _InputError(
            f"{path} was made with other settings ({', '.join(differ)}){why}: its "
            "cells are not comparable. Use another output folder (--out), or "
            "resume=False (--no-resume) to overwrite it."
        )
    log(f"Resuming from {path}: {len(rows)} scores already there")
    return rows, dict(payload.get("fit_seconds", {}))


def _write_outputs(out, config, machine, rows, fit_seconds, seconds, log, tables):
    """results.json/.csv, and with ``tables`` summary.csv and differences.csv
    (also in results.json); returns the summary and the differences."""
    summary = summarize(rows) if tables else []
    differences = []
    methods = list(dict.fromkeys(r["method"] for r in rows)) if tables else []
    for reference in methods[:-1]:
        try:
            found = paired_differences(
                rows, reference=reference, random_state=config["random_state"]
            )
        except ValueError as exc:
            log(f"(no paired differences to {reference}: {exc})")
            continue
        later = methods[methods.index(reference) + 1 :]
        differences += [
            {k: v for k, v in d.items() if k != "differences"}
            for d in found
            if d["method"] in later
        ]
    payload = {
        "config": config,
        "machine": machine,
        "scores": rows,
        "summary": summary,
        "differences": differences,
        "fit_seconds": fit_seconds,
        "seconds": seconds,
    }
    _write_json(out / _RESULTS, payload)
    frames = {"results.csv": _as_frame(rows, _COLUMNS)}
    if summary:
        frames["summary.csv"] = _as_frame(summary, list(summary[0]))
    if differences:
        frame = _as_frame(differences, list(differences[0]))
        frames["differences.csv"] = frame.drop(columns=["seeds", "splits"])
    for name, frame in frames.items():
        tmp = out / (name + ".tmp")
        frame.to_csv(tmp, index=False)
        tmp.replace(out / name)
    return summary, differences


def _print_tables(summary, differences, n_labels, log):
    log("\nScore: mean ± sd over pretraining seeds x splits")
    log(f"{'method':<24}" + "".join(f"{n:>16}" for n in n_labels))
    for m, p in dict.fromkeys((s["method"], s["protocol"]) for s in summary):
        cells = {
            s["n_labels"]: s for s in summary if s["method"] == m and s["protocol"] == p
        }
        name = m if p == "linear_probe" else f"{m} (fine-tuned)"
        text = [
            f"{cells[n]['mean']:.3f} ± {cells[n]['std']:.3f}" if n in cells else "-"
            for n in n_labels
        ]
        log(f"{name:<24}" + "".join(f"{c:>16}" for c in text))
    if not differences:
        return
    log("\nPaired differences (method − reference) [95 % bootstrap CI]")
    log(f"{'':<40}" + "".join(f"{n:>26}" for n in n_labels))
    pairs = dict.fromkeys(
        (d["method"], d["reference"], d["protocol"]) for d in differences
    )
    for m, ref, p in pairs:
        cells = {
            d["n_labels"]: d
            for d in differences
            if (d["method"], d["reference"], d["protocol"]) == (m, ref, p)
        }
        name = f"{m} − {ref}" + ("" if p == "linear_probe" else " (ft)")
        text = [_fmt_ci(cells[n]) if n in cells else "-" for n in n_labels]
        log(f"{name:<40}" + "".join(f"{c:>26}" for c in text))
