"""`lumos demo`: a tour with a time budget however many sections exist, one section in full,
every section alike (header, timing), an index of every file written, notes beside surprising numbers."""
import time
from types import SimpleNamespace

import pytest

from lumos.cli import main
from lumos.report.demo import DemoSection, _evidence_note, _row_labels, _image_world, run_demo, sections


def _fake(name, seconds=0.0, fail=False, calls=None):
    def run(out, quick, files):
        if calls is not None:
            calls.append((name, quick))
        time.sleep(seconds)
        if fail:
            raise RuntimeError(f"{name} broke")
        path = out / f"{name}.txt"
        path.write_text(name)
        files[str(path)] = f"what {name} shows"
        return [f"  {name} line"]

    return DemoSection(name, f"title of {name}", run)


def test_tour_keeps_its_budget_however_many_sections(tmp_path):
    calls = []
    many = [_fake(f"s{i}", 0.1, calls=calls) for i in range(40)]
    t0 = time.perf_counter()
    result = run_demo(tmp_path, budget_s=0.35, available=many, log=lambda line: None)
    wall = time.perf_counter() - t0
    assert wall < 1.5  # 40 sections of 0.1 s would take 4 s
    ran = [n for n, _ in calls]
    assert 3 <= len(ran) <= 6 and ran == [f"s{i}" for i in range(len(ran))]
    assert all(quick for _, quick in calls)  # the tour runs every section's quick form
    assert result.skipped == [f"s{i}" for i in range(len(ran), 40)]
    text = result.summary.read_text()
    assert "lumos demo " + " ".join(result.skipped) in text  # how to run what was left


def test_every_section_prints_alike_and_the_index_lists_every_file(tmp_path):
    result = run_demo(tmp_path, budget_s=None, available=[_fake("a"), _fake("b")], log=lambda line: None)
    text = result.summary.read_text()
    for k, name in enumerate(["a", "b"], 1):
        assert f"== [{k}/2] {name}: title of {name} ==" in text
        assert f"  -- {name}: " in text and " s wall, " in text and " s CPU" in text
    index = result.index.read_text().splitlines()
    listed = {line.split()[0]: line for line in index[2:]}
    assert set(listed) == {"a.txt", "b.txt", "summary.txt", "index.txt"}
    assert "what a shows" in listed["a.txt"]
    assert {p.name for p in tmp_path.iterdir()} == set(listed)  # nothing written that the index misses


def test_named_sections_run_in_full_and_unknown_ones_are_refused(tmp_path):
    calls = []
    avail = [_fake("a", calls=calls), _fake("b", calls=calls), _fake("c", calls=calls)]
    run_demo(tmp_path, only=["c", "a"], available=avail, log=lambda line: None)
    assert calls == [("c", False), ("a", False)]
    calls.clear()
    run_demo(tmp_path, full=True, budget_s=0.0, available=avail, log=lambda line: None)
    assert calls == [("a", False), ("b", False), ("c", False)]  # --all: no budget
    with pytest.raises(ValueError, match="section.*'a', 'b', 'c'"):
        run_demo(tmp_path, only=["d"], available=avail)


def test_a_broken_section_does_not_hide_the_others(tmp_path):
    result = run_demo(tmp_path, budget_s=None, available=[_fake("a", fail=True), _fake("b")], log=lambda line: None)
    assert result.failed == ["a"]
    text = result.summary.read_text()
    assert "section a failed: RuntimeError: a broke" in text and "  b line" in text


def test_every_family_is_a_section():
    import lumos

    names = [s.name for s in sections()]
    # the tabular families in this order; the later families' sections (examples, ...) follow them
    i = names.index("tabular")
    assert names[0] == "predictions" and names[i:i + 3] == ["tabular", "effects", "metrics"]
    image_families = {m.family for m in lumos.methods() if m.func.__module__.startswith("lumos.attribution")}
    assert image_families <= set(names)
    assert len(names) == len(set(names))


def test_notes_beside_surprising_numbers():
    assert _evidence_note("saliency", 0.20, 0.05, {}) == ""
    note = _evidence_note("occlusion", 0.04, 0.05, {"window": 8})
    assert "uniform map (5.0%)" in note and "zero fill" in note
    assert "zero fill" not in _evidence_note("occlusion", 0.04, 0.05, {"fill": "blur"})
    assert "uniform" in _evidence_note("rise", 0.04, 0.05, {}) and "zero fill" not in _evidence_note("rise", 0.04, 0.05, {})

    from lumos.metrics._demo import chance_notes

    res = {("random", "deletion"): 0.30, ("saliency", "deletion"): 0.40, ("gradcam", "deletion"): 0.10,
           ("random", "insertion"): 0.50, ("saliency", "insertion"): 0.60, ("gradcam", "insertion"): 0.70}
    comp = SimpleNamespace(
        methods=["saliency", "gradcam", "random"], metrics=["deletion", "insertion"],
        result=lambda m, k: SimpleNamespace(mean=res[m, k]),
        direction=lambda k: "lower" if k == "deletion" else "higher")
    notes = chance_notes(comp)
    assert len(notes) == 1
    assert "random baseline (0.3) beats saliency 0.4 on deletion (lower is better)" in notes[0]


def test_grid_rows_name_the_true_and_the_explained_class():
    world = _image_world(quick=True)
    labels = _row_labels(world)
    assert len(labels) == len(world.images) == 4
    names = world.names
    for lab, t, p in zip(labels, world.labels, world.pred):
        assert lab.startswith(f"true {names[t]}\npred {names[p]}")
    # the tour keeps the watermarked square that the shortcut turns into a circle
    assert "true square\npred circle + mark" in labels


def test_one_image_section_in_full(tmp_path, capsys):
    assert main(["demo", "cam", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "== [1/1] cam: class-activation maps ==" in out
    for m in ("gradcam", "scorecam", "layercam"):
        assert f"  {m} " in out
    index = (tmp_path / "index.txt").read_text()
    assert "image_cam.png" in index and "true and the predicted class (7 demo images)" in index
    assert (tmp_path / "image_cam.png").stat().st_size > 10_000


def test_tabular_tour_form_records_its_pictures(tmp_path):
    from lumos.agnostic._demo import tabular_demo

    files = {}
    lines = tabular_demo(tmp_path, quick=True, files=files)
    text = "\n".join(lines)
    assert "lime" in text and "kernel_shap on the true formula" in text
    assert set(files) == {str(tmp_path / "tabular_kernel_shap.png"), str(tmp_path / "tabular_lime.png")}
    assert all(len(w) > 20 for w in files.values())


def test_demo_list(capsys):
    assert main(["demo", "--list"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in out] == [s.name for s in sections()]
