"""Drives meter with the official Lago and OpenMeter Python SDKs, unchanged but for the base URL and key.

Usage: python compat.py URL KEY TENANT RUN_ID. Prints one JSON line with what each call returned.
"""
import json
import sys
import time

from lago_python_client.client import Client as Lago
from lago_python_client.exceptions import LagoApiError
from lago_python_client.models import BatchEvent, Event
from openmeter import Client as OpenMeter

url, key, tenant, run = sys.argv[1:5]
now = int(time.time()) - 30
out = {}

lago = Lago(api_key=key, api_url=url)
created = lago.events.create(Event(
    transaction_id=f"{run}-lago-1", external_subscription_id=tenant, code="agent.invocation", timestamp=now,
    properties={"model": "m", "input_tokens": 40, "output_tokens": 2},
))
out["lago_create"] = {"transaction_id": created.transaction_id, "lago_id": created.lago_id, "code": created.code}
lago.events.batch_create(BatchEvent(events=[
    Event(transaction_id=f"{run}-lago-2", external_subscription_id=tenant, code="work_order.created", timestamp=str(now)),
    Event(transaction_id=f"{run}-lago-3", external_subscription_id=tenant, code="user.login", timestamp=now,
          properties={"user_id": "sdk-user"}),
]))
out["lago_batch"] = "ok"
try:
    lago.events.create(Event(transaction_id=f"{run}-lago-bad", external_subscription_id=tenant, code="agent.invocation",
                             timestamp=now, properties={"model": "m", "input_tokens": -1, "output_tokens": 1}))
    out["lago_invalid"] = "accepted"
except LagoApiError as e:
    out["lago_invalid"] = {"status": e.status_code, "detail": str(e.response)[:300]}

om = OpenMeter(endpoint=url, token=key)
om.events.ingest_event({
    "specversion": "1.0", "id": f"{run}-om-1", "source": "sdk", "type": "api.call", "subject": tenant,
    "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
    "data": {"route": "/x", "method": "GET", "status": 200},
})
# A retry as an application sends one after a lost reply: same id, a fresh `time`. OpenMeter takes it
# for a duplicate; so does meter (counted once, at the first copy's time).
om.events.ingest_event({
    "specversion": "1.0", "id": f"{run}-om-1", "source": "sdk", "type": "api.call", "subject": tenant,
    "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now + 7)),
    "data": {"route": "/x", "method": "GET", "status": 200},
})
out["openmeter_resend"] = "ok"
try:
    om.events.ingest_event({
        "specversion": "1.0", "id": f"{run}-om-1", "source": "sdk", "type": "api.call", "subject": tenant,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
        "data": {"route": "/other", "method": "GET", "status": 200},
    })
    out["openmeter_conflict"] = "accepted"
except Exception as e:
    out["openmeter_conflict"] = {"status": getattr(getattr(e, "response", None), "status_code", None)}
om.events.ingest_events([
    {"specversion": "1.0", "id": f"{run}-om-{i}", "source": "sdk", "type": "work_order.completed", "subject": tenant}
    for i in (2, 3)
])
out["openmeter"] = "ok"
try:
    om.events.ingest_event({"specversion": "1.0", "id": f"{run}-om-bad", "source": "sdk", "type": "nope", "subject": tenant})
    out["openmeter_invalid"] = "accepted"
except Exception as e:  # corehttp raises HttpResponseError subclasses
    out["openmeter_invalid"] = {"status": getattr(getattr(e, "response", None), "status_code", None)}
print(json.dumps(out))
