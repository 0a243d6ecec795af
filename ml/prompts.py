"""Prompt sets for generating and evaluating diffusion models, and reading uploaded prompt files.

``HUMAN_PROMPTS`` draw people (portraits, groups, ages, lighting, styles, poses): the faces Face
Score and the fine-tuned models are judged on. ``GENERAL_PROMPTS`` draw no people: a fine-tuned
model must not get worse at them (the paper's "general ability" check). ``split_prompts`` holds
some prompts out of training, so an evaluation can be run on prompts the model never saw.
"""

from __future__ import annotations

import csv
import io
import json
import random
from collections.abc import Sequence

__all__ = [
    "GENERAL_PROMPTS",
    "HUMAN_PROMPTS",
    "MAX_PROMPTS",
    "MAX_PROMPT_CHARS",
    "read_prompt_file",
    "split_prompts",
]

MAX_PROMPTS = 10_000
MAX_PROMPT_CHARS = 1_000

HUMAN_PROMPTS: list[str] = [
    # close portraits, lighting
    "a close-up portrait photo of a young woman with freckles, soft window light",
    "a studio headshot of a middle-aged man in a grey suit, neutral background",
    "a portrait of an elderly woman with deep wrinkles and kind eyes, natural light",
    "a portrait of a smiling teenage boy with braces, outdoors in the afternoon",
    "a portrait of a little girl laughing, golden hour backlight",
    "a close-up of a bearded man with glasses, dramatic side lighting",
    "a black and white portrait of an old fisherman, high contrast",
    "a portrait of a woman with curly red hair under neon lights at night",
    "a portrait of a man in his thirties lit by a single candle",
    "a portrait of a woman wearing a hijab, soft overcast daylight",
    "a portrait of a young man with a shaved head, rim lighting, dark background",
    "a portrait of a grandmother knitting by the fireplace, warm light",
    "a headshot of a nurse in scrubs, hospital corridor background",
    "a portrait of a chef in a white jacket in a busy kitchen",
    "a portrait of a farmer in a straw hat in a wheat field at sunset",
    "a portrait of a firefighter with soot on his face",
    "a portrait of a ballet dancer with her hair in a bun, stage lights",
    "a portrait of a boy wearing a baseball cap, harsh midday sun",
    "a portrait of a woman with a pearl necklace, Rembrandt lighting",
    "a portrait of a man with a long grey beard, in the rain",
    # ages and people
    "a newborn baby sleeping in its mother's arms",
    "a toddler eating ice cream on a sunny beach",
    "twin sisters smiling at the camera in a park",
    "a centenarian man celebrating his birthday with a cake",
    "a teenage girl reading a book on a train",
    "a young father carrying his son on his shoulders",
    "an old couple holding hands on a park bench",
    "a middle-aged woman jogging along a river at dawn",
    # groups
    "a group photo of five friends at a rooftop party",
    "a family of four having dinner at a kitchen table",
    "a wedding photo of the bride and groom with their guests",
    "a classroom of children raising their hands",
    "three coworkers laughing in a meeting room",
    "a football team celebrating a goal",
    "a crowd of people at an outdoor concert, faces lit by stage lights",
    "two old friends playing chess in a city park",
    "a street market with vendors and shoppers, candid photo",
    "a choir singing in a church",
    # poses and views
    "a woman looking over her shoulder in a busy street",
    "a profile view of a man looking at the sea",
    "a person taking a selfie in front of the Eiffel Tower",
    "a man sitting on the stairs with his head resting on his hand",
    "a woman lying in the grass, seen from above",
    "a full-body photo of a skateboarder mid-jump",
    "a musician playing the violin with eyes closed",
    "a scientist looking through a microscope in a lab",
    "a soldier in uniform saluting, three-quarter view",
    "a mountaineer with frost on her eyebrows at the summit",
    # styles
    "an oil painting of a nobleman in renaissance clothing",
    "a watercolor portrait of a girl with a flower crown",
    "a pencil sketch of an old man's face",
    "an anime-style portrait of a girl with blue hair",
    "a 1970s film photo of a woman with big sunglasses",
    "a cinematic still of a detective in a trench coat, film noir",
    "a 3D render of a smiling young man, studio lighting",
    "a vintage sepia photograph of a family in the 1900s",
    "a fashion magazine cover of a model with bold makeup",
    "a pop art portrait of a woman with bright colors",
    "a photorealistic portrait of an astronaut in a helmet with the visor up",
    "a digital painting of a warrior woman with a scar across her cheek",
    "a polaroid photo of teenagers at a summer camp",
    "a documentary photo of a mother and daughter in a village",
]

