"""End-to-end through the sidecar to a simulator that drops and conflicts: pyral writes
E2E_COUNT results; prints which it was told are stored (the create returned) and which failed.
"""
import json
import os

from pyral import Rally, RallyRESTAPIError

auth = os.environ.get("E2E_AUTH", "apikey")
creds = {"apikey": "_sim_alice_key"} if auth == "apikey" else {"user": "carol@example.com", "password": "carol-pass"}
rally = Rally(os.environ["E2E_SERVER"], workspace="Sim Workspace", project="Sim Project", **creds)
confirmed, failed = [], []
for i in range(int(os.environ.get("E2E_COUNT", "20"))):
    build = f"e2e-faults-pyral-{auth}-{i}"
    try:
        tcr = rally.put("TestCaseResult", {"TestCase": "testcase/1040", "Verdict": "Pass", "Build": build,
                                           "Date": "2026-04-04T04:04:04.000Z"})
        if tcr.Build == build:
            confirmed.append(build)
    except RallyRESTAPIError as e:
        failed.append([build, str(e)])
print(json.dumps({"ok": True, "checks": ["wrote every result"], "confirmed": confirmed, "failed": failed}))
