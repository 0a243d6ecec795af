"""Batched text-to-image generation on a tiny random model, prompt sets and prompt files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ml.generate import GenerateSettings, generate
from ml.prompts import (
    GENERAL_PROMPTS,
    HUMAN_PROMPTS,
    MAX_PROMPT_CHARS,
    MAX_PROMPTS,
    read_prompt_file,
    split_prompts,
)
from ml.sd import load_pipeline
from tests.ml.tiny_sd import TINY_IMAGE_PX, write_tiny_sd

SETTINGS = GenerateSettings(steps=2, width=TINY_IMAGE_PX, height=TINY_IMAGE_PX, batch_size=2)


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory):
    folder = write_tiny_sd(tmp_path_factory.mktemp("sd") / "text2img")
    return load_pipeline(folder, task="text2img", device="cpu")


REQUESTS = [("a photo of a face", 1), ("a cat", 2), ("a photo of a face", 3)]


@pytest.fixture(scope="module")
def images(pipeline) -> list[tuple[str, int, np.ndarray]]:
    return [(p, s, np.asarray(image)) for p, s, image in generate(pipeline, REQUESTS, SETTINGS)]


def test_generate_yields_each_request_in_order_as_rgb_images(pipeline):
    results = list(generate(pipeline, REQUESTS, SETTINGS))

    assert [(p, s) for p, s, _ in results] == REQUESTS
    assert all(
        image.mode == "RGB" and image.size == (TINY_IMAGE_PX, TINY_IMAGE_PX)
        for _, _, image in results
    )


def test_same_prompt_and_seed_give_the_same_image_wherever_it_sits_in_a_batch(pipeline, images):
    again = [np.asarray(image) for _, _, image in generate(pipeline, REQUESTS, SETTINGS)]
    for (_, _, first), second in zip(images, again, strict=True):
        np.testing.assert_array_equal(first, second)  # same batches: byte-identical

    # ("a photo of a face", 3) alone, and last in a batch of three
    alone = np.asarray(next(generate(pipeline, [REQUESTS[2]], SETTINGS))[2])
    reordered = list(
        generate(
            pipeline,
            [REQUESTS[2], REQUESTS[1], REQUESTS[0]],
            GenerateSettings(**{**SETTINGS.to_dict(), "batch_size": 3}),
        )
    )
    for other in (alone, np.asarray(reordered[0][2])):
        # the same noise; batched kernels may round a few pixels one grey level apart
        difference = np.abs(other.astype(int) - images[2][2].astype(int))
        assert difference.max() <= 1 and (difference > 0).mean() < 0.01
    np.testing.assert_allclose(
        np.asarray(reordered[2][2]).astype(int), images[0][2].astype(int), atol=1
    )


def test_different_seeds_give_different_images(images):
    face_seed_1, face_seed_3 = images[0][2].astype(int), images[2][2].astype(int)
    assert np.abs(face_seed_1 - face_seed_3).mean() > 5


def test_generation_reports_progress_and_stops_between_batches(pipeline):
    progress: list[tuple[int, int]] = []
    results = list(
        generate(
            pipeline,
            REQUESTS,
            SETTINGS,
            on_progress=lambda done, total: progress.append((done, total)),
            should_stop=lambda: len(progress) >= 1,
        )
    )
    assert [(p, s) for p, s, _ in results] == REQUESTS[:2]
    assert progress == [(2, 3)]


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (("", 1), r"empty prompt"),
        (("a cat", -1), r"seed must be"),
        (("a cat", 1.5), r"seed must be"),
    ],
)
def test_bad_requests_are_refused_before_any_work(pipeline, request_, message):
    with pytest.raises(ValueError, match=message):
        list(generate(pipeline, [("a cat", 1), request_], SETTINGS))


def test_generate_settings_round_trip_and_name_bad_fields():
    assert GenerateSettings.from_dict(SETTINGS.to_dict()) == SETTINGS
    with pytest.raises(ValueError, match=r"width must be a multiple of 8"):
        GenerateSettings.from_dict({"width": 500})
    with pytest.raises(ValueError, match=r"unknown setting sampler"):
        GenerateSettings.from_dict({"sampler": "euler"})
    with pytest.raises(ValueError, match=r"guidance must be a number"):
        GenerateSettings.from_dict({"guidance": "high"})


# --- prompt sets ----------------------------------------------------------------------------


def test_built_in_prompt_sets_are_large_distinct_and_apart():
    assert len(HUMAN_PROMPTS) >= 50 and len(set(HUMAN_PROMPTS)) == len(HUMAN_PROMPTS)
    assert len(GENERAL_PROMPTS) >= 20 and len(set(GENERAL_PROMPTS)) == len(GENERAL_PROMPTS)
    assert not set(HUMAN_PROMPTS) & set(GENERAL_PROMPTS)
    people = ("man", "woman", "person", "girl", "boy", "child", "people", "portrait", "family")
    assert not [p for p in GENERAL_PROMPTS if any(f" {w}" in f" {p.lower()}" for w in people)]
    assert all(len(p) <= MAX_PROMPT_CHARS for p in HUMAN_PROMPTS + GENERAL_PROMPTS)


def test_split_prompts_is_seeded_disjoint_and_complete():
    train, held_out = split_prompts(HUMAN_PROMPTS, 0.2, seed=7)

    assert len(held_out) == round(0.2 * len(HUMAN_PROMPTS))
    assert sorted(train + held_out) == sorted(HUMAN_PROMPTS)
    assert split_prompts(HUMAN_PROMPTS, 0.2, seed=7) == (train, held_out)
    assert split_prompts(HUMAN_PROMPTS, 0.2, seed=8)[1] != held_out
    assert train == [p for p in HUMAN_PROMPTS if p in set(train)]  # input order kept
    tiny_train, tiny_held = split_prompts(["a", "b", "a"], 0.01)  # at least one is held out
    assert len(tiny_held) == 1 and sorted(tiny_train + tiny_held) == ["a", "b"]
    with pytest.raises(ValueError, match=r"held_out_fraction"):
        split_prompts(HUMAN_PROMPTS, 1.0)


# --- prompt files ---------------------------------------------------------------------------


def test_text_prompt_file_has_one_prompt_per_line():
    data = "a photo of a face\n\n# a comment\n  an old man smiling  \r\ncafé au lait\n".encode()
    assert read_prompt_file(data, "prompts.txt") == [
        "a photo of a face",
        "an old man smiling",
        "café au lait",
    ]


def test_jsonl_and_csv_prompt_files_read_the_prompt_field():
    jsonl = b'{"prompt": "a face", "seed": 1}\n\n{"prompt": "two people, laughing"}\n'
    assert read_prompt_file(jsonl, "p.jsonl") == ["a face", "two people, laughing"]
    csv_data = b'id,prompt\n1,a face\n2,"two people, laughing"\n3,"a quote ""here"""\n'
    assert read_prompt_file(csv_data, "p.CSV") == [
        "a face",
        "two people, laughing",
        'a quote "here"',
    ]
    bom = "\ufeffprompt\na face\n".encode()
    assert read_prompt_file(bom, "excel.csv") == ["a face"]


