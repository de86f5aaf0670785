"""The label store: validated imports that write all or nothing, round files, version, re-validation."""

from __future__ import annotations

import pytest
from annotation_project import BATCH_SIZE, CLASSES, FIXTURES, store_bytes

from bilaf.annotation import (
    AnnotationRow,
    ensure_store,
    import_labels,
    labels_version,
    load_labels,
    read_annotator_file,
    round_file,
)


@pytest.fixture
def store(tmp_path):
    return tmp_path / "labels"


def rows_of(*pairs: tuple[str, str]) -> list[AnnotationRow]:
    return [AnnotationRow(number, item, label) for number, (item, label) in enumerate(pairs, start=2)]


def import_round_1(store, rows, pool_ids):
    return import_labels(store, rows, 1, pool_ids=pool_ids, batch_ids=pool_ids[:BATCH_SIZE], classes=CLASSES)


def load(store, pool_ids):
    return load_labels(store, pool_ids=pool_ids, classes=CLASSES, batches={1: pool_ids[:BATCH_SIZE]})


@pytest.mark.parametrize("name", ["label_studio_round.json", "label_studio_round.min.json", "label_studio_round.csv"])
def test_a_label_studio_export_lands_in_the_round_file_and_merged_view(store, pool_ids, name):
    report = import_round_1(store, read_annotator_file(FIXTURES / name).rows, pool_ids)
    expected = {
        pool_ids[0]: CLASSES[0],
        pool_ids[1]: CLASSES[1],
        pool_ids[2]: CLASSES[2],
        pool_ids[3]: CLASSES[0],
        pool_ids[6]: CLASSES[1],
    }  # rank 6 twice, same choice: one label
    assert (report.added, report.already_known, report.labels_total, report.batch_unlabeled) == (5, 0, 5, 2)
    assert load(store, pool_ids) == dict(sorted(expected.items()))
    ordered = sorted(expected.items())
    assert round_file(store, 1).read_text().splitlines() == [
        "id,label",
        *(
            f'{item},"{label.replace(chr(34), 2 * chr(34))}"' if "," in label else f"{item},{label}"
            for item, label in ordered
        ),
    ]
    assert (store / "labels.csv").read_text().splitlines()[0] == "id,label,round"
    assert [line.rsplit(",", 1)[1] for line in (store / "labels.csv").read_text().splitlines()[1:]] == ["1"] * 5
    assert sorted(path.name for path in store.iterdir()) == ["labels.csv", "round-001.csv"]  # no temp files left
    assert report.version == labels_version(store)


def test_parts_of_a_batch_add_up_and_reimporting_is_a_no_op(store, pool_ids):
    first = import_round_1(store, rows_of((pool_ids[3], CLASSES[1]), (pool_ids[0], CLASSES[0])), pool_ids)
    assert (first.added, first.already_known, first.batch_unlabeled) == (2, 0, BATCH_SIZE - 2)
    second = import_round_1(store, rows_of((pool_ids[0], CLASSES[0]), (pool_ids[1], CLASSES[0])), pool_ids)
    assert (second.added, second.already_known, second.labels_total) == (1, 1, 3)
    assert round_file(store, 1).read_text() == "id,label\n" + "".join(
        f"{item},{label}\n"
        for item, label in sorted([(pool_ids[0], CLASSES[0]), (pool_ids[1], CLASSES[0]), (pool_ids[3], CLASSES[1])])
    )
    before = {path.name: (path.read_bytes(), path.stat().st_mtime_ns) for path in store.iterdir()}
    again = import_round_1(store, rows_of((pool_ids[1], CLASSES[0]), (pool_ids[3], CLASSES[1])), pool_ids)
    assert (again.added, again.already_known, again.version) == (0, 2, second.version)
    assert {path.name: (path.read_bytes(), path.stat().st_mtime_ns) for path in store.iterdir()} == before


