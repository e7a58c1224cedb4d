"""Independent checks of what ficus published, for tests/pipeline/contract.rs (run with .venv/oracle's python).

    contract_oracle.py cloudevents RECORDS.json
        Every record must be a valid CloudEvent: parsed by the CloudEvents SDK's Kafka binding (binary mode when it
        has `ce_specversion`, else structured) into the SDK's validating (pydantic) event class, and checked against
        the CloudEvents 1.0 constraints the SDK does not enforce itself: id, source, specversion and type are
        non-empty strings, subject (when present) is non-empty, time is RFC 3339.
    contract_oracle.py schema RECORDS.json
        Every record's `data` must validate against the JSON Schema of its event in the catalog (`ficus catalog
        --format json`), with jsonschema's Draft 2020-12 validator and format checking on.

RECORDS.json: {"records": [{"topic", "key", "value", "headers": [[name, value]], "event", "version", "data"}],
"catalog": {...}}; byte strings as latin-1 text. Prints {"checked": n, "errors": [...]}; exits 0 either way (the
test asserts on the errors, so it can show them all).
"""
import json
import sys


def raw(s):
    return None if s is None else s.encode("latin-1")


def check_cloudevents(doc):
    from cloudevents.kafka import KafkaMessage, from_binary, from_structured
    from cloudevents.pydantic import CloudEvent
    from rfc3339_validator import validate_rfc3339

    errors = []
    for i, r in enumerate(doc["records"]):
        headers = {k: raw(v) for k, v in r["headers"]}
        msg = KafkaMessage(headers=headers, key=raw(r["key"]), value=raw(r["value"]))
        try:
            if "ce_specversion" in headers:
                event = from_binary(msg, event_type=CloudEvent)
            else:
                event = from_structured(msg, event_type=CloudEvent)
        except Exception as e:  # noqa: BLE001 - every failure is a finding
            errors.append(f"record {i} ({r['topic']}): the SDK rejects it: {type(e).__name__}: {e}")
            continue
        attrs = event.get_attributes()
        for name in ("id", "source", "specversion", "type"):
            if not isinstance(attrs.get(name), str) or attrs.get(name) == "":
                errors.append(f"record {i} ({r['topic']}): {name} must be a non-empty string, got {attrs.get(name)!r}")
        if "subject" in attrs and attrs["subject"] in ("", None):
            errors.append(f"record {i} ({r['topic']}): subject is present but empty")
        if attrs.get("specversion") != "1.0":
            errors.append(f"record {i} ({r['topic']}): specversion {attrs.get('specversion')!r}")
        # The SDK parsed `time` into a datetime; the wire text must be RFC 3339 too.
        if "ce_time" in headers:
            wire_time = headers["ce_time"].decode()
        else:
            wire_time = json.loads(r["value"].encode("latin-1")).get("time")
        if wire_time is not None and not validate_rfc3339(wire_time):
            errors.append(f"record {i} ({r['topic']}): time {wire_time!r} is not RFC 3339")
    return errors


def check_schema(doc):
    from jsonschema import Draft202012Validator

    checker = Draft202012Validator.FORMAT_CHECKER
    # Without rfc3339-validator / isoduration jsonschema skips these formats silently: refuse to pass then.
    for fmt in ("date", "date-time", "duration", "uuid"):
        if fmt not in checker.checkers:
            return [f"jsonschema cannot check format {fmt!r}: the oracle venv is incomplete"]
    schemas = {}
    for e in doc["catalog"]["events"]:
        name = e["eventType"].split(" (")[0]
        Draft202012Validator.check_schema(e["schema"])
        schemas[(name, e["version"])] = Draft202012Validator(e["schema"], format_checker=checker)
    errors = []
    for i, r in enumerate(doc["records"]):
        validator = schemas.get((r["event"], r["version"]))
        if validator is None:
            errors.append(f"record {i}: no catalog entry for {r['event']} v{r['version']}")
            continue
        for err in validator.iter_errors(r["data"]):
            path = "/".join(str(p) for p in err.absolute_path)
            errors.append(f"record {i} {r['event']} v{r['version']} at /{path}: {err.message}")
    return errors


def main():
    mode, path = sys.argv[1], sys.argv[2]
    with open(path, encoding="utf-8") as f:
        doc = json.load(f)
    errors = {"cloudevents": check_cloudevents, "schema": check_schema}[mode](doc)
    print(json.dumps({"checked": len(doc["records"]), "errors": errors}))


if __name__ == "__main__":
    main()