@pytest.mark.parametrize(
    ("data", "name", "message"),
    [
        (b"a face\ncaf\xe9 au lait\n", "p.txt", r"p.txt, line 2: the file is not UTF-8"),
        (b"", "p.txt", r"p.txt: the file holds no prompts"),
        (b"\n  \n# only a comment\n", "p.txt", r"holds no prompts"),
        (
            b"a face\n" + b"x" * (MAX_PROMPT_CHARS + 1) + b"\n",
            "p.txt",
            r"line 2: the prompt has 1001 characters",
        ),
        (b'{"prompt": "a"}\n{"text": "b"}\n', "p.jsonl", r"p.jsonl, line 2: no \"prompt\" field"),
        (b'{"prompt": "a"}\n{"prompt": 3}\n', "p.jsonl", r"line 2: \"prompt\" must be text"),
        (b'{"prompt": "a"}\n\n{"prompt": \n', "p.jsonl", r"line 3: not valid JSON"),
        (b'{"prompt": "a"}\n{"prompt": "   "}\n', "p.jsonl", r"line 2: the prompt is empty"),
        (
            b"id,text\n1,a face\n",
            "p.csv",
            r"p.csv, line 1: the CSV header has no \"prompt\" column",
        ),
        (b"id,prompt\n1,a face\n2\n", "p.csv", r"p.csv, line 3: no value in the prompt column"),
        (b"a face\n", "p.json", r"must be .txt, .jsonl or .csv"),
    ],
    ids=[
        "not-utf8",
        "empty",
        "only-blank",
        "too-long",
        "missing-field",
        "not-text",
        "bad-json",
        "blank-prompt",
        "no-column",
        "short-row",
        "extension",
    ],
)
def test_bad_prompt_files_name_the_line(data, name, message):
    with pytest.raises(ValueError, match=message):
        read_prompt_file(data, name)


def test_prompt_files_over_the_count_limit_are_refused():
    ok = "".join(f"prompt {i}\n" for i in range(MAX_PROMPTS)).encode()
    assert len(read_prompt_file(ok, "p.txt")) == MAX_PROMPTS
    too_many = ok + b"one more\n"
    with pytest.raises(
        ValueError, match=rf"line {MAX_PROMPTS + 1}: more than {MAX_PROMPTS} prompts"
    ):
        read_prompt_file(too_many, "p.txt")
    rows = "".join(json.dumps({"prompt": f"p{i}"}) + "\n" for i in range(MAX_PROMPTS + 1)).encode()
    with pytest.raises(ValueError, match=r"more than"):
        read_prompt_file(rows, "p.jsonl")