GENERAL_PROMPTS: list[str] = [
    "a snowy mountain landscape at sunrise",
    "a red vintage car parked on a cobblestone street",
    "a bowl of fresh fruit on a wooden table",
    "a cat sleeping on a windowsill in the sun",
    "a golden retriever running on the beach",
    "a lighthouse on a rocky coast during a storm",
    "a futuristic city skyline at night with flying cars",
    "a field of sunflowers under a blue sky",
    "a steaming cup of coffee next to an open book",
    "an old wooden bridge over a quiet river in autumn",
    "a macro photo of a dew drop on a leaf",
    "a bookshelf full of colorful books in a cozy library",
    "an oil painting of a sailing ship on rough seas",
    "a watercolor of a tulip field in spring",
    "a desert with sand dunes and a starry night sky",
    "a bowl of ramen with a soft-boiled egg",
    "a fox standing in a snowy forest",
    "a modern living room with large windows and plants",
    "a hot air balloon over green hills",
    "a close-up of a vintage pocket watch",
    "a waterfall in a tropical rainforest",
    "a plate of pancakes with blueberries and maple syrup",
    "a medieval castle on a hill, fantasy art",
    "an isometric 3D render of a tiny island with a house",
]


def split_prompts(
    prompts: Sequence[str], held_out_fraction: float, seed: int = 0
) -> tuple[list[str], list[str]]:
    """``(train, held_out)``: a seeded shuffle puts ``held_out_fraction`` of the distinct prompts
    (rounded, at least one when the fraction is positive) in ``held_out``; both keep the input
    order. The same prompts and seed always give the same split."""
    if not 0.0 <= held_out_fraction < 1.0:
        raise ValueError(f"held_out_fraction must be in [0, 1), not {held_out_fraction}")
    distinct = list(dict.fromkeys(prompts))
    n_held = round(len(distinct) * held_out_fraction)
    if held_out_fraction > 0 and len(distinct) > 1:
        n_held = min(max(n_held, 1), len(distinct) - 1)
    order = list(range(len(distinct)))
    random.Random(seed).shuffle(order)
    held = set(order[:n_held])
    train = [p for i, p in enumerate(distinct) if i not in held]
    held_out = [p for i, p in enumerate(distinct) if i in held]
    return train, held_out


def _check_prompt(prompt: str, where: str) -> str:
    prompt = prompt.strip()
    if not prompt:
        raise ValueError(f"{where}: the prompt is empty")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise ValueError(
            f"{where}: the prompt has {len(prompt)} characters; at most {MAX_PROMPT_CHARS} are allowed"
        )
    return prompt


def read_prompt_file(data: bytes, name: str) -> list[str]:
    """The prompts of an uploaded file, by extension: ``.txt`` one per line (blank lines and
    lines starting with ``#`` skipped), ``.jsonl`` one object per line with a ``prompt`` field,
    ``.csv`` with a header that has a ``prompt`` column.

    Raises ValueError naming the file and line for bad input: not UTF-8, an empty prompt or one
    over ``MAX_PROMPT_CHARS``, a missing ``prompt`` field, more than ``MAX_PROMPTS`` prompts,
    or no prompts at all.
    """
    suffix = name.rsplit(".", 1)[-1].lower() if "." in name else ""
    if suffix not in ("txt", "jsonl", "csv"):
        raise ValueError(f"{name}: prompt files must be .txt, .jsonl or .csv")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ValueError(f"{name}, line {line}: the file is not UTF-8 text") from None

    prompts: list[str] = []

    def add(prompt: str, line: int) -> None:
        prompts.append(_check_prompt(prompt, f"{name}, line {line}"))
        if len(prompts) > MAX_PROMPTS:
            raise ValueError(f"{name}, line {line}: more than {MAX_PROMPTS} prompts")

    if suffix == "txt":
        for line_no, raw in enumerate(text.splitlines(), start=1):
            if raw.strip() and not raw.lstrip().startswith("#"):
                add(raw, line_no)
    elif suffix == "jsonl":
        for line_no, raw in enumerate(text.splitlines(), start=1):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{name}, line {line_no}: not valid JSON ({exc.msg})") from None
            if not isinstance(row, dict) or "prompt" not in row:
                raise ValueError(f'{name}, line {line_no}: no "prompt" field')
            if not isinstance(row["prompt"], str):
                raise ValueError(f'{name}, line {line_no}: "prompt" must be text')
            add(row["prompt"], line_no)
    else:
        reader = csv.DictReader(io.StringIO(text, newline=""))
        if reader.fieldnames is None or "prompt" not in [f.strip() for f in reader.fieldnames]:
            raise ValueError(f'{name}, line 1: the CSV header has no "prompt" column')
        column = next(f for f in reader.fieldnames if f.strip() == "prompt")
        try:
            for row in reader:
                value = row.get(column)
                if value is None:
                    raise ValueError(
                        f"{name}, line {reader.line_num}: no value in the prompt column"
                    )
                add(value, reader.line_num)
        except csv.Error as exc:
            raise ValueError(f"{name}, line {reader.line_num}: {exc}") from None

    if not prompts:
        raise ValueError(f"{name}: the file holds no prompts")
    return prompts
