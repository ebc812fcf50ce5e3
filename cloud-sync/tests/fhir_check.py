"""Checks FHIR R4 resources with the fhir.resources models (PyPI), independently of the hub.

Reads one JSON resource per line on stdin (AuditEvent, or a Bundle of them); prints a JSON
summary: how many parsed, and the first error if any.
"""
import json
import sys

from fhir.resources.R4B.auditevent import AuditEvent
from fhir.resources.R4B.bundle import Bundle

checked, errors = 0, []
for line in sys.stdin:
    line = line.strip()
    if not line:
        continue
    obj = json.loads(line)
    model = Bundle if obj.get("resourceType") == "Bundle" else AuditEvent
    try:
        parsed = model.model_validate(obj)
        if model is Bundle:
            for e in parsed.entry or []:
                AuditEvent.model_validate(e.resource.model_dump() if hasattr(e.resource, "model_dump") else e.resource)
                checked += 1
        else:
            checked += 1
    except Exception as e:  # noqa: BLE001 - the summary names it
        errors.append(f"{obj.get('resourceType')} {obj.get('id')}: {e}")
print(json.dumps({"checked": checked, "errors": errors[:3], "error_count": len(errors)}))
sys.exit(1 if errors else 0)
