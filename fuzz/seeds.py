#!/usr/bin/env python3
"""Writes the committed seed corpora under fuzz/corpus/<target>/seed-*: real-shaped inputs
from the repository and shared/ (the triage protocol, HSDS packages and tables, the EIDO
sample) and protobuf requests like the ones the tests send. Run from the repository root:
`python3 fuzz/seeds.py [path to shared/]`. Standard library only."""

import io
import os
import struct
import sys
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "..", "shared")
CORPUS = os.path.join(ROOT, "fuzz", "corpus")


def write(target, name, data):
    folder = os.path.join(CORPUS, target)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "seed-" + name), "wb") as f:
        f.write(data)


def head(path, lines=40):
    with open(path, "rb") as f:
        return b"".join(f.readlines()[:lines])


# --- protobuf encoding, just enough for the seeds ---
def varint(n):
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def f_str(num, s):
    data = s.encode() if isinstance(s, str) else s
    return varint(num << 3 | 2) + varint(len(data)) + data


def f_int(num, n):
    return varint(num << 3) + varint(n)


def f_double(num, x):
    return varint(num << 3 | 1) + struct.pack("<d", x)


def point(lat, lon):
    return f_double(1, lat) + f_double(2, lon)


def ts(seconds):
    return f_int(1, seconds)


NOW = 1780315200  # 2026-06-01T12:00:00Z, the fuzz target's clock