def test_labels_already_stored_in_an_earlier_round_are_known_not_out_of_batch(store, pool_ids):
    import_round_1(store, rows_of((pool_ids[0], CLASSES[0])), pool_ids)
    # A cumulative export (round 1's task again, beside round 2's) for round 2's batch: items 7 and 8.
    report = import_labels(
        store,
        rows_of((pool_ids[0], CLASSES[0]), (pool_ids[7], CLASSES[1])),
        2,
        pool_ids=pool_ids,
        batch_ids=pool_ids[7:],
        classes=CLASSES,
    )
    assert (report.added, report.already_known) == (1, 1)
    assert load_labels(
        store, pool_ids=pool_ids, classes=CLASSES, batches={1: pool_ids[:BATCH_SIZE], 2: pool_ids[7:]}
    ) == {pool_ids[0]: CLASSES[0], pool_ids[7]: CLASSES[1]}
    assert round_file(store, 2).read_text() == f"id,label\n{pool_ids[7]},{CLASSES[1]}\n"
    assert f"{pool_ids[7]},{CLASSES[1]},2" in (store / "labels.csv").read_text()


def test_nothing_to_import_writes_nothing(store, pool_ids):
    report = import_round_1(store, [], pool_ids)
    assert (report.added, report.labels_total, report.batch_unlabeled) == (0, 0, BATCH_SIZE)
    assert not store.exists()
    assert load(store, pool_ids) == {} and report.version == labels_version(store)


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (
            lambda ids: rows_of((ids[0], CLASSES[1]), ("0123456789abcdef", CLASSES[0])),
            r"1 row\(s\) with ids not in the pool: row 3 \(0123456789abcdef\)",
        ),
        (
            lambda ids: rows_of((ids[1], CLASSES[1]), (ids[8], CLASSES[0])),
            r"1 row\(s\) with ids not in round 1's batch: row 3 \(.{16}\)",
        ),
        (
            lambda ids: rows_of((ids[1], "Sneaker")),
            r"1 row\(s\) with unknown classes \(known: Ankle boot, Bag, \"large\", T-shirt/top\): row 2 \(.{16}\) 'Sneaker'",
        ),
        (
            lambda ids: rows_of((ids[1], CLASSES[1]), (ids[2], CLASSES[0]), (ids[1], CLASSES[2])),
            r"1 id\(s\) given different labels within the file: .{16} \(row 2 'Ankle boot', row 4 'Bag, \"large\"'\)",
        ),
        (
            lambda ids: rows_of((ids[1], CLASSES[1]), (ids[2], CLASSES[0]), (ids[1], CLASSES[1])),
            r"1 id\(s\) listed more than once in the file: .{16} \(rows 2, 4\)",
        ),
        (
            lambda ids: rows_of((ids[0], CLASSES[0]), (ids[0], CLASSES[0])),
            r"1 id\(s\) listed more than once in the file: .{16} \(rows 2, 3\)",
        ),
        (
            lambda ids: rows_of((ids[0], CLASSES[2])),
            r"1 row\(s\) relabel a stored id .*row 2 \(.{16}\) 'Bag, \"large\"', stored 'T-shirt/top' in round-001.csv",
        ),
    ],
    ids=[
        "unknown-id",
        "not-in-batch",
        "unknown-class",
        "conflict-in-file",
        "repeat-in-file",
        "repeat-of-stored",
        "relabel",
    ],
)
def test_a_bad_file_is_refused_naming_rows_and_nothing_is_written(store, pool_ids, rows, message):
    import_round_1(store, rows_of((pool_ids[0], CLASSES[0]), (pool_ids[5], CLASSES[2])), pool_ids)
    before = store_bytes(store)
    with pytest.raises(ValueError, match=message):
        import_round_1(store, rows(pool_ids), pool_ids)
    assert store_bytes(store) == before


def test_a_real_conflicting_export_is_refused(store, pool_ids):
    with pytest.raises(ValueError, match=r"given different labels within the file: .{16} \(row \d+ 'Bag"):
        import_round_1(store, read_annotator_file(FIXTURES / "label_studio_conflict.csv").rows, pool_ids)
    assert not store.exists()


