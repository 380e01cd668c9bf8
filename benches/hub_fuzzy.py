#!/usr/bin/env python3
"""Fuzzy matching in the hub: precision, recall and time on a generated set of people with
known duplicates, and the same set through Splink (if it is installed) for comparison.

    python3 benches/hub_fuzzy.py --backflow target/release/backflow [--records 100000]

The set: people (first and last name, city, postcode) from a fixed seed. Every person has a
record in `crm`; about 30% also have one or two records in `billing` with typical damage:
a typo (a letter swapped, dropped, doubled or replaced), first and last name swapped, a
nickname-like truncation, the city missing, upper case and extra spaces. Every record keeps
its postcode (the blocking key: records in different postcodes are never compared).

Quality is measured on pairs of records: a predicted pair shares a golden record (backflow)
or a cluster (Splink); a true pair comes from the same person. Precision = true pairs
predicted / pairs predicted; recall = true pairs predicted / true pairs.
"""

import argparse
import collections
import json
import os
import random
import shutil
import string
import subprocess
import sys
import tempfile
import time

FIRST = [
    "james", "mary", "john", "patricia", "robert", "jennifer", "michael", "linda", "william",
    "elizabeth", "david", "barbara", "richard", "susan", "joseph", "jessica", "thomas",
    "sarah", "charles", "karen", "christopher", "nancy", "daniel", "lisa", "matthew",
    "betty", "anthony", "margaret", "mark", "sandra", "donald", "ashley", "steven",
    "kimberly", "paul", "emily", "andrew", "donna", "joshua", "michelle", "kenneth",
    "dorothy", "kevin", "carol", "brian", "amanda", "george", "melissa", "edward",
    "deborah", "ronald", "stephanie", "timothy", "rebecca", "jason", "sharon", "jeffrey",
    "laura", "ryan", "cynthia", "jacob", "kathleen", "gary", "amy", "nicholas", "shirley",
    "eric", "angela", "jonathan", "helen", "stephen", "anna", "larry", "brenda", "justin",
    "pamela", "scott", "nicole", "brandon", "emma", "benjamin", "samantha", "samuel",
    "katherine", "gregory", "christine", "frank", "debra", "alexander", "rachel",
]
LAST = [
    "smith", "johnson", "williams", "brown", "jones", "garcia", "miller", "davis",
    "rodriguez", "martinez", "hernandez", "lopez", "gonzalez", "wilson", "anderson",
    "thomas", "taylor", "moore", "jackson", "martin", "lee", "perez", "thompson", "white",
    "harris", "sanchez", "clark", "ramirez", "lewis", "robinson", "walker", "young", "allen",
    "king", "wright", "scott", "torres", "nguyen", "hill", "flores", "green", "adams",
    "nelson", "baker", "hall", "rivera", "campbell", "mitchell", "carter", "roberts",
    "gomez", "phillips", "evans", "turner", "diaz", "parker", "cruz", "edwards", "collins",
    "reyes", "stewart", "morris", "morales", "murphy", "cook", "rogers", "gutierrez",
    "ortiz", "morgan", "cooper", "peterson", "bailey", "reed", "kelly", "howard", "ramos",
    "kim", "cox", "ward", "richardson", "watson", "brooks", "chavez", "wood", "james",
]
CITIES = [
    "springfield", "riverton", "fairview", "madison", "georgetown", "salem", "franklin",
    "clinton", "greenville", "bristol", "oakland", "ashland", "milton", "newport", "dover",
]


def typo(word, rng):
    if len(word) < 3:
        return word
    i = rng.randrange(1, len(word) - 1)
    kind = rng.randrange(4)
    if kind == 0:
        return word[:i] + word[i + 1] + word[i] + word[i + 2:]
    if kind == 1:
        return word[:i] + word[i + 1:]
    if kind == 2:
        return word[:i] + word[i] + word[i:]
    return word[:i] + rng.choice(string.ascii_lowercase) + word[i + 1:]