def main():
    write("protocol", "default.toml", open(os.path.join(ROOT, "services/intake/protocol/default.toml"), "rb").read())

    # HSDS packages as zips: 3.0 (shared/hsds), 1.1 (data/ folder), 2.0.
    packages = {
        "hsds-3.0": os.path.join(SHARED, "hsds"),
        "hsds-1.1-211": os.path.join(ROOT, "services/directory/tests/fixtures/hsds-1.1-211"),
        "hsds-2.0": os.path.join(ROOT, "services/directory/tests/fixtures/hsds-2.0"),
    }
    for name, folder in packages.items():
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as z:
            for base, _, files in os.walk(folder):
                for file in sorted(files):
                    if not (file.endswith(".csv") or file == "datapackage.json"):
                        continue
                    path = os.path.join(base, file)
                    z.writestr(os.path.relpath(path, folder), head(path, 30))
        write("hsds_zip", name + ".zip", buffer.getvalue())

    # One table a seed: the selector byte is the table's index in hsds_csv.rs's TABLES.
    tables = [
        (0, "hsds/organizations.csv"), (1, "hsds/taxonomy_terms.csv"), (2, "hsds/services.csv"),
        (3, "hsds/locations.csv"), (4, "hsds/addresses.csv"), (5, "hsds/service_at_location.csv"),
        (6, "hsds/attributes.csv"), (8, "hsds/languages.csv"), (9, "hsds/phones.csv"),
        (10, "hsds/schedules.csv"), (15, "hsds/contacts.csv"),
    ]
    for index, path in tables:
        write("hsds_csv", os.path.basename(path), bytes([index]) + head(os.path.join(SHARED, path)))
    old = os.path.join(ROOT, "services/directory/tests/fixtures/hsds-1.1-211/data")
    for index, file in [(7, "services_taxonomy.csv"), (11, "regular_schedules.csv"),
                        (12, "holiday_schedules.csv"), (14, "physical_addresses.csv")]:
        write("hsds_csv", "1.1-" + file, bytes([index]) + head(os.path.join(old, file)))
    write("hsds_csv", "service_capacity.csv", bytes([13]) +
          b"id,service_id,location_id,available,maximum,unit,updated\n"
          b"c1,s1,l1,3,10,beds,2026-05-31T22:00:00Z\n")

    # Requests, with the selector byte of validators.rs.
    requests = {
        0: ("upsert_team", f_str(1, "req-1") + f_str(2, "team-7") + f_str(3, "Mobile Crisis 7")
            + f_str(4, "north") + f_str(5, "mental_health") + f_str(5, "medical")
            + f_str(6, ts(NOW + 3600)) + f_int(7, 3)),
        2: ("list_teams", f_str(1, "north") + f_int(2, 1) + f_int(3, 20)),
        3: ("set_team_status", f_str(1, "req-2") + f_str(2, "team-7") + f_int(3, 3)
            + f_str(4, "inc-1") + f_int(5, 4)),
        4: ("report_location", f_str(1, "team-7") + f_str(2, point(45.52, -122.68))
            + f_str(3, ts(NOW - 5)) + f_double(4, 90.0) + f_double(5, 12.5) + f_double(6, 8.0)),
        6: ("find_available", f_str(1, "north") + f_str(2, point(45.52, -122.68))
            + f_double(3, 5000.0) + f_str(4, "mental_health") + f_int(5, 5)),
        7: ("watch_teams", f_str(1, "north") + f_str(2, "1780315200000-0")),
        8: ("submit_incident", f_str(1, "cad-a") + f_str(2, "CAD-2026-0001") + f_str(3, "WELFARE")
            + f_int(4, 3) + f_str(5, point(45.52, -122.68)) + f_str(6, "100 Main St")
            + f_str(7, "north") + f_str(8, "caller reports a person in distress")
            + f_int(9, 3) + f_str(10, ts(NOW - 30)) + f_str(12, "mental_health") + f_int(14, 2)),
        10: ("update_incident", f_str(1, "req-3") + f_str(2, "inc-1") + f_int(3, 2)),
        14: ("list_incidents", f_str(1, "cad-a") + f_str(2, "north") + f_str(5, ts(NOW - 86400))
             + f_str(6, ts(NOW)) + f_int(7, 100)),
        16: ("search_services", f_str(1, "shelter") + f_str(2, point(45.52, -122.68))
             + f_double(3, 10000.0) + f_str(4, "BD-1800") + f_str(5, ts(NOW)) + f_str(6, "es")
             + f_int(8, 20)),
        17: ("upsert_service", f_str(1, "req-4") + f_str(2,
             f_str(1, "svc-1") + f_str(2, f_str(1, "org-1") + f_str(2, "Helping Hands"))
             + f_str(3, "Night shelter") + f_int(8, 1) + f_str(12,
                 f_str(1, "loc-1") + f_str(2, "Main") + f_str(4, point(45.52, -122.68))
                 + f_str(5, "America/Los_Angeles")
                 + f_str(6, f_int(1, 1) + f_str(3, "MO,TU,WE,TH,FR") + f_str(5, "20:00")
                         + f_str(6, "08:00") + f_str(7, "2026-01-01"))
                 + f_str(6, f_int(1, 2) + f_str(3, "1SA,-1FR") + f_str(4, "15")
                         + f_str(5, "09:00") + f_str(6, "24:00"))))),
        18: ("update_capacity", f_str(1, "req-5") + f_str(2, "svc-1") + f_str(3, "loc-1")
             + f_int(4, 3) + f_int(5, 10) + f_str(6, ts(NOW - 60))),
        23: ("assign_team", f_str(1, "req-6") + f_str(2, "inc-1") + f_str(3, "north")
             + f_str(4, point(45.52, -122.68)) + f_str(5, "mental_health") + f_int(7, 2)
             + f_int(8, 1) + f_int(9, 1800) + f_str(10, "cad-a") + f_str(11, "CAD-2026-0001")),
    }
    for kind, (name, body) in requests.items():
        write("validators", name, bytes([kind]) + body)
    eido = open(os.path.join(SHARED, "eido/sample-call-transfer.json"), "rb").read()
    write("validators", "eido.json", bytes([9]) + eido)

    # Arbitrary-built inputs (fuzz_targets/schedule.rs): the bytes carry schedule text.
    write("schedule", "weekly", b"\x01\x00\x00\x00\x01\x00\x00\x00MO,TU,WE,TH,FR\x0009:00\x0017:00\x002026-01-01\x002026-12-31\x00America/New_York")
    write("schedule", "monthly", b"\x02\x00\x00\x00\x02\x00\x00\x001SA,-1FR\x0015,-1\x0020:00\x0008:00\x00\x00\x002025-11-01\x00Europe/London")
    write("page_token", "token", b"eyJhZnRlciI6InRlYW0tNyJ9.c2lnbmF0dXJl" + b"\0" * 8 + b"scope")


main()
