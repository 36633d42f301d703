"""Prompt sets: GenEval's families by rule with its metadata schema and a disjoint split; files."""
import json

import pytest

from rlzoo.prompts import COCO_OBJECTS, COLORS, FAMILIES, FilePrompts, GenEvalPrompts, write


def test_geneval_families_templates_and_split():
    prompts = GenEvalPrompts(per_family=60, test_fraction=0.25, seed=0)
    train, test = prompts.train(), prompts.test()
    assert not {p.text for p in train} & {p.text for p in test}
    assert {p.family for p in test} == set(FAMILIES)
    assert 0.15 < len(test) / (len(train) + len(test)) < 0.35
    assert len(COCO_OBJECTS) == 80 and len(COLORS) == 10
    for p in train + test:
        m = p.metadata
        assert m["tag"] == p.family and m["prompt"] == p.text and p.text.startswith("a photo of ")
        for item in m["include"]:
            assert item["class"] in COCO_OBJECTS and item.get("color", "red") in COLORS
        if p.family == "counting":
            n = m["include"][0]["count"]
            assert 2 <= n <= 4 and m["exclude"] == [{"class": m["include"][0]["class"], "count": n + 1}]
        if p.family in ("colors", "color_attr"):
            assert all(item["class"] != "person" for item in m["include"])
        if p.family == "position":
            assert m["include"][1]["position"][0] in p.text
    every = GenEvalPrompts(per_family=80, families=["single_object"])  # all 80 objects, once each
    single = {p.text for p in every.train() + every.test()}
    assert len(single) == 80 and "a photo of an apple" in single and "a photo of a bus" in single


def test_geneval_split_does_not_depend_on_the_set_size():
    """A prompt's split is a function of its text: no test prompt of one set is a training
    prompt of another, whatever their sizes."""
    small, large = GenEvalPrompts(per_family=20), GenEvalPrompts(per_family=80, seed=0)
    assert not {p.text for p in small.test()} & {p.text for p in large.train()}
    assert not {p.text for p in small.train()} & {p.text for p in large.test()}


def test_bad_geneval_settings_name_the_key():
    with pytest.raises(ValueError, match="unknown prompts.families"):
        GenEvalPrompts(families=["colors", "size"])
    with pytest.raises(ValueError, match="prompts.test_fraction"):
        GenEvalPrompts(test_fraction=1.0)


def test_file_prompts_read_txt_and_geneval_jsonl(tmp_path):
    (tmp_path / "p.txt").write_text("a cat\n\na dog on a skateboard\n")
    assert [p.text for p in FilePrompts(str(tmp_path / "p.txt")).test()] == ["a cat", "a dog on a skateboard"]
    written = write(GenEvalPrompts(per_family=10), tmp_path / "out")
    again = FilePrompts(str(tmp_path / "out" / "test.jsonl"))
    assert len(again.train()) == written["test"] and {p.family for p in again.train()} <= set(FAMILIES)
    lines = (tmp_path / "out" / "test.jsonl").read_text().splitlines()
    assert json.loads(lines[0])["prompt"] == (tmp_path / "out" / "test.txt").read_text().splitlines()[0]
    split = FilePrompts(str(tmp_path / "out" / "train.jsonl"), test_fraction=0.5)
    assert split.train() and split.test() and not {p.text for p in split.train()} & {p.text for p in split.test()}
    (tmp_path / "bad.jsonl").write_text('{"text": "no prompt key"}\n')
    with pytest.raises(ValueError, match="bad.jsonl:1 is not a JSON object with a 'prompt' key"):
        FilePrompts(str(tmp_path / "bad.jsonl"))
