#!/usr/bin/env python3
"""Generate the quickstart fine-tuning dataset of wgtune: date normalization.

`wgtune train` with no arguments fine-tunes SmolLM2-135M-Instruct with LoRA on
data/quickstart/train.jsonl and scores data/quickstart/heldout.jsonl before and
after. The task: rewrite a date written in words as ISO 8601, e.g.

    {"instruction": "Convert the date to ISO 8601 (YYYY-MM-DD).",
     "input": "Friday, March 5, 2021", "output": "2021-03-05"}

Inputs use eight unambiguous surface forms (see FORMS; no numeric dd/mm forms),
years 1900-2099, only real calendar days (leap years included; weekday names,
where a form has one, are the true weekday of the date). The instruction is one
of four phrasings. No date (in any form) of heldout.jsonl occurs in
train.jsonl. Rows are Alpaca-format JSON objects, one per line.

The output is fully determined by SEED and this file, using the standard
library only. To regenerate (from the repository root):

    python3 tools/make_quickstart_data.py            # writes data/quickstart/
    python3 tools/make_quickstart_data.py --out-dir DIR
"""

import argparse
import calendar
import datetime
import json
import random
from pathlib import Path

SEED = 20240305
N_TRAIN = 400
N_HELDOUT = 60
FIRST_YEAR, LAST_YEAR = 1900, 2099
# Share of dates drawn as February 29 of a leap year, so leap days are seen.
LEAP_DAY_SHARE = 0.03

INSTRUCTIONS = [
    "Convert the date to ISO 8601 (YYYY-MM-DD).",
    "Rewrite this date in ISO 8601 format (YYYY-MM-DD).",
    "Normalize the date to YYYY-MM-DD.",
    "Give this date as YYYY-MM-DD.",
]

MONTHS = [
    "January", "February", "March", "April", "May", "June",
    "July", "August", "September", "October", "November", "December",
]
MONTHS_ABBR = [m[:3] for m in MONTHS]  # Jan ... Sep ... Dec
WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
WEEKDAYS_ABBR = [w[:3] for w in WEEKDAYS]


def ordinal(n: int) -> str:
    """1st, 2nd, 3rd, 4th, ..., 11th, 12th, 13th, ..., 21st, 22nd, 23rd, ..., 31st."""
    if 10 <= n % 100 <= 20:
        suffix = "th"
    else:
        suffix = {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


# Each form renders a datetime.date; shown here for 2021-03-05.
FORMS = [
    ("month_day_year", lambda d: f"{MONTHS[d.month - 1]} {d.day}, {d.year}"),  # March 5, 2021
    ("day_month_year", lambda d: f"{d.day} {MONTHS[d.month - 1]} {d.year}"),  # 5 March 2021
    ("abbr_month_day_year", lambda d: f"{MONTHS_ABBR[d.month - 1]} {d.day}, {d.year}"),  # Mar 5, 2021
    ("ordinal_of_month", lambda d: f"{ordinal(d.day)} of {MONTHS[d.month - 1]} {d.year}"),  # 5th of March 2021
    ("month_ordinal_year", lambda d: f"{MONTHS[d.month - 1]} {ordinal(d.day)}, {d.year}"),  # March 5th, 2021
    (
        "weekday_month_day_year",
        lambda d: f"{WEEKDAYS[d.weekday()]}, {MONTHS[d.month - 1]} {d.day}, {d.year}",
    ),  # Friday, March 5, 2021
    (
        "abbr_weekday_day_abbr_month_year",
        lambda d: f"{WEEKDAYS_ABBR[d.weekday()]}, {d.day} {MONTHS_ABBR[d.month - 1]} {d.year}",
    ),  # Fri, 5 Mar 2021
    ("year_month_day", lambda d: f"{d.year}, {MONTHS[d.month - 1]} {d.day}"),  # 2021, March 5
]


def random_date(rng: random.Random) -> datetime.date:
    if rng.random() < LEAP_DAY_SHARE:
        leap_years = [y for y in range(FIRST_YEAR, LAST_YEAR + 1) if calendar.isleap(y)]
        return datetime.date(rng.choice(leap_years), 2, 29)
    lo = datetime.date(FIRST_YEAR, 1, 1).toordinal()
    hi = datetime.date(LAST_YEAR, 12, 31).toordinal()
    return datetime.date.fromordinal(rng.randint(lo, hi))


def make_rows(rng: random.Random, n: int, used: set) -> list:
    """n rows with distinct dates not in `used` (which they are added to); the forms
    and instructions are balanced (each used n/len or n/len + 1 times) and shuffled."""
    forms = [FORMS[i % len(FORMS)] for i in range(n)]
    instructions = [INSTRUCTIONS[i % len(INSTRUCTIONS)] for i in range(n)]
    rng.shuffle(forms)
    rng.shuffle(instructions)
    rows = []
    for (_, render), instruction in zip(forms, instructions):
        date = random_date(rng)
        while date in used:
            date = random_date(rng)
        used.add(date)
        rows.append({"instruction": instruction, "input": render(date), "output": date.isoformat()})
    return rows


def write_jsonl(path: Path, rows: list) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out-dir",
        type=Path,
        default=Path(__file__).resolve().parent.parent / "data" / "quickstart",
        help="where train.jsonl and heldout.jsonl go (default: data/quickstart)",
    )
    args = parser.parse_args()

    rng = random.Random(SEED)
    used: set = set()
    # Held-out first, so its dates are excluded from train.
    heldout = make_rows(rng, N_HELDOUT, used)
    train = make_rows(rng, N_TRAIN, used)
    assert not {r["input"] for r in train} & {r["input"] for r in heldout}

    args.out_dir.mkdir(parents=True, exist_ok=True)
    write_jsonl(args.out_dir / "train.jsonl", train)
    write_jsonl(args.out_dir / "heldout.jsonl", heldout)
    print(f"wrote {len(train)} rows to {args.out_dir / 'train.jsonl'}")
    print(f"wrote {len(heldout)} rows to {args.out_dir / 'heldout.jsonl'}")


if __name__ == "__main__":
    main()