def test_many_bad_rows_are_listed_ten_then_counted(store, pool_ids):
    unknown = [f"{index:016x}" for index in range(13)]
    with pytest.raises(ValueError) as raised:
        import_round_1(store, rows_of(*((item, CLASSES[0]) for item in unknown)), pool_ids)
    message = str(raised.value)
    assert message.startswith("13 row(s) with ids not in the pool: row 2 (0000000000000000), row 3")
    assert message.endswith(f"row 11 ({unknown[9]}) and 3 more") and "\n" not in message


def test_every_broken_rule_is_reported_at_once(store, pool_ids):
    with pytest.raises(ValueError, match=r"not in the pool: .*; 1 row\(s\) with unknown classes"):
        import_round_1(store, rows_of(("0123456789abcdef", CLASSES[0]), (pool_ids[1], "Sneaker")), pool_ids)


def test_an_in_place_edit_changes_the_version_and_a_broken_one_is_caught(store, pool_ids):
    import_round_1(store, rows_of((pool_ids[0], CLASSES[0]), (pool_ids[1], CLASSES[1])), pool_ids)
    version = labels_version(store)
    path = round_file(store, 1)
    path.write_text(path.read_text().replace(f"{pool_ids[1]},{CLASSES[1]}", f"{pool_ids[1]},{CLASSES[0]}"))
    assert labels_version(store) != version
    assert load(store, pool_ids)[pool_ids[1]] == CLASSES[0]
    assert f"{pool_ids[1]},{CLASSES[0]},1" in (store / "labels.csv").read_text()  # merged view regenerated

    edited = path.read_text()
    for broken, message in [
        (edited + f"{pool_ids[2]},Sneaker\n", r"round-001.csv row 4 \(.{16}\) 'Sneaker'"),
        (edited + f"0123456789abcdef,{CLASSES[0]}\n", r"ids not in the pool: round-001.csv row 4 \(0123456789abcdef\)"),
        (edited + f"{pool_ids[8]},{CLASSES[0]}\n", r"not in their round's batch: round-001.csv row 4"),
        (edited + f"{pool_ids[0]},{CLASSES[0]}\n", r"stored more than once: round-001.csv row 2 and .* row 4"),
        (edited + f"{pool_ids[2]}\n", r"round-001.csv: 1 row\(s\) are not `id,label` with both set: row 4"),
        (edited.replace("id,label", "item,label"), r"round-001.csv: header must be `id,label`, found `item,label`"),
    ]:
        path.write_text(broken)
        with pytest.raises(ValueError, match=message):
            load(store, pool_ids)
    path.write_text(edited)
    assert load(store, pool_ids) == {pool_ids[0]: CLASSES[0], pool_ids[1]: CLASSES[0]}


def test_round_files_need_a_batch_and_a_proper_name(store, pool_ids):
    import_round_1(store, rows_of((pool_ids[0], CLASSES[0])), pool_ids)
    round_file(store, 1).rename(round_file(store, 3))
    with pytest.raises(ValueError, match=r"round file\(s\) whose round has no batch: round-003.csv"):
        load(store, pool_ids)
    round_file(store, 3).rename(store / "round-1.csv")
    with pytest.raises(ValueError, match=r"round-1.csv: not a round file name"):
        labels_version(store)


def test_a_stale_merged_view_is_regenerated(store, pool_ids):
    import_round_1(store, rows_of((pool_ids[0], CLASSES[0])), pool_ids)
    expected = (store / "labels.csv").read_text()
    (store / "labels.csv").write_text("id,label,round\n")
    assert load(store, pool_ids) == {pool_ids[0]: CLASSES[0]}
    assert (store / "labels.csv").read_text() == expected
    (store / "labels.csv").unlink()
    version = labels_version(store)  # the merged view is not part of the version
    load(store, pool_ids)
    assert (store / "labels.csv").read_text() == expected and labels_version(store) == version


def test_an_absent_or_empty_store_has_no_labels(store, pool_ids):
    version = labels_version(store)
    assert load(store, pool_ids) == {} and not store.exists()
    ensure_store(store)
    assert (store / "labels.csv").read_text() == "id,label,round\n"
    assert labels_version(store) == version and load(store, pool_ids) == {}
