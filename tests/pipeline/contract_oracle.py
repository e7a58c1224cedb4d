"""Independent checks of what ficus published, for tests/pipeline/contract.rs (run with .venv/oracle's python).

    contract_oracle.py cloudevents RECORDS.json
        Every record must be a valid CloudEvent: parsed by the CloudEvents SDK's Kafka binding (binary mode when it
        has `ce_specversion`, else structured) into the SDK's validating (pydantic) event class, and checked against
        the CloudEvents 1.0 constraints the SDK does not enforce itself: id, source, specversion and type are
        non-empty strings, subject (when present) is non-empty, time is RFC 3339, and a `traceparent` extension
        (distributed tracing) is W3C Trace Context (required with "require_traceparent": true).
    contract_oracle.py schema RECORDS.json
        Every record's `data` must validate against the JSON Schema of its event in the catalog (`ficus catalog
        --format json`), with jsonschema's Draft 2020-12 validator and format checking on.

    contract_oracle.py connect RECORDS.json
        Every record's key and value (`{"schema", "payload"}`, as Kafka Connect's JsonConverter with
        `schemas.enable=true` writes them) must convert to Connect data by the JsonConverter's rules: each schema is
        a well-formed Connect schema (known types, struct fields named, Debezium's and Kafka's logical types on their
        documented base types) and the payload conforms (integers in range, base64 bytes, no null in a required field,
        no member the schema does not declare). A null value (a tombstone) is skipped, as the converter does.

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
        # Distributed-tracing extension: a W3C traceparent (version 00, non-zero ids, lowercase hex).
        tp = attrs.get("traceparent")
        if tp is not None:
            import re

            m = re.fullmatch(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})", tp)
            if not m or set(m.group(1)) == {"0"} or set(m.group(2)) == {"0"}:
                errors.append(f"record {i} ({r['topic']}): traceparent {tp!r} is not W3C Trace Context")
        elif doc.get("require_traceparent"):
            errors.append(f"record {i} ({r['topic']}): no traceparent extension")
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


# Connect's logical types on the base type their documentation gives them.
LOGICAL = {
    "io.debezium.time.Date": "int32",
    "io.debezium.time.MicroTimestamp": "int64",
    "io.debezium.time.Timestamp": "int64",
    "io.debezium.time.MicroTime": "int64",
    "io.debezium.time.ZonedTimestamp": "string",
    "io.debezium.time.ZonedTime": "string",
    "io.debezium.data.Json": "string",
    "io.debezium.data.Uuid": "string",
    "io.debezium.data.Enum": "string",
    "org.apache.kafka.connect.data.Decimal": "bytes",
    "org.apache.kafka.connect.data.Date": "int32",
    "org.apache.kafka.connect.data.Timestamp": "int64",
}
INT_RANGE = {"int8": 8, "int16": 16, "int32": 32, "int64": 64}


def connect_errors(schema, value, path):
    import base64

    errors = []
    if not isinstance(schema, dict) or "type" not in schema:
        return [f"{path}: not a Connect schema: {schema!r}"]
    ty = schema["type"]
    name = schema.get("name")
    if name in LOGICAL and LOGICAL[name] != ty:
        errors.append(f"{path}: {name} must be of type {LOGICAL[name]}, not {ty}")
    if ty == "struct":
        fields = schema.get("fields")
        if not isinstance(fields, list) or not all(isinstance(f, dict) and isinstance(f.get("field"), str) for f in fields):
            return errors + [f"{path}: a struct schema needs a list of named fields"]
    if value is None:
        if not schema.get("optional", False) and "default" not in schema:
            errors.append(f"{path}: null in a required {ty} field")
        if ty == "struct":
            for f in schema["fields"]:
                errors += [e for e in connect_errors(f, None, f"{path}/{f['field']}") if "null in a required" not in e]
        return errors
    if ty in INT_RANGE:
        bits = INT_RANGE[ty]
        if isinstance(value, bool) or not isinstance(value, int) or not -(2 ** (bits - 1)) <= value < 2 ** (bits - 1):
            errors.append(f"{path}: {value!r} is not an {ty}")
    elif ty in ("float32", "float64", "float", "double"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            errors.append(f"{path}: {value!r} is not a {ty}")
    elif ty == "boolean":
        if not isinstance(value, bool):
            errors.append(f"{path}: {value!r} is not a boolean")
    elif ty == "string":
        if not isinstance(value, str):
            errors.append(f"{path}: {value!r} is not a string")
    elif ty == "bytes":
        try:
            base64.b64decode(value, validate=True)
        except Exception:  # noqa: BLE001
            errors.append(f"{path}: {value!r} is not base64 bytes")
    elif ty == "array":
        if not isinstance(value, list):
            errors.append(f"{path}: {value!r} is not an array")
        else:
            for i, item in enumerate(value):
                errors += connect_errors(schema.get("items"), item, f"{path}/{i}")
    elif ty == "struct":
        if not isinstance(value, dict):
            return errors + [f"{path}: {value!r} is not a struct"]
        declared = {f["field"] for f in schema["fields"]}
        for extra in sorted(set(value) - declared):
            errors.append(f"{path}: member {extra!r} is not in the schema")
        for f in schema["fields"]:
            errors += connect_errors(f, value.get(f["field"]), f"{path}/{f['field']}")
    else:
        errors.append(f"{path}: unknown Connect type {ty!r}")
    return errors


def check_connect(doc):
    errors = []
    for i, r in enumerate(doc["records"]):
        for part in ("key", "value"):
            envelope = r[part]
            if envelope is None:
                continue
            if not isinstance(envelope, dict) or set(envelope) != {"schema", "payload"}:
                errors.append(f"record {i} {part}: not a JsonConverter envelope {{schema, payload}}")
                continue
            errors += connect_errors(envelope["schema"], envelope["payload"], f"record {i} {part}")
    return errors


def main():
    mode, path = sys.argv[1], sys.argv[2]
    with open(path, encoding="utf-8") as f:
        doc = json.load(f)
    errors = {"cloudevents": check_cloudevents, "schema": check_schema, "connect": check_connect}[mode](doc)
    print(json.dumps({"checked": len(doc["records"]), "errors": errors}))


if __name__ == "__main__":
    main()
