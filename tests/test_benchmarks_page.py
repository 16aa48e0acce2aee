"""docs/benchmarks.md is re-rendered from the stored results without re-running anything and
without losing what was written by hand around the generated blocks."""

from __future__ import annotations

import json

from benchmarks import run


def test_render_rewrites_only_the_generated_blocks(tmp_path, monkeypatch):
    monkeypatch.setattr(run, "RESULTS", tmp_path)
    # A result stored by an older runner: no wall time, no machine.
    (tmp_path / "generate.json").write_text(
        json.dumps(
            {
                "command": "python -m benchmarks.bench_generate",
                "ran_at": "2026-11-30",
                "result": {"events": 42, "nested": {"seconds": 1.5}},
            }
        )  # fmt: skip
    )
    begin = run.BEGIN.format(name="generate")
    page = "\n".join(
        [
            "# Benchmarks",
            "",
            "## generate",
            "",
            "Written by hand before the block.",
            begin,
            "| stale | 0 |",
            run.END,
            "Written by hand after the block.",
            "",
            "## score log",
            "",
            "A hand-written section with no markers: | kept | 1 |",
        ]
    )
    out = run.render(page)
    assert "| stale | 0 |" not in out
    assert "| events | 42 |" in out and "| nested.seconds | 1.5 |" in out
    assert "machine not recorded" in out
    for kept in ("Written by hand before", "Written by hand after", "| kept | 1 |"):
        assert kept in out
    # A benchmark without a section gets one appended, with a block that says it is missing.
    assert "## serving" in out and "_Not measured yet._" in out
    assert run.render(out) == out


def test_the_page_renders_from_the_stored_results_unchanged():
    page = run.PAGE.read_text()
    assert run.render(page) == page
