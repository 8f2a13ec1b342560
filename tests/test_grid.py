"""`analyzer grid`: a labeled contact sheet, drawn a row at a time, from thumbnails kept by content."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest
from PIL import Image

from analyzer.grid.layout import Spec, auto_shape, contact_sheet, fitted
from analyzer.grid.text import clean_label

from conftest import DATA, make_image

REQUIRE_SYSTEM_DEPS = os.environ.get("REQUIRE_SYSTEM_DEPS", "") not in ("", "0")
NOTO = Path("/usr/share/fonts/truetype/noto/NotoSans-Regular.ttf")
EMOJI = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")
CJK = Path("/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc")


def need_pyvips() -> None:
    try:
        import pyvips  # noqa: F401
    except (ImportError, OSError):
        pytest.skip("pyvips is not installed: pip install 'analyzer[grid]'")


def need_fonts() -> None:
    if all(p.is_file() for p in (NOTO, EMOJI, CJK)):
        return
    message = "Noto fonts missing (apt install fonts-noto-core fonts-noto-cjk fonts-noto-color-emoji)"
    if REQUIRE_SYSTEM_DEPS:
        pytest.fail(f"{message} (REQUIRE_SYSTEM_DEPS is set)")
    pytest.skip(f"{message}; set REQUIRE_SYSTEM_DEPS=1 to fail instead")


COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255), (255, 0, 255)] + [
    (40 * i, 200 - 30 * i, 90) for i in range(6)
]


@pytest.fixture
def swatches(tmp_path: Path) -> Path:
    """Twelve solid-colour images of different shapes, named in order c00 ... c11."""
    root = tmp_path / "swatches"
    for i, rgb in enumerate(COLOURS):
        make_image(root / f"c{i:02d}.png", size=(40 + 7 * i, 30 + 5 * (11 - i)), color=rgb)
    return root


# -- layout: pure arithmetic ----------------------------------------------------------------------
def test_an_automatic_shape_is_close_to_square_and_holds_every_image() -> None:
    spec = Spec(cell_w=100, cell_h=100, label_lines=0, gap=0)
    assert auto_shape(100, spec) == (10, 10)
    assert auto_shape(10, spec) == (3, 4)
    cols, rows = auto_shape(1000, spec, aspect=16 / 9)
    assert cols * rows >= 1000 and 1.6 < cols / rows < 2.0


def test_a_sheet_past_the_format_limit_is_cut_into_pages_of_whole_rows() -> None:
    spec = Spec(cell_w=128, cell_h=128, margin=8, gap=4, label_lines=2, line_height=14)  # 132 x 160 a cell
    wide = contact_sheet(3000, spec, cols=200, fmt="webp")
    assert wide[0].cols == (16_383 - 16 + 4) // 132  # as many columns as WebP's 16,383 px allow
    pages = contact_sheet(30_000, spec, cols=100, fmt="webp")
    assert len(pages) > 1
    assert all(page.width <= 16_383 and page.height <= 16_383 for page in pages)
    assert sum(page.count for page in pages) == 30_000
    assert [page.first for page in pages] == [sum(p.count for p in pages[:i]) for i in range(len(pages))]
    (single,) = contact_sheet(30_000, spec, cols=100, fmt="png")  # PNG streams: one tall page
    assert single.height == 8 + 300 * 160 - 4 + 8


def test_fit_shows_the_whole_image_and_fill_covers_the_cell() -> None:
    assert fitted(400, 200, 128, 128, "fit")[:2] == (128, 64)
    w, h, crop = fitted(400, 200, 128, 128, "fill")
    assert (w, h) == (256, 128) and (crop.x, crop.w, crop.h) == (64, 128, 128)


def test_labels_with_control_characters_and_undecodable_bytes_are_drawn_as_visible_symbols() -> None:
    assert clean_label("a\x1b[31mred\x07") == "a\u241b[31mred\u2407"
    assert clean_label("evil\u202egnp.exe") == "evilgnp.exe"  # no reversing of what follows
    assert clean_label(os.fsdecode(b"caf\xe9.png")) == "caf\ufffd.png"
    assert clean_label("tab\there\x00") == "tab here\u2400"


# -- the command ----------------------------------------------------------------------------------
def test_every_image_lands_in_the_cell_the_layout_gives_it(cli, swatches, tmp_path) -> None:
    need_pyvips()
    out = tmp_path / "sheet.png"

    outcome = cli("grid", swatches, "-o", out, "--cols", "4", "--cell", "32", "--label", "none", "--fit", "fill")

    assert outcome.code == 0, outcome.log
    spec = Spec(cell_w=32, cell_h=32, fit="fill", label_lines=0, line_height=14)
    (page,) = contact_sheet(12, spec, cols=4)
    with Image.open(out) as sheet:
        assert sheet.size == (page.width, page.height)
        for i, rgb in enumerate(COLOURS):
            box = page.cell(i)
            found = sheet.getpixel((box.x + box.w // 2, box.y + box.h // 2))
            assert max(abs(a - b) for a, b in zip(found, rgb, strict=True)) <= 3  # via a JPEG thumbnail
        assert sheet.getpixel((1, 1)) == (255, 255, 255)  # the margin


def test_labels_are_drawn_under_the_cells(cli, swatches, tmp_path) -> None:
    need_pyvips()
    out = tmp_path / "sheet.png"
    outcome = cli("grid", swatches, "-o", out, "--cols", "4", "--cell", "64")

    assert outcome.code == 0, outcome.log
    spec = Spec(cell_w=64, cell_h=64, label_lines=2, line_height=14)
    (page,) = contact_sheet(12, spec, cols=4)
    with Image.open(out) as sheet:
        for i in range(12):
            label = page.label(i)
            strip = sheet.convert("L").crop((label.x, label.y, label.x + label.w, label.y + label.h))
            low, high = strip.getextrema()
            assert high - low > 100, f"the label of cell {i} is blank"


def test_scripts_and_colour_emoji_are_drawn_with_the_installed_fonts(tmp_path) -> None:
    need_pyvips()
    need_fonts()
    from analyzer.grid.text import Labeller

    drawn = Labeller(200, 2, 20).render("猫 🎨").convert("RGB")
    colours = {drawn.getpixel((x, y)) for x in range(drawn.width) for y in range(drawn.height)}
    saturated = {c for c in colours if max(c) - min(c) > 80}
    assert len(saturated) > 10  # the emoji is a colour glyph, not a black box or tofu


def test_a_long_label_is_cut_to_its_lines_with_an_ellipsis(tmp_path) -> None:
    need_pyvips()
    from analyzer.grid.text import Labeller

    labeller = Labeller(80, 2, 14)
    short, long = labeller.render("a cat"), labeller.render("a photo of a cat " * 20)
    assert long.height <= 2 * 14
    assert short.getbbox() is not None and long.getbbox() is not None


def test_csv_labels_win_over_results_which_win_over_file_names(cli, sd_images, tmp_path, monkeypatch) -> None:
    need_pyvips()
    from analyzer.grid import sheet as grid

    assert cli("run", sd_images, "--plugins", "metadata").code == 0
    (sd_images / "unanalysed.png").write_bytes((sd_images / "invokeai_dream1.png").read_bytes()[:-20])  # no results
    table = tmp_path / "labels.csv"
    table.write_text("file,seed,sampler\nautomatic1111_cropped.png,1,from csv\n")
    made: list[grid.GridResult] = []
    real = grid.make_grid
    monkeypatch.setattr(grid, "make_grid", lambda *args: made.append(real(*args)) or made[-1])

    template = "seed {metadata.parameters.seed}"
    outcome = cli(
        "grid", sd_images, "-o", tmp_path / "s.png", "--csv", table, "--label-columns", "sampler", "--label", template
    )

    assert outcome.code in (0, 1), outcome.log
    labels = {cell.rel: (cell.label, cell.source) for cell in made[0].cells}
    assert labels["automatic1111_cropped.png"] == ("from csv", "csv")  # the CSV first
    assert labels["invokeai_dream1.png"] == ("seed 2980747362", "template")  # then the stored results
    assert labels["unanalysed.png"][0] == "unanalysed.png"  # then the file name


def test_a_csv_without_the_asked_column_is_refused_naming_it(cli, swatches, tmp_path) -> None:
    need_pyvips()
    table = tmp_path / "labels.csv"
    table.write_text("file,seed\nc00.png,1\n")
    outcome = cli("grid", swatches, "-o", tmp_path / "s.png", "--csv", table, "--label-columns", "cfg")
    assert outcome.code == 2
    assert "no column 'cfg'" in outcome.err


def test_an_unreadable_image_is_a_grey_cell_labelled_with_its_error(cli, tmp_path) -> None:
    need_pyvips()
    root = tmp_path / "mixed"
    shutil.copytree(DATA / "bad-images", root)
    make_image(root / "good.png", size=(20, 20), color=(255, 0, 0))
    out = tmp_path / "sheet.png"

    outcome = cli("grid", root, "-o", out, "--cols", "5", "--cell", "32")

    assert outcome.code == 1
    assert "could not be read" in outcome.log and "Traceback" not in outcome.err
    with Image.open(out) as sheet:
        assert sheet.getpixel(_centre(0, 5, 32)) == (200, 200, 200)  # empty_file.png: a grey cell
        assert sheet.getpixel(_centre(3, 5, 32))[0] > 240  # good.png: red
    assert "empty_file.png: empty file (0 bytes)" in outcome.log


def _centre(i: int, cols: int, cell: int) -> tuple[int, int]:
    (page,) = contact_sheet(5, Spec(cell_w=cell, cell_h=cell, label_lines=2, line_height=14), cols=cols)
    box = page.cell(i)
    return box.x + box.w // 2, box.y + box.h // 2


def test_a_large_sheet_becomes_numbered_pages(cli, swatches, tmp_path) -> None:
    need_pyvips()
    out = tmp_path / "sheet.webp"
    outcome = cli("grid", swatches, "-o", out, "--cols", "4", "--cell", "32", "--page-pixels", "20000")

    assert outcome.code == 0, outcome.log
    pages = sorted(tmp_path.glob("sheet-*.webp"))
    assert len(pages) >= 2 and not out.exists()
    assert [p.name for p in pages][:2] == ["sheet-001.webp", "sheet-002.webp"]
    for page in pages:
        with Image.open(page) as image:
            assert image.width * image.height <= 20000


def test_thumbnails_are_made_once_and_the_sheet_is_not_written_inside_the_folder(cli, swatches, tmp_path) -> None:
    need_pyvips()
    first = cli("grid", swatches, "-o", tmp_path / "a.png", "--cell", "32")
    again = cli("grid", swatches, "-o", tmp_path / "b.png", "--cell", "32")
    assert "12 thumbnails made" in first.log and "0 thumbnails made" in again.log
    refused = cli("grid", swatches, "-o", swatches / "sheet.png")
    assert refused.code == 2 and "inside the folder" in refused.err


# -- comparison grids -----------------------------------------------------------------------------
def render(path: Path, steps: int, sampler: str, seed: int, color: tuple[int, int, int]) -> Path:
    """A PNG with AUTOMATIC1111 generation parameters, as the web UI writes them."""
    params = (
        f"a cat\nNegative prompt: blurry\nSteps: {steps}, Sampler: {sampler}, CFG scale: 7, Seed: {seed}, Size: 8x8"
    )
    return make_image(path, size=(16, 16), color=color, text={"parameters": params})


STEP_COLOURS = {15: (255, 0, 0), 30: (0, 160, 0), 100: (0, 0, 255)}


@pytest.fixture
def renders(tmp_path: Path, cli) -> Path:
    """Steps 15, 30, 100 by samplers Euler a and DPM++ 2M, two seeds each, coloured by steps; no
    image has steps 100 with DPM++ 2M."""
    root = tmp_path / "renders"
    for steps, colour in STEP_COLOURS.items():
        for sampler in ("Euler a", "DPM++ 2M"):
            if (steps, sampler) == (100, "DPM++ 2M"):
                continue
            for seed in (1, 2):
                render(root / f"{steps}-{sampler.replace(' ', '')}-{seed}.png", steps, sampler, seed, colour)
    assert cli("run", root, "--plugins", "metadata").code == 0
    return root


def test_axis_values_sort_as_what_they_mean_not_as_stored_text() -> None:
    from analyzer.grid.axes import axis

    found, _ = axis("steps", ["15", "100", 30, "5", 5.0, None, "7.5"])
    assert [label for _, label in found.values] == ["5", "7.5", "15", "30", "100", "(none)"]
    seeds, _ = axis("seed", ["6952411511246973023", "280823642470253"])
    assert [label for _, label in seeds.values] == ["280823642470253", "6952411511246973023"]  # every digit kept


def test_a_prompt_axis_is_labelled_by_the_words_that_differ() -> None:
    from analyzer.grid.axes import prompt_labels

    assert prompt_labels(["a photo of a cat, 8k", "a photo of a dog, 8k", "a photo of a red fox, 8k"]) == [
        "cat",
        "dog",
        "red fox",
    ]
    assert prompt_labels(["a castle", "a castle at night"]) == ["(base)", "at night"]


def test_auto_axes_lay_out_what_varies_with_headers_and_empty_cells_for_missing_combinations(
    cli, renders, tmp_path
) -> None:
    need_pyvips()
    from analyzer.grid.layout import comparison_sheet, with_title

    out = tmp_path / "xy.png"
    outcome = cli("grid", renders, "-o", out, "--auto-axes", "--cell", "32")

    assert outcome.code == 0, outcome.log
    assert "axis steps: 15, 30, 100" in outcome.log  # numbers in numeric order, X: the numeric axis
    assert "axis sampler: DPM++ 2M, Euler a" in outcome.log
    spec = with_title(Spec(cell_w=32, cell_h=32, label_lines=2, line_height=14), "x")
    page = comparison_sheet(3, 2, (2, 1), spec, header=14 * 2 + 4, left=96)  # two seeds side by side
    with Image.open(out) as sheet:
        assert sheet.size == (page.width, page.height)
        for xi, steps in enumerate((15, 30, 100)):
            for yi, sampler in enumerate(("DPM++ 2M", "Euler a")):
                for seed in (0, 1):
                    box = page.cell(yi * page.cols + xi * 2 + seed)
                    found = sheet.getpixel((box.x + box.w // 2, box.y + box.h // 2))
                    if (steps, sampler) == (100, "DPM++ 2M"):
                        expected = (238, 238, 238) if seed == 0 else (255, 255, 255)  # "none: ..." then nothing
                    else:
                        expected = STEP_COLOURS[steps]
                    assert max(abs(a - b) for a, b in zip(found, expected, strict=True)) <= 3, (steps, sampler, seed)
        header = sheet.convert("L").crop((page.column_left(0), 8 + 18, page.column_left(2), page.band_top(0)))
        assert header.getextrema()[0] < 100  # the X header is drawn


def test_explicit_axes_and_a_sheet_per_z_value(cli, renders, tmp_path) -> None:
    need_pyvips()
    out = tmp_path / "by.png"
    outcome = cli("grid", renders, "-o", out, "--x", "seed", "--y", "steps", "--z", "sampler", "--cell", "24")

    assert outcome.code == 0, outcome.log
    assert sorted(p.name for p in tmp_path.glob("by-*.png")) == ["by-DPM++ 2M.png", "by-Euler a.png"]


def test_auto_axes_refuse_images_that_do_not_make_a_grid(cli, sd_images, tmp_path) -> None:
    need_pyvips()
    assert cli("run", sd_images, "--plugins", "metadata").code == 0
    refused = cli("grid", sd_images, "-o", tmp_path / "xy.png", "--auto-axes")
    assert refused.code == 2
    assert "do not make a comparison grid" in refused.err and "--x and --y" in refused.err


def test_batch_makes_a_sheet_per_folder_and_redraws_only_what_changed(cli, tmp_path) -> None:
    need_pyvips()
    folders = []
    for name, rgb in (("cats", (255, 0, 0)), ("dogs", (0, 0, 255))):
        for i in range(3):
            make_image(tmp_path / name / f"{i}.png", size=(16, 16), color=rgb)
        folders.append(tmp_path / name)
    out = tmp_path / "sheets"

    first = cli("grid", "--batch", *folders, "-o", out, "--cell", "32")
    assert first.code == 0, first.log
    assert sorted(p.name for p in out.glob("*.png")) == ["cats.png", "dogs.png"]
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("*.png")}

    again = cli("grid", "--batch", *folders, "-o", out, "--cell", "32")
    assert again.log.count("unchanged, not redrawn") == 2
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.png")} == stamps

    make_image(tmp_path / "dogs" / "3.png", size=(16, 16), color=(0, 0, 200))  # one folder changes
    third = cli("grid", "--batch", *folders, "-o", out, "--cell", "32")
    assert third.log.count("unchanged, not redrawn") == 1
    assert (out / "cats.png").stat().st_mtime_ns == stamps["cats.png"]
    assert (out / "dogs.png").stat().st_mtime_ns != stamps["dogs.png"]


def test_use_clip_labels_by_the_concept_bank_computed_and_stored_first(cli, swatches, tmp_path, colours) -> None:
    need_pyvips()
    pytest.importorskip("open_clip", reason="the clip extra is not installed")
    from analyzer.grid import sheet as grid

    made: list[grid.GridResult] = []
    real = grid.make_grid
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(grid, "make_grid", lambda *args: made.append(real(*args)) or made[-1])
        outcome = cli("grid", swatches, "-o", tmp_path / "s.png", "--use-clip")

    assert outcome.code == 0, outcome.log
    assert all(cell.label.startswith("a photo of a ") and cell.source == "template" for cell in made[0].cells)
    stored = json.loads((swatches / "c00.png.classify.json").read_text())
    assert "concepts" in stored["analysis"]  # computed through the pipeline, and kept


def test_use_clip_without_the_clip_extra_falls_back_to_file_names_in_one_line(cli, swatches, tmp_path, monkeypatch):
    need_pyvips()
    monkeypatch.setitem(sys.modules, "open_clip", None)  # as if not installed
    outcome = cli("grid", swatches, "-o", tmp_path / "s.png", "--use-clip")
    assert outcome.code == 0, outcome.log
    assert outcome.log.count("the clip extra is not installed") == 1


def test_a_background_colour_and_a_legend_saying_what_the_labels_show(cli, swatches, tmp_path) -> None:
    need_pyvips()
    out = tmp_path / "sheet.png"
    outcome = cli("grid", swatches, "-o", out, "--cell", "32", "--background", "#102030", "--legend")

    assert outcome.code == 0, outcome.log
    with Image.open(out) as sheet:
        assert sheet.getpixel((1, 1)) == (16, 32, 48)
        legend = sheet.convert("L").crop((8, 8, sheet.width - 8, 8 + 14))
        assert legend.getextrema()[1] - legend.getextrema()[0] > 50  # "12 images; labels: 12 file name"
    refused = cli("grid", swatches, "-o", out, "--background", "not-a-colour")
    assert refused.code == 2 and "--background" in refused.err


def test_a_sheet_is_not_written_where_a_watcher_would_take_it_for_a_new_image(cli, swatches, tmp_path, monkeypatch):
    need_pyvips()
    watched = tmp_path / "watched"
    watched.mkdir()
    monkeypatch.setenv("ANALYZER_ROOTS", str(watched))
    refused = cli("grid", swatches, "-o", watched / "sheet.png")
    assert refused.code == 2 and "configured as a root" in refused.err
    hidden = cli("grid", swatches, "-o", watched / ".sheets" / "sheet.png", "--cell", "32")
    assert hidden.code == 0, hidden.log