def damaged(person, rng):
    first, last, city, postcode = person
    r = rng.random()
    if r < 0.45:
        if rng.random() < 0.5:
            first = typo(first, rng)
        else:
            last = typo(last, rng)
        name = f"{first} {last}"
    elif r < 0.65:
        name = f"{last} {first}"
    elif r < 0.8:
        name = f"{first[: max(3, len(first) - 2)]} {last}"
    else:
        name = f"  {first.upper()}   {last.title()} "
    if rng.random() < 0.2:
        city = ""
    return name, city, postcode


def generate(n_records, seed=20261203):
    """(crm rows, billing rows, truth: record key -> person)."""
    rng = random.Random(seed)
    people = []
    crm, billing, truth = [], [], {}
    n_people = int(n_records / 1.42)
    postcodes = [f"P{p:04d}" for p in range(max(1, n_people // 60))]
    for p in range(n_people):
        person = (rng.choice(FIRST), rng.choice(LAST), rng.choice(CITIES), rng.choice(postcodes))
        people.append(person)
        crm.append((f"c{p}", f"{person[0]} {person[1]}", person[2], person[3]))
        truth[f"crm:c{p}"] = p
    b = 0
    while len(crm) + len(billing) < n_records:
        p = rng.randrange(n_people)
        name, city, postcode = damaged(people[p], rng)
        billing.append((f"b{b}", name, city, postcode))
        truth[f"billing:b{b}"] = p
        b += 1
    return crm, billing, truth


def write_csv(path, rows):
    with open(path, "w") as f:
        f.write("id,name,city,postcode\n")
        for r in rows:
            f.write(",".join(x.replace(",", " ") for x in r) + "\n")


PROJECT = """
[sources.crm]
type = "csv"
path = "crm.csv"

[sources.billing]
type = "csv"
path = "billing.csv"

[entities.person]
fields = {{ name = "text", city = "text", postcode = "text" }}
batch_size = 1000000
match = [
  {{ fields = ["name"], compare = "jaro_winkler", threshold = {jw}, block = ["postcode"] }},
  {{ fields = ["name"], compare = "token_set", threshold = {ts}, block = ["postcode"] }},
]

[entities.person.merge]
rules = []

[entities.person.sources.crm]
from = "crm"
id = "id"
fields = {{ name = "name", city = "city", postcode = "postcode" }}

[entities.person.sources.billing]
from = "billing"
id = "id"
fields = {{ name = "name", city = "city", postcode = "postcode" }}
"""


def pair_quality(assignment, truth):
    """Precision and recall over pairs. assignment: record key -> cluster."""
    cells = collections.Counter()
    clusters = collections.Counter()
    people = collections.Counter()
    for key, person in truth.items():
        c = assignment.get(key, ("alone", key))
        cells[(c, person)] += 1
        clusters[c] += 1
        people[person] += 1
    pairs = lambda n: n * (n - 1) // 2
    tp = sum(pairs(n) for n in cells.values())
    predicted = sum(pairs(n) for n in clusters.values())
    true = sum(pairs(n) for n in people.values())
    return (tp / predicted if predicted else 1.0, tp / true if true else 1.0, predicted, true)


def backflow_assignment(project):
    """record key -> golden id, from the committed hub state (via duckdb)."""
    import duckdb

    root = os.path.join(project, ".backflow", "hub", "person")
    manifests = sorted(os.listdir(os.path.join(root, "_manifests")))
    manifest = json.load(open(os.path.join(root, "_manifests", manifests[-1])))
    state = os.path.join(project, ".backflow")
    out = {}
    for source, s in manifest["sources"].items():
        path = os.path.join(state, s["contributions"]["path"])
        rows = duckdb.sql(
            f"SELECT CAST(__bf_sid AS VARCHAR), __bf_golden_id FROM read_parquet('{path}')"
        ).fetchall()
        for sid, g in rows:
            if g is not None:
                out[f"{source}:{sid}"] = g
    return out


def run_backflow(binary, crm, billing, truth, jw, ts):
    project = tempfile.mkdtemp(prefix="bf-fuzzy-")
    try:
        write_csv(os.path.join(project, "crm.csv"), crm)
        write_csv(os.path.join(project, "billing.csv"), billing)
        with open(os.path.join(project, "backflow.toml"), "w") as f:
            f.write(PROJECT.format(jw=jw, ts=ts))
        started = time.monotonic()
        done = subprocess.run(
            ["/usr/bin/time", "-f", "%M", binary, "run", "--project", project, "--quiet"],
            capture_output=True,
            text=True,
        )
        seconds = time.monotonic() - started
        if done.returncode != 0:
            sys.exit(f"backflow failed:\n{done.stdout}\n{done.stderr}")
        peak_kib = int(done.stderr.strip().splitlines()[-1])
        precision, recall, predicted, true = pair_quality(backflow_assignment(project), truth)
        return seconds, peak_kib, precision, recall, predicted, true
    finally:
        shutil.rmtree(project, ignore_errors=True)


def run_splink(crm, billing, truth):
    try:
        import splink.comparison_library as cl
        from splink import DuckDBAPI, Linker, SettingsCreator, block_on
    except ImportError as e:
        return None, f"splink is not installed ({e})"
    import pandas as pd

    rows = [
        {"unique_id": f"crm:{r[0]}", "name": r[1].strip().lower(), "city": r[2] or None,
         "postcode": r[3]}
        for r in crm
    ] + [
        {"unique_id": f"billing:{r[0]}", "name": " ".join(r[1].split()).lower(),
         "city": r[2] or None, "postcode": r[3]}
        for r in billing
    ]
    df = pd.DataFrame(rows)
    settings = SettingsCreator(
        link_type="dedupe_only",
        blocking_rules_to_generate_predictions=[block_on("postcode")],
        comparisons=[
            cl.JaroWinklerAtThresholds("name", [0.95, 0.9, 0.8]),
            cl.ExactMatch("city"),
        ],
    )
    started = time.monotonic()
    try:
        linker = Linker(df, settings, db_api=DuckDBAPI())
    except TypeError:
        # Splink 5: tables are registered with the database API first.
        linker = Linker(DuckDBAPI().register(df), settings)
    linker.training.estimate_u_using_random_sampling(max_pairs=1e6)
    linker.training.estimate_parameters_using_expectation_maximisation(block_on("postcode"))
    predictions = linker.inference.predict(threshold_match_probability=0.5)
    clusters = linker.clustering.cluster_pairwise_predictions_at_threshold(
        predictions, threshold_match_probability=0.5
    ).as_pandas_dataframe()
    seconds = time.monotonic() - started
    assignment = dict(zip(clusters["unique_id"], clusters["cluster_id"]))
    precision, recall, predicted, true = pair_quality(assignment, truth)
    return (seconds, precision, recall, predicted, true), None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--backflow", default="target/release/backflow")
    ap.add_argument("--records", type=int, default=100_000)
    ap.add_argument("--jw", type=float, default=0.93)
    ap.add_argument("--ts", type=float, default=0.95)
    ap.add_argument("--no-splink", action="store_true")
    args = ap.parse_args()
    crm, billing, truth = generate(args.records)
    print(f"{len(crm) + len(billing)} records ({len(crm)} crm, {len(billing)} billing), "
          f"{len(set(truth.values()))} people")
    seconds, peak, precision, recall, predicted, true = run_backflow(
        args.backflow, crm, billing, truth, args.jw, args.ts
    )
    print(f"backflow: {seconds:.1f} s, peak {peak / 1024:.0f} MiB, precision {precision:.4f}, "
          f"recall {recall:.4f} ({predicted} pairs predicted, {true} true)")
    if not args.no_splink:
        result, why = run_splink(crm, billing, truth)
        if result is None:
            print(f"splink: not run: {why}")
        else:
            s, p, r, predicted, true = result
            print(f"splink:   {s:.1f} s, precision {p:.4f}, recall {r:.4f} "
                  f"({predicted} pairs predicted, {true} true)")


if __name__ == "__main__":
    main()
